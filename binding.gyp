{
  # Native cpu backend. Plain x86-64-v3 (AVX2/FMA) code everywhere except the own GEMM kernels (blocked and small-M), which
  # is compiled with AVX-512 flags in a separate static library and only called after a run-time CPU
  # check (native/cpu/gemm.cc), so the addon loads and runs on any x86-64-v3 machine.
  # oneDNN and OpenBLAS are loaded with dlopen at run time; nothing but libdl is linked.
  "target_defaults": {
    "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "native/cpu", "native/common"],
    "defines": ["NODE_ADDON_API_CPP_EXCEPTIONS", "NAPI_VERSION=8"],
    "cflags!": ["-fno-exceptions", "-O2", "-O0"],
    "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17", "-std=gnu++1y", "-std=gnu++20"],
    "cflags": ["-O3", "-fPIC", "-march=x86-64-v3", "-mfma", "-fno-math-errno", "-pthread"],
    "cflags_cc": ["-std=c++17", "-fexceptions"]
  },
  "targets": [
    {
      "target_name": "ssd_cpu_own_gemm",
      "type": "static_library",
      "sources": ["native/cpu/gemm_own.cc", "native/cpu/gemm_small.cc"],
      "cflags": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"]
    },
    {
      "target_name": "ssd_cpu",
      "dependencies": ["ssd_cpu_own_gemm"],
      "sources": [
        "native/cpu/addon.cc",
        "native/cpu/attention.cc",
        "native/cpu/auction.cc",
        "native/cpu/gemm.cc",
        "native/cpu/gemm_grouped.cc",
        "native/cpu/kernels.cc",
        "native/cpu/parallel.cc"
      ],
      "cflags": ["-ffp-contract=off", "-fno-trapping-math"],
      "libraries": ["-ldl", "-pthread"]
    }
  ]
}
