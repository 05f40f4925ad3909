// The AVX-512F intrinsics ukernel_6x16_avx512f.cc and dwconv_6x16_avx512f.cc use, written with
// pairs of AVX2 registers, so that ukernel_tester_avx512_emulated and dwconv_tester_avx512_emulated
// can run those kernels' code on a CPU without AVX-512 (most machines that build this project).
// It checks the kernels' logic (loads, lanes, masks, halves, epilogue), not the CPU's
// instructions. Included before the kernel file (ukernel_6x16_avx512f_emulated.cc,
// dwconv_6x16_avx512f_emulated.cc), which then defines the kernel under its name with
// "_emulated"; each stand-in follows Intel's definition of the intrinsic.
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
inline Ps512 add_ps(Ps512 a, Ps512 b) { return {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)}; }
// Lane i of v where bit i of k is set, else zero.
inline Ps512 keep_lanes(uint16_t k, Ps512 v) {
  alignas(32) float lanes[16];
  _mm256_store_ps(lanes, v.lo);
  _mm256_store_ps(lanes + 8, v.hi);
  for (int i = 0; i < 16; ++i)
    if (!(k >> i & 1)) lanes[i] = 0.0f;
  return {_mm256_load_ps(lanes), _mm256_load_ps(lanes + 8)};
}
// vminps / vmaxps on ymm return the second operand when either is NaN, as the zmm forms do.
inline Ps512 maskz_min_ps(uint16_t k, Ps512 a, Ps512 b) {
  return keep_lanes(k, {_mm256_min_ps(a.lo, b.lo), _mm256_min_ps(a.hi, b.hi)});
}
inline Ps512 maskz_max_ps(uint16_t k, Ps512 a, Ps512 b) {
  return keep_lanes(k, {_mm256_max_ps(a.lo, b.lo), _mm256_max_ps(a.hi, b.hi)});
}
// Masked-off lanes are neither read nor written, so that an ASan build reports what the real
// masked load and store would touch (nothing past the lanes asked for).
inline Ps512 maskz_loadu_ps(uint16_t k, const float* p) {
  alignas(32) float lanes[16] = {};
  for (int i = 0; i < 16; ++i)
    if (k >> i & 1) lanes[i] = p[i];
  return {_mm256_load_ps(lanes), _mm256_load_ps(lanes + 8)};
}
inline Ps512 loadu_ps(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
// Lane i from p[i] where bit i of k is set, else src's lane i.
inline Ps512 mask_loadu_ps(Ps512 src, uint16_t k, const float* p) {
  alignas(32) float lanes[16];
  _mm256_store_ps(lanes, src.lo);
  _mm256_store_ps(lanes + 8, src.hi);
  for (int i = 0; i < 16; ++i)
    if (k >> i & 1) lanes[i] = p[i];
  return {_mm256_load_ps(lanes), _mm256_load_ps(lanes + 8)};
}
inline void mask_storeu_ps(float* p, uint16_t k, Ps512 v) {
  alignas(32) float lanes[16];
  _mm256_store_ps(lanes, v.lo);
  _mm256_store_ps(lanes + 8, v.hi);
  for (int i = 0; i < 16; ++i)
    if (k >> i & 1) p[i] = lanes[i];
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
#define _mm512_add_ps pscompress_emulated::add_ps
#define _mm512_maskz_min_ps pscompress_emulated::maskz_min_ps
#define _mm512_maskz_max_ps pscompress_emulated::maskz_max_ps
#define _mm512_maskz_loadu_ps pscompress_emulated::maskz_loadu_ps
#define _mm512_loadu_ps pscompress_emulated::loadu_ps
#define _mm512_mask_loadu_ps pscompress_emulated::mask_loadu_ps
#define _mm512_mask_storeu_ps pscompress_emulated::mask_storeu_ps
#define _mm512_castpd_ps pscompress_emulated::castpd_ps
#define _mm512_castps_pd pscompress_emulated::castps_pd
#define _mm512_castpd256_pd512 pscompress_emulated::castpd256_pd512
#define _mm512_mask_broadcast_f64x4 pscompress_emulated::mask_broadcast_f64x4
#define _mm512_maskz_extractf64x4_pd pscompress_emulated::maskz_extractf64x4_pd
#define ukernel_6x16_avx512f ukernel_6x16_avx512f_emulated
#define dwconv_6x16_avx512f dwconv_6x16_avx512f_emulated
