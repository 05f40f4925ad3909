// AVX512-VNNI int8 dot microkernel (qgemm.h, "Dots"): up to 6 rows x 16 pixels of up to 4
// tiles at once, one zmm int32 accumulator per row and tile (24 of the 32 registers), pixels
// in lane order. Compiled with -mavx512f -mavx512bw -mavx512vnni for this file only and chosen
// at run time (see dispatch.cc).
// A B element is the four channels' bytes of one pixel, so a B row of 16 pixels is one zmm
// as vpdpbusd wants it (u8 x s8, four products summed into each int32 lane) and a row's
// four weights of a tap are one broadcast dword: no shuffles. The broadcasts, one load each,
// are what bounds a single tile (six loads for six vpdpbusd); shared by four tiles they cost
// a quarter as much. vpdpbusd (not vpdpbusds) wraps rather than saturating; the sums stay far
// inside int32.
#include <immintrin.h>

#include <cstring>

#include "qgemm_tile.h"
#include "qint_ops_avx2.h"
#include "taps_x86.h"

namespace pscompress {
namespace {

// A B row: pixels 0-7 in the lower 256 bits and 8-15 (at p + split) in the upper; one load
// when the halves are contiguous (row tiles and gathered ones: ukernel.h).
template <bool kContiguous>
inline __m512i load_row(const Quad* p, size_t split) {
  if constexpr (kContiguous) return _mm512_loadu_si512(p);
  const __m256i lower = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const __m256i upper = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + split));
  // Masked broadcasts, not a cast and an insert: GCC 12 warns on their undefined upper lanes.
  return _mm512_mask_broadcast_i64x4(_mm512_maskz_broadcast_i64x4(0x0F, lower), 0xF0, upper);
}

inline __m512i weight_quad(const int8_t* a) {
  int32_t quad;
  std::memcpy(&quad, a, sizeof quad);
  return _mm512_set1_epi32(quad);
}

template <size_t R, size_t T, bool kContiguous>
void tiles(const QDotArgs* args) {
  __m512i c[T][R];
#pragma GCC unroll 4
  for (size_t t = 0; t < T; ++t)
#pragma GCC unroll 6
    for (size_t m = 0; m < R; ++m) c[t][m] = _mm512_setzero_si512();
  const Quad* base[T];
#pragma GCC unroll 4
  for (size_t t = 0; t < T; ++t) base[t] = args[t].b_base;
  const int8_t* a = args[0].a;
  const int64_t* const offsets = args[0].b_offsets;
  const size_t split = args[0].b_split;
  auto step = [&](size_t k) {
    __m512i row[T];
#pragma GCC unroll 4
    for (size_t t = 0; t < T; ++t) row[t] = load_row<kContiguous>(base[t] + offsets[k], split);
#pragma GCC unroll 6
    for (size_t m = 0; m < R; ++m) {
      const __m512i w = weight_quad(a + 4 * m);
#pragma GCC unroll 4
      for (size_t t = 0; t < T; ++t) c[t][m] = _mm512_dpbusd_epi32(c[t][m], row[t], w);
    }
    a += 4 * kMR;
  };
  for_each_tap(base[0], offsets, split, args[0].k, step);
#pragma GCC unroll 4
  for (size_t t = 0; t < T; ++t) {
    __m256i acc[kMR][2];
#pragma GCC unroll 6
    for (size_t m = 0; m < R; ++m) {
      acc[m][0] = _mm512_maskz_extracti64x4_epi64(0x0F, c[t][m], 0);
      acc[m][1] = _mm512_maskz_extracti64x4_epi64(0x0F, c[t][m], 1);
    }
    requantize_tile<Avx2Int8>(acc, R, args[t]);
  }
}

template <size_t R, bool kContiguous>
void with_tiles(const QDotArgs* args, size_t count) {
  switch (count) {
    case 1: return tiles<R, 1, kContiguous>(args);
    case 2: return tiles<R, 2, kContiguous>(args);
    case 3: return tiles<R, 3, kContiguous>(args);
    default: return tiles<R, 4, kContiguous>(args);
  }
}

}  // namespace

void qdot_6x16_avx512vnni(const QDotArgs* args, size_t count) {
  static_assert(kMR == 6 && kNR == 16 && kDotTiles == 4, "the file name says the tile");
  with_rows(args[0].m, [&](auto rows) {
    if (args[0].b_split == 8) return with_tiles<decltype(rows)::value, true>(args, count);
    with_tiles<decltype(rows)::value, false>(args, count);
  });
}

}  // namespace pscompress
