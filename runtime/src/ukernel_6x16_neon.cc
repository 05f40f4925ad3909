// NEON microkernel for aarch64 (ARMv8.0, e.g. Raspberry Pi 4's Cortex-A72): up to 6 rows x
// 16 pixels in 24 q-register accumulators. As in the AVX2 kernel, the row count is a template
// parameter (with_rows) and the accumulators are named variables so that they stay in registers.
#include <arm_neon.h>

#include "ukernel_tile.h"

namespace pscompress {
namespace {

// Half a tile row in two q registers, for store_tile.
struct Neon {
  using Half = float32x4x2_t;
  static Half splat(float x) { return {{vdupq_n_f32(x), vdupq_n_f32(x)}}; }
  static Half add(Half a, Half b) { return {{vaddq_f32(a.val[0], b.val[0]), vaddq_f32(a.val[1], b.val[1])}}; }
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

template <size_t R>
void tile(const UkernelArgs& args) {
  const float32x4_t zero = vdupq_n_f32(0.0f);
  float32x4_t c00 = zero, c01 = zero, c02 = zero, c03 = zero, c10 = zero, c11 = zero, c12 = zero, c13 = zero;
  float32x4_t c20 = zero, c21 = zero, c22 = zero, c23 = zero, c30 = zero, c31 = zero, c32 = zero, c33 = zero;
  float32x4_t c40 = zero, c41 = zero, c42 = zero, c43 = zero, c50 = zero, c51 = zero, c52 = zero, c53 = zero;
  const float* a = args.a;
  const float* const b_base = args.b_base;
  const int64_t* const offsets = args.b_offsets;
  const size_t k_end = args.k, split = args.b_split;
  for (size_t k = 0; k < k_end; ++k, a += kMR) {
    const float* b = b_base + offsets[k];
    const float32x4_t b0 = vld1q_f32(b), b1 = vld1q_f32(b + 4);
    const float32x4_t b2 = vld1q_f32(b + split), b3 = vld1q_f32(b + split + 4);
    const float32x4_t w0123 = vld1q_f32(a);
    const float32x2_t w45 = vld1_f32(a + 4);
#define PSC_ROW(m, w, lane, fma)        \
    if constexpr (R > m) {              \
      c##m##0 = fma(c##m##0, b0, w, lane); \
      c##m##1 = fma(c##m##1, b1, w, lane); \
      c##m##2 = fma(c##m##2, b2, w, lane); \
      c##m##3 = fma(c##m##3, b3, w, lane); \
    }
    PSC_ROW(0, w0123, 0, vfmaq_laneq_f32)
    PSC_ROW(1, w0123, 1, vfmaq_laneq_f32)
    PSC_ROW(2, w0123, 2, vfmaq_laneq_f32)
    PSC_ROW(3, w0123, 3, vfmaq_laneq_f32)
    PSC_ROW(4, w45, 0, vfmaq_lane_f32)
    PSC_ROW(5, w45, 1, vfmaq_lane_f32)
#undef PSC_ROW
  }
  const float32x4x2_t acc[kMR][2] = {{{{c00, c01}}, {{c02, c03}}}, {{{c10, c11}}, {{c12, c13}}},
                                     {{{c20, c21}}, {{c22, c23}}}, {{{c30, c31}}, {{c32, c33}}},
                                     {{{c40, c41}}, {{c42, c43}}}, {{{c50, c51}}, {{c52, c53}}}};
  store_tile<Neon>(acc, R, args);
}

}  // namespace

void ukernel_6x16_neon(const UkernelArgs& args) {
  static_assert(kMR == 6 && kNR == 16, "the file name says the tile");
  with_rows(args.m, [&](auto rows) { tile<decltype(rows)::value>(args); });
}

}  // namespace pscompress
