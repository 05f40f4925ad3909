// NEON microkernel for aarch64 (ARMv8.0, e.g. Raspberry Pi 4's Cortex-A72): up to 6 rows x
// 16 pixels in 24 q-register accumulators. As in the AVX2 kernel, the row count is a template
// parameter (with_rows) and the accumulators are named variables so that they stay in registers.
#include <arm_neon.h>

#include "half_ops_neon.h"
#include "ukernel_tile.h"

namespace pscompress {
namespace {

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

void ukernel_6x16_neon(const UkernelArgs* args, size_t count) {
  static_assert(kMR == 6 && kNR == 16, "the file name says the tile");
  // One tile at a time: its accumulators already fill the registers that the B rows leave.
  for (size_t t = 0; t < count; ++t) with_rows(args[t].m, [&](auto rows) { tile<decltype(rows)::value>(args[t]); });
}

}  // namespace pscompress
