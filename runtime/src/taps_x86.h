// The reduction loop of the x86 GEMM kernels (avx2_fma, avx512f, int8 avx2): step(k) for
// every kTaps-th tap k of a tile (a step takes taps k to k + kTaps - 1; with k_end not a
// multiple of kTaps, the last step's taps past k_end - 1 are the step's to skip), prefetching
// the B rows a few taps ahead. B rows are scattered over the image (one per kept tap), which
// the hardware prefetcher cannot predict; the offset table can. The weights, read in order
// (`a`, a step's `a_step` bytes each), are prefetched kWeightsAhead bytes ahead: a panel is read
// once per tile block, and the weights of a wide layer on a small map (VGG-16's 512 channels at
// 4x4 and 2x2, 4 MB a layer) come from memory, where the hardware prefetcher alone kept them
// at half the bandwidth dense Conv reached. One call site of step, so that its accumulators
// stay in registers. In an anonymous namespace, as the per-ISA operations are (see ukernel_tile.h).
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>

namespace pscompress {
namespace {

template <class T>
__attribute__((always_inline)) inline void prefetch_row(const T* row, size_t split) {
  _mm_prefetch(reinterpret_cast<const char*>(row), _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(row + split + 7), _MM_HINT_T0);
}

constexpr size_t kWeightsAhead = 4096;

template <size_t kTaps = 1, class T, class Step>
__attribute__((always_inline)) inline void for_each_tap(const T* b_base, const int64_t* offsets, size_t split,
                                                         size_t k_end, const void* a, size_t a_step, Step&& step) {
  static_assert(kTaps == 1 || kTaps == 2, "single taps or pairs");
  constexpr size_t kAhead = 6;
  const char* weights = static_cast<const char*>(a) + kWeightsAhead;  // prefetches never fault
  size_t k = 0;
#pragma GCC unroll 2
  for (; k + kAhead + (kTaps - 1) < k_end; k += kTaps, weights += a_step) {
    prefetch_row(b_base + offsets[k + kAhead], split);
    if constexpr (kTaps == 2) prefetch_row(b_base + offsets[k + kAhead + 1], split);
    _mm_prefetch(weights, _MM_HINT_T0);
    step(k);
  }
  for (; k < k_end; k += kTaps) step(k);
}

}  // namespace
}  // namespace pscompress
