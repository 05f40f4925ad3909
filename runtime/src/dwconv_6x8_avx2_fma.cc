// AVX2+FMA depthwise kernel (dwconv.h): up to 6 rows of 8 pixels in 6 ymm accumulators, one
// broadcast weight per tap. Compiled with -mavx2 -mfma for this file only and chosen at run
// time with the GEMM kernel of the same path (dispatch.cc).
#include "dwconv_tile.h"
#include "half_ops_avx2.h"

namespace pscompress {

void dwconv_6x8_avx2_fma(const DwconvArgs& args) {
  static_assert(kDwRows == 6, "the file name says the tile");
  dwconv_rows<Avx2>(args);
}

}  // namespace pscompress
