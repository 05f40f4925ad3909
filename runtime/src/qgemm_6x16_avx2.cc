// AVX2 int8 microkernel (qgemm.h): up to 6 rows x 16 pixels in 12 ymm int32 accumulators.
// Compiled with -mavx2 for this file only and chosen at run time (see dispatch.cc).
// Each step takes two taps: their B rows interleaved per pixel meet a row's broadcast weight
// pair in vpmaddwd (qpairs_avx2.h says why not vpmaddubsw).
#include <immintrin.h>


#include "qgemm_tile.h"
#include "qint_ops_avx2.h"
#include "qpairs_avx2.h"
#include "taps_x86.h"

namespace pscompress {
namespace {

template <size_t R>
void tile(const QGemmArgs& args) {
  __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256i c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  const int16_t* a = args.a;
  const int16_t* const b_base = args.b_base;
  const int64_t* const offsets = args.b_offsets;
  const size_t k_end = args.k, split = args.b_split;
  // Taps k and k + 1; an odd k's last tap pairs with itself, its partner weight being 0.
  auto step = [&](size_t k) {
    const size_t partner = k + 1 < k_end ? k + 1 : k;
    const __m256i row0 = load_row(b_base + offsets[k], split), row1 = load_row(b_base + offsets[partner], split);
    const __m256i lo = _mm256_unpacklo_epi16(row0, row1), hi = _mm256_unpackhi_epi16(row0, row1);
#define PSC_ROW(m, c_lo, c_hi)                                   \
    if constexpr (R > m) {                                       \
      const __m256i w = broadcast_dword(a + 2 * m);                  \
      c_lo = _mm256_add_epi32(c_lo, _mm256_madd_epi16(lo, w));   \
      c_hi = _mm256_add_epi32(c_hi, _mm256_madd_epi16(hi, w));   \
    }
    PSC_ROW(0, c00, c01)
    PSC_ROW(1, c10, c11)
    PSC_ROW(2, c20, c21)
    PSC_ROW(3, c30, c31)
    PSC_ROW(4, c40, c41)
    PSC_ROW(5, c50, c51)
#undef PSC_ROW
    a += 2 * kMR;
  };
  for_each_tap<2>(b_base, offsets, split, k_end, a, 2 * kMR * sizeof(int16_t), step);
#define PSC_HALVES(c_lo, c_hi) {lower_pixels(c_lo, c_hi), upper_pixels(c_lo, c_hi)}
  const __m256i acc[kMR][2] = {PSC_HALVES(c00, c01), PSC_HALVES(c10, c11), PSC_HALVES(c20, c21),
                               PSC_HALVES(c30, c31), PSC_HALVES(c40, c41), PSC_HALVES(c50, c51)};
#undef PSC_HALVES
  requantize_tile<Avx2Int8>(acc, R, args);
}

}  // namespace

void qgemm_6x16_avx2(const QGemmArgs& args) {
  static_assert(kMR == 6 && kNR == 16, "the file name says the tile");
  with_rows(args.m, [&](auto rows) { tile<decltype(rows)::value>(args); });
}

}  // namespace pscompress
