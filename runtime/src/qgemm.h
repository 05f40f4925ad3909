// The int8 GEMM microkernel interfaces shared by every CPU path (QLinearPSConv), two B
// layouts with one epilogue. Each kernel is one file named for its tile and ISA: the pair
// kernels qgemm_<kMR>x<kNR>_<isa>.cc (scalar, the portable reference; avx2; neon) and the dot
// kernels qdot_<kMR>x<kNR>_<isa>.cc (scalar; avx512vnni; avxvnni, its ymm form; neondot, ARMv8.2 sdot). The tile and
// the B addressing are the fp32 kernels' (ukernel.h): kMR output channels x kNR output pixels,
// B rows through offsets, b_split and y_split.
//
// Pairs (QGemmArgs): the phase planes hold x - x_zero_point as int16 (padding 0), A the
// weights as int16, so every product and pair sum is exact and no path saturates:
//   acc[m][n] = sum_k a(k, m) * b_base[b_offsets[k] + n + (n >= 8 ? b_split - 8 : 0)]   (int32)
// A holds weight pairs: taps 2j and 2j + 1 of row m at a[(j * kMR + m) * 2 + {0, 1}], rows
// past `m` and the partner of an odd k's last tap zero (QGemmPacking). The AVX2 kernel
// multiplies a pair of B rows at once (vpmaddwd).
//
// Dots (QDotArgs): a plane element is a Quad, the bytes x of four input channels that share
// their kept taps (channels i, i + P, i + 2P, i + 3P: sparse_layer.h, "lanes"), unshifted, and
// A holds int8 weights four to a tap, so that one u8 x s8 four-way dot product (vpdpbusd)
// takes a whole B element; the caller folds x_zero_point into the bias (-x_zero_point * sum w):
//   acc[m][n] = sum_k sum_l a(k, l, m) * b_base[b_offsets[k] + ...].lane[l]               (int32)
// with tap k's four weights of row m at a[(k * kMR + m) * 4 + l] (QDotPacking).
//
// Both then requantize:
//   v = float(acc + bias[m]) * scale[m]                                                (float32)
//   y[m][n + (n >= 8 ? y_split - 8 : 0)] = clamp(nearbyint(v) + y_zero_point, 0, 255)  (uint8)
// with bias[m] = bias[m * channel_stride] (0 when null), scale[m] = scale[m * channel_stride]
// and rounding to nearest even: MLAS's requantization, so that QLinearConv's outputs are met
// exactly. acc + bias is taken modulo 2^32, as the SIMD additions wrap: the caller keeps the
// true sum within int32 (|a| <= 128, |b| <= 255, at most 32768 nonzero weights per row and
// |bias| <= 2^30 for pairs; qlinear_psconv.cc).
//
// Every path reads B rows 0 to k - 1 only. B reads, stores and the order of the stores are as
// in ukernel.h: both halves of every B row must have 8 readable elements, Y is touched only at
// the tile's pixels, the lower half before the upper. The epilogue is written once,
// requantize_tile in qgemm_tile.h; the scalar kernels' operations are the reference
// qgemm_tester compares every path with.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ukernel.h"

namespace pscompress {

// A dot kernel's plane element: one byte of each of four input channels.
struct Quad {
  uint8_t lane[4];
};

template <class W, class E>
struct QTileArgs {
  using Weight = W;
  using Element = E;
  size_t k;                  // reduction length (kept taps of the tile's residue class, in B elements)
  const W* a;                // packed weights (QGemmPacking, QDotPacking)
  const E* b_base;           // base pointer of the B rows
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

using QGemmArgs = QTileArgs<int16_t, int16_t>;  // B: x - x_zero_point
using QDotArgs = QTileArgs<int8_t, Quad>;       // B: x
using QGemm = void (*)(const QGemmArgs&);
// A dot kernel takes `count` tiles (1 to kDotTiles) at once, args[0 .. count - 1], which share
// k, a, b_offsets, b_split, bias, scale, channel_stride, y_zero_point and m: the tiles of one
// weight panel, so that each weight it loads serves them all.
constexpr size_t kDotTiles = 4;
using QDot = void (*)(const QDotArgs* args, size_t count);

// A's layouts (SparseLayer::pack): slots(k) weights per row for k B elements; weight slot i
// (tap i for pairs; lane i % 4 of tap i / 4 for dots) of row m at at(i, m).
struct QGemmPacking {
  static constexpr size_t kLanes = 1;
  static size_t slots(size_t k) { return k + k % 2; }
  static size_t at(size_t i, size_t m) { return (i / 2 * kMR + m) * 2 + i % 2; }
};
struct QDotPacking {
  static constexpr size_t kLanes = 4;
  static size_t slots(size_t k) { return 4 * k; }
  static size_t at(size_t i, size_t m) { return (i / 4 * kMR + m) * 4 + i % 4; }
};

void qgemm_6x16_scalar(const QGemmArgs& args);
#if defined(PSCOMPRESS_HAVE_AVX2)
void qgemm_6x16_avx2(const QGemmArgs& args);
#endif
#if defined(PSCOMPRESS_HAVE_NEON)
void qgemm_6x16_neon(const QGemmArgs& args);
#endif
void qdot_6x16_scalar(const QDotArgs* args, size_t count);
#if defined(PSCOMPRESS_HAVE_AVX512)
void qdot_6x16_avx512vnni(const QDotArgs* args, size_t count);
#endif
#if defined(PSCOMPRESS_HAVE_AVX2)
void qdot_6x16_avxvnni(const QDotArgs* args, size_t count);
#endif
#if defined(PSCOMPRESS_HAVE_NEON)
void qdot_6x16_neondot(const QDotArgs* args, size_t count);
#endif

}  // namespace pscompress
