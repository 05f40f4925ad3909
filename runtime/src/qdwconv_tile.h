// What the int8 depthwise kernel files are written with (qdwconv.h has the interface): the one
// loop of every path, the tile's row count a template argument (with_rows) so that its
// accumulators stay in registers, and the int8 epilogue (requantize in qgemm_tile.h). Isa has a
// path's epilogue operations (qgemm_tile.h: Int, Real, splat_int, ..., round; qint_ops_<isa>.h) and
//   kHalf: pixels per half tile row (8; 16 for AVX-512), so a tile row holds 2 kHalf;
//   Row: the int32 accumulators of a tile row; zero();
//   Pair pair(int8_t w0, int8_t w1): two taps' weights, formed once per tile;
//   step<kContiguous>(Row& acc, const int16_t* b0, const int16_t* b1, const QDwTiles& t, Pair w):
//     acc[x] += w0 * b0[at(x)] + w1 * b1[at(x)], at(x) = x for x < kHalf, else
//     t.b_split + x - kHalf, where kContiguous says t.b_split is kHalf (one load of the row);
//     pixels past t.n0 and t.n1 are the path's to read or not;
//   halves(const Row&, Int& a, Int& b): the row's 2 kHalf int32 sums, in an order of the path's
//     choosing (the requantization is the same for every pixel);
//   store_row(uint8_t* y, size_t y_split, Int a, Int b, size_t n0, size_t n1): the
//     requantized halves' pixels 0 .. n0 - 1 to y, kHalf .. kHalf + n1 - 1 to y + y_split.
// Taps go two per step because vpmaddwd (the AVX2 path) multiplies int16 pairs; the other
// paths simply do both taps.
// No std:: function templates here: see ukernel_tile.h.
#pragma once

#include "qdwconv.h"
#include "qgemm_tile.h"

namespace pscompress {

// One call's tile rows: where tile row 0's halves read and write, how far apart tile rows lie,
// and the pixels of each half (the upper may have none: then it rereads the lower, b_split 0).
struct QDwTiles {
  const int16_t* b;
  size_t b_step, b_split;
  uint8_t* y;
  size_t y_step, y_split;
  size_t n0, n1;
};

template <class Isa, size_t R, bool kContiguous = false>
__attribute__((always_inline)) inline void qdwconv_tile(const QDwconvArgs& a, const QDwTiles& t) {
  typename Isa::Row acc[R];
#pragma GCC unroll 6
  for (size_t j = 0; j < R; ++j) acc[j] = Isa::zero();
  const int64_t* const offsets = a.b_offsets;
  const size_t k_end = a.k;
  for (size_t k = 0; k < k_end; k += 2) {
    const bool pair = k + 1 < k_end;  // an odd k's last tap pairs with itself at weight 0
    const auto w = Isa::pair(a.w[k], pair ? a.w[k + 1] : int8_t{0});
    const int16_t* const b0 = t.b + offsets[k];
    const int16_t* const b1 = t.b + offsets[pair ? k + 1 : k];
#pragma GCC unroll 6
    for (size_t j = 0; j < R; ++j) Isa::template step<kContiguous>(acc[j], b0 + j * t.b_step, b1 + j * t.b_step, t, w);
  }
  using Real = typename Isa::Real;
  const Real lo = Isa::splat_real(static_cast<float>(-a.y_zero_point));
  const Real hi = Isa::splat_real(static_cast<float>(255 - a.y_zero_point));
  const Real scale = Isa::splat_real(a.scale);
  const typename Isa::Int bias = Isa::splat_int(a.bias), zero_point = Isa::splat_int(a.y_zero_point);
#pragma GCC unroll 6
  for (size_t j = 0; j < R; ++j) {
    typename Isa::Int first, second;
    Isa::halves(acc[j], first, second);
    Isa::store_row(t.y + j * t.y_step, t.y_split, requantize<Isa>(first, bias, scale, lo, hi, zero_point),
                   requantize<Isa>(second, bias, scale, lo, hi, zero_point), t.n0, t.n1);
  }
}

// tile(r0, R) for groups of tile rows r0 .. r0 + R - 1 covering [0, rows), of near-equal
// height (at most kQDwRows), so that no group is left with one row.
template <class Tile>
inline void for_row_groups(size_t rows, Tile&& tile) {
  static_assert(kQDwRows == kMR, "with_rows gives 1 to kMR rows");
  const size_t groups = (rows + kQDwRows - 1) / kQDwRows;
  for (size_t g = 0, r0 = 0; g < groups; ++g) {
    const size_t count = (rows - r0 + (groups - g) - 1) / (groups - g);
    with_rows(count, [&](auto r) { tile(r0, r); });
    r0 += count;
  }
}

template <class Isa>
inline void qdwconv_rows(const QDwconvArgs& a) {
  constexpr size_t H = Isa::kHalf;
  const size_t rs = a.b_row_stride, ys = a.y_row_stride, n = a.n;
  if (n <= H) {  // two output rows per tile row, one per half; an odd last row alone
    for_row_groups(a.rows / 2, [&](size_t r0, auto r) {
      qdwconv_tile<Isa, decltype(r)::value>(a, {a.b + 2 * r0 * rs, 2 * rs, rs, a.y + 2 * r0 * ys, 2 * ys, ys, n, n});
    });
    const size_t last = a.rows - 1;
    if (a.rows % 2) qdwconv_tile<Isa, 1>(a, {a.b + last * rs, 0, 0, a.y + last * ys, 0, 0, n, 0});
    return;
  }
  for_row_groups(a.rows, [&](size_t r0, auto r) {
    constexpr size_t R = decltype(r)::value;
    // Tiles of more than H pixels read 2 H consecutive ones (at most H - 1 past the row's end,
    // unless the path masks them); a last tile of H or fewer only its lower half's H.
    size_t x = 0;
    for (; x + H < n; x += 2 * H) {
      const size_t upper = n - x - H < H ? n - x - H : H;
      qdwconv_tile<Isa, R, true>(a, {a.b + r0 * rs + x, rs, H, a.y + r0 * ys + x, ys, H, H, upper});
    }
    if (x < n) qdwconv_tile<Isa, R>(a, {a.b + r0 * rs + x, rs, 0, a.y + r0 * ys + x, ys, H, n - x, 0});
  });
}

}  // namespace pscompress
