// The AVX-512F intrinsics ukernel_6x16_avx512f.cc uses, written with pairs of AVX2 registers,
// so that ukernel_tester_avx512_emulated can run that kernel's code on a CPU without AVX-512
// (most machines that build this project). It checks the kernel's logic (loads, lanes, halves,
// epilogue), not the CPU's instructions. Included before the kernel file
// (ukernel_6x16_avx512f_emulated.cc), which then defines ukernel_6x16_avx512f_emulated; each
// stand-in follows Intel's definition of the intrinsic.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace pscompress_emulated {

struct Ps512 { __m256 lo, hi; };
struct Pd512 { __m256d lo, hi; };

inline Ps512 setzero_ps() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
inline Ps512 set1_ps(float x) { return {_mm256_set1_ps(x), _mm256_set1_ps(x)}; }
inline Ps512 fmadd_ps(Ps512 a, Ps512 b, Ps512 c) {
  return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
}
inline Ps512 castpd_ps(Pd512 a) { return {_mm256_castpd_ps(a.lo), _mm256_castpd_ps(a.hi)}; }
inline Pd512 castps_pd(Ps512 a) { return {_mm256_castps_pd(a.lo), _mm256_castps_pd(a.hi)}; }
// The upper half is undefined: NaN here, so that a kernel relying on it fails the tester.
inline Pd512 castpd256_pd512(__m256d a) { return {a, _mm256_set1_pd(__builtin_nan(""))}; }
// Lane i (of 8 doubles) is a[i % 4] where bit i of k is set, else src[i].
inline Pd512 mask_broadcast_f64x4(Pd512 src, uint8_t k, __m256d a) {
  alignas(32) double lanes[8], from[4];
  _mm256_store_pd(lanes, src.lo);
  _mm256_store_pd(lanes + 4, src.hi);
  _mm256_store_pd(from, a);
  for (int i = 0; i < 8; ++i)
    if (k >> i & 1) lanes[i] = from[i % 4];
  return {_mm256_load_pd(lanes), _mm256_load_pd(lanes + 4)};
}
// Half imm & 1 of a, its lane i kept where bit i of k is set, else zero.
inline __m256d maskz_extractf64x4_pd(uint8_t k, Pd512 a, int imm) {
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, imm & 1 ? a.hi : a.lo);
  for (int i = 0; i < 4; ++i)
    if (!(k >> i & 1)) lanes[i] = 0.0;
  return _mm256_load_pd(lanes);
}

}  // namespace pscompress_emulated

#define __m512 pscompress_emulated::Ps512
#define __m512d pscompress_emulated::Pd512
#define _mm512_setzero_ps pscompress_emulated::setzero_ps
#define _mm512_set1_ps pscompress_emulated::set1_ps
#define _mm512_fmadd_ps pscompress_emulated::fmadd_ps
#define _mm512_castpd_ps pscompress_emulated::castpd_ps
#define _mm512_castps_pd pscompress_emulated::castps_pd
#define _mm512_castpd256_pd512 pscompress_emulated::castpd256_pd512
#define _mm512_mask_broadcast_f64x4 pscompress_emulated::mask_broadcast_f64x4
#define _mm512_maskz_extractf64x4_pd pscompress_emulated::maskz_extractf64x4_pd
#define ukernel_6x16_avx512f ukernel_6x16_avx512f_emulated
