// AVX-512F microkernel: up to 6 rows x 16 pixels, a whole tile row in one zmm accumulator, so
// each tap costs 6 fused multiply-adds instead of the AVX2 kernel's 12. Compiled with
// -mavx512f -mavx2 -mfma for this file only and chosen at run time (see dispatch.cc).
// Lane for lane it does the AVX2 kernel's arithmetic (one fused multiply-add per tap, taps in
// order, the same epilogue on each half row), so the two paths give the same outputs (NaN
// payloads aside: the instruction forms differ); only the register width differs. Every CPU
// with AVX-512F has AVX2 and FMA, which the epilogue uses.
#include <immintrin.h>

#include "half_ops_avx2.h"
#include "taps_x86.h"
#include "ukernel_tile.h"

namespace pscompress {
namespace {

// A B row: pixels 0..7 at p, 8..15 at p + split (ukernel.h). Two 8-float loads, as the AVX2
// kernel reads, so the same floats must be readable ("B reads" in gemm_tiles.h). Here and in
// half_row the masked forms name every lane: GCC 12 warns on the undefined pass-through of the
// unmasked insert and extract (and of the 512-to-256 cast, an extract).
inline __m512 load_row(const float* p, size_t split) {
  const __m512d lower = _mm512_castpd256_pd512(_mm256_castps_pd(_mm256_loadu_ps(p)));
  return _mm512_castpd_ps(_mm512_mask_broadcast_f64x4(lower, 0xf0, _mm256_castps_pd(_mm256_loadu_ps(p + split))));
}

// Pixels 0..7 (kHalf 0) or 8..15 (kHalf 1) of a tile row, for the AVX2 epilogue.
template <int kHalf>
inline __m256 half_row(__m512 v) { return _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xf, _mm512_castps_pd(v), kHalf)); }

template <size_t R>
void tile(const UkernelArgs& args) {
  __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0;
  const float* a = args.a;
  const float* const b_base = args.b_base;
  const int64_t* const offsets = args.b_offsets;
  const size_t k_end = args.k, split = args.b_split;
  auto step = [&](size_t k) {
    const __m512 b = load_row(b_base + offsets[k], split);
#define PSC_ROW(m, c) \
    if constexpr (R > m) c = _mm512_fmadd_ps(_mm512_set1_ps(a[m]), b, c);
    PSC_ROW(0, c0)
    PSC_ROW(1, c1)
    PSC_ROW(2, c2)
    PSC_ROW(3, c3)
    PSC_ROW(4, c4)
    PSC_ROW(5, c5)
#undef PSC_ROW
    a += kMR;
  };
  for_each_tap(b_base, offsets, split, k_end, step);
  const __m256 acc[kMR][2] = {{half_row<0>(c0), half_row<1>(c0)}, {half_row<0>(c1), half_row<1>(c1)},
                              {half_row<0>(c2), half_row<1>(c2)}, {half_row<0>(c3), half_row<1>(c3)},
                              {half_row<0>(c4), half_row<1>(c4)}, {half_row<0>(c5), half_row<1>(c5)}};
  store_tile<Avx2>(acc, R, args);
}

}  // namespace

void ukernel_6x16_avx512f(const UkernelArgs& args) {
  static_assert(kMR == 6 && kNR == 16, "the file name says the tile");
  with_rows(args.m, [&](auto rows) { tile<decltype(rows)::value>(args); });
}

}  // namespace pscompress
