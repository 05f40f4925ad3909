// The int8 GEMM epilogue of every path (qgemm.h has the interface), written with a path's
// operations on half a tile row, 8 lanes. Isa has Int (8 int32) and Real (8 float) with
//   splat_int(int32_t), splat_real(float), add(Int, Int), to_real(Int) (rounding to nearest),
//   mul(Real, Real), clamp(Real v, lo, hi) = min(hi, max(lo, v)), round(Real) -> Int (to
//   nearest even), store_first(uint8_t* p, Int v, count): the first count (0 to 8) lanes, each
//   0 to 255, as bytes, touching nothing else.
// Included only by the qgemm_6x16_<isa>.cc and qdot_6x16_<isa>.cc files, each with its own Isa (see ukernel_tile.h on
// why the operations live in anonymous namespaces).
#pragma once

#include "qgemm.h"
#include "ukernel_tile.h"

namespace pscompress {

// Half a row: clamp(nearbyint(float(acc + bias) * scale) + zero_point, 0, 255), the clamp
// done in float before rounding as MLAS does (the bounds are integers: the same result).
// A residual (QLinearPSConvAdd) would add its requantized term to the product before the clamp.
template <class Isa>
inline typename Isa::Int requantize(typename Isa::Int acc, typename Isa::Int bias, typename Isa::Real scale,
                                    typename Isa::Real lo, typename Isa::Real hi, typename Isa::Int zero_point) {
  const typename Isa::Real v = Isa::mul(Isa::to_real(Isa::add(acc, bias)), scale);
  return Isa::add(Isa::round(Isa::clamp(v, lo, hi)), zero_point);
}

// Rows m < `rows` of the accumulated tile (pixels 0..7 of row m in acc[m][0], 8..15 in
// acc[m][1]) to Y, at the places qgemm.h gives: rows in order, in each the lower half before
// the upper, so that when the halves overlap in Y the upper half's pixels are the ones left.
template <class Isa, class Args>
inline void requantize_tile(const typename Isa::Int (&acc)[kMR][2], size_t rows, const Args& args) {
  static_assert(kNR == 16, "two halves of 8 pixels");
  using Real = typename Isa::Real;
  const size_t n0 = args.n < 8 ? args.n : 8, n1 = args.n - n0;
  const Real lo = Isa::splat_real(static_cast<float>(-args.y_zero_point));
  const Real hi = Isa::splat_real(static_cast<float>(255 - args.y_zero_point));
  const typename Isa::Int zero_point = Isa::splat_int(args.y_zero_point);
  for (size_t m = 0; m < rows; ++m) {
    const size_t at = m * args.channel_stride;
    const typename Isa::Int bias = Isa::splat_int(args.bias ? args.bias[at] : 0);
    const Real scale = Isa::splat_real(args.scale[at]);
    uint8_t* const y = args.y + m * args.y_row_stride;
    Isa::store_first(y, requantize<Isa>(acc[m][0], bias, scale, lo, hi, zero_point), n0);
    Isa::store_first(y + args.y_split, requantize<Isa>(acc[m][1], bias, scale, lo, hi, zero_point), n1);
  }
}

}  // namespace pscompress
