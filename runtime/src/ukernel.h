// The GEMM microkernel interface shared by every CPU path. Each path is one file named for
// its tile and ISA, ukernel_<kMR>x<kNR>_<isa>.cc: scalar (the portable reference), avx2_fma, avx512f, neon.
//
// One call computes 1 to kUkernelTiles tiles, args[0 .. count - 1], each of up to kMR output
// channels x kNR output pixels:
//   acc[m][n] = sum_k a[k * kMR + m] * b_base[b_offsets[k] + n + (n >= 8 ? b_split - 8 : 0)]
//   y[m][n + (n >= 8 ? y_split - 8 : 0)] = clamp(acc + bias[m] + z[same index], lo, hi)
// A is prepacked (kMR outputs interleaved per k, zero rows past `m`). B rows are addressed
// through offsets so that the same kernel reads either straight from the (padded) input
// image, when the tile's pixels are contiguous there, or from a small gathered panel.
// b_split and y_split place pixels 8..15 elsewhere in B and in Y/Z (8: contiguous). A tile of
// two output rows narrower than 8 reads each row into its own half: b_split is one input row
// further, y_split = OW. Its halves then overlap in Y; pixels are stored in order, so the
// upper half's valid pixels overwrite the lower half's unused lanes. b_split = 0 (the upper
// half rereads the lower) serves a tile with no second row: n <= 8, nothing there to read.
// The tiles of a call share k, a, b_offsets, b_split, y_row_stride, bias, bias_stride, lo, hi
// and m (one weight panel), each with its own b_base, y, y_split, z and n: a kernel with
// registers to spare (AVX-512) loads each weight once for them all.
// Both halves of every B row must have 8 readable floats even when n < kNR (lanes past n are
// discarded); the caller guarantees it (gemm_tiles.h, "B reads"). Y and Z are touched only at
// the first min(n, 8) pixels of the lower half and the first n - 8 of the upper.
//
// The second line, the epilogue, is store_tile in ukernel_tile.h: it fixes the order of the
// additions, where each pixel goes and the order of the stores. A path supplies only its
// operations on half a row, 8 floats (add, clamp, loads, partial stores); clamp is
// min(hi, max(lo, v)) and keeps NaN on every path, as ONNX Clip. AVX-512 does the same on
// whole rows under lane masks (store_rows: partial stores there cost as much as the tile's
// multiply-adds on narrow layers). The scalar path's operations are the reference:
// ukernel_tester compares every path's tiles with them.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pscompress {

constexpr size_t kMR = 6;   // output channels per tile
constexpr size_t kNR = 16;  // output pixels per tile

struct UkernelArgs {
  size_t k;                   // reduction length (kept taps of the tile's residue class)
  const float* a;             // packed weights, k * kMR floats
  const float* b_base;        // base pointer of the B rows
  const int64_t* b_offsets;   // k offsets from b_base, in floats
  size_t b_split;             // where pixels 8..15 of a B row start, in floats from pixel 0
  float* y;                   // output for row 0, pixel 0
  size_t y_split;             // where pixels 8..15 of a Y (and Z) row start, 1 to 8
  size_t y_row_stride;        // floats between consecutive rows of the tile in y (and z)
  const float* bias;          // nullable; bias for row m is bias[m * bias_stride]
  size_t bias_stride;
  const float* z;             // nullable residual, laid out like y
  float lo, hi;               // fused activation
  size_t m, n;                // valid rows (1 to kMR) and pixels (1 to kNR)
};

constexpr size_t kUkernelTiles = 4;
using Ukernel = void (*)(const UkernelArgs* args, size_t count);

// A's layout, one panel of kMR rows (SparseLayer::pack): tap i of row m at i * kMR + m.
struct UkernelPacking {
  static constexpr size_t kLanes = 1;
  static size_t slots(size_t k) { return k; }
  static size_t at(size_t i, size_t m) { return i * kMR + m; }
};

void ukernel_6x16_scalar(const UkernelArgs* args, size_t count);
#if defined(PSCOMPRESS_HAVE_AVX2)
void ukernel_6x16_avx2_fma(const UkernelArgs* args, size_t count);
#endif
#if defined(PSCOMPRESS_HAVE_AVX512)
void ukernel_6x16_avx512f(const UkernelArgs* args, size_t count);
#endif
#if defined(PSCOMPRESS_HAVE_NEON)
void ukernel_6x16_neon(const UkernelArgs* args, size_t count);
#endif

}  // namespace pscompress
