// AVX2+FMA microkernel: up to 6 rows x 16 pixels in 12 ymm accumulators. Compiled with
// -mavx2 -mfma for this file only and chosen at run time (see dispatch.cc). The row count
// is a template parameter (with_rows) so a class's last, partial panel computes no padding
// rows. Accumulators are named variables, not an array: GCC then keeps them in registers.
// Partial tiles (row tails, rows narrower than a tile) are the common case in narrow layers:
// store_tile keeps their epilogue vectorised, only the final stores and residual loads split.
#include <immintrin.h>

#include "half_ops_avx2.h"
#include "taps_x86.h"
#include "ukernel_tile.h"

namespace pscompress {
namespace {

template <size_t R>
void tile(const UkernelArgs& args) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  const float* a = args.a;
  const float* const b_base = args.b_base;
  const int64_t* const offsets = args.b_offsets;
  const size_t k_end = args.k, split = args.b_split;
  auto step = [&](size_t k) {
    const float* b = b_base + offsets[k];
    const __m256 b0 = _mm256_loadu_ps(b);
    const __m256 b1 = _mm256_loadu_ps(b + split);
    // Up to 4 rows (the narrow layers' classes), where loads rather than FMAs are the limit:
    // one load of the weights, spread in registers. With 5 or 6 rows the shuffles cost more.
    [[maybe_unused]] const __m256 w4 = R <= 4 ? _mm256_broadcast_ps(reinterpret_cast<const __m128*>(a)) : b0;
#define PSC_ROW(m, lo, hi)                                                                          \
    if constexpr (R > m) {                                                                          \
      const __m256 w = R <= 4 ? _mm256_permute_ps(w4, (m & 3) * 0x55) : _mm256_broadcast_ss(a + m);       \
      lo = _mm256_fmadd_ps(w, b0, lo);                                                              \
      hi = _mm256_fmadd_ps(w, b1, hi);                                                              \
    }
    PSC_ROW(0, c00, c01)
    PSC_ROW(1, c10, c11)
    PSC_ROW(2, c20, c21)
    PSC_ROW(3, c30, c31)
    PSC_ROW(4, c40, c41)
    PSC_ROW(5, c50, c51)
#undef PSC_ROW
    a += kMR;
  };
  for_each_tap(b_base, offsets, split, k_end, a, kMR * sizeof(float), step);
  const __m256 acc[kMR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  store_tile<Avx2>(acc, R, args);
}

}  // namespace

void ukernel_6x16_avx2_fma(const UkernelArgs* args, size_t count) {
  static_assert(kMR == 6 && kNR == 16, "the file name says the tile");
  // One tile at a time: its accumulators already fill the registers that the B rows leave.
  for (size_t t = 0; t < count; ++t) with_rows(args[t].m, [&](auto rows) { tile<decltype(rows)::value>(args[t]); });
}

}  // namespace pscompress
