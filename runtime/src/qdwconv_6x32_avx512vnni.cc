// AVX-512 VNNI int8 depthwise kernel (qdwconv.h): up to 6 tile rows of 32 pixels (two halves of
// 16) in 12 zmm int32 accumulators. As the AVX2 kernel, two taps per step, their rows
// interleaved per pixel (vpunpcklwd / vpunpckhwd, exact int16 pairs: qpairs_avx2.h), but
// vpdpwssd multiplies and accumulates in one instruction, and each instruction takes twice the
// pixels; the epilogue (requantize, qgemm_tile.h) runs on 16 lanes at once. Partial halves are
// read and stored under lane masks, so this kernel reads nothing past a row's last pixel. Rows
// of 8 or fewer pixels go to the AVX2 kernel (16-pixel halves would idle half their lanes).
// Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni for this file only and chosen at
// run time on CPUs that have them (dispatch.cc, path avx512-vnni).
#include <immintrin.h>

#include "qdwconv_tile.h"

namespace pscompress {
namespace {

struct Avx512Dw {
  using Int = __m512i;
  using Real = __m512;
  static constexpr size_t kHalf = 16;
  struct Row {
    __m512i lo, hi;  // pixels 0-3 | 8-11 | 16-19 | 24-27 and 4-7 | ... | 28-31 (unpack works per 128 bits)
  };
  using Pair = __m512i;
  // The epilogue's operations (qgemm_tile.h), 16 lanes. Conversions, max/min and the insert in
  // their masked forms naming every lane: GCC 12 warns on the unmasked ones' undefined pass-through.
  static __m512i splat_int(int32_t x) { return _mm512_set1_epi32(x); }
  static __m512 splat_real(float x) { return _mm512_set1_ps(x); }
  static __m512i add(__m512i a, __m512i b) { return _mm512_add_epi32(a, b); }
  static __m512 to_real(__m512i a) { return _mm512_maskz_cvtepi32_ps(0xffff, a); }
  static __m512 mul(__m512 a, __m512 b) { return _mm512_mul_ps(a, b); }
  static __m512 clamp(__m512 v, __m512 lo, __m512 hi) {
    return _mm512_maskz_min_ps(0xffff, hi, _mm512_maskz_max_ps(0xffff, lo, v));
  }
  static __m512i round(__m512 v) { return _mm512_maskz_cvtps_epi32(0xffff, v); }  // MXCSR's mode: to nearest even

  static Row zero() { return {_mm512_setzero_si512(), _mm512_setzero_si512()}; }
  static __m512i pair(int8_t w0, int8_t w1) {  // (w0, w1) as int16 in every 32-bit lane, w0 lower
    const uint32_t bits = static_cast<uint16_t>(w0) | static_cast<uint32_t>(static_cast<uint16_t>(w1)) << 16;
    return _mm512_set1_epi32(static_cast<int32_t>(bits));
  }
  static __mmask16 first(size_t count) { return static_cast<__mmask16>((1u << count) - 1); }  // count 0 to 16
  // Masked-off lanes are not read (no fault past a buffer's end) and read as zero.
  template <bool kContiguous>
  static __m512i load(const int16_t* p, const QDwTiles& t) {
    if constexpr (kContiguous) {
      const __mmask32 lanes = t.n1 == kHalf ? ~__mmask32{0} : static_cast<__mmask32>((1u << (kHalf + t.n1)) - 1);
      return _mm512_maskz_loadu_epi16(lanes, p);
    } else {
      const __m256i lower = _mm256_maskz_loadu_epi16(first(t.n0), p);
      const __m256i upper = _mm256_maskz_loadu_epi16(first(t.n1), p + t.b_split);
      return _mm512_maskz_inserti64x4(0xff, _mm512_castsi256_si512(lower), upper, 1);
    }
  }
  template <bool kContiguous>
  static void step(Row& acc, const int16_t* b0, const int16_t* b1, const QDwTiles& t, __m512i w) {
    const __m512i row0 = load<kContiguous>(b0, t), row1 = load<kContiguous>(b1, t);
    acc.lo = _mm512_dpwssd_epi32(acc.lo, _mm512_unpacklo_epi16(row0, row1), w);
    acc.hi = _mm512_dpwssd_epi32(acc.hi, _mm512_unpackhi_epi16(row0, row1), w);
  }
  // Requantized in lo / hi order: vpackssdw puts the pixels back in order (per 128 bits).
  static void halves(const Row& acc, __m512i& lo, __m512i& hi) { lo = acc.lo, hi = acc.hi; }
  static void store_row(uint8_t* y, size_t y_split, __m512i lo, __m512i hi, size_t n0, size_t n1) {
    const __m256i bytes = _mm512_maskz_cvtepi16_epi8(~__mmask32{0}, _mm512_packs_epi32(lo, hi));  // lanes hold 0 to 255
    _mm_mask_storeu_epi8(y, first(n0), _mm256_castsi256_si128(bytes));
    if (n1) _mm_mask_storeu_epi8(y + y_split, first(n1), _mm256_extracti128_si256(bytes, 1));
  }
};

}  // namespace

void qdwconv_6x32_avx512vnni(const QDwconvArgs& args) {
  static_assert(kQDwRows == 6 && 2 * Avx512Dw::kHalf == 32, "the file name says the tile");
  if (args.n <= 8) return qdwconv_6x16_avx2(args);
  qdwconv_rows<Avx512Dw>(args);
}

}  // namespace pscompress
