// Portable reference microkernel: the semantics every SIMD path is tested against, its
// epilogue operations (Scalar, half_ops_scalar.h) included.
#include "half_ops_scalar.h"
#include "ukernel_tile.h"

namespace pscompress {

namespace {

void tile(const UkernelArgs& args) {
  Scalar::Half acc[kMR][2] = {};
  for (size_t k = 0; k < args.k; ++k) {
    const float* a = args.a + k * kMR;
    const float* b = args.b_base + args.b_offsets[k];
    for (size_t m = 0; m < kMR; ++m) {
      for (size_t i = 0; i < 8; ++i) {
        acc[m][0].f[i] += a[m] * b[i];
        acc[m][1].f[i] += a[m] * b[args.b_split + i];
      }
    }
  }
  store_tile<Scalar>(acc, args.m, args);
}

}  // namespace

void ukernel_6x16_scalar(const UkernelArgs* args, size_t count) {
  static_assert(kMR == 6 && kNR == 16, "the file name says the tile");
  for (size_t t = 0; t < count; ++t) tile(args[t]);
}

}  // namespace pscompress
