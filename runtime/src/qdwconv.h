// The int8 depthwise microkernel interface shared by every CPU path (QLinearPSConv on layers
// with one input channel per group, Cg == 1), the int8 sibling of dwconv.h. Each path is one
// file named for its tile and ISA, qdwconv_<kQDwRows>x<pixels>_<isa>.cc: 6x16 scalar (the
// portable reference), avx2 and neon, and 6x32 avx512vnni; dispatch.h pairs each with the int8
// GEMM kernel of the same ISA.
//
// One call computes every pixel of `rows` output rows of one output channel:
//   acc[r][x] = sum_t w[t] * b[b_offsets[t] + r * b_row_stride + x]      (r < rows, x < n; int32, exact)
//   y[r * y_row_stride + x] = clamp(nearbyint(float(acc + bias) * scale) + y_zero_point, 0, 255)
// b addresses one output's window in the phase planes (sparse_layer.h) of x - x_zero_point as
// int16, padding 0, as the int8 pair kernels' (qgemm.h); w is the channel's slice of W as it is
// (int8, no packing). acc + bias is taken modulo 2^32 as in qgemm.h; the caller keeps it within
// int32 (at most 63 taps of |w x| <= 128 x 255, |bias| <= 2^30). The requantization is
// qgemm.h's, written once (requantize in qgemm_tile.h): onnxruntime's QLinearConv's outputs.
//
// A tile row is 16 pixels in two halves of 8, as in the GEMM kernels (32 in halves of 16 for
// avx512vnni): a row wider than a half in tiles of consecutive pixels, a narrower one as two
// output rows, one per half (kernels then waste no half-tile on 7-wide maps); kQDwRows tile
// rows per tile, the rows split into groups of near-equal height.
// B reads: every half reads 8 int16 per tap, so a row's last half reads up to 7 elements past
// its last pixel, which must be readable (their values are discarded); avx512vnni reads a
// partial half under a lane mask, nothing past it. A half without pixels rereads the tile
// row's first half (or reads nothing). Y is touched only at the rows' n pixels.
// The scalar path is the reference: qdwconv_tester compares every path's rows with it.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pscompress {

constexpr size_t kQDwRows = 6;  // tile rows per tile (of 16 pixels)

struct QDwconvArgs {
  size_t k;                  // kept taps (0: y from the bias alone)
  const int8_t* w;           // k weights, in the order of b_offsets
  const int16_t* b;          // base of output pixel (0, 0)'s window: x - x_zero_point
  const int64_t* b_offsets;  // k offsets from b, in elements
  size_t b_row_stride;       // elements from one output row's window to the next
  size_t rows, n;            // output rows (>= 1) and pixels per row (>= 1)
  uint8_t* y;                // output row 0, pixel 0
  size_t y_row_stride;       // bytes between output rows in y
  int32_t bias;              // the channel's B (0 when none)
  float scale;               // x_scale * w_scale / y_scale
  int32_t y_zero_point;      // 0 to 255
};

using QDwconv = void (*)(const QDwconvArgs&);

void qdwconv_6x16_scalar(const QDwconvArgs& args);
#if defined(PSCOMPRESS_HAVE_AVX2)
void qdwconv_6x16_avx2(const QDwconvArgs& args);
#endif
#if defined(PSCOMPRESS_HAVE_AVX512)
void qdwconv_6x32_avx512vnni(const QDwconvArgs& args);
#endif
#if defined(PSCOMPRESS_HAVE_NEON)
void qdwconv_6x16_neon(const QDwconvArgs& args);
#endif

}  // namespace pscompress
