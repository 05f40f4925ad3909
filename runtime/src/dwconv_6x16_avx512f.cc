// AVX-512F depthwise kernel (dwconv.h): up to 6 rows of 16 pixels in 6 zmm accumulators, one
// broadcast weight per tap, so that a tap of a tile takes half the AVX2 kernel's loads and
// fused multiply-adds. A row's tail (its last n mod 16 pixels, or the whole of a row of 9 to
// 15) is read and stored under a lane mask, not in a scalar loop, so that rows wider than 8
// read no float past their last pixel (less than dwconv.h allows). Lane for lane it does the
// AVX2 kernel's arithmetic (taps in order, one fused multiply-add each, store_half's order of
// operations), so the two paths give the same outputs. Measured alone (ukernel_bench, 4 taps):
// 1.3x the AVX2 kernel on 14-wide rows, 1.1x on 28, even on 56 and 112, where the
// multiply-adds are not what bounds either (one load per multiply-add). Compiled with
// -mavx512f for this file only and chosen at run time on CPUs with AVX-512F (dispatch.cc).
#include <immintrin.h>

#include "dwconv_tile.h"
#include "row_ops_avx512.h"

namespace pscompress {

void dwconv_6x16_avx512f(const DwconvArgs& args) {
  static_assert(kDwRows == 6 && dw_pixels<Avx512>() == 16, "the file name says the tile");
  // A row of up to 8 pixels would leave half of every zmm idle and read it under a mask, which
  // does not fuse into the multiply-add as the AVX2 kernel's plain ymm loads do: that kernel is
  // faster there (7x7 in ukernel_bench), with the same outputs.
  if (args.n <= 8) return dwconv_6x8_avx2_fma(args);
  dwconv_rows<Avx512>(args);
}

}  // namespace pscompress
