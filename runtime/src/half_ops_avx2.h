// The AVX2+FMA path's operations on half a tile row, 8 floats in one register. Included only
// by files compiled with -mavx2 -mfma; in an anonymous namespace, so that no other file can
// end up with these AVX2 instructions (see ukernel_tile.h).
#pragma once

#include <immintrin.h>

#include <cstddef>

namespace pscompress {
namespace {

struct Avx2 {
  using Half = __m256;
  static __m256 splat(float x) { return _mm256_set1_ps(x); }
  static __m256 add(__m256 a, __m256 b) { return _mm256_add_ps(a, b); }
  static __m256 fma(__m256 w, __m256 b, __m256 acc) { return _mm256_fmadd_ps(w, b, acc); }
  static __m256 load(const float* p) { return _mm256_loadu_ps(p); }
  // max/min return their second operand when either is NaN: v goes second so NaN stays NaN.
  static __m256 clamp(__m256 v, __m256 lo, __m256 hi) { return _mm256_min_ps(hi, _mm256_max_ps(lo, v)); }

  // The first `count` (0 to 8) lanes of v to y, in order, in at most four stores.
  static void store_first(float* y, __m256 v, size_t count) {
    if (count == 8) return _mm256_storeu_ps(y, v);
    __m128 part = _mm256_castps256_ps128(v);
    if (count >= 4) {
      _mm_storeu_ps(y, part);
      part = _mm256_extractf128_ps(v, 1);
      y += 4;
      count -= 4;
    }
    if (count >= 2) {
      _mm_storel_pi(reinterpret_cast<__m64*>(y), part);
      part = _mm_movehl_ps(part, part);
      y += 2;
      count -= 2;
    }
    if (count) _mm_store_ss(y, part);
  }
};

}  // namespace
}  // namespace pscompress
