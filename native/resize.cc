// Own Pillow-exact bicubic resize: no library reproduces Pillow's fixed-point Resample.c bit for bit.
// Every step mirrors Pillow's ImagingResampleInner with its 8-bit passes, because one differently rounded
// coefficient changes output bytes: filter taps in double precision in Pillow's expression order, normalised to
// sum 1, turned into int32 with 22 fractional bits; int32 accumulators starting at 1 << 21; arithmetic shift; clamp.
#include "resize.h"

// A fused multiply-add rounds once where Pillow's build rounds twice; aarch64 compilers fuse by default.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "pool.h"

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

// Output rows [y0, y1) of the horizontal pass; output row y reads source row y + rowOffset.
void horizontalRows(const uint8_t* src, long srcW, uint8_t* out, long outW, const Taps& h, long rowOffset, long y0,
                    long y1) {
  for (long y = y0; y < y1; y++) {
    const uint8_t* in = src + static_cast<size_t>(y + rowOffset) * srcW * 3;
    uint8_t* o = out + static_cast<size_t>(y) * outW * 3;
    for (long xx = 0; xx < outW; xx++) {
      const int32_t* k = &h.k[static_cast<size_t>(xx) * h.ksize];
      const uint8_t* p = in + h.first[xx] * 3;
      const long n = h.count[xx];
      int32_t s0 = kHalf, s1 = kHalf, s2 = kHalf;
      for (long x = 0; x < n; x++, p += 3) {
        s0 += p[0] * k[x];
        s1 += p[1] * k[x];
        s2 += p[2] * k[x];
      }
      o[xx * 3 + 0] = clip8(s0);
      o[xx * 3 + 1] = clip8(s1);
      o[xx * 3 + 2] = clip8(s2);
    }
  }
}

// Output rows [y0, y1) of the vertical pass over `in` (rows of rowBytes); taps are shifted up by firstRow, the
// first input row `in` holds. The tap loop is outermost so the inner loop is a plain vectorisable row sweep.
void verticalRows(const uint8_t* in, long rowBytes, uint8_t* out, const Taps& v, long firstRow, long y0, long y1) {
  std::vector<int32_t> acc(rowBytes);
  for (long yy = y0; yy < y1; yy++) {
    std::fill(acc.begin(), acc.end(), kHalf);
    const int32_t* k = &v.k[static_cast<size_t>(yy) * v.ksize];
    const long n = v.count[yy];
    for (long y = 0; y < n; y++) {
      const uint8_t* row = in + static_cast<size_t>(v.first[yy] - firstRow + y) * rowBytes;
      const int32_t ky = k[y];
      int32_t* a = acc.data();
      for (long j = 0; j < rowBytes; j++) a[j] += row[j] * ky;
    }
    uint8_t* o = out + static_cast<size_t>(yy) * rowBytes;
    for (long j = 0; j < rowBytes; j++) o[j] = clip8(acc[j]);
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
