// The GEMM part of a run, for any plane element type: the phase planes of a chunk of images,
// which pixel tiles of which (group, residue class) pair a task computes, and where each
// tile's B rows and outputs lie. The caller fills a channel's planes from its input and runs
// its microkernel (ukernel.h, qgemm.h) on one panel and its tiles, with its own weights and epilogue.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "phase_planes.h"
#include "sparse_layer.h"

namespace pscompress {

// A tile of up to kNR output pixels of one image, as the microkernels read it.
template <class E>
struct TileSource {
  const E* b_base;
  const int64_t* b_offsets;
  size_t b_split, y_offset, y_split, valid;  // y_offset: of pixel 0 within an output channel
};

// A panel of pair q on image n: `rows` outputs with k taps each, the first output o, then
// every P-th; `panel` numbers it within the pair.
struct PanelCall {
  size_t n, q, k, panel, o, rows;
};

// Tasks for `images` images of a chunk: per group of plan.image_block images, per (group, class)
// pair, per block of tiles.
inline size_t gemm_tasks(const SparseLayer& layer, const Plan& plan, size_t images) {
  return ceil_div(images, plan.image_block) * layer.groups_ * layer.pairs_per_group_ * ceil_div(plan.tiles, plan.tile_block);
}

// One task: a block of pixel tiles of one (group, class) pair of a group of the chunk's `images`
// images, planes = the chunk's phase planes ([image][c][phase][hs][ws], then kNR spare
// elements); kernel(call, tiles, count) computes a panel on the block's tiles, call.n the first
// image: a later image's tiles carry its distance in their y_offset. Panels run outer and tiles
// inner, so a weight panel stays in L1 while the block's input rows stay in L2.
template <class E, class Kernel>
void gemm_tile_block(const SparseLayer& cv, const Plan& plan, const E* planes, size_t images, size_t task,
                     Kernel&& kernel) {
  const Geometry& geo = plan.geo;
  const size_t blocks = ceil_div(plan.tiles, plan.tile_block);
  const size_t t0 = (task % blocks) * plan.tile_block;
  const size_t t_end = std::min(plan.tiles, t0 + plan.tile_block);
  const size_t pairs = cv.groups_ * cv.pairs_per_group_;
  const size_t q = task / blocks % pairs, n_first = task / blocks / pairs * plan.image_block;
  const size_t n_end = std::min(images, n_first + plan.image_block);
  const size_t g = q / cv.pairs_per_group_, j = q % cv.pairs_per_group_;
  const size_t first = g * cv.mg_ + j, r = cv.class_of(first);
  const Panels panels(ceil_div(cv.mg_ - j, cv.p_));
  const size_t k = cv.class_k(r);
  const int64_t* rel = plan.rel[r].data();
  const size_t count = (n_end - n_first) * (t_end - t0);  // at most kMaxTileBlock (sparse_layer.cc)

  // B reads. Every half row a tile reads starts inside the planes, on a plane row that one of
  // the tile's valid outputs reads: a row tile's at most 15 elements and a two-row tile's at
  // most 2 elements before that row's end (OW >= 6), so their whole-vector tails end within
  // the next row or the kNR spare elements after the last plane. A two-row tile without a
  // second output row (odd OH) rereads its first (b_split = 0): row 2 * t + 1 would lie past
  // the planes. Gathered tiles read single valid pixels into a panel of kNR elements per row.
  TileSource<E> tiles[kMaxTileBlock];
  thread_local std::vector<E> gathered;
  if (plan.layout == TileLayout::kGathered && gathered.size() < count * k * kNR) gathered.resize(count * k * kNR);
  const size_t row = geo.rs * geo.ws;  // plane elements from one output row's window to the next
  TileSource<E>* tile = tiles;
  for (size_t n = n_first; n < n_end; ++n) {
    const E* group_image = planes + n * geo.image + g * cv.cq_ * geo.channel;
    const size_t y_image = (n - n_first) * cv.m_ * geo.ohw;  // from the call's image to this one
    for (size_t t = t0; t < t_end; ++t, ++tile) {
      if (plan.layout == TileLayout::kRow) {
        const size_t tiles_per_row = ceil_div(geo.ow, kNR);
        const size_t oh = t / tiles_per_row, ow0 = (t % tiles_per_row) * kNR;
        *tile = {group_image + oh * row + ow0, rel, 8, y_image + oh * geo.ow + ow0, 8, std::min(kNR, geo.ow - ow0)};
        continue;
      }
      if (plan.layout == TileLayout::kTwoRows) {  // output rows oh and oh + 1, one per half
        const size_t oh = 2 * t;
        const bool second = oh + 1 < geo.oh;
        *tile = {group_image + oh * row, rel, second ? row : 0, y_image + oh * geo.ow, geo.ow,
                 second ? 8 + geo.ow : geo.ow};
        continue;
      }
      // The tile's pixels span output rows: gather them into kNR-wide rows.
      const size_t q0 = t * kNR, valid = std::min(kNR, geo.ohw - q0);
      int64_t pix[kNR];
      for (size_t i = 0; i < kNR; ++i) {
        const size_t px = q0 + std::min(i, valid - 1);
        pix[i] = static_cast<int64_t>((px / geo.ow) * row + px % geo.ow);
      }
      E* const panel = gathered.data() + (tile - tiles) * k * kNR;
      E* dst = panel;
      for (size_t kk = 0; kk < k; ++kk, dst += kNR) {
        const E* src = group_image + rel[kk];
        for (size_t i = 0; i < kNR; ++i) dst[i] = src[pix[i]];
      }
      *tile = {panel, gathered_offsets(k), 8, y_image + q0, 8, valid};
    }
  }

  for (size_t panel = 0; panel < panels.panels; ++panel) {
    kernel(PanelCall{n_first, q, k, panel, first + panels.start(panel) * cv.p_, panels.rows(panel)}, tiles, count);
  }
}

// A block's tiles to a kernel that takes several at once (ukernel.h; qgemm.h, "Dots"), up to
// `most` per call as long as they share b_split (only the last two-row tile of an odd OH differs).
template <class Args, class Kernel>
void run_tile_groups(Kernel kernel, const Args* tiles, size_t count, size_t most) {
  for (size_t t = 0, end; t < count; t = end) {
    for (end = t + 1; end < count && end - t < most && tiles[end].b_split == tiles[t].b_split;) ++end;
    kernel(tiles + t, end - t);
  }
}

// A chunk of at least this many image groups (Plan::image_block images each) runs one task per
// group, its planes' fill and then every panel on them, instead of a pass filling the chunk's planes
// and a pass over its panels: a group's planes are still in L2 when its panels read them (a
// chunk's seldom fit), and the parallel loop's barrier between the passes goes. Fewer groups keep
// the two passes, whose many small tasks keep every thread busy on a small batch.
constexpr size_t kGroupTasksFrom = 16;

// Per chunk of images (Geometry::chunk; the first is image n0): fill(n0, task, planes) fills
// (image, plane channel) `task` of the chunk, its planes, padding included, then
// kernel(n0, call, tiles, count) computes every panel of the chunk on its tiles (gemm_tile_block), then
// done(n0, images). The planes are followed by kNR spare elements that complete the last rows'
// whole-vector reads ("B reads"); uninitialised on purpose, as fill writes every plane element.
template <class E, class Fill, class Kernel, class Done>
void run_gemm(const SparseLayer& layer, const Plan& plan, const Parallel& parallel, Fill&& fill, Kernel&& kernel,
              Done&& done) {
  const Geometry& geo = plan.geo;
  const size_t chunk = geo.chunk();
  std::unique_ptr<E[]> xph(new E[chunk * geo.image + kNR]);
  std::fill_n(xph.get() + chunk * geo.image, kNR, E{0});
  size_t n0 = 0, images = 0;  // the chunk's first image and its image count
  auto fill_task = [&](size_t task) { fill(n0, task, xph.get() + task * geo.channel); };
  auto gemm_task = [&](size_t task) {
    gemm_tile_block(layer, plan, xph.get(), images, task,
                    [&](const PanelCall& call, const TileSource<E>* tiles, size_t count) { kernel(n0, call, tiles, count); });
  };
  const size_t channels = layer.plane_channels();
  size_t groups = 0;  // of the chunk's images
  auto group_task = [&](size_t group) {
    const size_t first = group * plan.image_block, end = std::min(images, first + plan.image_block);
    for (size_t t = first * channels; t < end * channels; ++t) fill_task(t);
    const size_t per_group = gemm_tasks(layer, plan, images) / groups;  // gemm_tile_block's order: groups outer
    for (size_t t = group * per_group; t < (group + 1) * per_group; ++t) gemm_task(t);
  };
  for (; n0 < geo.n; n0 += chunk) {
    images = std::min(chunk, geo.n - n0);
    groups = ceil_div(images, plan.image_block);
    if (groups >= kGroupTasksFrom) {
      parallel_for(parallel, groups, group_task);
    } else {
      parallel_for(parallel, images * channels, fill_task);
      parallel_for(parallel, gemm_tasks(layer, plan, images), gemm_task);
    }
    done(n0, images);
  }
}

}  // namespace pscompress
