// AVX-512F depthwise kernel (dwconv.h): up to 6 rows of 16 pixels in 6 zmm accumulators, one
// broadcast weight per tap, so that a tap of a tile takes half the AVX2 kernel's loads and
// fused multiply-adds. A row's tail (its last n mod 16 pixels, or the whole of a row of 9 to
// 15) is read and stored under a lane mask, not in a scalar loop, so that rows wider than 8
// read no float past their last pixel (less than dwconv.h allows). Lane for lane it does the
// AVX2 kernel's arithmetic (taps in order, one fused multiply-add each, store_half's order of
// operations), so the two paths give the same outputs. Measured alone (ukernel_bench, 4 taps):
// 1.3x the AVX2 kernel on 14-wide rows, 1.1x on 28, even on 56 and 112, where the
// multiply-adds are not what bounds either (one load per multiply-add). Compiled with
// -mavx512f for this file only and chosen at run time on CPUs with AVX-512F (dispatch.cc).
#include <immintrin.h>

#include "dwconv_tile.h"

namespace pscompress {
namespace {

// A whole tile row of 16 pixels per register (dwconv_tile.h names the type Half for every path).
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

void dwconv_6x16_avx512f(const DwconvArgs& args) {
  static_assert(kDwRows == 6 && dw_pixels<Avx512>() == 16, "the file name says the tile");
  // A row of up to 8 pixels would leave half of every zmm idle and read it under a mask, which
  // does not fuse into the multiply-add as the AVX2 kernel's plain ymm loads do: that kernel is
  // faster there (7x7 in ukernel_bench), with the same outputs.
  if (args.n <= 8) return dwconv_6x8_avx2_fma(args);
  dwconv_rows<Avx512>(args);
}

}  // namespace pscompress
