// What the microkernel files are written with (ukernel.h has the interface): the row count
// as a template argument, and the one epilogue of every path.
// No std:: function templates here: an inline function instantiated in the -mavx2 file could
// be the copy the linker keeps for every file, and then run on a CPU without AVX2.
#pragma once

#include <type_traits>

#include "ukernel.h"

namespace pscompress {

// Calls tile(std::integral_constant<size_t, m>()) for m = 1 to kMR: a SIMD kernel then
// computes no padding rows, and its accumulators stay in registers.
template <class Tile>
inline void with_rows(size_t m, Tile&& tile) {
  static_assert(kMR == 6, "one case per row count");
  switch (m) {
    case 1: return tile(std::integral_constant<size_t, 1>());
    case 2: return tile(std::integral_constant<size_t, 2>());
    case 3: return tile(std::integral_constant<size_t, 3>());
    case 4: return tile(std::integral_constant<size_t, 4>());
    case 5: return tile(std::integral_constant<size_t, 5>());
    default: return tile(std::integral_constant<size_t, 6>());
  }
}

// Calls tile(std::integral_constant<size_t, t>()) for t = count, 1 to 4: the tile count of a
// kernel that takes several tiles at once (AVX-512), so that its accumulators stay in registers.
template <class Tile>
inline void with_tile_count(size_t count, Tile&& tile) {
  switch (count) {
    case 1: return tile(std::integral_constant<size_t, 1>());
    case 2: return tile(std::integral_constant<size_t, 2>());
    case 3: return tile(std::integral_constant<size_t, 3>());
    default: return tile(std::integral_constant<size_t, 4>());
  }
}

// The first `count` (0 to 8) floats at p in a half row, the others zero, reading nothing past them.
template <class Isa>
inline typename Isa::Half load_first(const float* p, size_t count) {
  if (count == 8) return Isa::load(p);
  float part[8] = {};
  for (size_t i = 0; i < count; ++i) part[i] = p[i];
  return Isa::load(part);
}

// The epilogue of half a row, every path's and every kernel's (GEMM and depthwise):
// y = clamp(acc + bias + z, lo, hi) at the first `count` (0 to 8) pixels, z nullable. Isa::Half
// holds half a row, 8 floats, with splat(x), add(a, b), load(p) of 8 floats,
// store_first(p, v, count) of the first count, and clamp(v, lo, hi) = min(hi, max(lo, v)) with
// NaN kept. Y and Z are touched only at the first `count` floats.
template <class Isa>
inline void store_half(typename Isa::Half acc, typename Isa::Half bias, float* y, const float* z, size_t count,
                       typename Isa::Half lo, typename Isa::Half hi) {
  typename Isa::Half v = Isa::add(acc, bias);
  if (z) v = Isa::add(v, load_first<Isa>(z, count));
  Isa::store_first(y, Isa::clamp(v, lo, hi), count);
}

// The GEMM epilogue, for rows m < `rows` of the accumulated tile (pixels 0..7 of row m in
// acc[m][0], 8..15 in acc[m][1]), at the places ukernel.h gives. Rows go in order, and in each
// the lower half before the upper: when the halves overlap in Y, the upper half's pixels are
// the ones left.
template <class Isa>
inline void store_tile(const typename Isa::Half (&acc)[kMR][2], size_t rows, const UkernelArgs& args) {
  static_assert(kNR == 16, "two halves of 8 pixels");
  using Half = typename Isa::Half;
  const size_t n0 = args.n < 8 ? args.n : 8, n1 = args.n - n0;
  const Half lo = Isa::splat(args.lo), hi = Isa::splat(args.hi);
  for (size_t m = 0; m < rows; ++m) {
    const Half bias = Isa::splat(args.bias ? args.bias[m * args.bias_stride] : 0.0f);
    float* y = args.y + m * args.y_row_stride;
    const float* z = args.z ? args.z + m * args.y_row_stride : nullptr;
    store_half<Isa>(acc[m][0], bias, y, z, n0, lo, hi);  // lower half first: the halves may overlap
    store_half<Isa>(acc[m][1], bias, y + args.y_split, z ? z + args.y_split : nullptr, n1, lo, hi);
  }
}

}  // namespace pscompress
