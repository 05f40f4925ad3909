// NEON int8 microkernel for aarch64 (ARMv8.0, e.g. Raspberry Pi 4's Cortex-A72): up to 6 rows
// x 16 pixels in 24 q-register int32 accumulators, one widening multiply-accumulate (smlal,
// smlal2 by lane) per 4 pixels and tap: int16 x int16 into int32, exact. A pair's 12 weights
// (qgemm.h) are one q and one d register; tap t of row m is lane 2 m + t.
#include <arm_neon.h>

#include "qgemm_tile.h"
#include "qint_ops_neon.h"

namespace pscompress {
namespace {

template <size_t R>
void tile(const QGemmArgs& args) {
  const int32x4_t zero = vdupq_n_s32(0);
  int32x4_t c00 = zero, c01 = zero, c02 = zero, c03 = zero, c10 = zero, c11 = zero, c12 = zero, c13 = zero;
  int32x4_t c20 = zero, c21 = zero, c22 = zero, c23 = zero, c30 = zero, c31 = zero, c32 = zero, c33 = zero;
  int32x4_t c40 = zero, c41 = zero, c42 = zero, c43 = zero, c50 = zero, c51 = zero, c52 = zero, c53 = zero;
  const int16_t* const b_base = args.b_base;
  const int64_t* const offsets = args.b_offsets;
  const size_t k_end = args.k, split = args.b_split;
  // Tap k (t = k mod 2 within its pair) with the pair's weights w0123 (rows 0-3) and w45.
  auto tap = [&](size_t k, auto t, int16x8_t w0123, int16x4_t w45) {
    constexpr int kT = decltype(t)::value;
    const int16_t* b = b_base + offsets[k];
    const int16x8_t lower = vld1q_s16(b), upper = vld1q_s16(b + split);
    const int16x4_t b0 = vget_low_s16(lower), b2 = vget_low_s16(upper);
#define PSC_ROW(m, w, lane, mlal, mlal_high)            \
    if constexpr (R > m) {                              \
      c##m##0 = mlal(c##m##0, b0, w, lane);             \
      c##m##1 = mlal_high(c##m##1, lower, w, lane);     \
      c##m##2 = mlal(c##m##2, b2, w, lane);             \
      c##m##3 = mlal_high(c##m##3, upper, w, lane);     \
    }
    PSC_ROW(0, w0123, 0 + kT, vmlal_laneq_s16, vmlal_high_laneq_s16)
    PSC_ROW(1, w0123, 2 + kT, vmlal_laneq_s16, vmlal_high_laneq_s16)
    PSC_ROW(2, w0123, 4 + kT, vmlal_laneq_s16, vmlal_high_laneq_s16)
    PSC_ROW(3, w0123, 6 + kT, vmlal_laneq_s16, vmlal_high_laneq_s16)
    PSC_ROW(4, w45, 0 + kT, vmlal_lane_s16, vmlal_high_lane_s16)
    PSC_ROW(5, w45, 2 + kT, vmlal_lane_s16, vmlal_high_lane_s16)
#undef PSC_ROW
  };
  const int16_t* a = args.a;
  size_t k = 0;
  for (; k + 2 <= k_end; k += 2, a += 2 * kMR) {
    const int16x8_t w0123 = vld1q_s16(a);
    const int16x4_t w45 = vld1_s16(a + 8);
    tap(k, std::integral_constant<int, 0>(), w0123, w45);
    tap(k + 1, std::integral_constant<int, 1>(), w0123, w45);
  }
  if (k < k_end) tap(k, std::integral_constant<int, 0>(), vld1q_s16(a), vld1_s16(a + 8));  // an odd k's last tap
  const int32x4x2_t acc[kMR][2] = {{{{c00, c01}}, {{c02, c03}}}, {{{c10, c11}}, {{c12, c13}}},
                                   {{{c20, c21}}, {{c22, c23}}}, {{{c30, c31}}, {{c32, c33}}},
                                   {{{c40, c41}}, {{c42, c43}}}, {{{c50, c51}}, {{c52, c53}}}};
  requantize_tile<NeonInt8>(acc, R, args);
}

}  // namespace

void qgemm_6x16_neon(const QGemmArgs& args) {
  static_assert(kMR == 6 && kNR == 16, "the file name says the tile");
  with_rows(args.m, [&](auto rows) { tile<decltype(rows)::value>(args); });
}

}  // namespace pscompress
