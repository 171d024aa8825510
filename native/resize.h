// Own Pillow-exact bicubic resize: no library reproduces Pillow's fixed-point Resample.c bit for bit.
#pragma once
#include <napi.h>

#include <cstdint>

namespace vl3 {

// Resizes an 8-bit RGB image (rows of width*3 bytes, no padding) with Pillow's BICUBIC filter exactly as
// `Image.resize((dstW, dstH), BICUBIC, reducing_gap=None)` does: horizontal pass first into an 8-bit
// intermediate, then the vertical pass; target == source is a copy. `threads`: 1 runs on the calling thread only,
// 0 uses the whole (process-wide, shared) pool, n > 1 splits the work into n pool tasks. Sizes must be >= 1.
void resizeBicubicRgb8(const uint8_t* src, long srcW, long srcH, uint8_t* dst, long dstW, long dstH, int threads);

// Adds `resizeBicubicRgb8(src, srcW, srcH, dst, dstW, dstH, threads)` to the addon's exports.
void registerResize(Napi::Env env, Napi::Object exports);
// Defined in quant_addon.cc: quantize and mapFile.
void registerQuant(Napi::Env env, Napi::Object exports);

}  // namespace vl3
