// The GEMM microkernel interface shared by every CPU path (scalar, AVX2+FMA, NEON).
//
// One call computes a tile of up to kMR output channels x kNR output pixels:
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
// Both halves of every B row must have 8 readable floats even when n < kNR (lanes past n are
// discarded); the caller guarantees it (psconv.cc, "B reads").
// The epilogue keeps NaN: clamp(NaN) is NaN on every path, as in ONNX Clip.
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
  size_t m, n;                // valid rows (<= kMR) and pixels (<= kNR)
};

using Ukernel = void (*)(const UkernelArgs&);

void ukernel_scalar(const UkernelArgs& args);
#if defined(PSCOMPRESS_HAVE_AVX2)
void ukernel_avx2_fma(const UkernelArgs& args);
#endif
#if defined(PSCOMPRESS_HAVE_NEON)
void ukernel_neon(const UkernelArgs& args);
#endif

// Writes an accumulated tile through the epilogue (bias, residual, clamp); shared by all
// paths for partial tiles so the fused semantics live in one place.
inline void store_tile(const float acc[kMR][kNR], const UkernelArgs& args) {
  for (size_t m = 0; m < args.m; ++m) {
    const float bias = args.bias ? args.bias[m * args.bias_stride] : 0.0f;
    float* y = args.y + m * args.y_row_stride;
    const float* z = args.z ? args.z + m * args.y_row_stride : nullptr;
    for (size_t n = 0; n < args.n; ++n) {
      const size_t at = n < 8 ? n : args.y_split + n - 8;
      float v = acc[m][n] + bias;
      if (z) v += z[at];
      v = v < args.lo ? args.lo : v;
      y[at] = v > args.hi ? args.hi : v;
    }
  }
}

}  // namespace pscompress
