// AVX512-VNNI int8 dot microkernel (qgemm.h, "Dots"): up to 6 rows x 16 pixels of up to 4
// tiles at once, one zmm int32 accumulator per row and tile (24 of the 32 registers), pixels
// in lane order. Compiled with -mavx512f -mavx512bw -mavx512vnni for this file only and chosen
// at run time (see dispatch.cc).
// A B element is the four channels' bytes of one pixel, so a B row of 16 pixels is one zmm
// as vpdpbusd wants it (u8 x s8, four products summed into each int32 lane) and a row's
// four weights of a tap are one broadcast dword: no shuffles. The broadcasts, one load each,
// are what bounds a single tile (six loads for six vpdpbusd); shared by four tiles they cost
// a quarter as much. vpdpbusd (not vpdpbusds) wraps rather than saturating; the sums stay far
// inside int32. The epilogue requantizes whole rows and stores them under lane masks.
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

// requantize_tile (qgemm_tile.h) on whole tile rows: the same operations lane for lane, pixels
// 0..7 at y, 8..15 at y + y_split, the lower half stored before the upper (they may overlap),
// each under a lane mask by a narrowing store (vpmovdb: the values are bytes by then). The
// upper half is stored through a base 8 bytes before its place, lanes 0..7 masked off:
// masked-off lanes touch no memory. Partial rows (7, 12 or 14 pixels of narrow layers) then
// cost no byte-by-byte copy.
template <size_t R>
void requantize_rows(const __m512i (&c)[R], const QDotArgs& args) {
  const size_t n0 = args.n < 8 ? args.n : 8;
  const ptrdiff_t shift = static_cast<ptrdiff_t>(args.y_split) - 8;
  const __mmask16 lower = static_cast<__mmask16>((1u << n0) - 1);
  const __mmask16 upper = static_cast<__mmask16>(((1u << (args.n - n0)) - 1) << 8);
  const __m512 lo = _mm512_set1_ps(static_cast<float>(-args.y_zero_point));
  const __m512 hi = _mm512_set1_ps(static_cast<float>(255 - args.y_zero_point));
  const __m512i zero_point = _mm512_set1_epi32(args.y_zero_point);
#pragma GCC unroll 6
  for (size_t m = 0; m < R; ++m) {
    const size_t at = m * args.channel_stride;
    const __m512i sum = _mm512_add_epi32(c[m], _mm512_set1_epi32(args.bias ? args.bias[at] : 0));
    // The masked forms name every lane: GCC 12 warns on the unmasked ones' undefined pass-through.
    const __m512 v = _mm512_mul_ps(_mm512_maskz_cvtepi32_ps(0xffff, sum), _mm512_set1_ps(args.scale[at]));
    const __m512 clamped = _mm512_maskz_min_ps(0xffff, hi, _mm512_maskz_max_ps(0xffff, lo, v));
    const __m512i rounded = _mm512_maskz_cvtps_epi32(0xffff, clamped);  // MXCSR's mode: to nearest even
    const __m512i q = _mm512_add_epi32(rounded, zero_point);
    uint8_t* const y = args.y + m * args.y_row_stride;
    if (args.y_split == 8) {
      _mm512_mask_cvtepi32_storeu_epi8(y, lower | upper, q);
    } else {
      _mm512_mask_cvtepi32_storeu_epi8(y, lower, q);
      _mm512_mask_cvtepi32_storeu_epi8(y + shift, upper, q);
    }
  }
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
  for_each_tap(base[0], offsets, split, args[0].k, a, 4 * kMR, step);
#pragma GCC unroll 4
  for (size_t t = 0; t < T; ++t) requantize_rows<R>(c[t], args[t]);
}

}  // namespace

void qdot_6x16_avx512vnni(const QDotArgs* args, size_t count) {
  static_assert(kMR == 6 && kNR == 16 && kDotTiles == 4, "the file name says the tile");
  with_rows(args[0].m, [&](auto rows) {
    with_tile_count(count, [&](auto tile_count) {
      constexpr size_t R = decltype(rows)::value, T = decltype(tile_count)::value;
      if (args[0].b_split == 8) return tiles<R, T, true>(args);
      tiles<R, T, false>(args);
    });
  });
}

}  // namespace pscompress
