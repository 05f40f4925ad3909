// NEON microkernel for aarch64 (ARMv8.0, e.g. Raspberry Pi 4's Cortex-A72): up to 6 rows x
// 16 pixels in 24 q-register accumulators. As in the AVX2 kernel, the row count is a template
// parameter and the accumulators are named variables so that they stay in registers.
#include <arm_neon.h>

#include "ukernel.h"

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
  const float32x4_t acc[kMR][4] = {{c00, c01, c02, c03}, {c10, c11, c12, c13}, {c20, c21, c22, c23},
                                   {c30, c31, c32, c33}, {c40, c41, c42, c43}, {c50, c51, c52, c53}};
  if (args.n != kNR) {
    float partial[kMR][kNR];
    for (size_t m = 0; m < R; ++m)
      for (size_t j = 0; j < 4; ++j) vst1q_f32(partial[m] + 4 * j, acc[m][j]);
    store_tile(partial, args);
    return;
  }
  const float32x4_t lo = vdupq_n_f32(args.lo), hi = vdupq_n_f32(args.hi);
  for (size_t m = 0; m < R; ++m) {
    const float32x4_t bias = vdupq_n_f32(args.bias ? args.bias[m * args.bias_stride] : 0.0f);
    float* y = args.y + m * args.y_row_stride;
    const float* z = args.z ? args.z + m * args.y_row_stride : nullptr;
    for (size_t j = 0; j < 4; ++j) {  // in order: the upper half may overlap the lower
      const size_t at = j < 2 ? 4 * j : args.y_split + 4 * (j - 2);
      float32x4_t v = vaddq_f32(acc[m][j], bias);
      if (z) v = vaddq_f32(v, vld1q_f32(z + at));
      vst1q_f32(y + at, vminq_f32(vmaxq_f32(v, lo), hi));  // FMAX/FMIN keep NaN either way round
    }
  }
}

}  // namespace

void ukernel_neon(const UkernelArgs& args) {
  switch (args.m) {
    case 1: return tile<1>(args);
    case 2: return tile<2>(args);
    case 3: return tile<3>(args);
    case 4: return tile<4>(args);
    case 5: return tile<5>(args);
    default: return tile<6>(args);
  }
}

}  // namespace pscompress
