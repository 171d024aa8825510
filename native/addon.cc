// Own N-API glue: ops take the tensors' TypedArrays zero-copy and run synchronously, so a decode step's ~200 calls cost about a microsecond each.
// TypeScript validates shapes and dtypes with friendly messages; the checks here only keep a bad call from
// touching memory outside the arrays it was given. Ops are methods of a Context (one per NativeBackend): its thread
// pool, kernel tier and compute mode.
#include <napi.h>
#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include "cpu.h"
#include "kernels.h"
#include "measure.h"
#include "pool.h"
#include "quant.h"
#include "resize.h"

namespace vl3 {
namespace {

bool fail(Napi::Env env, const std::string& msg);

// A backend's native half: a thread pool with its scratch arenas, a kernel tier and a compute mode. Contexts share
// nothing, so models on different JS threads run at the same time; within one, ops take turns (its kernels share
// the pool's per-thread scratch).
class Context : public Napi::ObjectWrap<Context> {
 public:
  static Napi::Function Define(Napi::Env env);

  // new Context(threads | undefined, isa | null, compute | null): null picks the default (VL3_ISA / VL3_COMPUTE,
  // else the best the CPU has).
  explicit Context(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Context>(info) {
    Napi::Env env = info.Env();
    int threads = availableCores();
    if (!info[0].IsUndefined()) {
      const double t = info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : 0;
      if (!(t >= 1 && t <= 256) || t != std::floor(t)) {
        fail(env, "Context: threads must be an integer in [1, 256]");
        return;
      }
      threads = static_cast<int>(t);
    }
    std::string error;
    if (info[1].IsString()) table_ = tierKernels(info[1].As<Napi::String>().Utf8Value(), error);
    else table_ = defaultKernels(error);
    if (!table_) {
      Napi::Error::New(env, error).ThrowAsJavaScriptException();
      return;
    }
    if (info[2].IsString()) {
      const std::string name = info[2].As<Napi::String>().Utf8Value();
      if (!parseCompute(name, compute_)) {
        fail(env, "Context: compute must be 'exact' or 'bf16', got '" + name + "'");
        return;
      }
    } else if (!defaultCompute(*table_, compute_, error)) {
      Napi::Error::New(env, error).ThrowAsJavaScriptException();
      return;
    }
    pool_ = makePool(threads);
  }

  ~Context() override {
    if (reported_) Napi::MemoryManagement::AdjustExternalMemory(Env(), -reported_);
  }

  const KernelTable& k() const { return *table_; }
  Compute compute() const { return compute_; }

 private:
  friend class OpScope;

  template <Napi::Value (*F)(const Napi::CallbackInfo&, Context&)>
  Napi::Value Op(const Napi::CallbackInfo& info) {
    if (!pool_) return Napi::Value();  // the constructor threw
    return F(info, *this);
  }

  Napi::Value Isa(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), table_ ? table_->name : ""); }
  Napi::Value ComputeMode(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), computeName(compute_)); }
  Napi::Value Threads(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), pool_ ? poolSize(*pool_) : 0);
  }
  Napi::Value SetThreads(const Napi::CallbackInfo& info);

  // Lets V8 know what the scratch arenas hold, so that a program dropping backends collects them soon enough.
  void reportMemory() {
    const int64_t now = static_cast<int64_t>(poolScratchBytes(*pool_));
    if (now == reported_) return;
    Napi::MemoryManagement::AdjustExternalMemory(Env(), now - reported_);
    reported_ = now;
  }

  std::mutex mu_;
  PoolPtr pool_;
  const KernelTable* table_ = nullptr;
  Compute compute_ = Compute::Exact;
  int64_t reported_ = 0;
};

// Held for the length of one op: the context's lock, and its pool as the one the kernels see on this thread.
class OpScope {
 public:
  explicit OpScope(Context& c) : c_(c), lock_(c.mu_), pool_(*c.pool_) {}
  ~OpScope() { c_.reportMemory(); }

 private:
  Context& c_;
  std::lock_guard<std::mutex> lock_;
  PoolScope pool_;
};

struct View {
  void* data = nullptr;
  size_t length = 0;
  napi_typedarray_type type = napi_int8_array;
};

// Reads a TypedArray without copying; on failure throws a JS TypeError and returns false.
bool viewOf(Napi::Env env, Napi::Value v, View& out, const char* op, const std::string& name) {
  if (!v.IsTypedArray()) {
    Napi::TypeError::New(env, std::string(op) + ": " + name + " must be a TypedArray").ThrowAsJavaScriptException();
    return false;
  }
  napi_value buffer;
  size_t offset;
  if (napi_get_typedarray_info(env, v, &out.type, &out.length, &out.data, &buffer, &offset) != napi_ok) {
    Napi::TypeError::New(env, std::string(op) + ": cannot read " + name).ThrowAsJavaScriptException();
    return false;
  }
  return true;
}

bool view(const Napi::CallbackInfo& info, size_t i, View& out, const char* op, const char* name) {
  return viewOf(info.Env(), info[i], out, op, name);
}

bool fail(Napi::Env env, const std::string& msg) {
  Napi::RangeError::New(env, msg).ThrowAsJavaScriptException();
  return false;
}

bool isF32(const View& v) { return v.type == napi_float32_array; }
bool isU16(const View& v) { return v.type == napi_uint16_array; }

WType floatType(const View& v) {
  return isF32(v) ? WType::F32 : isU16(v) ? WType::BF16 : WType::None;
}

bool needF32(Napi::Env env, const View& v, const char* op, const char* name, size_t length) {
  if (!isF32(v)) return fail(env, std::string(op) + ": " + name + " must be a Float32Array");
  if (v.length != length)
    return fail(env, std::string(op) + ": " + name + " has " + std::to_string(v.length) + " elements, expected " +
                         std::to_string(length));
  return true;
}

bool needFloat(Napi::Env env, const View& v, const char* op, const char* name, size_t length) {
  if (floatType(v) == WType::None)
    return fail(env, std::string(op) + ": " + name + " must be a Float32Array (f32) or Uint16Array (bf16)");
  if (v.length != length)
    return fail(env, std::string(op) + ": " + name + " has " + std::to_string(v.length) + " elements, expected " +
                         std::to_string(length));
  return true;
}

long intArg(const Napi::CallbackInfo& info, size_t i) { return static_cast<long>(info[i].As<Napi::Number>().Int64Value()); }
double numArg(const Napi::CallbackInfo& info, size_t i) { return info[i].As<Napi::Number>().DoubleValue(); }

bool intArgs(const Napi::CallbackInfo& info, size_t from, size_t count, const char* op) {
  for (size_t i = from; i < from + count; i++) {
    if (!info[i].IsNumber()) return fail(info.Env(), std::string(op) + ": argument " + std::to_string(i) + " must be a number");
    if (intArg(info, i) < 0) return fail(info.Env(), std::string(op) + ": argument " + std::to_string(i) + " must be >= 0");
  }
  return true;
}

// The weight format a JS caller names for a Uint8Array of packed blocks (quant.h); WType::None for any other value.
WType quantFormat(const Napi::Value& v) {
  if (!v.IsNumber()) return WType::None;
  const WType t = static_cast<WType>(v.As<Napi::Number>().Int32Value());
  return quant::isQuantized(t) ? t : WType::None;
}

bool needPacked(Napi::Env env, const View& v, WType t, const char* op, const char* name, long rows, long K) {
  if (v.type != napi_uint8_array) return fail(env, std::string(op) + ": " + name + " must be a Uint8Array of packed blocks");
  if (K % quant::kBlock != 0) return fail(env, std::string(op) + ": K must be a multiple of 32 for quantized weights");
  if (static_cast<long>(v.length) != rows * quant::rowBytes(t, K))
    return fail(env, std::string(op) + ": " + name + " has " + std::to_string(v.length) + " bytes, expected " +
                         std::to_string(rows * quant::rowBytes(t, K)));
  return true;
}

// matmul(x, w, bias | null, out, M, N, K, wFormat?): wFormat (a WType number) marks w as packed quantized blocks.
Napi::Value Matmul(const Napi::CallbackInfo& info, Context& ctx) {
  Napi::Env env = info.Env();
  const char* op = "matmul";
  View x, w, b, out;
  if (!intArgs(info, 4, 3, op)) return env.Undefined();
  const long M = intArg(info, 4), N = intArg(info, 5), K = intArg(info, 6);
  if (!view(info, 0, x, op, "x") || !view(info, 1, w, op, "w") || !view(info, 3, out, op, "out")) return env.Undefined();
  bool hasBias = !info[2].IsNull() && !info[2].IsUndefined();
  if (hasBias && !view(info, 2, b, op, "bias")) return env.Undefined();
  const WType q = quantFormat(info[7]);
  if (!needF32(env, x, op, "x", M * K) || !needF32(env, out, op, "out", M * N)) return env.Undefined();
  if (q != WType::None ? !needPacked(env, w, q, op, "w", N, K) : !needFloat(env, w, op, "w", N * K)) return env.Undefined();
  if (hasBias && !needFloat(env, b, op, "bias", N)) return env.Undefined();
  MatmulArgs a{static_cast<const float*>(x.data), w.data, q != WType::None ? q : floatType(w), hasBias ? b.data : nullptr,
               hasBias ? floatType(b) : WType::None, static_cast<float*>(out.data), M, N, K, ctx.compute()};
  OpScope scope(ctx);
  ctx.k().matmul(a);
  return env.Undefined();
}

// matmuls(x, parts, M, K): parts is an array of [w, bias | null, out, N, wFormat?], each as matmul's, all reading x;
// run as one job where the kernels allow (kernels.h matmulMany).
Napi::Value Matmuls(const Napi::CallbackInfo& info, Context& ctx) {
  Napi::Env env = info.Env();
  const char* op = "matmuls";
  View x;
  if (!intArgs(info, 2, 2, op) || !view(info, 0, x, op, "x")) return env.Undefined();
  const long M = intArg(info, 2), K = intArg(info, 3);
  if (!needF32(env, x, op, "x", M * K)) return env.Undefined();
  if (!info[1].IsArray()) {
    fail(env, std::string(op) + ": parts must be an array");
    return env.Undefined();
  }
  const Napi::Array list = info[1].As<Napi::Array>();
  std::vector<MatmulArgs> parts;
  for (uint32_t i = 0; i < list.Length(); i++) {
    const std::string name = "parts[" + std::to_string(i) + "]";
    const Napi::Value item = list.Get(i);
    if (!item.IsArray() || item.As<Napi::Array>().Length() < 4 || !item.As<Napi::Array>().Get(3u).IsNumber()) {
      fail(env, std::string(op) + ": " + name + " must be [w, bias | null, out, N, wFormat?]");
      return env.Undefined();
    }
    const Napi::Array part = item.As<Napi::Array>();
    const long N = static_cast<long>(part.Get(3u).As<Napi::Number>().Int64Value());
    View w, b, out;
    const Napi::Value biasValue = part.Get(1u);
    const bool hasBias = !biasValue.IsNull() && !biasValue.IsUndefined();
    if (!viewOf(env, part.Get(0u), w, op, name + ".w") || !viewOf(env, part.Get(2u), out, op, name + ".out") ||
        (hasBias && !viewOf(env, biasValue, b, op, name + ".bias")))
      return env.Undefined();
    const WType q = quantFormat(part.Get(4u));
    if (N < 0 || !needF32(env, out, op, (name + ".out").c_str(), M * N)) return env.Undefined();
    if (q != WType::None ? !needPacked(env, w, q, op, (name + ".w").c_str(), N, K) : !needFloat(env, w, op, (name + ".w").c_str(), N * K))
      return env.Undefined();
    if (hasBias && !needFloat(env, b, op, (name + ".bias").c_str(), N)) return env.Undefined();
    parts.push_back({static_cast<const float*>(x.data), w.data, q != WType::None ? q : floatType(w), hasBias ? b.data : nullptr,
                     hasBias ? floatType(b) : WType::None, static_cast<float*>(out.data), M, N, K, ctx.compute()});
  }
  if (parts.empty()) return env.Undefined();
  OpScope scope(ctx);
  ctx.k().matmulMany(parts.data(), static_cast<int>(parts.size()));
  return env.Undefined();
}

// decoderLayers(x, h, q, attn, gate, up, cos, sin, dims, eps, scale, then for each of L layers keys, values, inputNorm,
// qProj, qBias, kProj, kBias, vProj, vBias, oProj, postNorm, gateProj, upProj, downProj): L pre-norm decoder layers one
// after the other (src/tensor/decoder-layer.ts spells a layer's ops) as the calls of those ops would run them, with
// their bits, in one call; biases may be null. dims is an Int32Array [T, S, H, Hq, Hkv, D, I, L, then each layer's
// formats of qProj, kProj, vProj, oProj, gateProj, upProj, downProj: a WType number for packed blocks, 0 for the
// array's float type]. Layer l's keys and values go to the last T rows of its keys and values [S, Hkv, D]. Every array
// is checked before any layer runs.
Napi::Value DecoderLayers(const Napi::CallbackInfo& info, Context& ctx) {
  Napi::Env env = info.Env();
  const char* op = "decoderLayers";
  enum { X, Hs, Q, Attn, Gate, Up, Cos, Sin, kActivations };
  static const char* const activationNames[kActivations] = {"x", "h", "q", "attn", "gate", "up", "cos", "sin"};
  enum { Keys, Values, InNorm, Wq, Bq, Wk, Bk, Wv, Bv, Wo, PostNorm, Wg, Wu, Wd, kPerLayer };
  static const char* const layerNames[kPerLayer] = {"keys", "values", "inputNorm", "qProj", "qBias", "kProj", "kBias",
                                                    "vProj", "vBias", "oProj", "postNorm", "gateProj", "upProj", "downProj"};
  constexpr int kDims = kActivations, kEps = kActivations + 1, kScale = kActivations + 2, kFirstLayer = kActivations + 3;
  View a[kActivations], dimsView;
  for (int i = 0; i < kActivations; i++)
    if (!view(info, i, a[i], op, activationNames[i])) return env.Undefined();
  if (!view(info, kDims, dimsView, op, "dims")) return env.Undefined();
  if (dimsView.type != napi_int32_array || dimsView.length < 8) {
    fail(env, "decoderLayers: dims must be an Int32Array of 8 + 7 a layer");
    return env.Undefined();
  }
  const int32_t* dims = static_cast<const int32_t*>(dimsView.data);
  for (int i = 0; i < 8; i++)
    if (dims[i] < 0) {
      fail(env, "decoderLayers: dims must be >= 0");
      return env.Undefined();
    }
  const long T = dims[0], S = dims[1], H = dims[2], Hq = dims[3], Hkv = dims[4], D = dims[5], I = dims[6], L = dims[7];
  if (dimsView.length != static_cast<size_t>(8 + 7 * L) || info.Length() != static_cast<size_t>(kFirstLayer + kPerLayer * L)) {
    fail(env, "decoderLayers: dims must be an Int32Array of 8 + 7 a layer, and each layer must give " +
                  std::to_string(kPerLayer) + " arrays");
    return env.Undefined();
  }
  if (Hkv == 0 || Hq % Hkv != 0 || D % 2 != 0 || S < T) {
    fail(env, "decoderLayers: needs Hq a multiple of Hkv > 0, an even D and S >= T");
    return env.Undefined();
  }
  const long qDim = Hq * D, kvDim = Hkv * D;
  const long activationLengths[kActivations] = {T * H, T * H, T * qDim, T * qDim, T * I, T * I, T * D / 2, T * D / 2};
  for (int i = 0; i < kActivations; i++)
    if (!needF32(env, a[i], op, activationNames[i], activationLengths[i])) return env.Undefined();
  const double eps = numArg(info, kEps), scale = numArg(info, kScale);

  // Each layer's arrays checked and its matmuls' arguments made before any layer runs.
  struct Layer {
    float *keys, *values;
    const void *inputNorm, *postNorm;
    WType inputNormType, postNormType;
    MatmulArgs proj[7];
  };
  std::vector<Layer> layers(L);
  thread_local std::vector<std::string> layerOps;
  while (layerOps.size() < static_cast<size_t>(L)) layerOps.push_back("decoderLayers: layer " + std::to_string(layerOps.size()));
  const struct { int w, b; long N, K; } projections[7] = {{Wq, Bq, qDim, H}, {Wk, Bk, kvDim, H}, {Wv, Bv, kvDim, H},
      {Wo, -1, H, qDim}, {Wg, -1, I, H}, {Wu, -1, I, H}, {Wd, -1, H, I}};
  for (long l = 0; l < L; l++) {
    const char* at = layerOps[l].c_str();
    const size_t first = kFirstLayer + kPerLayer * l;
    View v[kPerLayer];
    bool present[kPerLayer];
    for (int i = 0; i < kPerLayer; i++) {
      const Napi::Value arg = info[first + i];
      present[i] = !((i == Bq || i == Bk || i == Bv) && (arg.IsNull() || arg.IsUndefined()));
      if (present[i] && !viewOf(env, arg, v[i], at, layerNames[i])) return env.Undefined();
    }
    if (!needF32(env, v[Keys], at, "keys", S * kvDim) || !needF32(env, v[Values], at, "values", S * kvDim) ||
        !needFloat(env, v[InNorm], at, "inputNorm", H) || !needFloat(env, v[PostNorm], at, "postNorm", H))
      return env.Undefined();
    Layer& layer = layers[l];
    layer.keys = static_cast<float*>(v[Keys].data);
    layer.values = static_cast<float*>(v[Values].data);
    layer.inputNorm = v[InNorm].data;
    layer.inputNormType = floatType(v[InNorm]);
    layer.postNorm = v[PostNorm].data;
    layer.postNormType = floatType(v[PostNorm]);
    for (int i = 0; i < 7; i++) {
      const auto& p = projections[i];
      const int32_t format = dims[8 + 7 * l + i];
      const WType q = static_cast<WType>(format);
      if (format != 0 && !quant::isQuantized(q)) {
        fail(env, std::string(at) + ": " + layerNames[p.w] + " has no weight format " + std::to_string(format));
        return env.Undefined();
      }
      const View& w = v[p.w];
      if (q != WType::None ? !needPacked(env, w, q, at, layerNames[p.w], p.N, p.K) : !needFloat(env, w, at, layerNames[p.w], p.N * p.K))
        return env.Undefined();
      const bool hasBias = p.b >= 0 && present[p.b];
      if (hasBias && !needFloat(env, v[p.b], at, layerNames[p.b], p.N)) return env.Undefined();
      layer.proj[i] = {nullptr, w.data, q != WType::None ? q : floatType(w), hasBias ? v[p.b].data : nullptr,
                       hasBias ? floatType(v[p.b]) : WType::None, nullptr, T, p.N, p.K, ctx.compute()};
    }
  }
  if (T == 0) return env.Undefined();
  float* x = static_cast<float*>(a[X].data);
  float* h = static_cast<float*>(a[Hs].data);
  float* q = static_cast<float*>(a[Q].data);
  float* attn = static_cast<float*>(a[Attn].data);
  float* gate = static_cast<float*>(a[Gate].data);
  float* up = static_cast<float*>(a[Up].data);
  const float* cos = static_cast<const float*>(a[Cos].data);
  const float* sin = static_cast<const float*>(a[Sin].data);
  OpScope scope(ctx);
  const KernelTable& k = ctx.k();
  for (Layer& layer : layers) {
    auto into = [&](int i, const float* in, float* out) {
      layer.proj[i].x = in;
      layer.proj[i].out = out;
      return layer.proj[i];
    };
    float* kNew = layer.keys + (S - T) * kvDim;
    float* vNew = layer.values + (S - T) * kvDim;
    k.rmsNorm(x, layer.inputNorm, layer.inputNormType, static_cast<float>(eps), h, T, H);
    const MatmulArgs qkv[3] = {into(0, h, q), into(1, h, kNew), into(2, h, vNew)};
    k.matmulMany(qkv, 3);
    k.rope(q, cos, sin, q, T, Hq, D);
    k.rope(kNew, cos, sin, kNew, T, Hkv, D);
    AttentionArgs attention{q, layer.keys, layer.values, attn, T, S, Hq, Hkv, D, static_cast<float>(scale), true, S - T};
    k.attention(attention);
    k.matmul(into(3, attn, h));
    k.add(x, h, x, T * H, T * H);
    k.rmsNorm(x, layer.postNorm, layer.postNormType, static_cast<float>(eps), h, T, H);
    const MatmulArgs gateUp[2] = {into(4, h, gate), into(5, h, up)};
    k.matmulMany(gateUp, 2);
    k.siluMul(gate, up, gate, T * I);
    k.matmul(into(6, gate, h));
    k.add(x, h, x, T * H, T * H);
  }
  return env.Undefined();
}

// add(a, b, out) / mul(a, b, out): b has a's length or divides it (a row vector broadcast over rows).
template <bool IsAdd>
Napi::Value Binary(const Napi::CallbackInfo& info, Context& ctx) {
  Napi::Env env = info.Env();
  const char* op = IsAdd ? "add" : "mul";
  View a, b, out;
  if (!view(info, 0, a, op, "a") || !view(info, 1, b, op, "b") || !view(info, 2, out, op, "out")) return env.Undefined();
  if (!needF32(env, a, op, "a", a.length) || !needF32(env, b, op, "b", b.length) ||
      !needF32(env, out, op, "out", a.length))
    return env.Undefined();
  if (a.length > 0 && (b.length == 0 || a.length % b.length != 0)) {
    fail(env, std::string(op) + ": b's length must equal a's or divide it");
    return env.Undefined();
  }
  OpScope scope(ctx);
  if (a.length == 0) return env.Undefined();
  auto fn = IsAdd ? ctx.k().add : ctx.k().mul;
  fn(static_cast<const float*>(a.data), static_cast<const float*>(b.data), static_cast<float*>(out.data),
     static_cast<long>(a.length), static_cast<long>(b.length));
  return env.Undefined();
}

// rmsNorm(x, weight, eps, out): rows of weight.length.
Napi::Value RmsNorm(const Napi::CallbackInfo& info, Context& ctx) {
  Napi::Env env = info.Env();
  const char* op = "rmsNorm";
  View x, w, out;
  if (!view(info, 0, x, op, "x") || !view(info, 1, w, op, "weight") || !view(info, 3, out, op, "out"))
    return env.Undefined();
  const long cols = static_cast<long>(w.length);
  if (cols == 0 || x.length % cols != 0) {
    fail(env, "rmsNorm: x's length must be a multiple of weight's");
    return env.Undefined();
  }
  if (!needF32(env, x, op, "x", x.length) || !needFloat(env, w, op, "weight", w.length) ||
      !needF32(env, out, op, "out", x.length))
    return env.Undefined();
  OpScope scope(ctx);
  ctx.k().rmsNorm(static_cast<const float*>(x.data), w.data, floatType(w), static_cast<float>(numArg(info, 2)),
                    static_cast<float*>(out.data), static_cast<long>(x.length) / cols, cols);
  return env.Undefined();
}

// layerNorm(x, weight, bias, eps, out): rows of weight.length.
Napi::Value LayerNorm(const Napi::CallbackInfo& info, Context& ctx) {
  Napi::Env env = info.Env();
  const char* op = "layerNorm";
  View x, w, b, out;
  if (!view(info, 0, x, op, "x") || !view(info, 1, w, op, "weight") || !view(info, 2, b, op, "bias") ||
      !view(info, 4, out, op, "out"))
    return env.Undefined();
  const long cols = static_cast<long>(w.length);
  if (cols == 0 || x.length % cols != 0) {
    fail(env, "layerNorm: x's length must be a multiple of weight's");
    return env.Undefined();
  }
  if (!needF32(env, x, op, "x", x.length) || !needFloat(env, w, op, "weight", w.length) ||
      !needFloat(env, b, op, "bias", w.length) || !needF32(env, out, op, "out", x.length))
    return env.Undefined();
  OpScope scope(ctx);
  ctx.k().layerNorm(static_cast<const float*>(x.data), w.data, floatType(w), b.data, floatType(b),
                      static_cast<float>(numArg(info, 3)), static_cast<float*>(out.data),
                      static_cast<long>(x.length) / cols, cols);
  return env.Undefined();
}

// gelu(x, out, erf): erf false for the tanh approximation.
Napi::Value Gelu(const Napi::CallbackInfo& info, Context& ctx) {
  Napi::Env env = info.Env();
  const char* op = "gelu";
  View x, out;
  if (!view(info, 0, x, op, "x") || !view(info, 1, out, op, "out")) return env.Undefined();
  if (!needF32(env, x, op, "x", x.length) || !needF32(env, out, op, "out", x.length)) return env.Undefined();
  OpScope scope(ctx);
  ctx.k().gelu(static_cast<const float*>(x.data), static_cast<float*>(out.data), static_cast<long>(x.length),
                 info[2].ToBoolean().Value());
  return env.Undefined();
}

// mergeBlocks(x, out, cols, m): x holds rows·m² rows of cols, out rows of cols.
Napi::Value MergeBlocks(const Napi::CallbackInfo& info, Context& ctx) {
  Napi::Env env = info.Env();
  const char* op = "mergeBlocks";
  View x, out;
  if (!view(info, 0, x, op, "x") || !view(info, 1, out, op, "out") || !intArgs(info, 2, 2, op)) return env.Undefined();
  const long cols = intArg(info, 2), m = intArg(info, 3);
  if (m != 1 && m != 2) {
    fail(env, "mergeBlocks: merge size must be 1 or 2");
    return env.Undefined();
  }
  if (cols == 0 || x.length % (cols * m * m) != 0) {
    fail(env, "mergeBlocks: x's rows must be a multiple of the merge size squared");
    return env.Undefined();
  }
  const long rows = static_cast<long>(x.length) / (cols * m * m);
  if (!needF32(env, x, op, "x", x.length) || !needF32(env, out, op, "out", rows * cols)) return env.Undefined();
  OpScope scope(ctx);
  ctx.k().mergeBlocks(static_cast<const float*>(x.data), static_cast<float*>(out.data), rows, cols,
                        static_cast<int>(m));
  return env.Undefined();
}

// siluMul(gate, up, out)
Napi::Value SiluMul(const Napi::CallbackInfo& info, Context& ctx) {
  Napi::Env env = info.Env();
  const char* op = "siluMul";
  View g, u, out;
  if (!view(info, 0, g, op, "gate") || !view(info, 1, u, op, "up") || !view(info, 2, out, op, "out"))
    return env.Undefined();
  if (!needF32(env, g, op, "gate", g.length) || !needF32(env, u, op, "up", g.length) ||
      !needF32(env, out, op, "out", g.length))
    return env.Undefined();
  OpScope scope(ctx);
  ctx.k().siluMul(static_cast<const float*>(g.data), static_cast<const float*>(u.data), static_cast<float*>(out.data),
                    static_cast<long>(g.length));
  return env.Undefined();
}

// softmax(x, out, cols)
Napi::Value Softmax(const Napi::CallbackInfo& info, Context& ctx) {
  Napi::Env env = info.Env();
  const char* op = "softmax";
  View x, out;
  if (!view(info, 0, x, op, "x") || !view(info, 1, out, op, "out") || !intArgs(info, 2, 1, op)) return env.Undefined();
  const long cols = intArg(info, 2);
  if (!needF32(env, x, op, "x", x.length) || !needF32(env, out, op, "out", x.length)) return env.Undefined();
  if (cols == 0 || x.length % cols != 0) {
    fail(env, "softmax: x's length must be a multiple of cols");
    return env.Undefined();
  }
  OpScope scope(ctx);
  ctx.k().softmax(static_cast<const float*>(x.data), static_cast<float*>(out.data), static_cast<long>(x.length) / cols,
                    cols);
  return env.Undefined();
}

// rope(x, cos, sin, out, T, H, D)
Napi::Value Rope(const Napi::CallbackInfo& info, Context& ctx) {
  Napi::Env env = info.Env();
  const char* op = "rope";
  View x, c, s, out;
  if (!intArgs(info, 4, 3, op)) return env.Undefined();
  const long T = intArg(info, 4), H = intArg(info, 5), D = intArg(info, 6);
  if (!view(info, 0, x, op, "x") || !view(info, 1, c, op, "cos") || !view(info, 2, s, op, "sin") ||
      !view(info, 3, out, op, "out"))
    return env.Undefined();
  if (D % 2 != 0) {
    fail(env, "rope: D must be even");
    return env.Undefined();
  }
  if (!needF32(env, x, op, "x", T * H * D) || !needF32(env, c, op, "cos", T * D / 2) ||
      !needF32(env, s, op, "sin", T * D / 2) || !needF32(env, out, op, "out", T * H * D))
    return env.Undefined();
  OpScope scope(ctx);
  ctx.k().rope(static_cast<const float*>(x.data), static_cast<const float*>(c.data), static_cast<const float*>(s.data),
                 static_cast<float*>(out.data), T, H, D);
  return env.Undefined();
}

// attention(q, k, v, out, T, S, Hq, Hkv, D, scale, causal, queryOffset)
Napi::Value Attention(const Napi::CallbackInfo& info, Context& ctx) {
  Napi::Env env = info.Env();
  const char* op = "attention";
  View q, k, v, out;
  if (!intArgs(info, 4, 5, op) || !intArgs(info, 11, 1, op)) return env.Undefined();
  AttentionArgs a{};
  a.T = intArg(info, 4);
  a.S = intArg(info, 5);
  a.Hq = intArg(info, 6);
  a.Hkv = intArg(info, 7);
  a.D = intArg(info, 8);
  a.scale = static_cast<float>(numArg(info, 9));
  a.causal = info[10].ToBoolean().Value();
  a.queryOffset = intArg(info, 11);
  if (!view(info, 0, q, op, "q") || !view(info, 1, k, op, "k") || !view(info, 2, v, op, "v") ||
      !view(info, 3, out, op, "out"))
    return env.Undefined();
  if (a.Hkv == 0 || a.Hq % a.Hkv != 0) {
    fail(env, "attention: query heads must be a multiple of KV heads");
    return env.Undefined();
  }
  if (a.T > 0 && a.S == 0) {
    fail(env, "attention: no keys");
    return env.Undefined();
  }
  if (!needF32(env, q, op, "q", a.T * a.Hq * a.D) || !needF32(env, k, op, "k", a.S * a.Hkv * a.D) ||
      !needF32(env, v, op, "v", a.S * a.Hkv * a.D) || !needF32(env, out, op, "out", a.T * a.Hq * a.D))
    return env.Undefined();
  a.q = static_cast<const float*>(q.data);
  a.k = static_cast<const float*>(k.data);
  a.v = static_cast<const float*>(v.data);
  a.out = static_cast<float*>(out.data);
  OpScope scope(ctx);
  ctx.k().attention(a);
  return env.Undefined();
}

// embedding(table, ids, out, D, format?): format as matmul's wFormat. Throws a RangeError naming the first id outside [0, V).
Napi::Value Embedding(const Napi::CallbackInfo& info, Context& ctx) {
  Napi::Env env = info.Env();
  const char* op = "embedding";
  View table, ids, out;
  if (!intArgs(info, 3, 1, op)) return env.Undefined();
  const long D = intArg(info, 3);
  if (!view(info, 0, table, op, "table") || !view(info, 1, ids, op, "ids") || !view(info, 2, out, op, "out"))
    return env.Undefined();
  const WType q = quantFormat(info[4]);
  const size_t rowSize = q != WType::None && D % quant::kBlock == 0 ? quant::rowBytes(q, D) : D;
  if (D == 0 || table.length % rowSize != 0) {
    fail(env, "embedding: table's length must be a multiple of its row size");
    return env.Undefined();
  }
  if (ids.type != napi_int32_array) {
    fail(env, "embedding: ids must be an Int32Array");
    return env.Undefined();
  }
  const long V = static_cast<long>(table.length / rowSize), T = static_cast<long>(ids.length);
  if ((q != WType::None ? !needPacked(env, table, q, op, "table", V, D) : !needFloat(env, table, op, "table", table.length)) || !needF32(env, out, op, "out", T * D)) return env.Undefined();
  const int32_t* id = static_cast<const int32_t*>(ids.data);
  for (long t = 0; t < T; t++) {
    if (id[t] < 0 || id[t] >= V) {
      fail(env, "embedding: ids[" + std::to_string(t) + "] = " + std::to_string(id[t]) + " is outside [0, " +
                    std::to_string(V) + ")");
      return env.Undefined();
    }
  }
  OpScope scope(ctx);
  ctx.k().embedding(table.data, q != WType::None ? q : floatType(table), id, static_cast<float*>(out.data), T, D, V);
  return env.Undefined();
}

// ---------------------------------------------------------------------------------------------------------------
// Backward passes (kernels.h MatmulBackwardArgs and what follows). As above, only lengths are checked here.

// An optional f32 output: null/undefined gives nullptr; otherwise a Float32Array of `length` elements.
bool optF32(const Napi::CallbackInfo& info, size_t i, float*& out, const char* op, const char* name, size_t length) {
  out = nullptr;
  if (info[i].IsNull() || info[i].IsUndefined()) return true;
  View v;
  if (!view(info, i, v, op, name) || !needF32(info.Env(), v, op, name, length)) return false;
  out = static_cast<float*>(v.data);
  return true;
}

// matmulBackward(dy, x, w, dx | null, dw | null, dbias | null, M, N, K)
Napi::Value MatmulBackward(const Napi::CallbackInfo& info, Context& ctx) {
  Napi::Env env = info.Env();
  const char* op = "matmulBackward";
  View dy, x, w;
  if (!intArgs(info, 6, 3, op)) return env.Undefined();
  MatmulBackwardArgs a{};
  a.M = intArg(info, 6);
  a.N = intArg(info, 7);
  a.K = intArg(info, 8);
  if (!view(info, 0, dy, op, "dy") || !view(info, 1, x, op, "x") || !view(info, 2, w, op, "w")) return env.Undefined();
  if (!needF32(env, dy, op, "dy", a.M * a.N) || !needF32(env, x, op, "x", a.M * a.K) ||
      !needFloat(env, w, op, "w", a.N * a.K) || !optF32(info, 3, a.dx, op, "dx", a.M * a.K) ||
      !optF32(info, 4, a.dw, op, "dw", a.N * a.K) || !optF32(info, 5, a.dbias, op, "dbias", a.N))
    return env.Undefined();
  a.dy = static_cast<const float*>(dy.data);
  a.x = static_cast<const float*>(x.data);
  a.w = w.data;
  a.wType = floatType(w);
  a.compute = ctx.compute();
  OpScope scope(ctx);
  ctx.k().matmulBackward(a);
  return env.Undefined();
}

// attentionBackward(q, k, v, dout, dq, dk, dv, T, S, Hq, Hkv, D, scale, causal, queryOffset)
Napi::Value AttentionBackward(const Napi::CallbackInfo& info, Context& ctx) {
  Napi::Env env = info.Env();
  const char* op = "attentionBackward";
  if (!intArgs(info, 7, 5, op) || !intArgs(info, 14, 1, op)) return env.Undefined();
  AttentionBackwardArgs a{};
  a.T = intArg(info, 7);
  a.S = intArg(info, 8);
  a.Hq = intArg(info, 9);
  a.Hkv = intArg(info, 10);
  a.D = intArg(info, 11);
  a.scale = static_cast<float>(numArg(info, 12));
  a.causal = info[13].ToBoolean().Value();
  a.queryOffset = intArg(info, 14);
  if (a.Hkv == 0 || a.Hq % a.Hkv != 0) {
    fail(env, "attentionBackward: query heads must be a multiple of KV heads");
    return env.Undefined();
  }
  if (a.T > 0 && a.S == 0) {
    fail(env, "attentionBackward: no keys");
    return env.Undefined();
  }
  const char* names[] = {"q", "k", "v", "dout", "dq", "dk", "dv"};
  const long qLen = a.T * a.Hq * a.D, kLen = a.S * a.Hkv * a.D;
  const long lengths[] = {qLen, kLen, kLen, qLen, qLen, kLen, kLen};
  float* p[7];
  for (size_t i = 0; i < 7; i++) {
    View v;
    if (!view(info, i, v, op, names[i]) || !needF32(env, v, op, names[i], lengths[i])) return env.Undefined();
    p[i] = static_cast<float*>(v.data);
  }
  a.q = p[0];
  a.k = p[1];
  a.v = p[2];
  a.dout = p[3];
  a.dq = p[4];
  a.dk = p[5];
  a.dv = p[6];
  OpScope scope(ctx);
  ctx.k().attentionBackward(a);
  return env.Undefined();
}

// Ids outside [0, V) name the first one in a RangeError.
bool idsInRange(Napi::Env env, const char* op, const int32_t* id, long n, long V) {
  for (long t = 0; t < n; t++)
    if (id[t] < 0 || id[t] >= V)
      return fail(env, std::string(op) + ": ids[" + std::to_string(t) + "] = " + std::to_string(id[t]) +
                           " is outside [0, " + std::to_string(V) + ")");
  return true;
}

// crossEntropy(hidden, head, targets, scale, losses, dhidden | null, dhead | null, n, H, V)
Napi::Value CrossEntropy(const Napi::CallbackInfo& info, Context& ctx) {
  Napi::Env env = info.Env();
  const char* op = "crossEntropy";
  if (!intArgs(info, 7, 3, op)) return env.Undefined();
  CrossEntropyArgs a{};
  a.n = intArg(info, 7);
  a.H = intArg(info, 8);
  a.V = intArg(info, 9);
  a.scale = static_cast<float>(numArg(info, 3));
  View hidden, head, targets, losses;
  if (!view(info, 0, hidden, op, "hidden") || !view(info, 1, head, op, "head") || !view(info, 2, targets, op, "targets") ||
      !view(info, 4, losses, op, "losses"))
    return env.Undefined();
  if (!needF32(env, hidden, op, "hidden", a.n * a.H) || !needFloat(env, head, op, "head", a.V * a.H) ||
      !needF32(env, losses, op, "losses", a.n) || !optF32(info, 5, a.dhidden, op, "dhidden", a.n * a.H) ||
      !optF32(info, 6, a.dhead, op, "dhead", a.V * a.H))
    return env.Undefined();
  if (targets.type != napi_int32_array || static_cast<long>(targets.length) != a.n) {
    fail(env, "crossEntropy: targets must be an Int32Array of n elements");
    return env.Undefined();
  }
  a.targets = static_cast<const int32_t*>(targets.data);
  if (!idsInRange(env, op, a.targets, a.n, a.V)) return env.Undefined();
  a.hidden = static_cast<const float*>(hidden.data);
  a.head = head.data;
  a.headType = floatType(head);
  a.losses = static_cast<float*>(losses.data);
  OpScope scope(ctx);
  ctx.k().crossEntropy(a);
  return env.Undefined();
}

// rmsNormBackward(dy, x, weight, eps, dx, dweight | null) and layerNormBackward(…, dweight | null, dbias | null):
// rows of weight.length.
template <bool Layer>
Napi::Value NormBackward(const Napi::CallbackInfo& info, Context& ctx) {
  Napi::Env env = info.Env();
  const char* op = Layer ? "layerNormBackward" : "rmsNormBackward";
  View dy, x, w, dx;
  if (!view(info, 0, dy, op, "dy") || !view(info, 1, x, op, "x") || !view(info, 2, w, op, "weight") ||
      !view(info, 4, dx, op, "dx"))
    return env.Undefined();
  const long cols = static_cast<long>(w.length);
  if (cols == 0 || x.length % cols != 0) {
    fail(env, std::string(op) + ": x's length must be a multiple of weight's");
    return env.Undefined();
  }
  float *dweight, *dbias = nullptr;
  if (!needF32(env, dy, op, "dy", x.length) || !needF32(env, x, op, "x", x.length) ||
      !needFloat(env, w, op, "weight", w.length) || !needF32(env, dx, op, "dx", x.length) ||
      !optF32(info, 5, dweight, op, "dweight", cols) || (Layer && !optF32(info, 6, dbias, op, "dbias", cols)))
    return env.Undefined();
  const float eps = static_cast<float>(numArg(info, 3));
  const long rows = static_cast<long>(x.length) / cols;
  OpScope scope(ctx);
  if (Layer)
    ctx.k().layerNormBackward(static_cast<const float*>(dy.data), static_cast<const float*>(x.data), w.data,
                              floatType(w), eps, static_cast<float*>(dx.data), dweight, dbias, rows, cols);
  else
    ctx.k().rmsNormBackward(static_cast<const float*>(dy.data), static_cast<const float*>(x.data), w.data,
                            floatType(w), eps, static_cast<float*>(dx.data), dweight, rows, cols);
  return env.Undefined();
}

// Float32Arrays all of arrays[0]'s length (n), read from info[0 .. count).
bool sameLengthF32(const Napi::CallbackInfo& info, size_t count, const char* op, const char* const* names, float** out,
                   long& n) {
  for (size_t i = 0; i < count; i++) {
    View v;
    if (!view(info, i, v, op, names[i])) return false;
    if (i == 0) n = static_cast<long>(v.length);
    if (!needF32(info.Env(), v, op, names[i], n)) return false;
    out[i] = static_cast<float*>(v.data);
  }
  return true;
}

// geluBackward(dy, x, dx, erf)
Napi::Value GeluBackward(const Napi::CallbackInfo& info, Context& ctx) {
  const char* names[] = {"dy", "x", "dx"};
  float* p[3];
  long n = 0;
  if (!sameLengthF32(info, 3, "geluBackward", names, p, n)) return info.Env().Undefined();
  OpScope scope(ctx);
  ctx.k().geluBackward(p[0], p[1], p[2], n, info[3].ToBoolean().Value());
  return info.Env().Undefined();
}

// siluMulBackward(dy, gate, up, dgate, dup)
Napi::Value SiluMulBackward(const Napi::CallbackInfo& info, Context& ctx) {
  const char* names[] = {"dy", "gate", "up", "dgate", "dup"};
  float* p[5];
  long n = 0;
  if (!sameLengthF32(info, 5, "siluMulBackward", names, p, n)) return info.Env().Undefined();
  OpScope scope(ctx);
  ctx.k().siluMulBackward(p[0], p[1], p[2], p[3], p[4], n);
  return info.Env().Undefined();
}

// ropeBackward(dy, cos, sin, dx, T, H, D)
Napi::Value RopeBackward(const Napi::CallbackInfo& info, Context& ctx) {
  Napi::Env env = info.Env();
  const char* op = "ropeBackward";
  View dy, c, s, dx;
  if (!intArgs(info, 4, 3, op)) return env.Undefined();
  const long T = intArg(info, 4), H = intArg(info, 5), D = intArg(info, 6);
  if (!view(info, 0, dy, op, "dy") || !view(info, 1, c, op, "cos") || !view(info, 2, s, op, "sin") ||
      !view(info, 3, dx, op, "dx"))
    return env.Undefined();
  if (D % 2 != 0) {
    fail(env, "ropeBackward: D must be even");
    return env.Undefined();
  }
  if (!needF32(env, dy, op, "dy", T * H * D) || !needF32(env, c, op, "cos", T * D / 2) ||
      !needF32(env, s, op, "sin", T * D / 2) || !needF32(env, dx, op, "dx", T * H * D))
    return env.Undefined();
  OpScope scope(ctx);
  ctx.k().ropeBackward(static_cast<const float*>(dy.data), static_cast<const float*>(c.data),
                       static_cast<const float*>(s.data), static_cast<float*>(dx.data), T, H, D);
  return env.Undefined();
}

// mergeBlocksBackward(dy, dx, cols, m): dy holds rows of cols, dx rows·m² rows.
Napi::Value MergeBlocksBackward(const Napi::CallbackInfo& info, Context& ctx) {
  Napi::Env env = info.Env();
  const char* op = "mergeBlocksBackward";
  View dy, dx;
  if (!view(info, 0, dy, op, "dy") || !view(info, 1, dx, op, "dx") || !intArgs(info, 2, 2, op)) return env.Undefined();
  const long cols = intArg(info, 2), m = intArg(info, 3);
  if ((m != 1 && m != 2) || cols == 0 || dy.length % cols != 0) {
    fail(env, "mergeBlocksBackward: merge size must be 1 or 2 and dy whole rows of cols");
    return env.Undefined();
  }
  const long rows = static_cast<long>(dy.length) / cols;
  if (!needF32(env, dy, op, "dy", rows * cols) || !needF32(env, dx, op, "dx", rows * m * m * cols)) return env.Undefined();
  OpScope scope(ctx);
  ctx.k().mergeBlocksBackward(static_cast<const float*>(dy.data), static_cast<float*>(dx.data), rows, cols,
                              static_cast<int>(m));
  return env.Undefined();
}

// embeddingBackward(dy, ids, dtable, D)
Napi::Value EmbeddingBackward(const Napi::CallbackInfo& info, Context& ctx) {
  Napi::Env env = info.Env();
  const char* op = "embeddingBackward";
  View dy, ids, table;
  if (!intArgs(info, 3, 1, op)) return env.Undefined();
  const long D = intArg(info, 3);
  if (!view(info, 0, dy, op, "dy") || !view(info, 1, ids, op, "ids") || !view(info, 2, table, op, "dtable"))
    return env.Undefined();
  if (D == 0 || table.length % D != 0 || ids.type != napi_int32_array) {
    fail(env, "embeddingBackward: dtable must be whole rows of D and ids an Int32Array");
    return env.Undefined();
  }
  const long T = static_cast<long>(ids.length), V = static_cast<long>(table.length) / D;
  const int32_t* id = static_cast<const int32_t*>(ids.data);
  if (!needF32(env, dy, op, "dy", T * D) || !needF32(env, table, op, "dtable", V * D) || !idsInRange(env, op, id, T, V))
    return env.Undefined();
  OpScope scope(ctx);
  ctx.k().embeddingBackward(static_cast<const float*>(dy.data), id, static_cast<float*>(table.data), T, D);
  return env.Undefined();
}

// adamw(p, g, m, v, decay, w1, b2, w2, stepSize, bc2Sqrt, eps): the scalars are kernels.h AdamWScalars, in its order.
Napi::Value AdamW(const Napi::CallbackInfo& info, Context& ctx) {
  Napi::Env env = info.Env();
  const char* names[] = {"p", "g", "m", "v"};
  float* a[4];
  long n = 0;
  if (!sameLengthF32(info, 4, "adamw", names, a, n)) return env.Undefined();
  float scalars[7];
  for (size_t i = 0; i < 7; i++) {
    if (!info[4 + i].IsNumber()) {
      fail(env, "adamw: argument " + std::to_string(4 + i) + " must be a number");
      return env.Undefined();
    }
    // The values come rounded to float32 (host-gradients.ts adamwScalars): this conversion is exact.
    scalars[i] = static_cast<float>(numArg(info, 4 + i));
  }
  const AdamWScalars s{scalars[0], scalars[1], scalars[2], scalars[3], scalars[4], scalars[5], scalars[6]};
  OpScope scope(ctx);
  ctx.k().adamw(a[0], a[1], a[2], a[3], n, s);
  return env.Undefined();
}

// argmax(x): index of the first largest element (comparison by >, so NaNs never win after index 0); -1 if empty.
Napi::Value Argmax(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  View x;
  if (!view(info, 0, x, "argmax", "x") || !needF32(env, x, "argmax", "x", x.length)) return env.Undefined();
  const float* p = static_cast<const float*>(x.data);
  const long n = static_cast<long>(x.length);
  if (n == 0) return Napi::Number::New(env, -1);
  // A block's maximum (a loop the compiler vectorizes: `v > m ? v : m` is maxps's own rule, NaN never taken) and only
  // a block that beats the best so far is scanned for its first maximal element: the sequential rule's answer at a
  // fraction of its dependent loads over a 150k-entry vocabulary.
  constexpr long kBlock = 1024;
  long best = 0;
  float bestValue = p[0];
  for (long b0 = 0; b0 < n; b0 += kBlock) {
    const long b1 = b0 + kBlock < n ? b0 + kBlock : n;
    // 32 running maxima, so that the compiler's maxps chains run side by side rather than one after the other.
    constexpr int kLanes = 32;
    float lanes[kLanes];
    for (int j = 0; j < kLanes; j++) lanes[j] = bestValue;
    long i0 = b0;
    for (; i0 + kLanes <= b1; i0 += kLanes)
      for (int j = 0; j < kLanes; j++) lanes[j] = p[i0 + j] > lanes[j] ? p[i0 + j] : lanes[j];
    float m = bestValue;
    for (int j = 0; j < kLanes; j++) m = lanes[j] > m ? lanes[j] : m;
    for (; i0 < b1; i0++) m = p[i0] > m ? p[i0] : m;
    if (!(m > bestValue)) continue;
    long i = b0;
    while (p[i] != m) i++;
    best = i;
    bestValue = m;
  }
  return Napi::Number::New(env, static_cast<double>(best));
}

// topK(x, k, indicesOut, valuesOut): the k largest, largest first, equal values by lower index first.
Napi::Value TopK(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "topK";
  View x, idx, val;
  if (!intArgs(info, 1, 1, op)) return env.Undefined();
  const long k = intArg(info, 1);
  if (!view(info, 0, x, op, "x") || !view(info, 2, idx, op, "indices") || !view(info, 3, val, op, "values"))
    return env.Undefined();
  if (!needF32(env, x, op, "x", x.length) || !needF32(env, val, op, "values", k)) return env.Undefined();
  if (idx.type != napi_int32_array || static_cast<long>(idx.length) != k || k > static_cast<long>(x.length)) {
    fail(env, "topK: indices must be an Int32Array of k elements, k <= x's length");
    return env.Undefined();
  }
  const float* p = static_cast<const float*>(x.data);
  const long n = static_cast<long>(x.length);
  // "a before b" in the output order. NaN compares as smaller than every number so it never displaces one.
  auto before = [p](int32_t a, int32_t b) {
    const float va = p[a], vb = p[b];
    if (std::isnan(va) || std::isnan(vb)) return !std::isnan(va) || (std::isnan(vb) && a < b);
    return va > vb || (va == vb && a < b);
  };
  // A heap of the best k so far with the worst on top: one pass over x, O(n log k).
  std::vector<int32_t> heap;
  heap.reserve(k);
  for (long i = 0; i < n && k > 0; i++) {
    const int32_t c = static_cast<int32_t>(i);
    if (static_cast<long>(heap.size()) < k) {
      heap.push_back(c);
      std::push_heap(heap.begin(), heap.end(), before);
    } else if (before(c, heap.front())) {
      std::pop_heap(heap.begin(), heap.end(), before);
      heap.back() = c;
      std::push_heap(heap.begin(), heap.end(), before);
    }
  }
  std::sort(heap.begin(), heap.end(), before);
  int32_t* io = static_cast<int32_t*>(idx.data);
  float* vo = static_cast<float*>(val.data);
  for (long i = 0; i < k; i++) {
    io[i] = heap[i];
    vo[i] = p[heap[i]];
  }
  return env.Undefined();
}

Napi::Value Context::SetThreads(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const double t = info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : 0;
  if (!(t >= 1 && t <= 256) || t != std::floor(t)) {
    fail(env, "setThreads: expected an integer in [1, 256]");
    return env.Undefined();
  }
  std::lock_guard<std::mutex> lk(mu_);
  poolResize(*pool_, static_cast<int>(t));
  return env.Undefined();
}

Napi::Function Context::Define(Napi::Env env) {
  return DefineClass(env, "Context",
                     {
                         InstanceMethod("matmul", &Context::Op<Matmul>),
                         InstanceMethod("matmuls", &Context::Op<Matmuls>),
                         InstanceMethod("decoderLayers", &Context::Op<DecoderLayers>),
                         InstanceMethod("add", &Context::Op<Binary<true>>),
                         InstanceMethod("mul", &Context::Op<Binary<false>>),
                         InstanceMethod("rmsNorm", &Context::Op<RmsNorm>),
                         InstanceMethod("layerNorm", &Context::Op<LayerNorm>),
                         InstanceMethod("gelu", &Context::Op<Gelu>),
                         InstanceMethod("mergeBlocks", &Context::Op<MergeBlocks>),
                         InstanceMethod("siluMul", &Context::Op<SiluMul>),
                         InstanceMethod("softmax", &Context::Op<Softmax>),
                         InstanceMethod("rope", &Context::Op<Rope>),
                         InstanceMethod("attention", &Context::Op<Attention>),
                         InstanceMethod("embedding", &Context::Op<Embedding>),
                         InstanceMethod("matmulBackward", &Context::Op<MatmulBackward>),
                         InstanceMethod("attentionBackward", &Context::Op<AttentionBackward>),
                         InstanceMethod("crossEntropy", &Context::Op<CrossEntropy>),
                         InstanceMethod("rmsNormBackward", &Context::Op<NormBackward<false>>),
                         InstanceMethod("layerNormBackward", &Context::Op<NormBackward<true>>),
                         InstanceMethod("geluBackward", &Context::Op<GeluBackward>),
                         InstanceMethod("siluMulBackward", &Context::Op<SiluMulBackward>),
                         InstanceMethod("ropeBackward", &Context::Op<RopeBackward>),
                         InstanceMethod("mergeBlocksBackward", &Context::Op<MergeBlocksBackward>),
                         InstanceMethod("embeddingBackward", &Context::Op<EmbeddingBackward>),
                         InstanceMethod("adamw", &Context::Op<AdamW>),
                         InstanceMethod("setThreads", &Context::SetThreads),
                         InstanceAccessor("threads", &Context::Threads, nullptr),
                         InstanceAccessor("isa", &Context::Isa, nullptr),
                         InstanceAccessor("compute", &Context::ComputeMode, nullptr),
                     });
}

Napi::Value DefaultThreads(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), availableCores()); }

Napi::Value CpuFeaturesJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const CpuFeatures f = cpuFeatures();
  Napi::Object o = Napi::Object::New(env);
  const std::pair<const char*, bool> fields[] = {
      {"avx2", f.avx2},       {"fma", f.fma},           {"f16c", f.f16c},         {"avx512f", f.avx512f},
      {"avx512bw", f.avx512bw}, {"avx512dq", f.avx512dq}, {"avx512vl", f.avx512vl}, {"avx512bf16", f.avx512bf16},
      {"avx512vnni", f.avx512vnni}, {"avxvnni", f.avxvnni}, {"neon", f.neon},     {"dotprod", f.dotprod},
      {"i8mm", f.i8mm},       {"bf16", f.bf16},
  };
  for (const auto& [name, on] : fields) o.Set(name, on);
  return o;
}

Napi::Value Strings(Napi::Env env, const std::vector<const char*>& names) {
  Napi::Array a = Napi::Array::New(env, names.size());
  for (size_t i = 0; i < names.size(); i++) a.Set(static_cast<uint32_t>(i), names[i]);
  return a;
}

// The tiers this CPU and build support, worst first.
Napi::Value Tiers(const Napi::CallbackInfo& info) { return Strings(info.Env(), supportedTiers()); }

// { isa, compute }: what a context created without options gets; throws what its constructor would.
Napi::Value Defaults(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string error;
  const KernelTable* k = defaultKernels(error);
  Compute c = Compute::Exact;
  if (!k || !defaultCompute(*k, c, error)) {
    Napi::Error::New(env, error).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("isa", k->name);
  o.Set("compute", computeName(c));
  return o;
}

Napi::Value PeakKinds(const Napi::CallbackInfo& info) { return Strings(info.Env(), peakKinds()); }

// peakFlops(kind, threads, seconds): GFLOP/s (GOP/s for the int8 kinds) on a pool of its own.
Napi::Value PeakFlops(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString() || !info[1].IsNumber() || !info[2].IsNumber()) {
    fail(env, "peakFlops: expected (kind, threads, seconds)");
    return env.Undefined();
  }
  std::string error;
  const double r = peakFlops(info[0].As<Napi::String>().Utf8Value(), static_cast<int>(intArg(info, 1)), numArg(info, 2),
                             error);
  if (!error.empty()) {
    fail(env, "peakFlops: " + error);
    return env.Undefined();
  }
  return Napi::Number::New(env, r);
}

Napi::Value ReadBandwidth(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsNumber()) {
    fail(env, "readBandwidth: expected (threads, bytes, repeats)");
    return env.Undefined();
  }
  return Napi::Number::New(env, readBandwidth(static_cast<int>(intArg(info, 0)), static_cast<size_t>(numArg(info, 1)),
                                              static_cast<int>(intArg(info, 2))));
}

// measureInterruptions(threads, seconds, minGapUs) -> { lost: number[], anyLost, longLost, gapsPerSecond }.
Napi::Value MeasureInterruptions(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsNumber()) {
    fail(env, "measureInterruptions: expected (threads, seconds, minGapUs)");
    return env.Undefined();
  }
  const Interruptions r = measureInterruptions(static_cast<int>(intArg(info, 0)), numArg(info, 1), numArg(info, 2));
  Napi::Object out = Napi::Object::New(env);
  Napi::Array lost = Napi::Array::New(env, r.lost.size());
  for (size_t i = 0; i < r.lost.size(); i++) lost.Set(static_cast<uint32_t>(i), r.lost[i]);
  out.Set("lost", lost);
  out.Set("anyLost", r.anyLost);
  out.Set("longLost", r.longLost);
  out.Set("gapsPerSecond", r.gapsPerSecond);
  return out;
}

// adviseHugePages(buffer): asks the kernel to back the whole 2 MiB pages inside an ArrayBuffer's memory with
// transparent huge pages, before anything touches them: a large activation then costs a page fault per 2 MiB rather
// than per 4 KiB. A 2B training step allocates gigabytes of activations, and under a hypervisor its 4 KiB faults took
// a fifth of the step. Node's large ArrayBuffers are fresh zeroed mappings (calloc leaves them untouched), so the
// advice applies to all of them; the buffer stays an ordinary ArrayBuffer that V8 frees as ever. Advice only: where
// the kernel has no THP it changes nothing.
Napi::Value AdviseHugePages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArrayBuffer()) {
    fail(env, "adviseHugePages: expected an ArrayBuffer");
    return env.Undefined();
  }
#ifdef MADV_HUGEPAGE
  Napi::ArrayBuffer buffer = info[0].As<Napi::ArrayBuffer>();
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(buffer.Data()), end = begin + buffer.ByteLength();
  const uintptr_t first = (begin + kHuge - 1) / kHuge * kHuge, last = end / kHuge * kHuge;
  if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
  return env.Undefined();
}

// lineOffset(buffer): how many bytes past the start of an ArrayBuffer's memory the next 64-byte line begins (0–63).
// Node's ArrayBuffers come from calloc, 16 bytes past a line, so every 64-byte vector load of a weight row in one spans
// two lines: on Zen 5 a bf16 decode ran 16–26 % slower for it, int4m 8 % (BENCHMARKS.md run 15). Weights are read
// into a view that starts where this says (src/tensor/native.ts `weightBuffer`).
Napi::Value LineOffset(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArrayBuffer()) {
    fail(env, "lineOffset: expected an ArrayBuffer");
    return env.Undefined();
  }
  const uintptr_t at = reinterpret_cast<uintptr_t>(info[0].As<Napi::ArrayBuffer>().Data());
  return Napi::Number::New(env, static_cast<double>((64 - at % 64) % 64));
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto fn = [&](const char* name, Napi::Value (*f)(const Napi::CallbackInfo&)) {
    exports.Set(name, Napi::Function::New(env, f, name));
  };
  exports.Set("Context", Context::Define(env));
  fn("argmax", Argmax);
  fn("topK", TopK);
  fn("defaultThreads", DefaultThreads);
  fn("cpuFeatures", CpuFeaturesJs);
  fn("tiers", Tiers);
  fn("defaults", Defaults);
  fn("peakKinds", PeakKinds);
  fn("peakFlops", PeakFlops);
  fn("readBandwidth", ReadBandwidth);
  fn("measureInterruptions", MeasureInterruptions);
  fn("adviseHugePages", AdviseHugePages);
  fn("lineOffset", LineOffset);
  registerResize(env, exports);
  registerQuant(env, exports);
  return exports;
}

}  // namespace
}  // namespace vl3

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return vl3::Init(env, exports); }

NODE_API_MODULE(vl3_native, InitModule)
