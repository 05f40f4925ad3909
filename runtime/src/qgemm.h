// The int8 GEMM microkernel interface shared by every CPU path (QLinearPSConv). Each path is
// one file named for its tile and ISA, qgemm_<kMR>x<kNR>_<isa>.cc: scalar (the portable
// reference), avx2, neon. The tile and the B addressing are the fp32 kernels' (ukernel.h):
// kMR output channels x kNR output pixels, B rows through offsets, b_split and y_split.
//
// The phase planes hold x - x_zero_point as int16 (padding 0), A the weights as int16, so
// every product and pair sum is exact and no path saturates:
//   acc[m][n] = sum_k a(k, m) * b_base[b_offsets[k] + n + (n >= 8 ? b_split - 8 : 0)]   (int32)
//   v = float(acc + bias[m]) * scale[m]                                                (float32)
//   y[m][n + (n >= 8 ? y_split - 8 : 0)] = clamp(nearbyint(v) + y_zero_point, 0, 255)  (uint8)
// with bias[m] = bias[m * channel_stride] (0 when null), scale[m] = scale[m * channel_stride]
// and rounding to nearest even: MLAS's requantization, so that QLinearConv's outputs are met
// exactly. The caller keeps acc + bias within int32: |a| <= 128, |b| <= 255, k <= 32768 and
// |bias| <= 2^30 (qlinear_psconv.cc).
//
// A holds weight pairs: taps 2j and 2j + 1 of row m at a[(j * kMR + m) * 2 + {0, 1}], rows
// past `m` and the partner of an odd k's last tap zero (QGemmPacking). The AVX2 kernel
// multiplies a pair of B rows at once (vpmaddwd); every path reads B rows 0 to k - 1 only.
// B reads, stores and the order of the stores are as in ukernel.h: both halves of every B row
// must have 8 readable elements, Y is touched only at the tile's pixels, the lower half before
// the upper. The epilogue is written once, requantize_tile in qgemm_tile.h; the scalar path's
// operations are the reference qgemm_tester compares every path with.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ukernel.h"

namespace pscompress {

struct QGemmArgs {
  size_t k;                  // reduction length (kept taps of the tile's residue class)
  const int16_t* a;          // packed weight pairs, ceil(k / 2) * kMR * 2 values
  const int16_t* b_base;     // base pointer of the B rows (x - x_zero_point)
  const int64_t* b_offsets;  // k offsets from b_base, in elements
  size_t b_split;            // where pixels 8..15 of a B row start, in elements from pixel 0
  uint8_t* y;                // output for row 0, pixel 0
  size_t y_split;            // where pixels 8..15 of a Y row start, 1 to 8
  size_t y_row_stride;       // elements between consecutive rows of the tile in y
  const int32_t* bias;       // nullable
  const float* scale;        // requantization scale, x_scale * w_scale / y_scale
  size_t channel_stride;     // row m's bias and scale at [m * channel_stride]
  int32_t y_zero_point;      // 0 to 255
  size_t m, n;               // valid rows (1 to kMR) and pixels (1 to kNR)
};

using QGemm = void (*)(const QGemmArgs&);

// A's layout (SparseLayer::pack): weight pairs per row, ceil(k / 2) pairs.
struct QGemmPacking {
  static size_t slots(size_t k) { return k + k % 2; }
  static size_t at(size_t i, size_t m) { return (i / 2 * kMR + m) * 2 + i % 2; }
};

void qgemm_6x16_scalar(const QGemmArgs& args);
#if defined(PSCOMPRESS_HAVE_AVX2)
void qgemm_6x16_avx2(const QGemmArgs& args);
#endif
#if defined(PSCOMPRESS_HAVE_NEON)
void qgemm_6x16_neon(const QGemmArgs& args);
#endif

}  // namespace pscompress
