// Portable reference microkernel: the semantics every SIMD path is tested against.
#include "ukernel.h"

namespace pscompress {

void ukernel_scalar(const UkernelArgs& args) {
  float acc[kMR][kNR] = {};
  for (size_t k = 0; k < args.k; ++k) {
    const float* a = args.a + k * kMR;
    const float* b = args.b_base + args.b_offsets[k];
    for (size_t m = 0; m < kMR; ++m) {
      for (size_t n = 0; n < kNR; ++n) acc[m][n] += a[m] * b[n < 8 ? n : args.b_split + n - 8];
    }
  }
  store_tile(acc, args);
}

}  // namespace pscompress
