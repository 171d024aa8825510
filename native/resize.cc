// Own Pillow-exact bicubic resize: no library reproduces Pillow's fixed-point Resample.c bit for bit.
// Every step mirrors Pillow's ImagingResampleInner with its 8-bit passes, because one differently rounded
// coefficient changes output bytes: filter taps in double precision in Pillow's expression order, normalised to
// sum 1, turned into int32 with 22 fractional bits; int32 accumulators starting at 1 << 21; arithmetic shift; clamp.
#include "resize.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "pool.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

// A fused multiply-add rounds once where Pillow's build rounds twice; aarch64 compilers fuse by default. (After the
// includes, so that only this file's functions are affected.)
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace vl3 {
namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;  // 8-bit result plus 2 bits of headroom for the negative lobes
constexpr int32_t kHalf = 1 << (kPrecisionBits - 1);

// Keys' cubic convolution kernel with a = -0.5, in Pillow's Horner form (the evaluation order decides last bits).
double bicubic(double x) {
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// Filter taps of one axis: output i reads inputs [first[i], first[i] + count[i]) with weights k[i * ksize + j].
struct Taps {
  long ksize = 0;
  std::vector<long> first, count;
  std::vector<int32_t> k;
};

Taps precomputeTaps(long inSize, long outSize) {
  Taps t;
  // Pillow passes the source box as floats: (double)(in1 - in0) with in1 = float(inSize).
  const double scale = static_cast<double>(static_cast<float>(inSize)) / outSize;
  const double filterscale = std::max(scale, 1.0);
  const double support = 2.0 * filterscale;
  const double ss = 1.0 / filterscale;  // Pillow multiplies by the reciprocal rather than dividing
  t.ksize = static_cast<long>(std::ceil(support)) * 2 + 1;
  t.first.resize(outSize);
  t.count.resize(outSize);
  t.k.assign(static_cast<size_t>(outSize) * t.ksize, 0);
  std::vector<double> w(t.ksize);
  for (long xx = 0; xx < outSize; xx++) {
    const double center = (xx + 0.5) * scale;
    // C casts truncate toward zero; the clamps come after, as in Pillow.
    long xmin = static_cast<long>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    long xmax = static_cast<long>(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    double ww = 0.0;
    for (long x = 0; x < xmax; x++) {
      w[x] = bicubic((static_cast<double>(x + xmin) - center + 0.5) * ss);
      ww += w[x];
    }
    int32_t* k = &t.k[static_cast<size_t>(xx) * t.ksize];
    for (long x = 0; x < xmax; x++) {
      const double v = ww != 0.0 ? w[x] / ww : w[x];
      const double scaled = v * (1 << kPrecisionBits);
      k[x] = static_cast<int32_t>(v < 0 ? -0.5 + scaled : 0.5 + scaled);  // round half away from zero
    }
    t.first[xx] = xmin;
    t.count[xx] = xmax;
  }
  return t;
}

inline uint8_t clip8(int32_t acc) {
  const int32_t v = acc >> kPrecisionBits;  // arithmetic shift, as Pillow's lookup index
  return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
}

// Both passes reduce to one kernel: out[j] = clip8(kHalf + sum_t taps[t * stride + j] * k[t]) for j < lanes,
// i.e. a weighted sum of n byte rows. The vertical pass applies it to image rows; the horizontal pass to blocks of
// rows transposed so that each source column is one short row.

void weightedSumGeneric(const uint8_t* taps, size_t stride, const int32_t* k, long n, long lanes, uint8_t* out) {
  constexpr long kChunk = 256;
  int32_t acc[kChunk];
  for (long j0 = 0; j0 < lanes; j0 += kChunk) {
    const long m = std::min(kChunk, lanes - j0);
    std::fill(acc, acc + m, kHalf);
    for (long t = 0; t < n; t++) {
      const uint8_t* row = taps + t * stride + j0;
      const int32_t kt = k[t];
      for (long j = 0; j < m; j++) acc[j] += row[j] * kt;
    }
    for (long j = 0; j < m; j++) out[j0 + j] = clip8(acc[j]);
  }
}

#if defined(__SSE2__)
// Two taps at a time with pmaddwd on 16-bit pixels. A 22-bit weight does not fit 16 bits, so each is split as
// k = kh * 2^15 + kl (kl in [0, 2^15), |kh| <= 2^8) and the two partial sums are recombined. All sums are modulo
// 2^32, so a partial sum that wraps still leaves the exact total, which fits int32 as Pillow's does.
inline __m128i weightPair(int32_t a, int32_t b) {
  return _mm_set1_epi32(static_cast<int32_t>((static_cast<uint32_t>(b) << 16) | (static_cast<uint32_t>(a) & 0xffffu)));
}

// Returns how many lanes (a multiple of 16) it did; the caller finishes the rest.
long weightedSumSse2(const uint8_t* taps, size_t stride, const int32_t* k, long n, long lanes, uint8_t* out) {
  const __m128i zero = _mm_setzero_si128();
  long j = 0;
  for (; j + 16 <= lanes; j += 16) {
    __m128i lo[4] = {zero, zero, zero, zero}, hi[4] = {zero, zero, zero, zero};
    for (long t = 0; t < n; t += 2) {
      const uint8_t* p = taps + t * stride + j;
      const bool pair = t + 1 < n;
      const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
      const __m128i b = pair ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + stride)) : zero;
      const int32_t kb = pair ? k[t + 1] : 0;
      const __m128i kl = weightPair(k[t] & 0x7fff, kb & 0x7fff);
      const __m128i kh = weightPair(k[t] >> 15, kb >> 15);
      const __m128i aLo = _mm_unpacklo_epi8(a, zero), aHi = _mm_unpackhi_epi8(a, zero);
      const __m128i bLo = _mm_unpacklo_epi8(b, zero), bHi = _mm_unpackhi_epi8(b, zero);
      const __m128i q[4] = {_mm_unpacklo_epi16(aLo, bLo), _mm_unpackhi_epi16(aLo, bLo), _mm_unpacklo_epi16(aHi, bHi),
                            _mm_unpackhi_epi16(aHi, bHi)};
      for (int i = 0; i < 4; i++) {
        lo[i] = _mm_add_epi32(lo[i], _mm_madd_epi16(q[i], kl));
        hi[i] = _mm_add_epi32(hi[i], _mm_madd_epi16(q[i], kh));
      }
    }
    __m128i v[4];
    for (int i = 0; i < 4; i++) {
      const __m128i sum = _mm_add_epi32(_mm_add_epi32(_mm_slli_epi32(hi[i], 15), lo[i]), _mm_set1_epi32(kHalf));
      v[i] = _mm_srai_epi32(sum, kPrecisionBits);
    }
    // Signed saturation to 16 bits changes nothing (|v| < 2^10); unsigned saturation to 8 bits is the clamp.
    const __m128i bytes = _mm_packus_epi16(_mm_packs_epi32(v[0], v[1]), _mm_packs_epi32(v[2], v[3]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + j), bytes);
  }
  return j;
}
#endif

void weightedSum(const uint8_t* taps, size_t stride, const int32_t* k, long n, long lanes, uint8_t* out) {
  long done = 0;
#if defined(__SSE2__)
  done = weightedSumSse2(taps, stride, k, n, lanes, out);
#endif
  if (done < lanes) weightedSumGeneric(taps + done, stride, k, n, lanes - done, out + done);
}

// Rows are filtered horizontally in blocks of kBlockRows, transposed so that each source column becomes one row of
// kBlockRows * 3 bytes and the weighted-sum kernel runs across the block's rows and channels.
constexpr long kBlockRows = 16;
constexpr long kBlockLanes = kBlockRows * 3;

// Output rows [y0, y1) of the horizontal pass; output row y reads source row y + rowOffset.
void horizontalRows(const uint8_t* src, long srcW, uint8_t* out, long outW, const Taps& h, long rowOffset, long y0,
                    long y1) {
  std::vector<uint8_t> columns(static_cast<size_t>(srcW) * kBlockLanes), results(static_cast<size_t>(outW) * kBlockLanes);
  for (long yb = y0; yb < y1; yb += kBlockRows) {
    const long rows = std::min(kBlockRows, y1 - yb);
    if (rows < kBlockRows) std::fill(columns.begin(), columns.end(), 0);
    for (long r = 0; r < rows; r++) {
      const uint8_t* s = src + static_cast<size_t>(yb + r + rowOffset) * srcW * 3;
      uint8_t* d = columns.data() + r * 3;
      for (long x = 0; x < srcW; x++, s += 3, d += kBlockLanes) d[0] = s[0], d[1] = s[1], d[2] = s[2];
    }
    for (long xx = 0; xx < outW; xx++) {
      weightedSum(columns.data() + h.first[xx] * kBlockLanes, kBlockLanes, &h.k[static_cast<size_t>(xx) * h.ksize],
                  h.count[xx], kBlockLanes, results.data() + xx * kBlockLanes);
    }
    for (long r = 0; r < rows; r++) {
      uint8_t* o = out + static_cast<size_t>(yb + r) * outW * 3;
      const uint8_t* s = results.data() + r * 3;
      for (long xx = 0; xx < outW; xx++, o += 3, s += kBlockLanes) o[0] = s[0], o[1] = s[1], o[2] = s[2];
    }
  }
}

// Output rows [y0, y1) of the vertical pass over `in` (rows of rowBytes); taps are shifted up by firstRow, the
// first input row `in` holds.
void verticalRows(const uint8_t* in, long rowBytes, uint8_t* out, const Taps& v, long firstRow, long y0, long y1) {
  for (long yy = y0; yy < y1; yy++) {
    weightedSum(in + static_cast<size_t>(v.first[yy] - firstRow) * rowBytes, rowBytes,
                &v.k[static_cast<size_t>(yy) * v.ksize], v.count[yy], rowBytes, out + static_cast<size_t>(yy) * rowBytes);
  }
}

// Runs f(begin, end) over [0, rows): inline for threads == 1, else as pool tasks (n of them, or a few per pool
// thread for 0) so that uneven rows balance.
template <class F>
void forRowRanges(long rows, int threads, const F& f) {
  if (rows <= 0) return;
  if (threads == 1) {
    f(0L, rows);
    return;
  }
  long tasks = threads > 1 ? threads : static_cast<long>(poolThreads()) * 4;
  tasks = std::max(1L, std::min(tasks, rows));
  parallelTasks(tasks, [&](long task, int) { f(rows * task / tasks, rows * (task + 1) / tasks); });
}

bool fail(Napi::Env env, const std::string& msg) {
  Napi::RangeError::New(env, "resizeBicubicRgb8: " + msg).ThrowAsJavaScriptException();
  return false;
}

bool bytesArg(const Napi::CallbackInfo& info, size_t i, const char* name, uint8_t*& data, size_t& length) {
  Napi::Value v = info[i];
  napi_typedarray_type type;
  napi_value buffer;
  size_t offset;
  void* ptr = nullptr;
  if (!v.IsTypedArray() ||
      napi_get_typedarray_info(info.Env(), v, &type, &length, &ptr, &buffer, &offset) != napi_ok ||
      (type != napi_uint8_array && type != napi_uint8_clamped_array))
    return fail(info.Env(), std::string(name) + " must be a Uint8Array");
  data = static_cast<uint8_t*>(ptr);
  return true;
}

bool sizeArg(const Napi::CallbackInfo& info, size_t i, const char* name, long& out) {
  if (!info[i].IsNumber()) return fail(info.Env(), std::string(name) + " must be a number");
  const double d = info[i].As<Napi::Number>().DoubleValue();
  if (!(d >= 1 && d <= 1 << 30) || d != std::floor(d)) return fail(info.Env(), std::string(name) + " must be an integer >= 1");
  out = static_cast<long>(d);
  return true;
}

// resizeBicubicRgb8(src, srcW, srcH, dst, dstW, dstH, threads)
Napi::Value ResizeJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint8_t *src, *dst;
  size_t srcLen, dstLen;
  long srcW, srcH, dstW, dstH;
  if (!bytesArg(info, 0, "src", src, srcLen) || !sizeArg(info, 1, "srcW", srcW) || !sizeArg(info, 2, "srcH", srcH) ||
      !bytesArg(info, 3, "dst", dst, dstLen) || !sizeArg(info, 4, "dstW", dstW) || !sizeArg(info, 5, "dstH", dstH))
    return env.Undefined();
  if (!info[6].IsNumber() || info[6].As<Napi::Number>().Int32Value() < 0) {
    fail(env, "threads must be an integer >= 0");
    return env.Undefined();
  }
  const int threads = info[6].As<Napi::Number>().Int32Value();
  if (srcLen != static_cast<size_t>(srcW) * srcH * 3 || dstLen != static_cast<size_t>(dstW) * dstH * 3) {
    fail(env, "array lengths do not match width * height * 3");
    return env.Undefined();
  }
  if (src < dst + dstLen && dst < src + srcLen) {
    fail(env, "src and dst must not overlap");
    return env.Undefined();
  }
  // No backend context here: resizes share the process-wide pool (they need no scratch), one at a time.
  PoolScope scope(sharedPool());
  resizeBicubicRgb8(src, srcW, srcH, dst, dstW, dstH, threads);
  return env.Undefined();
}

}  // namespace

void resizeBicubicRgb8(const uint8_t* src, long srcW, long srcH, uint8_t* dst, long dstW, long dstH, int threads) {
  const bool needHorizontal = dstW != srcW;
  const bool needVertical = dstH != srcH;
  if (!needHorizontal && !needVertical) {
    std::memcpy(dst, src, static_cast<size_t>(srcW) * srcH * 3);
    return;
  }
  if (!needHorizontal) {
    const Taps v = precomputeTaps(srcH, dstH);
    forRowRanges(dstH, threads, [&](long a, long b) { verticalRows(src, srcW * 3, dst, v, 0, a, b); });
    return;
  }
  const Taps h = precomputeTaps(srcW, dstW);
  if (!needVertical) {
    forRowRanges(srcH, threads, [&](long a, long b) { horizontalRows(src, srcW, dst, dstW, h, 0, a, b); });
    return;
  }
  const Taps v = precomputeTaps(srcH, dstH);
  // The intermediate covers only the source rows the vertical pass reads.
  const long firstRow = v.first[0];
  const long lastRow = v.first[dstH - 1] + v.count[dstH - 1];
  std::vector<uint8_t> tmp(static_cast<size_t>(lastRow - firstRow) * dstW * 3);
  forRowRanges(lastRow - firstRow, threads,
               [&](long a, long b) { horizontalRows(src, srcW, tmp.data(), dstW, h, firstRow, a, b); });
  forRowRanges(dstH, threads, [&](long a, long b) { verticalRows(tmp.data(), dstW * 3, dst, v, firstRow, a, b); });
}

void registerResize(Napi::Env env, Napi::Object exports) {
  exports.Set("resizeBicubicRgb8", Napi::Function::New(env, ResizeJs, "resizeBicubicRgb8"));
}

}  // namespace vl3
