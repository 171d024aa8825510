{
  # Own native CPU backend. Each x86 kernel tier is a static library compiled with its own instruction-set flags
  # (AVX2: -mavx2 -mfma -mf16c; AVX-512: -mavx512f/bw/dq/vl on top; AVX-512 BF16: -mavx512bf16 on top of that);
  # everything else is baseline x86-64 (or aarch64), and a backend picks a tier at run time from what the CPU has.
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
      "target_name": "vl3_avx512",
      "type": "static_library",
      "sources": ["native/kernels_avx512.cc"],
      "conditions": [
        ["target_arch=='x64'", {
          "cflags": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl",
                     "-mprefer-vector-width=512"],
          "xcode_settings": {"OTHER_CFLAGS": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512dq",
                                              "-mavx512vl", "-mprefer-vector-width=512"]}
        }]
      ]
    },
    {
      "target_name": "vl3_avx512bf16",
      "type": "static_library",
      "sources": ["native/kernels_avx512bf16.cc"],
      "conditions": [
        ["target_arch=='x64'", {
          "cflags": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512bf16",
                     "-mprefer-vector-width=512"],
          "xcode_settings": {"OTHER_CFLAGS": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512dq",
                                              "-mavx512vl", "-mavx512bf16", "-mprefer-vector-width=512"]}
        }]
      ]
    },
    {
      "target_name": "vl3_native",
      "dependencies": ["vl3_avx2", "vl3_avx512", "vl3_avx512bf16"],
      "sources": [
        "native/addon.cc",
        "native/cpu.cc",
        "native/pool.cc",
        "native/measure.cc",
        "native/kernels_scalar.cc",
        "native/resize.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "ldflags": ["-pthread"]
    }
  ]
}
