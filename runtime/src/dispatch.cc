#include "dispatch.h"

#include <cstdlib>
#include <stdexcept>
#include <string>

#if defined(PSCOMPRESS_HAVE_NEON)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

namespace pscompress {
namespace {

CpuPath detect() {
  const std::vector<CpuPath> paths = supported_paths();
  const char* forced = std::getenv("PSCOMPRESS_KERNEL");
  if (!forced || !*forced) return paths.front();
  for (const CpuPath& path : paths)
    if (path.name == std::string(forced)) return path;
  static const std::string unsupported = std::string("unsupported:") + forced;  // detect() runs once
  return {unsupported.c_str(), nullptr, nullptr, nullptr, nullptr, nullptr};
}

}  // namespace

std::vector<CpuPath> supported_paths() {
  std::vector<CpuPath> paths;
#if defined(PSCOMPRESS_HAVE_AVX2)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#if defined(PSCOMPRESS_HAVE_AVX512)
  // The AVX-512 GEMM kernel's epilogue is AVX2's. avx512-vnni is avx512f with the int8 dot
  // and depthwise kernels (AVX-512 F, BW, VL and VNNI); both run the AVX2 int8 pair kernel.
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f");
  if (avx512 && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512vnni"))
    paths.push_back({"avx512-vnni", ukernel_6x16_avx512f, dwconv_6x16_avx512f, qgemm_6x16_avx2, qdot_6x16_avx512vnni,
                     qdwconv_6x32_avx512vnni});
  if (avx512) paths.push_back({"avx512f", ukernel_6x16_avx512f, dwconv_6x16_avx512f, qgemm_6x16_avx2, nullptr,
                                qdwconv_6x16_avx2});
#endif
  // avx-vnni is avx2-fma with the ymm int8 dot kernel (VEX vpdpbusd): CPUs with AVX-VNNI but no
  // AVX-512 VNNI run it; where both exist, the zmm kernel above is faster.
  if (avx2 && __builtin_cpu_supports("avxvnni"))
    paths.push_back({"avx-vnni", ukernel_6x16_avx2_fma, dwconv_6x8_avx2_fma, qgemm_6x16_avx2, qdot_6x16_avxvnni,
                     qdwconv_6x16_avx2});
  if (avx2) paths.push_back({"avx2-fma", ukernel_6x16_avx2_fma, dwconv_6x8_avx2_fma, qgemm_6x16_avx2, nullptr,
                             qdwconv_6x16_avx2});
#endif
#if defined(PSCOMPRESS_HAVE_NEON)
  // Advanced SIMD is mandatory on aarch64; the dot product (ARMv8.2 FEAT_DotProd: the Pi 5's A76,
  // not the Pi 4's A72) adds the int8 dot kernel.
  if (getauxval(AT_HWCAP) & HWCAP_ASIMDDP)
    paths.push_back({"neon-dot", ukernel_6x16_neon, dwconv_6x8_neon, qgemm_6x16_neon, qdot_6x16_neondot,
                     qdwconv_6x16_neon});
  paths.push_back({"neon", ukernel_6x16_neon, dwconv_6x8_neon, qgemm_6x16_neon, nullptr, qdwconv_6x16_neon});
#endif
  // The portable path runs the dot layout, so that every machine tests it; the pair kernel
  // still takes the layers with too few channels to fill its lanes.
  paths.push_back({"scalar", ukernel_6x16_scalar, dwconv_6x8_scalar, qgemm_6x16_scalar, qdot_6x16_scalar,
                   qdwconv_6x16_scalar});
  return paths;
}

const CpuPath& cpu_path() {
  static const CpuPath path = detect();
  return path;
}

const CpuPath& require_path() {
  const CpuPath& path = cpu_path();
  if (path.ukernel) return path;
  std::string names;
  for (const CpuPath& p : supported_paths()) names += std::string(names.empty() ? "" : ", ") + p.name;
  throw std::runtime_error("PSCOMPRESS_KERNEL=" + std::string(path.name + sizeof("unsupported:") - 1) +
                           " is not a microkernel this build and CPU can run (supported: " + names + ")");
}

}  // namespace pscompress

// Lets the Python loader report the chosen path through ctypes.
extern "C" __attribute__((visibility("default"))) const char* pscompress_cpu_path() {
  return pscompress::cpu_path().name;
}
