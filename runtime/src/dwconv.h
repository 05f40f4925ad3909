// The depthwise microkernel interface shared by every CPU path: layers with one input channel
// per group (Cg == 1), whose outputs each read a single input channel. Each path is one file
// named for its tile and ISA, dwconv_<kDwRows>x<pixels>_<isa>.cc: 6x8 scalar (the portable
// reference), avx2_fma, neon, and 6x16 avx512f; dispatch.h pairs each with the GEMM microkernel
// of the same ISA.
//
// One call computes every pixel of `rows` output rows of one output channel:
//   acc[r][x] = sum_t w[t] * b[b_offsets[t] + r * b_row_stride + x]      (r < rows, x < n)
//   y[r * y_row_stride + x] = clamp(acc + bias + z[same index], lo, hi)
// b addresses one output's window: tap t of output pixel (r, x) reads b_offsets[t] floats
// further, and consecutive pixels of a row read consecutive floats (the phase planes,
// sparse_layer.h, make every stride so). A kernel works on tiles of up to kDwRows rows x 8
// pixels (16 for avx512f; fewer at a row's end), one accumulator register (or pair) per row:
// the rows split into ceil(rows / kDwRows) groups of near-equal height, so that no tile is left
// with one row.
// B reads: every half reads 8 floats per tap, so a row's last half reads up to 7 floats past
// its last pixel; they must be readable (their values are discarded). The caller guarantees it
// (psconv.cc, "B reads"); avx512f reads the tail of a row wider than 8 under a mask, nothing
// past it. Y and Z are touched only at the rows' n pixels.
//
// The epilogue is store_half in ukernel_tile.h, the GEMM kernels' own: the order of the
// additions (acc + bias, + z) and the clamp, min(hi, max(lo, v)), which keeps NaN. The
// scalar path is the reference: dwconv_tester compares every path's rows with it.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pscompress {

constexpr size_t kDwRows = 6;  // output rows per tile (of 8 pixels)

struct DwconvArgs {
  size_t k;                  // kept taps (0: y = clamp(bias + z))
  const float* w;            // k weights, in the order of b_offsets
  const float* b;            // base pointer of output pixel (0, 0)'s window
  const int64_t* b_offsets;  // k offsets from b, in floats
  size_t b_row_stride;       // floats from one output row's window to the next
  size_t rows, n;            // output rows (>= 1) and pixels per row (>= 1)
  float* y;                  // output row 0, pixel 0
  size_t y_row_stride;       // floats between output rows in y (and z)
  const float* z;            // nullable residual, laid out like y
  float bias;                // the channel's bias (0 when none)
  float lo, hi;              // fused activation
};

using Dwconv = void (*)(const DwconvArgs&);

void dwconv_6x8_scalar(const DwconvArgs& args);
#if defined(PSCOMPRESS_HAVE_AVX2)
void dwconv_6x8_avx2_fma(const DwconvArgs& args);
#endif
#if defined(PSCOMPRESS_HAVE_AVX512)
void dwconv_6x16_avx512f(const DwconvArgs& args);
#endif
#if defined(PSCOMPRESS_HAVE_NEON)
void dwconv_6x8_neon(const DwconvArgs& args);
#endif

}  // namespace pscompress
