// AVX2 int8 depthwise kernel (qdwconv.h): up to 6 tile rows of 16 pixels in 12 ymm int32
// accumulators. Two taps per step: their rows interleaved per pixel meet the broadcast weight
// pair in vpmaddwd (int16 x int16 pair sums into int32, exact; qpairs_avx2.h says why not
// vpmaddubsw), so a tile row takes 2 loads, 2 unpacks and 2 multiply-adds per 32 MACs, where
// the fp32 AVX2 kernel takes 2 loads and 2 FMAs per 16. Compiled with -mavx2 for this file only
// and chosen at run time with the int8 GEMM kernel of the same path (dispatch.cc).
#include <immintrin.h>

#include <cstring>

#include "qdwconv_tile.h"
#include "qint_ops_avx2.h"
#include "qpairs_avx2.h"

namespace pscompress {
namespace {

struct Avx2Dw : Avx2Int8 {
  struct Row {
    __m256i lo, hi;  // pixels 0-3 | 8-11 and 4-7 | 12-15 (qpairs_avx2.h)
  };
  using Pair = __m256i;
  static Row zero() { return {_mm256_setzero_si256(), _mm256_setzero_si256()}; }
  // (w0, w1) as int16 in every 32-bit lane, w0 in the lower half: vpmaddwd's operand order.
  static __m256i pair(int8_t w0, int8_t w1) {
    const uint32_t bits = static_cast<uint16_t>(w0) | static_cast<uint32_t>(static_cast<uint16_t>(w1)) << 16;
    return _mm256_set1_epi32(static_cast<int32_t>(bits));
  }
  static constexpr size_t kHalf = 8;
  template <bool kContiguous>
  static void step(Row& acc, const int16_t* b0, const int16_t* b1, const QDwTiles& t, __m256i w) {
    auto load = [&t](const int16_t* p) {
      if constexpr (kContiguous) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
      else return load_row(p, t.b_split);
    };
    const __m256i row0 = load(b0), row1 = load(b1);
    acc.lo = _mm256_add_epi32(acc.lo, _mm256_madd_epi16(_mm256_unpacklo_epi16(row0, row1), w));
    acc.hi = _mm256_add_epi32(acc.hi, _mm256_madd_epi16(_mm256_unpackhi_epi16(row0, row1), w));
  }
  // Requantized in lo / hi order: packing them with vpackssdw puts the pixels back in order.
  static void halves(const Row& acc, __m256i& lo, __m256i& hi) { lo = acc.lo, hi = acc.hi; }
  // Saturating packs: lanes hold 0 to 255 already. The lower 128 bits end with pixels 0-7, the
  // upper with 8-15.
  static void store_row(uint8_t* y, size_t y_split, __m256i lo, __m256i hi, size_t n0, size_t n1) {
    const __m256i words = _mm256_packs_epi32(lo, hi), bytes = _mm256_packus_epi16(words, words);
    store_bytes(y, _mm256_castsi256_si128(bytes), n0);
    if (n1) store_bytes(y + y_split, _mm256_extracti128_si256(bytes, 1), n1);
  }
  static void store_bytes(uint8_t* y, __m128i bytes, size_t count) {
    if (count == 8) return _mm_storel_epi64(reinterpret_cast<__m128i*>(y), bytes);
    uint8_t part[16];
    _mm_storeu_si128(reinterpret_cast<__m128i*>(part), bytes);
    std::memcpy(y, part, count);
  }
};

}  // namespace

void qdwconv_6x16_avx2(const QDwconvArgs& args) {
  static_assert(kQDwRows == 6, "the file name says the tile");
  qdwconv_rows<Avx2Dw>(args);
}

}  // namespace pscompress
