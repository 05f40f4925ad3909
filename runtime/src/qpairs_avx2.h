// The int16 pair arithmetic of the AVX2 int8 kernels on planes of x - x_zero_point (qgemm.h
// "Pairs", qdwconv.h): B rows of 16 pixels in two halves, two taps' rows interleaved per pixel
// (vpunpcklwd / vpunpckhwd) to meet a broadcast weight pair in vpmaddwd, int16 x int16 pair
// sums into int32, exact for |x - zp| <= 255 and |w| <= 128. Not vpmaddubsw (u8 x s8 pairs
// summed into int16, as onnxruntime's AVX2 path does): two products of 255 x 127 overflow
// int16 and saturate. Included only by files compiled with -mavx2, hence the anonymous
// namespace (see ukernel_tile.h).
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>

namespace pscompress {
namespace {

// A B row, pixels 0-7 in the lower 128 bits and 8-15 (at p + split) in the upper.
inline __m256i load_row(const int16_t* p, size_t split) {
  const __m128i lower = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i upper = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + split));
  return _mm256_inserti128_si256(_mm256_castsi128_si256(lower), upper, 1);
}

// Accumulators of pair products: lo holds pixels 0-3 | 8-11, hi 4-7 | 12-15 (unpack works
// within 128-bit lanes); in pixel order, pixels 0-7 are the lower lanes of both, 8-15 the upper.
inline __m256i lower_pixels(__m256i lo, __m256i hi) { return _mm256_permute2x128_si256(lo, hi, 0x20); }
inline __m256i upper_pixels(__m256i lo, __m256i hi) { return _mm256_permute2x128_si256(lo, hi, 0x31); }

}  // namespace
}  // namespace pscompress
