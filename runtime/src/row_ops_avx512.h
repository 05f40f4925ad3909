// The AVX-512F paths' operations on a whole tile row, 16 floats in one zmm register, a row's
// tail under a lane mask. Included only by files compiled with -mavx512f; in an anonymous
// namespace, so that no other file can end up with these instructions (see ukernel_tile.h).
#pragma once

#include <immintrin.h>

#include <cstddef>

namespace pscompress {
namespace {

// dwconv_tile.h names the register type Half for every path.
struct Avx512 {
  using Half = __m512;
  static __m512 splat(float x) { return _mm512_set1_ps(x); }
  static __m512 add(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }
  static __m512 fma(__m512 w, __m512 b, __m512 acc) { return _mm512_fmadd_ps(w, b, acc); }
  // max/min return their second operand when either is NaN: v goes second so NaN stays NaN.
  // The masked forms name every lane: GCC 12 warns on the unmasked ones' undefined pass-through.
  static __m512 clamp(__m512 v, __m512 lo, __m512 hi) {
    return _mm512_maskz_min_ps(0xffff, hi, _mm512_maskz_max_ps(0xffff, lo, v));
  }
  // Lanes 0 .. count - 1 (count 1 to 16); a full row's mask is a constant, its loads plain ones.
  static __mmask16 first(size_t count) { return static_cast<__mmask16>((1u << count) - 1); }
  // Masked-off lanes are not read (no fault past a buffer's end) and read as zero.
  static __m512 load_first(const float* p, __mmask16 lanes) { return _mm512_maskz_loadu_ps(lanes, p); }
  static void store_first(float* y, __m512 v, __mmask16 lanes) { _mm512_mask_storeu_ps(y, lanes, v); }
};

}  // namespace
}  // namespace pscompress
