{
  # Own native CPU backend. The AVX2/FMA kernels are a static library compiled with -mavx2 -mfma -mf16c; everything
  # else is baseline x86-64 (or aarch64), and picks the AVX2 table at run time only when the CPU has it.
  # arm64 (Linux, macOS): x86 flags are set only when target_arch is x64/ia32; the NEON kernels need no flag (Advanced
  # SIMD is baseline); the bf16 matmul is its own library built for armv8.2-a+bf16 and called only on BF16 CPUs.
  # Every kernels_*.cc compiles on every target (to a null table where its ISA is absent), so the lists stay flat.
  "target_defaults": {
    "cflags!": ["-O0", "-O2"],
    "cflags_cc!": ["-std=gnu++17", "-std=gnu++14", "-std=gnu++1y"],
    "cflags": ["-O3", "-fPIC", "-pthread", "-Wall", "-Wno-unused-function"],
    "cflags_cc": ["-O3", "-std=c++17"],
    "xcode_settings": {
      "GCC_OPTIMIZATION_LEVEL": "3",
      "CLANG_CXX_LANGUAGE_STANDARD": "c++17"
    }
  },
  "targets": [
    {
      "target_name": "vl3_avx2",
      "type": "static_library",
      "sources": ["native/kernels_avx2.cc"],
      "conditions": [
        ["target_arch=='x64' or target_arch=='ia32'", {
          "cflags": ["-mavx2", "-mfma", "-mf16c"],
          "xcode_settings": {"OTHER_CFLAGS": ["-mavx2", "-mfma", "-mf16c"]}
        }]
      ]
    },
    {
      "target_name": "vl3_neon_bf16",
      "type": "static_library",
      "sources": ["native/kernels_neon_bf16.cc"],
      "conditions": [
        ["target_arch=='arm64'", {
          "cflags": ["-march=armv8.2-a+bf16"],
          "xcode_settings": {"OTHER_CFLAGS": ["-march=armv8.2-a+bf16"]}
        }]
      ]
    },
    {
      "target_name": "vl3_native",
      "dependencies": ["vl3_avx2", "vl3_neon_bf16"],
      "sources": [
        "native/addon.cc",
        "native/cpu.cc",
        "native/pool.cc",
        "native/measure.cc",
        "native/kernels_scalar.cc",
        "native/kernels_neon.cc",
        "native/resize.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "ldflags": ["-pthread"]
    }
  ]
}
