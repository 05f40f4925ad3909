// NEON dot-product int8 dot microkernel (qgemm.h, "Dots") for aarch64 with ARMv8.2's FEAT_DotProd
// (the Raspberry Pi 5's Cortex-A76; the Pi 4's A72 lacks it and runs the pair kernel): 6 rows x 16
// pixels in 24 q-register int32 accumulators, one sdot by lane per 4 pixels, row and tap, each
// summing four channels' products. Compiled with -march=armv8.2-a+dotprod for this file only and
// chosen at run time (dispatch.cc).
// sdot is s8 x s8 and B holds u8 x (u8 x s8 usdot needs i8mm, which the A76 lacks), so B is read as
// x ^ 0x80 = x - 128 and every row gets 128 * (its weights' sum) back before requantizing:
// sum w * x = sum w * (x - 128) + 128 * sum w, exactly, in int32 arithmetic that wraps alike. A
// tap's weights are 16 bytes for rows 0-3 and 8 for rows 4-5, each row's four in one 32-bit lane,
// so sdot's lane form reads them in place: no broadcasts. 24 accumulators, 4 B registers and the
// weights fill the 32 q registers, so the tiles of a call run one after another; the row sums,
// which they share, are taken once per call in a pass of their own.
#include <arm_neon.h>

#include "qgemm_tile.h"
#include "qint_ops_neon.h"

namespace pscompress {
namespace {

// 128 * the sum of each row's weights over the k taps: what reading B as x - 128 takes off.
void row_corrections(const int8_t* a, size_t k, int32_t (&correction)[kMR]) {
  const int8x16_t ones = vdupq_n_s8(1);
  int32x4_t sum0123 = vdupq_n_s32(0);
  int32x2_t sum45 = vdup_n_s32(0);
  for (size_t i = 0; i < k; ++i, a += 4 * kMR) {
    sum0123 = vdotq_s32(sum0123, vld1q_s8(a), ones);
    sum45 = vdot_s32(sum45, vld1_s8(a + 16), vget_low_s8(ones));
  }
  const int32x4_t c0123 = vshlq_n_s32(sum0123, 7);
  const int32x2_t c45 = vshl_n_s32(sum45, 7);
  correction[0] = vgetq_lane_s32(c0123, 0);
  correction[1] = vgetq_lane_s32(c0123, 1);
  correction[2] = vgetq_lane_s32(c0123, 2);
  correction[3] = vgetq_lane_s32(c0123, 3);
  correction[4] = vget_lane_s32(c45, 0);
  correction[5] = vget_lane_s32(c45, 1);
}

inline int8x16_t signed_quads(const Quad* p) {
  return vreinterpretq_s8_u8(veorq_u8(vld1q_u8(reinterpret_cast<const uint8_t*>(p)), vdupq_n_u8(0x80)));
}

template <size_t R>
void tile(const QDotArgs& args, const int32_t (&correction)[kMR]) {
  const int32x4_t zero = vdupq_n_s32(0);
  int32x4_t c00 = zero, c01 = zero, c02 = zero, c03 = zero, c10 = zero, c11 = zero, c12 = zero, c13 = zero;
  int32x4_t c20 = zero, c21 = zero, c22 = zero, c23 = zero, c30 = zero, c31 = zero, c32 = zero, c33 = zero;
  int32x4_t c40 = zero, c41 = zero, c42 = zero, c43 = zero, c50 = zero, c51 = zero, c52 = zero, c53 = zero;
  const Quad* const b_base = args.b_base;
  const int64_t* const offsets = args.b_offsets;
  const size_t split = args.b_split;
  const int8_t* a = args.a;
  for (size_t k = 0; k < args.k; ++k, a += 4 * kMR) {
    const Quad* b = b_base + offsets[k];
    // Pixels 0-3, 4-7 of the lower half and 8-11, 12-15 of the upper (at b + split).
    const int8x16_t b0 = signed_quads(b), b1 = signed_quads(b + 4);
    const int8x16_t b2 = signed_quads(b + split), b3 = signed_quads(b + split + 4);
    const int8x16_t w0123 = vld1q_s8(a);
    const int8x8_t w45 = vld1_s8(a + 16);
#define PSC_ROW(m, w, lane, dot)               \
    if constexpr (R > m) {                     \
      c##m##0 = dot(c##m##0, b0, w, lane);     \
      c##m##1 = dot(c##m##1, b1, w, lane);     \
      c##m##2 = dot(c##m##2, b2, w, lane);     \
      c##m##3 = dot(c##m##3, b3, w, lane);     \
    }
    PSC_ROW(0, w0123, 0, vdotq_laneq_s32)
    PSC_ROW(1, w0123, 1, vdotq_laneq_s32)
    PSC_ROW(2, w0123, 2, vdotq_laneq_s32)
    PSC_ROW(3, w0123, 3, vdotq_laneq_s32)
    PSC_ROW(4, w45, 0, vdotq_lane_s32)
    PSC_ROW(5, w45, 1, vdotq_lane_s32)
#undef PSC_ROW
  }
  int32x4x2_t acc[kMR][2] = {{{{c00, c01}}, {{c02, c03}}}, {{{c10, c11}}, {{c12, c13}}},
                             {{{c20, c21}}, {{c22, c23}}}, {{{c30, c31}}, {{c32, c33}}},
                             {{{c40, c41}}, {{c42, c43}}}, {{{c50, c51}}, {{c52, c53}}}};
  for (size_t m = 0; m < R; ++m) {
    const NeonInt8::Int back = NeonInt8::splat_int(correction[m]);
    acc[m][0] = NeonInt8::add(acc[m][0], back);
    acc[m][1] = NeonInt8::add(acc[m][1], back);
  }
  requantize_tile<NeonInt8>(acc, R, args);
}

}  // namespace

void qdot_6x16_neondot(const QDotArgs* args, size_t count) {
  static_assert(kMR == 6 && kNR == 16, "the file name says the tile");
  int32_t correction[kMR];
  row_corrections(args[0].a, args[0].k, correction);  // the tiles of a call share their weights
  with_rows(args[0].m, [&](auto rows) {
    for (size_t t = 0; t < count; ++t) tile<decltype(rows)::value>(args[t], correction);
  });
}

}  // namespace pscompress
