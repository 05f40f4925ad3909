// NEON int8 depthwise kernel (qdwconv.h) for aarch64 (ARMv8.0, e.g. Raspberry Pi 4's
// Cortex-A72): up to 6 tile rows of 16 pixels in 24 q-register int32 accumulators, one
// widening multiply-accumulate (smlal, smlal2 by lane) per 4 pixels and tap: int16 x int16 into
// int32, exact, as the int8 GEMM kernel (qgemm_6x16_neon.cc).
#include <arm_neon.h>

#include "qdwconv_tile.h"
#include "qint_ops_neon.h"

namespace pscompress {
namespace {

struct NeonDw : NeonInt8 {
  struct Row {
    int32x4_t c[4];  // pixels 0-3, 4-7, 8-11, 12-15
  };
  using Pair = int16x4_t;  // w0 in lane 0, w1 in lane 1
  static Row zero() { return {{vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0)}}; }
  static int16x4_t pair(int8_t w0, int8_t w1) { return vset_lane_s16(w1, vdup_n_s16(w0), 1); }
  template <int kLane>
  static void tap(Row& acc, const int16_t* b, size_t split, int16x4_t w) {
    const int16x8_t lower = vld1q_s16(b), upper = vld1q_s16(b + split);
    acc.c[0] = vmlal_lane_s16(acc.c[0], vget_low_s16(lower), w, kLane);
    acc.c[1] = vmlal_high_lane_s16(acc.c[1], lower, w, kLane);
    acc.c[2] = vmlal_lane_s16(acc.c[2], vget_low_s16(upper), w, kLane);
    acc.c[3] = vmlal_high_lane_s16(acc.c[3], upper, w, kLane);
  }
  static constexpr size_t kHalf = 8;
  template <bool kContiguous>
  static void step(Row& acc, const int16_t* b0, const int16_t* b1, const QDwTiles& t, int16x4_t w) {
    const size_t split = kContiguous ? kHalf : t.b_split;
    tap<0>(acc, b0, split, w);
    tap<1>(acc, b1, split, w);
  }
  static void halves(const Row& acc, Int& lower, Int& upper) {
    lower = {{acc.c[0], acc.c[1]}};
    upper = {{acc.c[2], acc.c[3]}};
  }
  static void store_row(uint8_t* y, size_t y_split, Int lower, Int upper, size_t n0, size_t n1) {
    store_first(y, lower, n0);
    if (n1) store_first(y + y_split, upper, n1);
  }
};

}  // namespace

void qdwconv_6x16_neon(const QDwconvArgs& args) {
  static_assert(kQDwRows == 6, "the file name says the tile");
  qdwconv_rows<NeonDw>(args);
}

}  // namespace pscompress
