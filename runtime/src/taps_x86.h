// The reduction loop of the x86 GEMM kernels (avx2_fma, avx512f): step(k) for every tap k of a
// tile, prefetching the B row a few taps ahead. B rows are scattered over the image (one per
// kept tap), which the hardware prefetcher cannot predict; the offset table can. In an
// anonymous namespace, as the per-ISA operations are (see ukernel_tile.h).
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>

namespace pscompress {
namespace {

template <class Step>
__attribute__((always_inline)) inline void for_each_tap(const float* b_base, const int64_t* offsets, size_t split,
                                                         size_t k_end, Step&& step) {
  constexpr size_t kAhead = 6;
  size_t k = 0;
#pragma GCC unroll 2
  for (; k + kAhead < k_end; ++k) {
    const float* ahead = b_base + offsets[k + kAhead];
    _mm_prefetch(reinterpret_cast<const char*>(ahead), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(ahead + split + 7), _MM_HINT_T0);
    step(k);
  }
  for (; k < k_end; ++k) step(k);
}

}  // namespace
}  // namespace pscompress
