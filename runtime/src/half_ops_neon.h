// The NEON path's operations on half a tile row, 8 floats in two q registers. In an anonymous
// namespace, as every path's operations (see ukernel_tile.h).
#pragma once

#include <arm_neon.h>

#include <cstddef>

namespace pscompress {
namespace {

struct Neon {
  using Half = float32x4x2_t;
  static Half splat(float x) { return {{vdupq_n_f32(x), vdupq_n_f32(x)}}; }
  static Half add(Half a, Half b) { return {{vaddq_f32(a.val[0], b.val[0]), vaddq_f32(a.val[1], b.val[1])}}; }
  static Half fma(Half w, Half b, Half acc) {
    return {{vfmaq_f32(acc.val[0], w.val[0], b.val[0]), vfmaq_f32(acc.val[1], w.val[1], b.val[1])}};
  }
  static Half load(const float* p) { return {{vld1q_f32(p), vld1q_f32(p + 4)}}; }
  // FMAX/FMIN return NaN when either operand is NaN. Unlike the scalar path they order -0
  // below +0, so a bound of 0 maps -0 to +0 (the values are equal).
  static Half clamp(Half v, Half lo, Half hi) {
    return {{vminq_f32(vmaxq_f32(v.val[0], lo.val[0]), hi.val[0]), vminq_f32(vmaxq_f32(v.val[1], lo.val[1]), hi.val[1])}};
  }

  // The first `count` (0 to 8) lanes of v to y, in order.
  static void store_first(float* y, Half v, size_t count) {
    float32x4_t part = v.val[0];
    if (count >= 4) {
      vst1q_f32(y, part);
      part = v.val[1];
      y += 4;
      count -= 4;
    }
    if (count == 4) return vst1q_f32(y, part);
    float32x2_t pair = vget_low_f32(part);
    if (count >= 2) {
      vst1_f32(y, pair);
      pair = vget_high_f32(part);
      y += 2;
      count -= 2;
    }
    if (count) vst1_lane_f32(y, pair, 0);
  }
};

}  // namespace
}  // namespace pscompress
