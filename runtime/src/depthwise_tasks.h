// The run of a depthwise layer (one input channel per group, Cg == 1) for any plane element
// type: fp32 PSConv (psconv.cc, dwconv.h) and int8 QLinearPSConv (qlinear_psconv.cc,
// qdwconv.h). Each input channel is copied into phase planes of its thread (one channel's, which
// stay in L1/L2) and then the channel's Mg outputs are computed,
// every row of an output in one kernel call, instead of a separate pass writing every
// channel's planes into one scratch first. The padding is filled once per call and thread,
// since it lies at the same places for every channel; a thread keeps its planes for later runs.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "phase_planes.h"
#include "sparse_layer.h"

namespace pscompress {

// One output channel of one image, as a depthwise kernel reads it.
struct DepthwiseOutput {
  size_t n, o;               // image (from the call's first), output channel
  size_t k;                  // kept taps: those of o's residue class
  size_t weights;            // where o's weights start in W
  const int64_t* b_offsets;  // the class's tap offsets in the planes
  size_t y;                  // o's first output from the call's first image: (n * M + o) * OH * OW
};

// Output pixels a task computes at least (whole channels): on small maps a task per channel costs
// more in dispatch and setup than its channel's work.
constexpr size_t kDepthwiseTaskPixels = 1024;

// For images [0, images): channel t = (image t / C, channel t % C) runs fill(t, planes), which
// copies the channel into its planes (padding already there), then output(DepthwiseOutput,
// planes) for each of the channel's outputs. A task takes a run of consecutive channels of one image.
// B reads: a kernel reads at most 7 elements past a row's last pixel (dwconv.h, qdwconv.h),
// which end within the next plane row, the next phase's plane, or the kNR spare elements after
// the thread's planes (zeros or an earlier run's values, read only into discarded lanes).
template <class E, class Fill, class Output>
void run_depthwise(const SparseLayer& layer, const Plan& plan, const Parallel& parallel, size_t images, Fill&& fill,
                   Output&& output) {
  struct Planes {
    std::vector<E> elements;  // geo.channel + kNR
    uint64_t padded_for = 0;  // the call whose padding they hold
  };
  static std::atomic<uint64_t> calls{0};
  const uint64_t id = ++calls;  // unique per call in the process
  const Geometry& geo = plan.geo;
  const size_t c = layer.c_;
  const size_t per_task = std::min(c, std::max<size_t>(1, kDepthwiseTaskPixels / std::max<size_t>(1, geo.ohw * layer.mg_)));
  const size_t blocks = ceil_div(c, per_task);
  auto task = [&](size_t b) {
    thread_local Planes planes;
    if (planes.padded_for != id) {
      if (planes.elements.size() < geo.channel + kNR) planes.elements.resize(geo.channel + kNR);
      fill_padding(plan, planes.elements.data());
      planes.padded_for = id;
    }
    E* const elements = planes.elements.data();
    const size_t n = b / blocks, first = b % blocks * per_task, last = std::min(c, first + per_task);
    for (size_t channel = first; channel < last; ++channel) {
      fill(n * c + channel, elements);
      for (size_t o = channel * layer.mg_; o < (channel + 1) * layer.mg_; ++o) {
        const size_t r = layer.class_of(o);
        output(DepthwiseOutput{n, o, layer.class_k(r), layer.depthwise_weights(o), plan.rel[r].data(),
                               (n * layer.m_ + o) * geo.ohw},
               static_cast<const E*>(elements));
      }
    }
  };
  parallel_for(parallel, images * blocks, task);
}

}  // namespace pscompress
