// The int8 epilogue's operations (qgemm_tile.h) on 8 int32 / float lanes in a ymm register,
// and a weight broadcast for the x86 int8 kernels (qgemm avx2, qdot avx512vnni and avxvnni), each
// compiled with its own flags: hence the anonymous namespace (see ukernel_tile.h).
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace pscompress {
namespace {

struct Avx2Int8 {
  using Int = __m256i;
  using Real = __m256;
  static __m256i splat_int(int32_t x) { return _mm256_set1_epi32(x); }
  static __m256 splat_real(float x) { return _mm256_set1_ps(x); }
  static __m256i add(__m256i a, __m256i b) { return _mm256_add_epi32(a, b); }
  static __m256 to_real(__m256i a) { return _mm256_cvtepi32_ps(a); }
  static __m256 mul(__m256 a, __m256 b) { return _mm256_mul_ps(a, b); }
  static __m256 clamp(__m256 v, __m256 lo, __m256 hi) { return _mm256_min_ps(hi, _mm256_max_ps(lo, v)); }
  static __m256i round(__m256 v) { return _mm256_cvtps_epi32(v); }  // MXCSR's mode: to nearest even
  static void store_first(uint8_t* p, __m256i v, size_t count) {
    const __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    const __m128i bytes = _mm_packus_epi16(words, words);
    if (count == 8) return _mm_storel_epi64(reinterpret_cast<__m128i*>(p), bytes);
    uint8_t part[16];
    _mm_storeu_si128(reinterpret_cast<__m128i*>(part), bytes);
    std::memcpy(p, part, count);
  }
};

// The four bytes at p in every 32-bit lane: a weight pair (int16) or quad (int8) of one row, as
// vpmaddwd and vpdpbusd take it against a whole B row.
inline __m256i broadcast_dword(const void* p) {
  int32_t dword;
  std::memcpy(&dword, p, sizeof dword);
  return _mm256_set1_epi32(dword);
}

}  // namespace
}  // namespace pscompress
