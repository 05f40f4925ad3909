// What every periodic-sparse convolution shares, whatever its element type (fp32 PSConv,
// int8 QLinearPSConv, docs/operator.md): the validation of the layer attributes, the residue
// classes and their kept taps, the packed weight panels, the phase planes' geometry and the
// tile layouts. Every violation of the contract throws std::invalid_argument naming the
// attribute or input, before any tensor memory is touched.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "ukernel.h"

namespace pscompress {

// The attributes of the layer, shared by PSConv and QLinearPSConv (PSConv adds its clamp).
struct LayerAttributes {
  std::vector<int64_t> kernel_shape, strides{1, 1}, pads{0, 0, 0, 0}, dilations{1, 1};
  int64_t group = 1;
  int64_t in_channels = 0;   // required: 0 means absent
  int64_t out_channels = 0;  // required: 0 means absent
  std::vector<int64_t> patterns;
  int64_t shift = 0;
};

// Runs fn(ctx, i) for every i in [0, total), possibly in parallel.
struct Parallel {
  void (*run)(void* self, void (*fn)(void*, size_t), size_t total, void* ctx);
  void* self;
};

// parallel.run over a callable: task(i) for every i in [0, total).
template <class Task>
void parallel_for(const Parallel& parallel, size_t total, Task& task) {
  parallel.run(parallel.self, [](void* t, size_t i) { (*static_cast<Task*>(t))(i); }, total, &task);
}

[[noreturn]] void fail(const std::string& what);  // throws std::invalid_argument(what)

inline size_t ceil_div(size_t a, size_t b) { return (a + b - 1) / b; }

// How a tile's kNR output pixels map onto the phase planes, by the output width alone. Row
// and two-row tiles are read straight from the image (pixels contiguous per half); other
// tiles are gathered first. Public so that tests can ask which layout a shape gets.
enum class TileLayout { kRow, kTwoRows, kGathered };
TileLayout choose_layout(size_t ow);

// A (group, residue class) pair's outputs split into ceil(count / kMR) panels of near-equal height, so no
// panel is left with one or two rows (which would run the microkernel at a fraction of speed).
struct Panels {
  size_t count, panels, base, big;  // the first `big` panels hold base + 1 rows, the rest base
  explicit Panels(size_t n) : count(n), panels(ceil_div(n, kMR)), base(n / panels), big(n % panels) {}
  size_t start(size_t p) const { return p * base + (p < big ? p : big); }
  size_t rows(size_t p) const { return base + (p < big ? 1 : 0); }
  size_t panel_of(size_t j) const {
    return j < big * (base + 1) ? j / (base + 1) : big + (j - big * (base + 1)) / base;
  }
};

// The phase planes of one image: per input channel, the min(SW, KW) column phases that taps
// read, each a plane of HS x WS elements holding just the padded rows and columns that output
// windows read; a channel's planes are contiguous ([c][phase][hs][ws]). Plane column idx is
// padded column idx * SW + phase. Plane row s is padded row (s / RS) * SH + s % RS with
// RS = min(SH, KH): every row where windows overlap (SH <= KH), else only the KH rows of each
// output row. Unread bottom and right padding is not stored. Sizes count elements, whatever
// their type (fp32 PSConv stores floats, QLinearPSConv int16 or Quads). With lanes L > 1
// (SparseLayer, "Lanes") a plane channel holds L input channels, element by element.
struct Geometry {
  size_t n, h, w, oh, ow, ohw;
  size_t rs, hs, ws, phases, plane, channel, image;  // plane = hs * ws, channel = phases * plane,
                                                     // image = plane channels * channel elements

  // Images per chunk: as many as the scratch budget holds, at least one.
  size_t chunk() const;
};

constexpr size_t kPadding = ~size_t{0};  // a plane row in the padding: no image row

// The plane columns [lo, hi) of one column phase that hold image columns; plane column lo holds
// image column `first` (meaningless when hi == lo: the phase then has no image column).
struct PhaseColumns {
  size_t lo, hi, first;
};

constexpr size_t kMaxTileBlock = 8;

// What a run on X of one shape needs beyond the attributes, element type aside.
struct Plan {
  Geometry geo;
  std::vector<size_t> image_rows;     // per plane row, the image row it holds, or kPadding
  std::vector<PhaseColumns> columns;  // per column phase
  std::vector<std::vector<int64_t>> rel;  // per class with outputs, B-row offsets within a group
  TileLayout layout;
  size_t tiles, tile_block;  // GEMM: pixel tiles per image, tiles per task (<= kMaxTileBlock)
  // GEMM: images whose tiles one task takes together, when an image has fewer tiles than a block
  // holds (small maps: a 4x4 map is one tile), so that a kernel call still gets several tiles.
  size_t image_block;
};

// Lanes. Input channels i and i + P of a group keep the same taps (the support repeats with
// period P), so a plane channel may hold L of them, i, i + P, ..., i + (L - 1) P, as the L
// lanes of each element: a kernel with an L-way dot product (qgemm.h, "Dots") then takes a
// whole element per tap. Plane channel q of a group holds the channels
//   i = (q / P) * L * P + q % P + l * P   for lanes l < L with i < Cg,
// q % P = i % P, so q keeps channel i's taps; a lane without a channel has zero weights. A
// group has (Cg / (L P)) P + min(P, Cg mod (L P)) plane channels. L = 1: one channel each.
class SparseLayer {
 public:
  // Validates every attribute; throws std::invalid_argument on the first violation. Packs
  // max_lanes channels per plane channel where that wastes at most half the lanes, else one.
  explicit SparseLayer(const LayerAttributes& attrs, size_t max_lanes = 1);

  // Number of weights W must hold.
  size_t packed_length() const { return packed_len_; }
  void check_w_length(size_t w_len) const;
  // Checks X's shape (rank, channels, sizes, the memory bound of docs/operator.md) and
  // returns Y's, [N, M, OH, OW].
  std::vector<int64_t> output_shape(const int64_t* x_shape, size_t x_rank) const;
  // A present B (or any per-output input) must have shape [out_channels].
  void check_per_output(const int64_t* shape, size_t rank, const char* name) const;
  Geometry geometry(const int64_t* x_shape) const;
  Plan plan(const int64_t* x_shape) const;
  // plan(x_shape), computed once per shape: a session runs one shape again and again, and a plan
  // is several allocations (6% of a 7x7 depthwise layer's run). Safe under concurrent runs.
  std::shared_ptr<const Plan> cached_plan(const int64_t* x_shape) const;

  // Packing, the microkernel's layout of a panel of kMR rows (ukernel.h, qgemm.h), has
  // slots(k): entries per row for a reduction of k plane-channel taps, at(i, m): where weight
  // slot i (lane i % L of plane-channel tap i / L) of row m goes, and kLanes = lanes(); the
  // other entries stay zero.
  //
  // Per (group, residue class) pair with outputs, numbered q = g * pairs_per_group + j (its
  // first output is g * Mg + j): where its panels start in the packed weights; the last entry
  // is their total. A pair holds ceil(outputs / kMR) panels of kMR rows, so the packed weights
  // never exceed kMR * slots(len(W)) entries. Only called once len(W) is checked: channel
  // counts alone cannot make it big.
  template <class Packing>
  std::vector<size_t> pair_offsets() const;
  // W's weights (len(W) of them, checked) into panels at `offsets` (pair_offsets).
  template <class Packing, class In, class Out>
  void pack(const In* w, const std::vector<size_t>& offsets, std::vector<Out>& a) const;

  size_t class_of(size_t o) const { return (o + shift_) % p_; }
  // Per residue class: the weights an output keeps (W's), and the plane-channel taps a
  // kernel reduces over (the same with one lane).
  size_t class_taps(size_t r) const { return class_taps_[r]; }
  size_t class_k(size_t r) const { return class_k_[r]; }
  size_t lanes() const { return lanes_; }
  size_t plane_channels() const { return groups_ * cq_; }
  // Output o's panel: its pair, the panel within the pair and its row there.
  struct Place {
    size_t pair, panel, row;
  };
  Place place(size_t o) const;
  // Depthwise (Cg == 1): where output o's weights start in W.
  size_t depthwise_weights(size_t o) const;
  bool depthwise() const { return cg_ == 1; }

  // Read-only after construction.
  size_t kh_, kw_, sh_, sw_, pt_, pl_, pb_, pr_, groups_, c_, m_, cg_, mg_, p_, shift_;
  size_t pairs_per_group_;  // (group, residue class) pairs with outputs, per group: min(Mg, P)
  size_t lanes_, cq_;       // input channels per plane channel; plane channels per group
  std::vector<uint64_t> patterns_;

 private:
  struct Tap {                 // where a kept tap of a pattern reads its input channel's planes
    uint32_t phase, row, col;  // kw mod stride_w, kh, kw / stride_w
  };
  // Weight slot (Packing's i) of each of class r's kept taps, in W's order.
  std::vector<size_t> weight_slots(size_t r) const;

  std::vector<size_t> class_taps_;  // per residue class r = (o + shift) mod P: kept taps per output
  std::vector<size_t> class_k_;     // per residue class: plane-channel taps
  std::vector<std::vector<Tap>> pattern_taps_;  // per pattern, its kept taps in W's order
  std::vector<size_t> period_starts_;  // depthwise: where output o's weights start in W, for o < P, then P
  size_t packed_len_ = 0;
  struct PlanCache {  // the last shape's plan; shared by copies, which have the same attributes
    std::mutex mutex;
    int64_t shape[4] = {-1, -1, -1, -1};
    std::shared_ptr<const Plan> plan;
  };
  std::shared_ptr<PlanCache> plan_cache_ = std::make_shared<PlanCache>();
};

template <class Packing>
std::vector<size_t> SparseLayer::pair_offsets() const {
  const size_t pairs = groups_ * pairs_per_group_;
  std::vector<size_t> offsets(pairs + 1, 0);
  for (size_t q = 0; q < pairs; ++q) {
    const size_t j = q % pairs_per_group_, first = q / pairs_per_group_ * mg_ + j;
    offsets[q + 1] =
        offsets[q] + Panels(ceil_div(mg_ - j, p_)).panels * kMR * Packing::slots(class_k_[class_of(first)]);
  }
  return offsets;
}

template <class Packing, class In, class Out>
void SparseLayer::pack(const In* w, const std::vector<size_t>& offsets, std::vector<Out>& a) const {
  if (Packing::kLanes != lanes_) fail("internal: weights packed for another lane count");
  a.assign(offsets.back(), Out{0});
  std::vector<std::vector<size_t>> slots(p_);  // per class, once it has an output
  size_t start = 0;  // W offset of output o's first weight
  for (size_t o = 0; o < m_; ++o) {
    const size_t r = class_of(o), taps = class_taps_[r];
    if (slots[r].empty()) slots[r] = weight_slots(r);
    const Place at = place(o);
    Out* dst = a.data() + offsets[at.pair] + at.panel * kMR * Packing::slots(class_k_[r]);
    for (size_t i = 0; i < taps; ++i) dst[Packing::at(slots[r][i], at.row)] = static_cast<Out>(w[start + i]);
    start += taps;
  }
}

// The B-row offsets of a gathered panel: row k starts at k * kNR (k elements, per thread).
const int64_t* gathered_offsets(size_t k);

}  // namespace pscompress
