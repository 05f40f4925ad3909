// The dot kernels' planes (qgemm.h, "Dots") from four input channels: Quads of one byte of
// each. The compiler leaves a scalar loop over four loads a runtime stride apart at about 2
// cycles a byte, which costs a narrow int8 layer (64 outputs) more than its dot products; the
// baseline ISA of each target interleaves 16 pixels at a time instead (SSE2 byte and word
// unpacks, NEON's four-way store). qgemm_tester compares it with the scalar loop.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__SSE2__)
#include <emmintrin.h>
#elif defined(__ARM_NEON)
#include <arm_neon.h>
#endif

#include "qgemm.h"

namespace pscompress {

// dst[i] = {src[i], src[stride + i], src[2 * stride + i], src[3 * stride + i]} for i < n.
inline void interleave_quads(Quad* dst, const uint8_t* src, size_t stride, size_t n) {
  size_t i = 0;
#if defined(__SSE2__)
  for (; i + 16 <= n; i += 16) {
    auto lane = [&](size_t l) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + l * stride + i)); };
    const __m128i a = lane(0), b = lane(1), c = lane(2), d = lane(3);
    const __m128i ab_lo = _mm_unpacklo_epi8(a, b), ab_hi = _mm_unpackhi_epi8(a, b);  // a0 b0 a1 b1 ...
    const __m128i cd_lo = _mm_unpacklo_epi8(c, d), cd_hi = _mm_unpackhi_epi8(c, d);
    __m128i* const out = reinterpret_cast<__m128i*>(dst + i);
    _mm_storeu_si128(out, _mm_unpacklo_epi16(ab_lo, cd_lo));  // pixels 0-3
    _mm_storeu_si128(out + 1, _mm_unpackhi_epi16(ab_lo, cd_lo));
    _mm_storeu_si128(out + 2, _mm_unpacklo_epi16(ab_hi, cd_hi));
    _mm_storeu_si128(out + 3, _mm_unpackhi_epi16(ab_hi, cd_hi));  // pixels 12-15
  }
#elif defined(__ARM_NEON)
  for (; i + 16 <= n; i += 16) {
    const uint8x16x4_t lanes{{vld1q_u8(src + i), vld1q_u8(src + stride + i), vld1q_u8(src + 2 * stride + i),
                              vld1q_u8(src + 3 * stride + i)}};
    vst4q_u8(reinterpret_cast<uint8_t*>(dst + i), lanes);
  }
#endif
  for (; i < n; ++i) dst[i] = {{src[i], src[stride + i], src[2 * stride + i], src[3 * stride + i]}};
}

}  // namespace pscompress
