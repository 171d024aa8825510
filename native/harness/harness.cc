// Own kernel harness: runs the kernel tables as a plain C++ program (no N-API, no Node), so that a build for another CPU (arm64 under qemu-user) is checked against the TypeScript reference without that CPU's Node.
//
// Usage: harness CASES [--tables scalar,neon|none] [--threads 1,2] [--expect-features neon=1,dotprod=0,...]
//                      [--expect-kernel NAME] [--expect-bf16 yes|no]
// CASES is written by test/neon.test.ts: inputs, the ReferenceBackend's outputs and the tolerances of
// test/native-backend.test.ts, one record per case. Every case runs on every table and thread count named, the
// elementwise and row ops also in place; the first result outside its tolerance ends the run with exit status 1 and a
// line naming the table, thread count, op and case. Cases marked bf16-compute run only through neonBf16Matmul().
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
// (u32 kind: 0 f32, 1 bf16, 2 i32; u64 elements; the data). The expected output is the last array.

struct Array {
  int kind = 0;
  std::vector<uint8_t> bytes;
  long n = 0;
  const float* f32() const { return reinterpret_cast<const float*>(bytes.data()); }
  const void* raw() const { return bytes.data(); }
  WType wtype() const { return kind == 1 ? WType::BF16 : WType::F32; }
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
      a.n = static_cast<long>(r.get<uint64_t>());
      a.bytes.resize(a.n * (a.kind == 1 ? 2 : 4));
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
    if (std::isnan(want[i]) && std::isnan(got[i])) continue;
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

// Runs one case on table t: the out-of-place call, then the in-place forms the TS tests also check.
void runCase(const vl3::KernelTable& t, const Case& c) {
  const auto& I = c.ints;
  const auto& A = c.arrays;
  const long outN = c.expected().n;
  std::vector<float> out(outN, NAN);
  if (c.op == "matmul") {
    vl3::MatmulArgs a{A[0].f32(), A[1].raw(), A[1].wtype(), nullptr, WType::None, out.data(), I[0], I[1], I[2]};
    if (I[3]) {
      a.bias = A[2].raw();
      a.biasType = A[2].wtype();
    }
    t.matmul(a);
    check(out, c, "");
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
    t.embedding(A[0].raw(), A[0].wtype(), reinterpret_cast<const int32_t*>(A[1].raw()), out.data(), I[0], I[1]);
    check(out, c, "");
  } else if (c.op == "sum") {
    out[0] = t.sum(A[0].f32(), A[0].n);
    check(out, c, "");
  } else {
    usage("unknown op " + c.op + " in case " + c.name);
  }
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
  if (name == "scalar") return vl3::scalarKernels();
  if (name == "neon") return vl3::neonKernels();
  if (name == "avx2") return vl3::avx2Kernels();
  return nullptr;
}

void checkFeatures(const std::string& spec) {
  const vl3::CpuFeatures f = vl3::cpuFeatures();
  const struct {
    const char* name;
    bool value;
  } known[] = {{"neon", f.neon}, {"dotprod", f.dotprod}, {"i8mm", f.i8mm}, {"bf16", f.bf16},
               {"avx2", f.avx2}, {"fma", f.fma},         {"f16c", f.f16c}, {"avx512f", f.avx512f}};
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

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) usage("usage: harness CASES [--tables a,b] [--threads 1,2] [--expect-features f=1,...] "
                      "[--expect-kernel NAME] [--expect-bf16 yes|no]");
  std::vector<std::string> tables = {"scalar"}, threads = {"1", "2"};
  std::string expectFeatures, expectKernel, expectBf16;
  for (int i = 2; i < argc; i += 2) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) usage(flag + " needs a value");
    const std::string value = argv[i + 1];
    if (flag == "--tables") tables = value == "none" ? std::vector<std::string>{} : split(value);
    else if (flag == "--threads") threads = split(value);
    else if (flag == "--expect-features") expectFeatures = value;
    else if (flag == "--expect-kernel") expectKernel = value;
    else if (flag == "--expect-bf16") expectBf16 = value;
    else usage("unknown option " + flag);
  }
  const std::vector<Case> cases = readCases(argv[1]);

  checkFeatures(expectFeatures);
  const std::string defaultKernel = vl3::kernels().name;
  if (!expectKernel.empty() && expectKernel != defaultKernel)
    usage("the default kernel is " + defaultKernel + ", expected " + expectKernel);
  const vl3::MatmulFn bf16 = vl3::neonBf16Matmul();
  if (!expectBf16.empty() && (expectBf16 == "yes") != (bf16 != nullptr))
    usage(std::string("the bf16 matmul is ") + (bf16 ? "" : "not ") + "available, expected " + expectBf16);

  long runs = 0;
  for (const std::string& th : threads) {
    const int n = std::atoi(th.c_str());
    if (n < 1) usage("bad thread count " + th);
    vl3::poolSetThreads(n);
    for (const std::string& name : tables) {
      const vl3::KernelTable* t = tableNamed(name);
      if (!t) usage("this build has no " + name + " kernels");
      if (!vl3::setKernel(name.c_str())) usage("setKernel(" + name + ") refused on this CPU");
      context = name + " threads=" + th;
      checkFmaLoop(*t);
      for (const Case& c : cases) {
        if (c.op == "matmul" && c.ints[4]) continue;  // bf16-compute cases: below
        runCase(*t, c);
        runs++;
      }
    }
    if (bf16) {
      context = "neon-bf16 threads=" + th;
      for (const Case& c : cases) {
        if (c.op != "matmul" || !c.ints[4]) continue;
        std::vector<float> out(c.expected().n, NAN);
        vl3::MatmulArgs a{c.arrays[0].f32(), c.arrays[1].raw(), c.arrays[1].wtype(), nullptr, WType::None,
                          out.data(), c.ints[0], c.ints[1], c.ints[2]};
        if (c.ints[3]) {
          a.bias = c.arrays[2].raw();
          a.biasType = c.arrays[2].wtype();
        }
        bf16(a);
        check(out, c, "");
        runs++;
      }
    }
  }
  const vl3::CpuFeatures f = vl3::cpuFeatures();
  std::printf("ok: %ld case runs (%zu cases; tables", runs, cases.size());
  for (const std::string& t : tables) std::printf(" %s", t.c_str());
  std::printf("%s; threads", bf16 ? " neon-bf16" : "");
  for (const std::string& t : threads) std::printf(" %s", t.c_str());
  std::printf("); default kernel %s; neon=%d dotprod=%d i8mm=%d bf16=%d\n", defaultKernel.c_str(), f.neon, f.dotprod,
              f.i8mm, f.bf16);
  return 0;
}
