// Portable reference int8 dot microkernel (qgemm.h, "Dots"): four lanes per B element, one
// product at a time; the epilogue is the pair kernels' (qgemm_tile.h).
#include "qgemm_tile.h"
#include "qint_ops_scalar.h"

namespace pscompress {

namespace {

void tile(const QDotArgs& args) {
  ScalarInt8::Int acc[kMR][2] = {};
  for (size_t k = 0; k < args.k; ++k) {
    const Quad* b = args.b_base + args.b_offsets[k];
    for (size_t m = 0; m < kMR; ++m) {
      const int8_t* w = args.a + QDotPacking::at(4 * k, m);
      for (size_t l = 0; l < 8; ++l)
        for (size_t lane = 0; lane < 4; ++lane) {
          acc[m][0].i[l] += w[lane] * b[l].lane[lane];
          acc[m][1].i[l] += w[lane] * b[args.b_split + l].lane[lane];
        }
    }
  }
  requantize_tile<ScalarInt8>(acc, args.m, args);
}

}  // namespace

void qdot_6x16_scalar(const QDotArgs* args, size_t count) {
  static_assert(kMR == 6 && kNR == 16, "the file name says the tile");
  for (size_t t = 0; t < count; ++t) tile(args[t]);
}

}  // namespace pscompress
