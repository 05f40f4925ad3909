// What the depthwise kernel files are written with (dwconv.h has the interface): the one
// loop of every path, written with a path's register operations (Isa: splat, add, load, clamp
// and fma(w, b, acc) = w * b + acc), the tile's row count a template argument (with_rows) so
// that its accumulators stay in registers.
//
// A path's register holds dw_pixels<Isa>() pixels of a tile row:
//  - 8 for the half-row operations of half_ops_<isa>.h (scalar, avx2_fma, neon): a row's tail
//    reads a whole register (dwconv.h, "B reads") and is stored by store_half, the GEMM
//    kernels' epilogue (ukernel_tile.h);
//  - 16 for AVX-512 (dwconv_6x16_avx512f.cc): a tail is read and stored under a lane mask,
//    Isa::first(count), through Isa::load_first(p, mask) and Isa::store_first(y, v, mask), so
//    that the kernel reads no float past a row's last pixel.
#pragma once

#include "dwconv.h"
#include "ukernel_tile.h"

namespace pscompress {

template <class Isa>
constexpr size_t dw_pixels() { return sizeof(typename Isa::Half) / sizeof(float); }

// The call's arguments in locals: stores to Y could otherwise alias them, forcing reloads.
struct DwRows {
  size_t k, b_row_stride, y_row_stride;
  const float *w, *b, *z;
  const int64_t* b_offsets;
  float* y;
  float bias, lo, hi;
};

// The lanes of a tile row's first `count` pixels: the count itself for 8-pixel registers, a
// mask for 16-pixel ones. dw_load and dw_store read and write the row through them.
template <class Isa>
__attribute__((always_inline)) inline auto dw_lanes(size_t count) {
  if constexpr (dw_pixels<Isa>() == 8) return count;
  else return Isa::first(count);
}

template <class Isa, class Lanes>
__attribute__((always_inline)) inline typename Isa::Half dw_load(const float* p, Lanes lanes) {
  if constexpr (dw_pixels<Isa>() == 8) return Isa::load(p);
  else return Isa::load_first(p, lanes);
}

// y = clamp(acc + bias + z, lo, hi) at the row's pixels: store_half's order of operations on
// every path, so that a 16-pixel path gives the 8-pixel ones' results.
template <class Isa, class Lanes>
__attribute__((always_inline)) inline void dw_store(typename Isa::Half acc, typename Isa::Half bias, float* y,
                                                    const float* z, Lanes lanes, typename Isa::Half lo,
                                                    typename Isa::Half hi) {
  if constexpr (dw_pixels<Isa>() == 8) {
    store_half<Isa>(acc, bias, y, z, lanes, lo, hi);
  } else {
    typename Isa::Half v = Isa::add(acc, bias);
    if (z) v = Isa::add(v, Isa::load_first(z, lanes));
    Isa::store_first(y, Isa::clamp(v, lo, hi), lanes);
  }
}

// Rows r0 .. r0 + R - 1 at pixels x .. x + count - 1 (count 1 to dw_pixels). Always inlined,
// so that full tiles (count dw_pixels) load and store without branches or masks.
template <class Isa, size_t R>
__attribute__((always_inline)) inline void dwconv_tile(const DwRows& a, size_t r0, size_t x, size_t count) {
  using Half = typename Isa::Half;
  const auto lanes = dw_lanes<Isa>(count);
  const float* const b = a.b + r0 * a.b_row_stride + x;
  Half acc[R];
#pragma GCC unroll 6
  for (size_t j = 0; j < R; ++j) acc[j] = Isa::splat(0.0f);
  for (size_t t = 0; t < a.k; ++t) {
    const Half w = Isa::splat(a.w[t]);
    const float* const tap = b + a.b_offsets[t];
#pragma GCC unroll 6
    for (size_t j = 0; j < R; ++j) acc[j] = Isa::fma(w, dw_load<Isa>(tap + j * a.b_row_stride, lanes), acc[j]);
  }
  const Half bias = Isa::splat(a.bias), lo = Isa::splat(a.lo), hi = Isa::splat(a.hi);
#pragma GCC unroll 6
  for (size_t j = 0; j < R; ++j) {
    const size_t at = (r0 + j) * a.y_row_stride + x;
    dw_store<Isa>(acc[j], bias, a.y + at, a.z ? a.z + at : nullptr, lanes, lo, hi);
  }
}

template <class Isa>
inline void dwconv_rows(const DwconvArgs& args) {
  static_assert(kDwRows == kMR, "with_rows gives 1 to kMR rows");
  constexpr size_t kPixels = dw_pixels<Isa>();
  const DwRows a{args.k, args.b_row_stride, args.y_row_stride, args.w, args.b, args.z, args.b_offsets,
                 args.y, args.bias, args.lo, args.hi};
  const size_t n = args.n, groups = (args.rows + kDwRows - 1) / kDwRows;
  for (size_t g = 0, r0 = 0; g < groups; ++g) {
    const size_t rows = (args.rows - r0 + (groups - g) - 1) / (groups - g);  // <= kDwRows
    with_rows(rows, [&](auto r) {
      constexpr size_t R = decltype(r)::value;
      size_t x = 0;
      for (; x + kPixels <= n; x += kPixels) dwconv_tile<Isa, R>(a, r0, x, kPixels);
      if (x < n) dwconv_tile<Isa, R>(a, r0, x, n - x);
    });
    r0 += rows;
  }
}

}  // namespace pscompress
