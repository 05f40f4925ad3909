// AVX-512F microkernel: up to 6 rows x 16 pixels of up to 4 tiles at once, a whole tile row in
// one zmm accumulator, so each tap costs 6 fused multiply-adds per tile instead of the AVX2
// kernel's 12. Compiled with -mavx512f -mavx2 -mfma for this file only and chosen at run
// time (see dispatch.cc).
// Lane for lane it does the AVX2 kernel's arithmetic (one fused multiply-add per tap, taps in
// order, store_tile's epilogue on each half row), so the two paths give the same outputs (NaN
// payloads aside: the instruction forms differ); only the register width differs, and the
// epilogue reads Z and stores Y under lane masks instead of store_first's partial stores.
#include <immintrin.h>

#include "row_ops_avx512.h"
#include "taps_x86.h"
#include "ukernel_tile.h"

namespace pscompress {
namespace {

// A B row: pixels 0..7 at p, 8..15 at p + split (ukernel.h): one load when the halves are
// contiguous (row and gathered tiles), else two 8-float loads, as the AVX2 kernel reads, so
// the same floats must be readable ("B reads" in gemm_tiles.h). The masked broadcast names
// every lane: GCC 12 warns on the undefined pass-through of the unmasked insert.
template <bool kContiguous>
inline __m512 load_row(const float* p, size_t split) {
  if constexpr (kContiguous) return _mm512_loadu_ps(p);
  const __m512d lower = _mm512_castpd256_pd512(_mm256_castps_pd(_mm256_loadu_ps(p)));
  return _mm512_castpd_ps(_mm512_mask_broadcast_f64x4(lower, 0xf0, _mm256_castps_pd(_mm256_loadu_ps(p + split))));
}

// store_tile (ukernel_tile.h) on whole tile rows: the same additions and clamp, pixels 0..7 at
// y, 8..15 at y + y_split, the lower half stored before the upper (they may overlap). The upper
// half is read and stored through a base 8 floats before y_split's place, lanes 0..7 masked
// off: masked-off lanes touch no memory.
template <size_t R>
void store_rows(const __m512 (&c)[R], const UkernelArgs& args) {
  const size_t n0 = args.n < 8 ? args.n : 8;
  const ptrdiff_t shift = static_cast<ptrdiff_t>(args.y_split) - 8;
  const __mmask16 lower = Avx512::first(n0), upper = static_cast<__mmask16>(Avx512::first(args.n - n0) << 8);
  const bool contiguous = args.y_split == 8;  // row tiles: one load and one store per row
  const __m512 lo = Avx512::splat(args.lo), hi = Avx512::splat(args.hi);
#pragma GCC unroll 6
  for (size_t m = 0; m < R; ++m) {
    __m512 v = Avx512::add(c[m], Avx512::splat(args.bias ? args.bias[m * args.bias_stride] : 0.0f));
    float* const y = args.y + m * args.y_row_stride;
    if (args.z) {
      const float* const z = args.z + m * args.y_row_stride;
      __m512 zv = _mm512_maskz_loadu_ps(contiguous ? lower | upper : lower, z);
      if (!contiguous) zv = _mm512_mask_loadu_ps(zv, upper, z + shift);
      v = Avx512::add(v, zv);
    }
    v = Avx512::clamp(v, lo, hi);
    if (contiguous) {
      _mm512_mask_storeu_ps(y, lower | upper, v);
    } else {
      _mm512_mask_storeu_ps(y, lower, v);
      _mm512_mask_storeu_ps(y + shift, upper, v);
    }
  }
}

// R rows of T tiles: R * T accumulators (24 of the 32 registers at most), T B rows and one
// weight broadcast live per tap, each broadcast serving T fused multiply-adds. One tile of 6
// rows would leave the FMA units waiting on the loads and on the latency of 6 chains.
template <size_t R, size_t T, bool kContiguous>
void tiles(const UkernelArgs* args) {
  __m512 c[T][R];
#pragma GCC unroll 4
  for (size_t t = 0; t < T; ++t)
#pragma GCC unroll 6
    for (size_t m = 0; m < R; ++m) c[t][m] = _mm512_setzero_ps();
  const float* base[T];
#pragma GCC unroll 4
  for (size_t t = 0; t < T; ++t) base[t] = args[t].b_base;
  const float* a = args[0].a;
  const int64_t* const offsets = args[0].b_offsets;
  const size_t split = args[0].b_split;
  auto step = [&](size_t k) {
    __m512 row[T];
#pragma GCC unroll 4
    for (size_t t = 0; t < T; ++t) row[t] = load_row<kContiguous>(base[t] + offsets[k], split);
#pragma GCC unroll 6
    for (size_t m = 0; m < R; ++m) {
      const __m512 w = _mm512_set1_ps(a[m]);
#pragma GCC unroll 4
      for (size_t t = 0; t < T; ++t) c[t][m] = _mm512_fmadd_ps(w, row[t], c[t][m]);
    }
    a += kMR;
  };
  for_each_tap(base[0], offsets, split, args[0].k, a, kMR * sizeof(float), step);
#pragma GCC unroll 4
  for (size_t t = 0; t < T; ++t) store_rows<R>(c[t], args[t]);
}

}  // namespace

void ukernel_6x16_avx512f(const UkernelArgs* args, size_t count) {
  static_assert(kMR == 6 && kNR == 16 && kUkernelTiles == 4, "the file name says the tile");
  with_rows(args[0].m, [&](auto rows) {
    with_tile_count(count, [&](auto tile_count) {
      constexpr size_t R = decltype(rows)::value, T = decltype(tile_count)::value;
      if (args[0].b_split == 8) return tiles<R, T, true>(args);
      tiles<R, T, false>(args);
    });
  });
}

}  // namespace pscompress
