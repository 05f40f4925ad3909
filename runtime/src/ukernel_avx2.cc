// AVX2+FMA microkernel: 6 rows x 16 pixels in 12 ymm accumulators. Compiled with
// -mavx2 -mfma for this file only and chosen at run time (see dispatch.cc).
#include <immintrin.h>

#include "ukernel.h"

namespace pscompress {

void ukernel_avx2_fma(const UkernelArgs& args) {
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
  __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
  __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
  __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
  __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
  const float* a = args.a;
  for (size_t k = 0; k < args.k; ++k, a += kMR) {
    const float* b = args.b_base + args.b_offsets[k];
    const __m256 b0 = _mm256_loadu_ps(b);
    const __m256 b1 = _mm256_loadu_ps(b + 8);
    __m256 w = _mm256_broadcast_ss(a + 0);
    c00 = _mm256_fmadd_ps(w, b0, c00); c01 = _mm256_fmadd_ps(w, b1, c01);
    w = _mm256_broadcast_ss(a + 1);
    c10 = _mm256_fmadd_ps(w, b0, c10); c11 = _mm256_fmadd_ps(w, b1, c11);
    w = _mm256_broadcast_ss(a + 2);
    c20 = _mm256_fmadd_ps(w, b0, c20); c21 = _mm256_fmadd_ps(w, b1, c21);
    w = _mm256_broadcast_ss(a + 3);
    c30 = _mm256_fmadd_ps(w, b0, c30); c31 = _mm256_fmadd_ps(w, b1, c31);
    w = _mm256_broadcast_ss(a + 4);
    c40 = _mm256_fmadd_ps(w, b0, c40); c41 = _mm256_fmadd_ps(w, b1, c41);
    w = _mm256_broadcast_ss(a + 5);
    c50 = _mm256_fmadd_ps(w, b0, c50); c51 = _mm256_fmadd_ps(w, b1, c51);
  }
  const __m256 acc[kMR][2] = {{c00, c01}, {c10, c11}, {c20, c21},
                              {c30, c31}, {c40, c41}, {c50, c51}};
  if (args.m != kMR || args.n != kNR) {
    float tile[kMR][kNR];
    for (size_t m = 0; m < kMR; ++m) {
      _mm256_storeu_ps(tile[m], acc[m][0]);
      _mm256_storeu_ps(tile[m] + 8, acc[m][1]);
    }
    store_tile(tile, args);
    return;
  }
  const __m256 lo = _mm256_set1_ps(args.lo), hi = _mm256_set1_ps(args.hi);
  for (size_t m = 0; m < kMR; ++m) {
    const __m256 bias = _mm256_set1_ps(args.bias ? args.bias[m * args.bias_stride] : 0.0f);
    __m256 v0 = _mm256_add_ps(acc[m][0], bias), v1 = _mm256_add_ps(acc[m][1], bias);
    float* y = args.y + m * args.y_row_stride;
    if (args.z) {
      const float* z = args.z + m * args.y_row_stride;
      v0 = _mm256_add_ps(v0, _mm256_loadu_ps(z));
      v1 = _mm256_add_ps(v1, _mm256_loadu_ps(z + 8));
    }
    _mm256_storeu_ps(y, _mm256_min_ps(_mm256_max_ps(v0, lo), hi));
    _mm256_storeu_ps(y + 8, _mm256_min_ps(_mm256_max_ps(v1, lo), hi));
  }
}

}  // namespace pscompress
