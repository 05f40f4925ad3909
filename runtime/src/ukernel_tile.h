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

// The first `count` (0 to 8) floats at p in a half row, the others zero, reading nothing past them.
template <class Isa>
inline typename Isa::Half load_first(const float* p, size_t count) {
  if (count == 8) return Isa::load(p);
  float part[8] = {};
  for (size_t i = 0; i < count; ++i) part[i] = p[i];
  return Isa::load(part);
}

// The epilogue, for rows m < `rows` of the accumulated tile (pixels 0..7 of row m in
// acc[m][0], 8..15 in acc[m][1]): y = clamp(acc + bias[m] + z, lo, hi) at the places
// ukernel.h gives. Rows go in order, and in each the lower half before the upper: when the
// halves overlap in Y, the upper half's pixels are the ones left. Isa::Half holds half a row,
// 8 floats, with splat(x), add(a, b), load(p) of 8 floats, store_first(p, v, count) of the
// first count (0 to 8), and clamp(v, lo, hi) = min(hi, max(lo, v)) with NaN kept.
template <class Isa>
inline void store_tile(const typename Isa::Half (&acc)[kMR][2], size_t rows, const UkernelArgs& args) {
  static_assert(kNR == 16, "two halves of 8 pixels");
  using Half = typename Isa::Half;
  const size_t n0 = args.n < 8 ? args.n : 8, n1 = args.n - n0;
  const Half lo = Isa::splat(args.lo), hi = Isa::splat(args.hi);
  for (size_t m = 0; m < rows; ++m) {
    const Half bias = Isa::splat(args.bias ? args.bias[m * args.bias_stride] : 0.0f);
    Half v0 = Isa::add(acc[m][0], bias), v1 = Isa::add(acc[m][1], bias);
    float* y = args.y + m * args.y_row_stride;
    if (args.z) {
      const float* z = args.z + m * args.y_row_stride;
      v0 = Isa::add(v0, load_first<Isa>(z, n0));
      v1 = Isa::add(v1, load_first<Isa>(z + args.y_split, n1));
    }
    Isa::store_first(y, Isa::clamp(v0, lo, hi), n0);  // lower half first: the halves may overlap
    Isa::store_first(y + args.y_split, Isa::clamp(v1, lo, hi), n1);
  }
}

}  // namespace pscompress
