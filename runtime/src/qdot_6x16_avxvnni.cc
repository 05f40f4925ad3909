// AVX-VNNI int8 dot microkernel (qgemm.h, "Dots"): 6 rows x 16 pixels, for x86 CPUs with the
// VEX-encoded dot product on ymm but no AVX-512 (Alder Lake and later client cores, Sierra
// Forest). Compiled with -mavx2 -mavxvnni for this file only and chosen at run time (dispatch.cc).
// The AVX-512 kernel's scheme on half-width registers: a B element is one pixel's four channel
// bytes, so half a B row (8 pixels) is one ymm as vpdpbusd wants it (u8 x s8, four products
// summed into each int32 lane) and a row's four weights of a tap are one broadcast dword. A
// tile takes 12 accumulators, its two B halves and a broadcast: 15 of the 16 ymm registers, so
// the tiles of a call run one after another (a second tile's accumulators would spill), each
// re-reading the panel's weights from L1. vpdpbusd wraps rather than saturating; the sums stay
// far inside int32.
#include <immintrin.h>


#include "qgemm_tile.h"
#include "qint_ops_avx2.h"
#include "taps_x86.h"

namespace pscompress {
namespace {

template <size_t R>
void tile(const QDotArgs& args) {
  __m256i c[kMR][2];
#pragma GCC unroll 6
  for (size_t m = 0; m < R; ++m) c[m][0] = c[m][1] = _mm256_setzero_si256();
  const Quad* const base = args.b_base;
  const int64_t* const offsets = args.b_offsets;
  const size_t split = args.b_split;
  const int8_t* a = args.a;
  auto step = [&](size_t k) {
    const Quad* row = base + offsets[k];
    const __m256i lower = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row));
    const __m256i upper = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + split));
#pragma GCC unroll 6
    for (size_t m = 0; m < R; ++m) {
      const __m256i w = broadcast_dword(a + 4 * m);
      c[m][0] = _mm256_dpbusd_avx_epi32(c[m][0], lower, w);
      c[m][1] = _mm256_dpbusd_avx_epi32(c[m][1], upper, w);
    }
    a += 4 * kMR;
  };
  for_each_tap(base, offsets, split, args.k, a, 4 * kMR, step);
  requantize_tile<Avx2Int8>(c, R, args);
}

}  // namespace

void qdot_6x16_avxvnni(const QDotArgs* args, size_t count) {
  static_assert(kMR == 6 && kNR == 16, "the file name says the tile");
  with_rows(args[0].m, [&](auto rows) {
    for (size_t t = 0; t < count; ++t) tile<decltype(rows)::value>(args[t]);
  });
}

}  // namespace pscompress
