// Own kernel harness: runs the kernel tables as a plain C++ program (no N-API, no Node), so that a build for another CPU (arm64 under qemu-user) is checked against the TypeScript reference without that CPU's Node.
//
// Usage: harness CASES [--tables NAME,...|none] [--threads 1,2] [--expect-features neon=1,dotprod=0,...]
//                      [--expect-default ISA/COMPUTE]
// CASES is written by test/neon.test.ts: inputs, the ReferenceBackend's outputs and the tolerances of
// test/native-backend.test.ts, one record per case; a matmul case names its compute mode (its expected output is
// the reference on bf16-rounded x and w for bf16, as in native-backend.test.ts). A table is a tier of the registry
// (cpu.h: what a backend pinned to that isa gets on this CPU), "supported" for all those this CPU has, or
// "neon-baseline": the ARMv8.0 build of the neon tier, which the registry passes over on CPUs with BF16. Every case
// runs on every table with a pool of each thread count, the elementwise and row ops also in place; the first result
// outside its tolerance ends the run with exit status 1 and a line naming the table, thread count, op and case.
// --expect-default: the tier and compute mode a context gets without options (VL3_ISA and VL3_COMPUTE apply).
// Exit status 2: bad usage, an unreadable case file, or a table/feature expectation this build or CPU does not meet.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../cpu.h"
#include "../kernels.h"
#include "../neon_bf16.h"
#include "../pool.h"

namespace {

using vl3::WType;

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr, "harness: %s\n", why.c_str());
  std::exit(2);
}

// ---------------------------------------------------------------------------------------------------------------
// The case file (little-endian): "VL3CASES", u32 version, u32 count, then per case: name, op (u32 length + bytes),
// u32 n + i64[n] integer parameters, u32 n + f64[n] real parameters (the last two are rtol and atol), u32 n arrays
// (u32 kind: 0 f32, 1 bf16, 2 i32, or a quantized weight in quant.h's packed layout: 3 int8, 4 int4, 5 int4m; u64
// elements, bytes for the quantized; the data). The expected output is the last array.

struct Array {
  int kind = 0;
  std::vector<uint8_t> bytes;
  long n = 0;
  const float* f32() const { return reinterpret_cast<const float*>(bytes.data()); }
  const void* raw() const { return bytes.data(); }
  WType wtype() const {
    static const WType types[] = {WType::F32, WType::BF16, WType::F32, WType::Int8, WType::Int4, WType::Int4m};
    return types[kind];
  }
  static long elementBytes(int kind) { return kind == 1 ? 2 : kind >= 3 ? 1 : 4; }
};

struct Case {
  std::string name, op;
  std::vector<long> ints;
  std::vector<double> reals;
  std::vector<Array> arrays;
  double rtol() const { return reals[reals.size() - 2]; }
  double atol() const { return reals[reals.size() - 1]; }
  const Array& expected() const { return arrays.back(); }
};

class Reader {
 public:
  explicit Reader(const char* path) : f_(std::fopen(path, "rb")), path_(path) {
    if (!f_) usage(std::string("cannot open ") + path);
  }
  ~Reader() { std::fclose(f_); }
  void read(void* p, size_t n) {
    if (n && std::fread(p, 1, n, f_) != n) usage(std::string("truncated case file ") + path_);
  }
  template <class T>
  T get() {
    T v;
    read(&v, sizeof v);
    return v;
  }
  std::string str() {
    std::string s(get<uint32_t>(), '\0');
    read(s.data(), s.size());
    return s;
  }

 private:
  FILE* f_;
  const char* path_;
};

std::vector<Case> readCases(const char* path) {
  Reader r(path);
  char magic[8];
  r.read(magic, 8);
  if (std::memcmp(magic, "VL3CASES", 8) != 0 || r.get<uint32_t>() != 1) usage(std::string(path) + " is not a case file");
  std::vector<Case> cases(r.get<uint32_t>());
  for (Case& c : cases) {
    c.name = r.str();
    c.op = r.str();
    c.ints.resize(r.get<uint32_t>());
    for (long& v : c.ints) v = static_cast<long>(r.get<int64_t>());
    c.reals.resize(r.get<uint32_t>());
    for (double& v : c.reals) v = r.get<double>();
    if (c.reals.size() < 2) usage("case " + c.name + " has no tolerances");
    c.arrays.resize(r.get<uint32_t>());
    for (Array& a : c.arrays) {
      a.kind = static_cast<int>(r.get<uint32_t>());
      if (a.kind < 0 || a.kind > 5) usage("case " + c.name + " has an array of unknown kind");
      a.n = static_cast<long>(r.get<uint64_t>());
      a.bytes.resize(a.n * Array::elementBytes(a.kind));
      r.read(a.bytes.data(), a.bytes.size());
    }
    if (c.arrays.empty() || c.expected().kind != 0) usage("case " + c.name + " has no f32 expected output");
  }
  return cases;
}

// ---------------------------------------------------------------------------------------------------------------
// Checking: |actual − expected| <= atol + rtol·|expected| everywhere (NaN where the reference has NaN), the rule of
// test/native-backend.test.ts, with the worst element named.

std::string context;  // table, threads: prefixed to every failure

void check(const std::vector<float>& got, const Case& c, const char* variant) {
  const Array& e = c.expected();
  if (static_cast<long>(got.size()) != e.n) usage("case " + c.name + ": output size differs from the expected one");
  const float* want = e.f32();
  long worst = -1;
  double worstExcess = 0;
  for (long i = 0; i < e.n; i++) {
    if (got[i] == want[i] || (std::isnan(want[i]) && std::isnan(got[i]))) continue;  // ±Inf too
    const double excess = std::fabs(static_cast<double>(got[i]) - want[i]) - (c.atol() + c.rtol() * std::fabs(want[i]));
    if (!(excess <= 0) && (worst < 0 || !(excess <= worstExcess))) {
      worst = i;
      worstExcess = excess;
    }
  }
  if (worst >= 0) {
    std::printf("FAIL %s %s%s %s: element %ld is %.9g, expected %.9g (rtol %g, atol %g)\n", context.c_str(),
                c.op.c_str(), variant, c.name.c_str(), worst, got[worst], want[worst], c.rtol(), c.atol());
    std::exit(1);
  }
}

std::vector<float> copyOf(const Array& a) { return std::vector<float>(a.f32(), a.f32() + a.n); }

void runGradientCase(const vl3::KernelTable& t, const Case& c);

// Runs one case on table t: the out-of-place call, then the in-place forms the TS tests also check.
void runCase(const vl3::KernelTable& t, const Case& c) {
  const auto& I = c.ints;
  const auto& A = c.arrays;
  const long outN = c.expected().n;
  std::vector<float> out(outN, NAN);
  if (c.op == "matmul") {
    const vl3::Compute mode = I[4] ? vl3::Compute::Bf16 : vl3::Compute::Exact;
    vl3::MatmulArgs a{A[0].f32(), A[1].raw(), A[1].wtype(), nullptr, WType::None, out.data(), I[0], I[1], I[2], mode};
    if (I[3]) {
      a.bias = A[2].raw();
      a.biasType = A[2].wtype();
    }
    t.matmul(a);
    check(out, c, "");  // the case name says the mode
  } else if (c.op == "add" || c.op == "mul") {
    auto fn = c.op == "add" ? t.add : t.mul;
    fn(A[0].f32(), A[1].f32(), out.data(), I[0], I[1]);
    check(out, c, "");
    std::vector<float> x = copyOf(A[0]);
    fn(x.data(), A[1].f32(), x.data(), I[0], I[1]);
    check(x, c, " (in place)");
  } else if (c.op == "rmsNorm") {
    t.rmsNorm(A[0].f32(), A[1].raw(), A[1].wtype(), static_cast<float>(c.reals[0]), out.data(), I[0], I[1]);
    check(out, c, "");
    std::vector<float> x = copyOf(A[0]);
    t.rmsNorm(x.data(), A[1].raw(), A[1].wtype(), static_cast<float>(c.reals[0]), x.data(), I[0], I[1]);
    check(x, c, " (in place)");
  } else if (c.op == "layerNorm") {
    const float eps = static_cast<float>(c.reals[0]);
    t.layerNorm(A[0].f32(), A[1].raw(), A[1].wtype(), A[2].raw(), A[2].wtype(), eps, out.data(), I[0], I[1]);
    check(out, c, "");
    std::vector<float> x = copyOf(A[0]);
    t.layerNorm(x.data(), A[1].raw(), A[1].wtype(), A[2].raw(), A[2].wtype(), eps, x.data(), I[0], I[1]);
    check(x, c, " (in place)");
  } else if (c.op == "gelu") {
    t.gelu(A[0].f32(), out.data(), I[0], I[1] != 0);
    check(out, c, "");
    std::vector<float> x = copyOf(A[0]);
    t.gelu(x.data(), x.data(), I[0], I[1] != 0);
    check(x, c, " (in place)");
  } else if (c.op == "mergeBlocks") {
    t.mergeBlocks(A[0].f32(), out.data(), I[0], I[1], static_cast<int>(I[2]));
    check(out, c, "");
  } else if (c.op == "siluMul") {
    t.siluMul(A[0].f32(), A[1].f32(), out.data(), I[0]);
    check(out, c, "");
    std::vector<float> g = copyOf(A[0]), u = copyOf(A[1]);
    t.siluMul(g.data(), A[1].f32(), g.data(), I[0]);
    check(g, c, " (in place over gate)");
    t.siluMul(A[0].f32(), u.data(), u.data(), I[0]);
    check(u, c, " (in place over up)");
  } else if (c.op == "softmax") {
    t.softmax(A[0].f32(), out.data(), I[0], I[1]);
    check(out, c, "");
    std::vector<float> x = copyOf(A[0]);
    t.softmax(x.data(), x.data(), I[0], I[1]);
    check(x, c, " (in place)");
  } else if (c.op == "rope") {
    t.rope(A[0].f32(), A[1].f32(), A[2].f32(), out.data(), I[0], I[1], I[2]);
    check(out, c, "");
    std::vector<float> x = copyOf(A[0]);
    t.rope(x.data(), A[1].f32(), A[2].f32(), x.data(), I[0], I[1], I[2]);
    check(x, c, " (in place)");
  } else if (c.op == "attention") {
    vl3::AttentionArgs a{A[0].f32(), A[1].f32(), A[2].f32(), out.data(), I[0], I[1], I[2], I[3], I[4],
                         static_cast<float>(c.reals[0]), I[5] != 0, I[6]};
    t.attention(a);
    check(out, c, "");
  } else if (c.op == "embedding") {
    t.embedding(A[0].raw(), A[0].wtype(), reinterpret_cast<const int32_t*>(A[1].raw()), out.data(), I[0], I[1], A[0].n / I[1]);
    check(out, c, "");
  } else if (c.op == "sum") {
    out[0] = t.sum(A[0].f32(), A[0].n);
    check(out, c, "");
  } else if (c.op.rfind("grad.", 0) == 0) {
    runGradientCase(t, c);
  } else {
    usage("unknown op " + c.op + " in case " + c.name);
  }
}

// The backward kernels, op "grad.NAME.OUTPUT": one output of NAME is compared (harness-cases.ts gradientCases). The
// other outputs go to scratch vectors; a parameter gradient starts from the case's previous-contents array.
void runGradientCase(const vl3::KernelTable& t, const Case& c) {
  const auto& I = c.ints;
  const auto& A = c.arrays;
  const std::string op = c.op.substr(5);
  const std::string name = op.substr(0, op.find('.')), output = op.find('.') == std::string::npos ? "" : op.substr(op.find('.') + 1);
  auto scratchOf = [](long n) { return std::vector<float>(n, NAN); };
  std::vector<float> out;
  if (name == "matmulBackward") {
    const long M = I[0], N = I[1], K = I[2];
    out = output == "dx" ? scratchOf(M * K) : copyOf(A[3]);
    vl3::MatmulBackwardArgs a{A[0].f32(), A[1].f32(), A[2].raw(), A[2].wtype(), nullptr, nullptr, nullptr, M, N, K};
    (output == "dx" ? a.dx : output == "dw" ? a.dw : a.dbias) = out.data();
    t.matmulBackward(a);
  } else if (name == "attentionBackward") {
    const long qn = I[0] * I[2] * I[4], kn = I[1] * I[3] * I[4];
    std::vector<float> dq = scratchOf(qn), dk = scratchOf(kn), dv = scratchOf(kn);
    vl3::AttentionBackwardArgs a{A[0].f32(), A[1].f32(), A[2].f32(), A[3].f32(), dq.data(), dk.data(), dv.data(),
                                 I[0], I[1], I[2], I[3], I[4], static_cast<float>(c.reals[0]), I[5] != 0, I[6]};
    t.attentionBackward(a);
    out = output == "dq" ? dq : output == "dk" ? dk : dv;
  } else if (name == "crossEntropy") {
    const long n = I[0], H = I[1], V = I[2];
    std::vector<float> losses = scratchOf(n), dh = scratchOf(n * H), dw = copyOf(A[3]);
    vl3::CrossEntropyArgs a{A[0].f32(), A[1].raw(), A[1].wtype(), reinterpret_cast<const int32_t*>(A[2].raw()),
                            static_cast<float>(c.reals[0]), losses.data(), dh.data(), dw.data(), n, H, V};
    t.crossEntropy(a);
    out = output == "losses" ? losses : output == "dhidden" ? dh : dw;
  } else if (name == "rmsNormBackward" || name == "layerNormBackward") {
    const long rows = I[0], cols = I[1];
    std::vector<float> dx = scratchOf(rows * cols), dw = copyOf(A[3]), db = copyOf(A[3]);
    const float eps = static_cast<float>(c.reals[0]);
    if (name == "rmsNormBackward")
      t.rmsNormBackward(A[0].f32(), A[1].f32(), A[2].raw(), A[2].wtype(), eps, dx.data(), dw.data(), rows, cols);
    else
      t.layerNormBackward(A[0].f32(), A[1].f32(), A[2].raw(), A[2].wtype(), eps, dx.data(), dw.data(), db.data(), rows,
                          cols);
    out = output == "dx" ? dx : output == "dweight" ? dw : db;
  } else if (name == "geluBackward") {
    out = scratchOf(I[0]);
    t.geluBackward(A[0].f32(), A[1].f32(), out.data(), I[0], I[1] != 0);
  } else if (name == "siluMulBackward") {
    std::vector<float> dg = scratchOf(I[0]), du = scratchOf(I[0]);
    t.siluMulBackward(A[0].f32(), A[1].f32(), A[2].f32(), dg.data(), du.data(), I[0]);
    out = output == "dgate" ? dg : du;
  } else if (name == "ropeBackward") {
    out = scratchOf(I[0] * I[1] * I[2]);
    t.ropeBackward(A[0].f32(), A[1].f32(), A[2].f32(), out.data(), I[0], I[1], I[2]);
  } else if (name == "mergeBlocksBackward") {
    out = scratchOf(I[0] * I[2] * I[2] * I[1]);
    t.mergeBlocksBackward(A[0].f32(), out.data(), I[0], I[1], static_cast<int>(I[2]));
  } else if (name == "embeddingBackward") {
    out = copyOf(A[2]);
    t.embeddingBackward(A[0].f32(), reinterpret_cast<const int32_t*>(A[1].raw()), out.data(), I[0], I[1]);
  } else if (name == "adamw") {
    // p, g, m, v, then the expected output; reals: the AdamWScalars in their order (exact: tolerance 0).
    std::vector<float> p = copyOf(A[0]), m = copyOf(A[2]), v = copyOf(A[3]);
    const auto f = [&](int i) { return static_cast<float>(c.reals[i]); };
    const vl3::AdamWScalars s{f(0), f(1), f(2), f(3), f(4), f(5), f(6)};
    t.adamw(p.data(), A[1].f32(), m.data(), v.data(), I[0], s);
    out = output == "p" ? p : output == "m" ? m : v;
  } else {
    usage("unknown op " + c.op + " in case " + c.name);
  }
  check(out, c, "");
}

// The FMA loop has no reference value (its chains differ per ISA); what must hold is that it does the work it
// reports, linearly in iters, and leaves a finite result behind.
void checkFmaLoop(const vl3::KernelTable& t) {
  float s1[16] = {1.0f}, s2[16] = {1.0f};
  const double f1 = t.fmaLoop(1000, s1), f2 = t.fmaLoop(2000, s2);
  if (!(f1 > 0) || f2 != 2 * f1 || !std::isfinite(s1[0]) || !std::isfinite(s2[0]) || s1[0] == 1.0f) {
    std::printf("FAIL %s fmaLoop: %g flops for 1000 iterations, %g for 2000, sink %g\n", context.c_str(), f1, f2,
                static_cast<double>(s1[0]));
    std::exit(1);
  }
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at <= s.size()) {
    const size_t comma = s.find(',', at);
    const std::string part = s.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
    if (!part.empty()) out.push_back(part);
    if (comma == std::string::npos) break;
    at = comma + 1;
  }
  return out;
}

const vl3::KernelTable* tableNamed(const std::string& name) {
  if (name == "neon-baseline") {
    if (!vl3::neonBaselineKernels()) usage("this build has no neon kernels");
    if (!vl3::cpuFeatures().neon) usage("isa 'neon-baseline' is not available: this CPU lacks neon");
    return vl3::neonBaselineKernels();
  }
  std::string error;
  const vl3::KernelTable* t = vl3::tierKernels(name, error);
  if (!t) usage(error);
  return t;
}

void checkFeatures(const std::string& spec) {
  const vl3::CpuFeatures f = vl3::cpuFeatures();
  const struct {
    const char* name;
    bool value;
  } known[] = {{"neon", f.neon}, {"dotprod", f.dotprod}, {"i8mm", f.i8mm},       {"bf16", f.bf16},
               {"avx2", f.avx2}, {"fma", f.fma},         {"f16c", f.f16c},       {"avx512f", f.avx512f},
               {"avx512bf16", f.avx512bf16}};
  for (const std::string& item : split(spec)) {
    const size_t eq = item.find('=');
    const std::string name = item.substr(0, eq);
    const bool want = eq != std::string::npos && item.substr(eq + 1) == "1";
    bool found = false;
    for (const auto& k : known) {
      if (name != k.name) continue;
      found = true;
      if (k.value != want) usage("cpu feature " + name + " is " + (k.value ? "1" : "0") + ", expected " + (want ? "1" : "0"));
    }
    if (!found) usage("unknown cpu feature " + name);
  }
}

// "ISA/COMPUTE" of a context created without options, as the addon's Context constructor decides it.
std::string defaults() {
  std::string error;
  const vl3::KernelTable* t = vl3::defaultKernels(error);
  if (!t) usage(error);
  vl3::Compute mode;
  if (!vl3::defaultCompute(*t, mode, error)) usage(error);
  return std::string(t->name) + "/" + vl3::computeName(mode);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) usage("usage: harness CASES [--tables a,b|none] [--threads 1,2] [--expect-features f=1,...] "
                      "[--expect-default ISA/COMPUTE]");
  std::vector<std::string> tables = {"scalar"}, threads = {"1", "2"};
  std::string expectFeatures, expectDefault;
  for (int i = 2; i < argc; i += 2) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) usage(flag + " needs a value");
    const std::string value = argv[i + 1];
    if (flag == "--tables") {
      tables.clear();
      for (const std::string& t : split(value)) {
        if (t == "supported") {
          for (const char* name : vl3::supportedTiers()) tables.push_back(name);
        } else if (t != "none") {
          tables.push_back(t);
        }
      }
    } else if (flag == "--threads") {
      threads = split(value);
    } else if (flag == "--expect-features") {
      expectFeatures = value;
    } else if (flag == "--expect-default") {
      expectDefault = value;
    } else {
      usage("unknown option " + flag);
    }
  }
  const std::vector<Case> cases = readCases(argv[1]);

  checkFeatures(expectFeatures);
  const std::string chosen = defaults();
  if (!expectDefault.empty() && expectDefault != chosen)
    usage("a context without options gets " + chosen + ", expected " + expectDefault);

  long runs = 0;
  std::string names;
  for (const std::string& name : tables) {
    const vl3::KernelTable* t = tableNamed(name);
    names += " " + name + (t->bf16Dot ? "[bf16-dot]" : "");
    for (const std::string& th : threads) {
      const int n = std::atoi(th.c_str());
      if (n < 1) usage("bad thread count " + th);
      vl3::PoolPtr pool = vl3::makePool(n);
      vl3::PoolScope scope(*pool);
      context = name + " threads=" + th;
      checkFmaLoop(*t);
      for (const Case& c : cases) {
        runCase(*t, c);
        runs++;
      }
    }
  }
  const vl3::CpuFeatures f = vl3::cpuFeatures();
  std::printf("ok: %ld case runs (%zu cases; tables%s; threads", runs, cases.size(), names.c_str());
  for (const std::string& t : threads) std::printf(" %s", t.c_str());
  std::printf("); default %s; neon=%d dotprod=%d i8mm=%d bf16=%d\n", chosen.c_str(), f.neon, f.dotprod, f.i8mm, f.bf16);
  return 0;
}
