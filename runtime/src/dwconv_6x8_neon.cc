// NEON depthwise kernel (dwconv.h) for aarch64 (ARMv8.0, e.g. Raspberry Pi 4's Cortex-A72):
// up to 6 rows of 8 pixels in 12 q-register accumulators, one duplicated weight per tap.
#include "dwconv_tile.h"
#include "half_ops_neon.h"

namespace pscompress {

void dwconv_6x8_neon(const DwconvArgs& args) {
  static_assert(kDwRows == 6, "the file name says the tile");
  dwconv_rows<Neon>(args);
}

}  // namespace pscompress
