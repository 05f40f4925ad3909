#include "dispatch.h"

#include <cstdlib>
#include <cstring>

namespace pscompress {
namespace {

CpuPath detect() {
  const char* forced = std::getenv("PSCOMPRESS_KERNEL");
  if (forced && std::strcmp(forced, "scalar") == 0) return {"scalar", ukernel_scalar};
#if defined(PSCOMPRESS_HAVE_AVX2)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return {"avx2-fma", ukernel_avx2_fma};
#endif
#if defined(PSCOMPRESS_HAVE_NEON)
  return {"neon", ukernel_neon};  // Advanced SIMD is mandatory on aarch64
#endif
  return {"scalar", ukernel_scalar};
}

}  // namespace

const CpuPath& cpu_path() {
  static const CpuPath path = detect();
  return path;
}

}  // namespace pscompress

// Lets the Python loader report the chosen path through ctypes.
extern "C" __attribute__((visibility("default"))) const char* pscompress_cpu_path() {
  return pscompress::cpu_path().name;
}
