// Own quantized-weight entry points: the encoder runs threaded in C++ because quantizing 7B weights at load in JS would take minutes, and file mapping needs mmap, which Node lacks.
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <napi.h>
#include <string>

#include "kernels.h"
#include "pool.h"
#include "quant.h"

namespace vl3 {
namespace {

WType formatOf(const std::string& name) {
  if (name == "int8") return WType::Int8;
  if (name == "int4") return WType::Int4;
  if (name == "int4m") return WType::Int4m;
  return WType::None;
}

// quantize(format, src: Float32Array | Uint16Array (bf16), dst: Uint8Array, N, K): packs src [N, K] into dst in the
// layout of quant.h. Returns -1, or the index of the first row holding a value (or needing a scale) that is not
// finite in f16; dst is then incomplete.
Napi::Value Quantize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto fail = [&](const std::string& m) {
    Napi::RangeError::New(env, "quantize: " + m).ThrowAsJavaScriptException();
    return env.Undefined();
  };
  if (info.Length() < 5 || !info[0].IsString() || !info[1].IsTypedArray() || !info[2].IsTypedArray() ||
      !info[3].IsNumber() || !info[4].IsNumber())
    return fail("expected (format, src, dst, N, K)");
  const WType t = formatOf(info[0].As<Napi::String>().Utf8Value());
  if (t == WType::None) return fail("format must be int8, int4 or int4m");
  const Napi::TypedArray src = info[1].As<Napi::TypedArray>(), dst = info[2].As<Napi::TypedArray>();
  const long N = info[3].As<Napi::Number>().Int64Value(), K = info[4].As<Napi::Number>().Int64Value();
  if (N < 0 || K <= 0 || K % quant::kBlock != 0) return fail("K must be a positive multiple of 32");
  const bool bf16 = src.TypedArrayType() == napi_uint16_array;
  if (!bf16 && src.TypedArrayType() != napi_float32_array) return fail("src must be a Float32Array or a Uint16Array (bf16)");
  if (static_cast<long>(src.ElementLength()) != N * K) return fail("src must hold N·K values");
  if (dst.TypedArrayType() != napi_uint8_array || static_cast<long>(dst.ElementLength()) != N * quant::rowBytes(t, K))
    return fail("dst must be a Uint8Array of N·K/32 blocks");
  const uint8_t* s = static_cast<const uint8_t*>(src.ArrayBuffer().Data()) + src.ByteOffset();
  uint8_t* d = static_cast<uint8_t*>(dst.ArrayBuffer().Data()) + dst.ByteOffset();
  const long nb = K / quant::kBlock, groups = (N + quant::kGroupRows - 1) / quant::kGroupRows;
  std::atomic<long> bad{N};
  PoolScope scope(sharedPool());
  parallelTasks(groups, [&](long g, int) {
    const int rows = static_cast<int>(N - g * quant::kGroupRows < quant::kGroupRows ? N - g * quant::kGroupRows : quant::kGroupRows);
    uint8_t* grp = d + g * quant::kGroupRows * quant::rowBytes(t, K);
    std::memset(grp, 0, rows * quant::rowBytes(t, K));
    float v[quant::kBlock];
    int u[quant::kBlock];
    for (int r = 0; r < rows; r++) {
      const long n = g * quant::kGroupRows + r;
      for (long blk = 0; blk < nb; blk++) {
        for (long j = 0; j < quant::kBlock; j++) {
          const long i = n * K + blk * quant::kBlock + j;
          if (bf16) {
            uint16_t h;
            std::memcpy(&h, s + i * 2, 2);
            const uint32_t w = static_cast<uint32_t>(h) << 16;
            std::memcpy(&v[j], &w, 4);
          } else {
            std::memcpy(&v[j], s + i * 4, 4);
          }
        }
        uint16_t dBits, mBits;
        if (!quant::encodeBlock(t, v, dBits, mBits, u)) {
          long cur = bad.load();
          while (n < cur && !bad.compare_exchange_weak(cur, n)) {}
          return;
        }
        quant::BlockRef ref = quant::blockRef(t, grp, rows, r, blk, nb);
        std::memcpy(const_cast<uint8_t*>(ref.d), &dBits, 2);
        if (ref.m) std::memcpy(const_cast<uint8_t*>(ref.m), &mBits, 2);
        uint8_t* codes = const_cast<uint8_t*>(ref.codes);
        for (long j = 0; j < quant::kBlock; j++) quant::setCode(t, codes, ref, j, u[j]);
      }
    }
  });
  return Napi::Number::New(env, bad.load() == N ? -1.0 : static_cast<double>(bad.load()));
}

// A private mapping of `size` bytes of fd from `start`, placed where its address and its file offset agree modulo
// 2 MiB and advised as huge pages: the page cache holds large files in folios of up to 2 MiB (ext4 and others), and
// only a mapping so placed can map such a folio whole, one TLB entry for 2 MiB of a weight that decode streams every
// token (BENCHMARKS.md run 10). A plain mapping where the placement cannot be had.
void* mapHugeAligned(size_t size, int fd, int64_t start) {
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const size_t mapped = (size + page - 1) / page * page;
  void* reserve = ::mmap(nullptr, mapped + kHuge, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (reserve == MAP_FAILED) return ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, start);
  const uintptr_t base = reinterpret_cast<uintptr_t>(reserve);
  const uintptr_t at = base + (static_cast<uintptr_t>(start) % kHuge + kHuge - base % kHuge) % kHuge;
  void* p = ::mmap(reinterpret_cast<void*>(at), size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd, start);
  if (p == MAP_FAILED) {
    ::munmap(reserve, mapped + kHuge);
    return p;
  }
  if (at > base) ::munmap(reserve, at - base);
  if (base + mapped + kHuge > at + mapped) ::munmap(reinterpret_cast<void*>(at + mapped), base + mapped + kHuge - (at + mapped));
#ifdef MADV_HUGEPAGE
  ::madvise(p, size, MADV_HUGEPAGE);
#endif
  return p;
}

// mapFile(fd, offset, length): bytes [offset, offset + length) of an open file (the caller's descriptor, which it keeps
// and may close: a mapping outlives it) as an ArrayBuffer over a private mapping that starts at offset rounded down to
// 64 KiB (a multiple of every page size in use), so the caller's bytes begin at offset % 65536 of it. Pages are read
// on first touch and stay shared with the page cache; a write would only copy the page. Unmapped when the buffer is
// collected. One mapping per tensor rather than per file: an ArrayBuffer holds at most 4 GiB here, and checkpoint
// files are larger.
Napi::Value MapFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsNumber()) {
    Napi::TypeError::New(env, "mapFile: expected (fd, offset, length)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const int fd = info[0].As<Napi::Number>().Int32Value();
  const int64_t offset = info[1].As<Napi::Number>().Int64Value(), length = info[2].As<Napi::Number>().Int64Value();
  constexpr int64_t kAlign = 1 << 16;
  const int64_t start = offset / kAlign * kAlign, size = offset - start + length;
  if (offset < 0 || length <= 0 || size > (int64_t{1} << 32)) {
    Napi::RangeError::New(env, "mapFile: cannot map " + std::to_string(length) + " bytes at " + std::to_string(offset) +
                                   " (1 to 4 GiB)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  void* p = mapHugeAligned(static_cast<size_t>(size), fd, start);
  if (p == MAP_FAILED) {
    Napi::Error::New(env, std::string("mapFile: mmap: ") + std::strerror(errno)).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::ArrayBuffer::New(env, p, static_cast<size_t>(size), [](Napi::Env, void* data, size_t* bytes) {
    ::munmap(data, *bytes);
    delete bytes;
  }, new size_t(static_cast<size_t>(size)));
}

}  // namespace

void registerQuant(Napi::Env env, Napi::Object exports) {
  exports.Set("quantize", Napi::Function::New(env, Quantize, "quantize"));
  exports.Set("mapFile", Napi::Function::New(env, MapFile, "mapFile"));
}

}  // namespace vl3
