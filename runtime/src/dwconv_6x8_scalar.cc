// Portable reference depthwise kernel (dwconv.h): the semantics every SIMD path is tested
// against, one operation per lane.
#include "dwconv_tile.h"
#include "half_ops_scalar.h"

namespace pscompress {

void dwconv_6x8_scalar(const DwconvArgs& args) {
  static_assert(kDwRows == 6, "the file name says the tile");
  dwconv_rows<Scalar>(args);
}

}  // namespace pscompress
