#include "sparse_layer.h"

#include <algorithm>
#include <stdexcept>

namespace pscompress {

void fail(const std::string& what) { throw std::invalid_argument(what); }

namespace {

size_t mul(size_t a, size_t b, const char* what) {
  size_t r;
  if (__builtin_mul_overflow(a, b, &r)) fail(std::string(what) + ": size overflows");
  return r;
}
size_t add(size_t a, size_t b, const char* what) {
  size_t r;
  if (__builtin_add_overflow(a, b, &r)) fail(std::string(what) + ": size overflows");
  return r;
}

// Keeps every later product far from overflow and every allocation sane.
constexpr size_t kMaxElements = size_t{1} << 40;

void require_ints(const std::vector<int64_t>& v, size_t count, int64_t lo, int64_t hi,
                  const char* name) {
  if (v.size() != count)
    fail(std::string(name) + ": expected " + std::to_string(count) + " values, got " +
         std::to_string(v.size()));
  for (int64_t x : v)
    if (x < lo || x > hi)
      fail(std::string(name) + ": value " + std::to_string(x) + " outside [" +
           std::to_string(lo) + ", " + std::to_string(hi) + "]");
}

// Scratch: a chunk of images' phase planes stay within this many elements (16 MiB of floats)
// unless one image needs more, which may be at most 4 x (its input + output) plus this much,
// or the model is rejected (docs/operator.md, "Memory").
constexpr size_t kScratchBudget = size_t{1} << 22;

}  // namespace

SparseLayer::SparseLayer(const LayerAttributes& a, size_t max_lanes) {
  require_ints(a.kernel_shape, 2, 1, 63, "kernel_shape");
  kh_ = static_cast<size_t>(a.kernel_shape[0]);
  kw_ = static_cast<size_t>(a.kernel_shape[1]);
  const size_t k2 = kh_ * kw_;
  if (k2 > 63) fail("kernel_shape: KH * KW = " + std::to_string(k2) + " exceeds 63");
  require_ints(a.strides, 2, 1, 64, "strides");
  sh_ = static_cast<size_t>(a.strides[0]);
  sw_ = static_cast<size_t>(a.strides[1]);
  require_ints(a.pads, 4, 0, 1024, "pads");
  pt_ = static_cast<size_t>(a.pads[0]);
  pl_ = static_cast<size_t>(a.pads[1]);
  pb_ = static_cast<size_t>(a.pads[2]);
  pr_ = static_cast<size_t>(a.pads[3]);
  require_ints(a.dilations, 2, 1, 1, "dilations (the native kernel supports 1 only)");
  const int64_t limit = static_cast<int64_t>(kMaxElements);
  if (a.in_channels < 1 || a.in_channels > limit) fail("in_channels: missing or out of range");
  if (a.out_channels < 1 || a.out_channels > limit) fail("out_channels: missing or out of range");
  if (a.group < 1 || a.in_channels % a.group || a.out_channels % a.group)
    fail("group: must be >= 1 and divide in_channels and out_channels");
  c_ = static_cast<size_t>(a.in_channels);
  m_ = static_cast<size_t>(a.out_channels);
  groups_ = static_cast<size_t>(a.group);
  cg_ = c_ / groups_;
  mg_ = m_ / groups_;
  if (a.patterns.empty() || a.patterns.size() > 256) fail("patterns: need 1 to 256 entries");
  p_ = a.patterns.size();
  for (int64_t s : a.patterns) {
    if (s < 1 || static_cast<uint64_t>(s) >= (uint64_t{1} << k2))
      fail("patterns: bitmask " + std::to_string(s) + " outside [1, 2^(KH*KW))");
    patterns_.push_back(static_cast<uint64_t>(s));
  }
  if (a.shift < 0 || static_cast<size_t>(a.shift) >= p_) fail("shift: must be in [0, P)");
  shift_ = static_cast<size_t>(a.shift);
  // Decoded once: a run then places every tap with multiply-adds alone (the divisions, per
  // run and tap, cost small layers a tenth of their time).
  for (uint64_t s : patterns_) {
    std::vector<Tap>& taps = pattern_taps_.emplace_back();
    for (uint64_t bits = s; bits; bits &= bits - 1) {
      const size_t pos = __builtin_ctzll(bits), kh = pos / kw_, kw = pos % kw_;
      taps.push_back({static_cast<uint32_t>(kw % sw_), static_cast<uint32_t>(kh), static_cast<uint32_t>(kw / sw_)});
    }
  }

  // Kept taps per residue class; the support repeats with period P over i, so sum periods.
  std::vector<size_t> pop(p_);
  size_t period_sum = 0;
  for (size_t j = 0; j < p_; ++j) period_sum += pop[j] = __builtin_popcountll(patterns_[j]);
  // Taps over the first n channels (or plane channels) of class r: periods, then the rest.
  auto taps_over = [&](size_t n, size_t r) {
    size_t k = mul(n / p_, period_sum, "in_channels");
    for (size_t i = 0; i < n % p_; ++i) k += pop[(r + i) % p_];
    return k;
  };
  auto plane_channels = [&](size_t lanes) { return cg_ / (lanes * p_) * p_ + std::min(p_, cg_ % (lanes * p_)); };
  lanes_ = max_lanes > 1 && plane_channels(max_lanes) * max_lanes <= 2 * cg_ ? max_lanes : 1;
  cq_ = plane_channels(lanes_);
  class_taps_.resize(p_);
  class_k_.resize(p_);
  for (size_t r = 0; r < p_; ++r) {
    class_taps_[r] = taps_over(cg_, r);
    class_k_[r] = taps_over(cq_, r);
    const size_t outputs = m_ / p_ + ((r + p_ - shift_) % p_ < m_ % p_ ? 1 : 0);
    packed_len_ = add(packed_len_, mul(outputs, class_taps_[r], "W"), "W");
  }
  if (packed_len_ > kMaxElements) fail("W: the layer is too large for the native kernel");
  pairs_per_group_ = std::min(mg_, p_);
  // Depthwise, output o keeps class_taps_[(o + shift) mod P] weights: W repeats a period of P outputs.
  if (depthwise()) {
    period_starts_.assign(p_ + 1, 0);
    for (size_t o = 0; o < p_; ++o) period_starts_[o + 1] = period_starts_[o] + class_taps_[class_of(o)];
  }
}

size_t SparseLayer::depthwise_weights(size_t o) const {
  return o / p_ * period_starts_[p_] + period_starts_[o % p_];
}

std::vector<size_t> SparseLayer::weight_slots(size_t r) const {
  std::vector<size_t> first(cq_ + 1, 0);  // plane channel q's first tap in the class's reduction
  for (size_t q = 0; q < cq_; ++q) first[q + 1] = first[q] + pattern_taps_[(r + q) % p_].size();
  std::vector<size_t> slots;
  slots.reserve(class_taps_[r]);
  for (size_t i = 0; i < cg_; ++i) {
    const size_t q = i / (lanes_ * p_) * p_ + i % p_, lane = i / p_ % lanes_;
    for (size_t t = 0; t < pattern_taps_[(r + i) % p_].size(); ++t) slots.push_back((first[q] + t) * lanes_ + lane);
  }
  return slots;
}

SparseLayer::Place SparseLayer::place(size_t o) const {
  const size_t g = o / mg_, within = o - g * mg_, j = within % p_, t = within / p_;
  const Panels panels(ceil_div(mg_ - j, p_));
  const size_t panel = panels.panel_of(t);
  return {g * pairs_per_group_ + j, panel, t - panels.start(panel)};
}

size_t Geometry::chunk() const { return std::min(n, std::max<size_t>(1, kScratchBudget / image)); }

Geometry SparseLayer::geometry(const int64_t* x_shape) const {
  Geometry g{};
  g.n = x_shape[0];
  g.h = x_shape[2];
  g.w = x_shape[3];
  const size_t hp = g.h + pt_ + pb_, wp = g.w + pl_ + pr_;
  if (hp < kh_ || wp < kw_) fail("X: spatial size smaller than the (padded) kernel, output would be empty");
  g.oh = (hp - kh_) / sh_ + 1;
  g.ow = (wp - kw_) / sw_ + 1;
  g.ohw = mul(g.oh, g.ow, "Y");
  g.rs = std::min(sh_, kh_);
  g.hs = (g.oh - 1) * g.rs + kh_;  // <= hp
  g.ws = g.ow + (kw_ - 1) / sw_;   // = ceil(((OW - 1) * SW + KW) / SW) <= ceil(wp / SW)
  g.phases = std::min(sw_, kw_);
  g.plane = mul(g.hs, g.ws, "X");
  g.channel = mul(g.phases, g.plane, "X");
  g.image = mul(plane_channels(), g.channel, "X");
  return g;
}

std::vector<int64_t> SparseLayer::output_shape(const int64_t* x_shape, size_t x_rank) const {
  if (x_rank != 4) fail("X: expected rank 4 [N, C, H, W]");
  for (size_t d = 0; d < 4; ++d)
    if (x_shape[d] < 0 || static_cast<uint64_t>(x_shape[d]) > kMaxElements) fail("X: bad dimension");
  if (static_cast<size_t>(x_shape[1]) != c_) fail("X: channel dimension does not equal in_channels");
  const Geometry g = geometry(x_shape);
  const size_t y_elems = mul(mul(g.n, m_, "Y"), g.ohw, "Y");
  if (y_elems > kMaxElements) fail("Y: too large");
  // docs/operator.md, "Memory": one image's planes within 4 x (its input + output) + the budget.
  using Wide = unsigned __int128;  // exact: C, H, W, M are at most 2^40 and OH * OW below 2^64
  const Wide limit = 4 * (Wide{c_} * g.h * g.w + Wide{m_} * g.ohw) + kScratchBudget;
  if (g.image > limit)
    fail("pads/strides: the padded, strided input needs " + std::to_string(g.image) +
         " floats of scratch per image, over the native kernel's limit of 4 x (input + output) + 2^22 "
         "floats per image (docs/operator.md, Memory); the portable path runs such a model");
  return {static_cast<int64_t>(g.n), static_cast<int64_t>(m_), static_cast<int64_t>(g.oh), static_cast<int64_t>(g.ow)};
}

void SparseLayer::check_w_length(size_t w_len) const {
  if (w_len != packed_len_)
    fail("W: length " + std::to_string(w_len) + " does not match the patterns and channels (expected " +
         std::to_string(packed_len_) + ")");
}

void SparseLayer::check_per_output(const int64_t* shape, size_t rank, const char* name) const {
  if (rank != 1 || shape[0] != static_cast<int64_t>(m_)) fail(std::string(name) + ": expected shape [out_channels]");
}

// Gathering costs about as much as the multiply-adds when a residue class has few outputs
// (narrow layers), so tiles read straight from the image whenever that leaves at most a
// quarter of the lanes idle: rows of 12 to 15 pixels, or two rows of 6 to 8.
TileLayout choose_layout(size_t ow) {
  if (ow >= kNR || (ow > 8 && 4 * ow >= 3 * kNR)) return TileLayout::kRow;
  if (ow <= 8 && 8 * ow >= 3 * kNR) return TileLayout::kTwoRows;
  return TileLayout::kGathered;
}

std::shared_ptr<const Plan> SparseLayer::cached_plan(const int64_t* x_shape) const {
  PlanCache& cache = *plan_cache_;
  {
    std::lock_guard<std::mutex> lock(cache.mutex);
    if (cache.plan && std::equal(x_shape, x_shape + 4, cache.shape)) return cache.plan;
  }
  auto fresh = std::make_shared<const Plan>(plan(x_shape));  // outside the lock: runs of other shapes go on
  std::lock_guard<std::mutex> lock(cache.mutex);
  std::copy(x_shape, x_shape + 4, cache.shape);
  cache.plan = fresh;
  return fresh;
}

Plan SparseLayer::plan(const int64_t* x_shape) const {
  Plan plan{};
  plan.geo = geometry(x_shape);
  const Geometry& geo = plan.geo;

  // B-row offsets of the classes that have outputs (at most len(W) of them in all).
  const size_t pairs = groups_ * pairs_per_group_;
  plan.rel.resize(p_);
  size_t max_k = 1;
  for (size_t q = 0; q < pairs; ++q) {
    const size_t r = class_of(q / pairs_per_group_ * mg_ + q % pairs_per_group_);
    std::vector<int64_t>& rel = plan.rel[r];
    if (!rel.empty()) continue;
    max_k = std::max(max_k, class_k_[r]);
    rel.reserve(class_k_[r]);
    for (size_t i = 0, j = r; i < cq_; ++i, j = j + 1 == p_ ? 0 : j + 1) {  // j = (r + i) mod P
      for (const Tap& tap : pattern_taps_[j])
        rel.push_back(static_cast<int64_t>(i * geo.channel + tap.phase * geo.plane + tap.row * geo.ws + tap.col));
    }
  }

  // Plane rows hold runs of RS padded rows, one run every SH rows (all rows when RS = SH).
  plan.image_rows.resize(geo.hs);
  for (size_t s = 0; s < geo.hs; ++s) {
    const size_t padded = s / geo.rs * sh_ + s % geo.rs;
    plan.image_rows[s] = padded >= pt_ && padded < pt_ + geo.h ? padded - pt_ : kPadding;
  }
  // Plane column idx of phase ph holds padded column idx * SW + ph; those in [pl, pl + w) are image columns.
  for (size_t ph = 0; ph < geo.phases; ++ph) {
    const size_t lo = pl_ > ph ? std::min(geo.ws, ceil_div(pl_ - ph, sw_)) : 0;
    const size_t hi = std::max(lo, std::min(geo.ws, ceil_div(pl_ + geo.w - ph, sw_)));
    plan.columns.push_back({lo, hi, lo * sw_ + ph - pl_});  // wraps only when hi == lo: then unused
  }

  plan.layout = choose_layout(geo.ow);
  plan.tiles = plan.layout == TileLayout::kRow       ? geo.oh * ceil_div(geo.ow, kNR)
               : plan.layout == TileLayout::kTwoRows ? ceil_div(geo.oh, 2)
                                                     : ceil_div(geo.ohw, kNR);
  // Blocks of tiles whose input rows (about k * kNR elements each) fit in L2 together.
  plan.tile_block = std::max<size_t>(1, std::min(kMaxTileBlock, 8192 / max_k));
  plan.image_block = std::max<size_t>(1, plan.tile_block / plan.tiles);
  if (plan.image_block > 1) plan.tile_block = plan.tiles;  // then a block is an image's tiles
  return plan;
}

const int64_t* gathered_offsets(size_t k) {
  thread_local std::vector<int64_t> offsets;
  while (offsets.size() < k) offsets.push_back(static_cast<int64_t>(offsets.size() * kNR));
  return offsets.data();
}

}  // namespace pscompress
