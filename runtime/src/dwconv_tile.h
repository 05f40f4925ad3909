// What the depthwise kernel files are written with (dwconv.h has the interface): the one
// loop of every path, written with a path's half-row operations (Isa, as store_half in
// ukernel_tile.h takes them, plus fma(w, b, acc) = w * b + acc), the tile's row count a
// template argument (with_rows) so that its accumulators stay in registers.
#pragma once

#include "dwconv.h"
#include "ukernel_tile.h"

namespace pscompress {

// The call's arguments in locals: stores to Y could otherwise alias them, forcing reloads.
struct DwRows {
  size_t k, b_row_stride, y_row_stride;
  const float *w, *b, *z;
  const int64_t* b_offsets;
  float* y;
  float bias, lo, hi;
};

// Rows r0 .. r0 + R - 1 at pixels x .. x + count - 1 (count 1 to 8). Always inlined, so that
// full tiles (count 8) store without branches.
template <class Isa, size_t R>
__attribute__((always_inline)) inline void dwconv_tile(const DwRows& a, size_t r0, size_t x, size_t count) {
  using Half = typename Isa::Half;
  const float* const b = a.b + r0 * a.b_row_stride + x;
  Half acc[R];
#pragma GCC unroll 6
  for (size_t j = 0; j < R; ++j) acc[j] = Isa::splat(0.0f);
  for (size_t t = 0; t < a.k; ++t) {
    const Half w = Isa::splat(a.w[t]);
    const float* const tap = b + a.b_offsets[t];
#pragma GCC unroll 6
    for (size_t j = 0; j < R; ++j) acc[j] = Isa::fma(w, Isa::load(tap + j * a.b_row_stride), acc[j]);
  }
  const Half bias = Isa::splat(a.bias), lo = Isa::splat(a.lo), hi = Isa::splat(a.hi);
#pragma GCC unroll 6
  for (size_t j = 0; j < R; ++j) {
    const size_t at = (r0 + j) * a.y_row_stride + x;
    store_half<Isa>(acc[j], bias, a.y + at, a.z ? a.z + at : nullptr, count, lo, hi);
  }
}

template <class Isa>
inline void dwconv_rows(const DwconvArgs& args) {
  static_assert(kDwRows == kMR, "with_rows gives 1 to kMR rows");
  const DwRows a{args.k, args.b_row_stride, args.y_row_stride, args.w, args.b, args.z, args.b_offsets,
                 args.y, args.bias, args.lo, args.hi};
  const size_t n = args.n, groups = (args.rows + kDwRows - 1) / kDwRows;
  for (size_t g = 0, r0 = 0; g < groups; ++g) {
    const size_t rows = (args.rows - r0 + (groups - g) - 1) / (groups - g);  // <= kDwRows
    with_rows(rows, [&](auto r) {
      constexpr size_t R = decltype(r)::value;
      size_t x = 0;
      for (; x + 8 <= n; x += 8) dwconv_tile<Isa, R>(a, r0, x, 8);
      if (x < n) dwconv_tile<Isa, R>(a, r0, x, n - x);
    });
    r0 += rows;
  }
}

}  // namespace pscompress
