// NEON microkernel for aarch64 (ARMv8.0, e.g. Raspberry Pi 4's Cortex-A72): 6 rows x 16
// pixels in 24 q-register accumulators.
#include <arm_neon.h>

#include "ukernel.h"

namespace pscompress {

void ukernel_neon(const UkernelArgs& args) {
  float32x4_t acc[kMR][4];
  for (size_t m = 0; m < kMR; ++m)
    for (size_t j = 0; j < 4; ++j) acc[m][j] = vdupq_n_f32(0.0f);
  const float* a = args.a;
  for (size_t k = 0; k < args.k; ++k, a += kMR) {
    const float* b = args.b_base + args.b_offsets[k];
    const float32x4_t b0 = vld1q_f32(b), b1 = vld1q_f32(b + 4);
    const float32x4_t b2 = vld1q_f32(b + args.b_split), b3 = vld1q_f32(b + args.b_split + 4);
    const float32x4_t w0123 = vld1q_f32(a);
    const float32x2_t w45 = vld1_f32(a + 4);
#define PSC_ROW(m, w, lane)                          \
  acc[m][0] = vfmaq_laneq_f32(acc[m][0], b0, w, lane); \
  acc[m][1] = vfmaq_laneq_f32(acc[m][1], b1, w, lane); \
  acc[m][2] = vfmaq_laneq_f32(acc[m][2], b2, w, lane); \
  acc[m][3] = vfmaq_laneq_f32(acc[m][3], b3, w, lane);
    PSC_ROW(0, w0123, 0)
    PSC_ROW(1, w0123, 1)
    PSC_ROW(2, w0123, 2)
    PSC_ROW(3, w0123, 3)
#undef PSC_ROW
    for (size_t j = 0; j < 4; ++j) {
      const float32x4_t bj = j == 0 ? b0 : j == 1 ? b1 : j == 2 ? b2 : b3;
      acc[4][j] = vfmaq_lane_f32(acc[4][j], bj, w45, 0);
      acc[5][j] = vfmaq_lane_f32(acc[5][j], bj, w45, 1);
    }
  }
  float tile[kMR][kNR];
  for (size_t m = 0; m < kMR; ++m)
    for (size_t j = 0; j < 4; ++j) vst1q_f32(tile[m] + 4 * j, acc[m][j]);
  store_tile(tile, args);
}

}  // namespace pscompress
