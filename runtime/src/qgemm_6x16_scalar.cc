// Portable reference int8 microkernel (qgemm.h): the semantics every SIMD path is tested
// against, its epilogue operations included, one operation per lane.
#include "qgemm_tile.h"
#include "qint_ops_scalar.h"

namespace pscompress {

void qgemm_6x16_scalar(const QGemmArgs& args) {
  static_assert(kMR == 6 && kNR == 16, "the file name says the tile");
  ScalarInt8::Int acc[kMR][2] = {};
  for (size_t k = 0; k < args.k; ++k) {
    const int16_t* b = args.b_base + args.b_offsets[k];
    for (size_t m = 0; m < kMR; ++m) {
      const int32_t w = args.a[QGemmPacking::at(k, m)];
      for (size_t l = 0; l < 8; ++l) {
        acc[m][0].i[l] += w * b[l];
        acc[m][1].i[l] += w * b[args.b_split + l];
      }
    }
  }
  requantize_tile<ScalarInt8>(acc, args.m, args);
}

}  // namespace pscompress
