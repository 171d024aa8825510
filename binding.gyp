{
  # Own native CPU backend. Each kernel tier that needs instruction-set flags is a static library compiled with them:
  # on x86-64, AVX2 (-mavx2 -mfma -mf16c), AVX-VNNI (-mavxvnni on top), AVX-512 (-mavx512f/bw/dq/vl on top of AVX2)
  # and AVX-512 BF16 (-mavx512bf16 on top of that); on arm64 (Linux, macOS), the NEON tier's BF16 build (-march=armv8.2-a+bf16+dotprod), used only on CPUs
  # with BF16 and dotprod. Everything else, the baseline NEON tier included (Advanced SIMD is part of every ARMv8-A),
  # is baseline x86-64 or ARMv8.0-A, and a backend picks a tier at run time from what the CPU has. Flags are set only
  # under their target_arch, and every kernels_*.cc compiles on every target (to a null table where its ISA is
  # absent), so the source lists stay the same everywhere.
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
      "target_name": "vl3_avxvnni",
      "type": "static_library",
      "sources": ["native/kernels_avxvnni.cc"],
      "conditions": [
        ["target_arch=='x64'", {
          "cflags": ["-mavx2", "-mfma", "-mf16c", "-mavxvnni"],
          "xcode_settings": {"OTHER_CFLAGS": ["-mavx2", "-mfma", "-mf16c", "-mavxvnni"]}
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
          "cflags": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512bf16", "-mavx512vnni",
                     "-mprefer-vector-width=512"],
          "xcode_settings": {"OTHER_CFLAGS": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512dq",
                                              "-mavx512vl", "-mavx512bf16", "-mavx512vnni", "-mprefer-vector-width=512"]}
        }]
      ]
    },
    {
      "target_name": "vl3_neon_bf16",
      "type": "static_library",
      "sources": ["native/kernels_neon_bf16.cc"],
      "conditions": [
        ["target_arch=='arm64'", {
          "cflags": ["-march=armv8.2-a+bf16+dotprod"],
          "xcode_settings": {"OTHER_CFLAGS": ["-march=armv8.2-a+bf16+dotprod"]}
        }]
      ]
    },
    {
      "target_name": "vl3_native",
      "dependencies": ["vl3_avx2", "vl3_avxvnni", "vl3_avx512", "vl3_avx512bf16", "vl3_neon_bf16"],
      "sources": [
        "native/addon.cc",
        "native/cpu.cc",
        "native/pool.cc",
        "native/measure.cc",
        "native/kernels_scalar.cc",
        "native/kernels_neon.cc",
        "native/resize.cc",
        "native/quant_addon.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "ldflags": ["-pthread"]
    }
  ]
}
