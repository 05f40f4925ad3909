#include "psconv.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <type_traits>

namespace pscompress {
namespace {

[[noreturn]] void fail(const std::string& what) { throw std::invalid_argument(what); }

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

size_t ceil_div(size_t a, size_t b) { return (a + b - 1) / b; }

// Scratch: a chunk of images' phase planes stay within this many floats (16 MiB) unless one
// image needs more, which may be at most 4 x (its input + output) plus this much, or the model
// is rejected (docs/operator.md, "Memory").
constexpr size_t kScratchBudget = size_t{1} << 22;

// The B-row offsets of a gathered panel: row k starts at k * kNR.
const int64_t* gathered_offsets(size_t k) {
  thread_local std::vector<int64_t> offsets;
  while (offsets.size() < k) offsets.push_back(static_cast<int64_t>(offsets.size() * kNR));
  return offsets.data();
}

// A (group, residue class) pair's outputs split into ceil(count / kMR) panels of near-equal height, so no
// panel is left with one or two rows (which would run the microkernel at a fraction of speed).
struct Panels {
  size_t count, panels, base, big;  // the first `big` panels hold base + 1 rows, the rest base
  explicit Panels(size_t n) : count(n), panels(ceil_div(n, kMR)), base(n / panels), big(n % panels) {}
  size_t start(size_t p) const { return p * base + std::min(p, big); }
  size_t rows(size_t p) const { return base + (p < big ? 1 : 0); }
  size_t panel_of(size_t j) const {
    return j < big * (base + 1) ? j / (base + 1) : big + (j - big * (base + 1)) / base;
  }
};

}  // namespace

PSConv::PSConv(const Attributes& a) {
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
  if (!(a.clip_min <= a.clip_max)) fail("clip_min/clip_max: need clip_min <= clip_max");
  lo_ = a.clip_min;
  hi_ = a.clip_max;
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
  class_k_.resize(p_);
  for (size_t r = 0; r < p_; ++r) {
    size_t k = mul(cg_ / p_, period_sum, "in_channels");
    for (size_t i = 0; i < cg_ % p_; ++i) k += pop[(r + i) % p_];
    class_k_[r] = k;
    const size_t outputs = m_ / p_ + ((r + p_ - shift_) % p_ < m_ % p_ ? 1 : 0);
    packed_len_ = add(packed_len_, mul(outputs, k, "W"), "W");
  }
  if (packed_len_ > kMaxElements) fail("W: the layer is too large for the native kernel");
  pairs_per_group_ = std::min(mg_, p_);
  // Depthwise, output o keeps class_k_[(o + shift) mod P] weights: W repeats a period of P outputs.
  if (depthwise()) {
    period_starts_.assign(p_ + 1, 0);
    for (size_t o = 0; o < p_; ++o) period_starts_[o + 1] = period_starts_[o] + class_k_[(o + shift_) % p_];
  }
}

size_t PSConv::depthwise_weights(size_t o) const { return o / p_ * period_starts_[p_] + period_starts_[o % p_]; }

// Per (group, residue class) pair with outputs, numbered q = g * pairs_per_group_ + j (its first
// output is g * Mg + j): where its panels start in the packed weights; the last entry is their
// total. A pair holds ceil(outputs / kMR) panels of kMR rows, so the packed weights never exceed
// kMR * len(W) floats. Only called once len(W) is checked: channel counts alone cannot make it big.
std::vector<size_t> PSConv::pair_offsets() const {
  const size_t pairs = groups_ * pairs_per_group_;
  std::vector<size_t> offsets(pairs + 1, 0);
  for (size_t q = 0; q < pairs; ++q) {
    const size_t j = q % pairs_per_group_, first = q / pairs_per_group_ * mg_ + j;
    offsets[q + 1] = offsets[q] + Panels(ceil_div(mg_ - j, p_)).panels * kMR * class_k_[(first + shift_) % p_];
  }
  return offsets;
}

void PSConv::pack_weights(const float* w, const std::vector<size_t>& offsets, std::vector<float>& a) const {
  a.assign(offsets.back(), 0.0f);
  size_t start = 0;  // W offset of output o's first weight
  for (size_t o = 0; o < m_; ++o) {
    const size_t g = o / mg_, within = o - g * mg_, j = within % p_, k = class_k_[(o + shift_) % p_];
    const Panels panels(ceil_div(mg_ - j, p_));
    const size_t t = within / p_, panel = panels.panel_of(t);
    float* dst = a.data() + offsets[g * pairs_per_group_ + j] + panel * kMR * k + (t - panels.start(panel));
    for (size_t i = 0; i < k; ++i) dst[i * kMR] = w[start + i];
    start += k;
  }
}

void PSConv::prepack(const float* w, size_t w_len) {
  if (w_len != packed_len_)
    fail("W: length " + std::to_string(w_len) + " does not match the patterns and channels (expected " +
         std::to_string(packed_len_) + ")");
  if (depthwise()) {
    prepacked_.assign(w, w + w_len);  // already in the order the depthwise kernel reads
  } else {
    pack_weights(w, pair_offsets(), prepacked_);
  }
}

// The phase planes of one image: per input channel, the min(SW, KW) column phases that taps
// read, each a plane of HS x WS floats holding just the padded rows and columns that output
// windows read; a channel's planes are contiguous ([c][phase][hs][ws]). Plane column idx is
// padded column idx * SW + phase. Plane row s is padded row (s / RS) * SH + s % RS with
// RS = min(SH, KH): every row where windows overlap (SH <= KH), else only the KH rows of each
// output row. Unread bottom and right padding is not stored.
struct PSConv::Geometry {
  size_t n, h, w, oh, ow, ohw;
  size_t rs, hs, ws, phases, plane, channel, image;  // plane = hs * ws, channel = phases * plane,
                                                     // image = C * channel floats

  // Images per chunk: as many as the scratch budget holds, at least one.
  size_t chunk() const { return std::min(n, std::max<size_t>(1, kScratchBudget / image)); }
};

PSConv::Geometry PSConv::geometry(const int64_t* x_shape) const {
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
  g.image = mul(c_, g.channel, "X");
  return g;
}

// Depthwise layers hold one channel's planes per thread (compute_depthwise), others a chunk's.
size_t PSConv::scratch_floats(const int64_t* x_shape) const {
  const Geometry g = geometry(x_shape);
  return (depthwise() ? g.channel : g.chunk() * g.image) + kNR;
}

std::vector<int64_t> PSConv::output_shape(const Inputs& in, bool residual) const {
  if (in.x_rank != 4) fail("X: expected rank 4 [N, C, H, W]");
  for (size_t d = 0; d < 4; ++d)
    if (in.x_shape[d] < 0 || static_cast<uint64_t>(in.x_shape[d]) > kMaxElements) fail("X: bad dimension");
  if (static_cast<size_t>(in.x_shape[1]) != c_) fail("X: channel dimension does not equal in_channels");
  const Geometry g = geometry(in.x_shape);
  const size_t y_elems = mul(mul(g.n, m_, "Y"), g.ohw, "Y");
  if (y_elems > kMaxElements) fail("Y: too large");
  // docs/operator.md, "Memory": one image's planes within 4 x (its input + output) + the budget.
  using Wide = unsigned __int128;  // exact: C, H, W, M are at most 2^40 and OH * OW below 2^64
  const Wide limit = 4 * (Wide{c_} * g.h * g.w + Wide{m_} * g.ohw) + kScratchBudget;
  if (g.image > limit)
    fail("pads/strides: the padded, strided input needs " + std::to_string(g.image) +
         " floats of scratch per image, over the native kernel's limit of 4 x (input + output) + 2^22 "
         "floats per image (docs/operator.md, Memory); the portable path runs such a model");
  if (prepacked_.empty() && in.w_len != packed_len_)
    fail("W: length " + std::to_string(in.w_len) + " does not match the patterns and channels (expected " +
         std::to_string(packed_len_) + ")");
  if (in.has_b && (in.b_rank != 1 || in.b_shape[0] != static_cast<int64_t>(m_)))
    fail("B: expected shape [out_channels]");
  std::vector<int64_t> y = {static_cast<int64_t>(g.n), static_cast<int64_t>(m_), static_cast<int64_t>(g.oh),
                            static_cast<int64_t>(g.ow)};
  if (residual) {  // presence by rank: an empty Z (N == 0) may have no data pointer
    if (in.z_rank != 4 || !std::equal(y.begin(), y.end(), in.z_shape))
      fail("Z: expected the output's shape [N, out_channels, OH, OW]");
  }
  return y;
}

namespace {

constexpr size_t kMaxTileBlock = 8;

constexpr size_t kPadding = ~size_t{0};  // a plane row in the padding: no image row

// Bit 31 set when `bits` is an Inf or a NaN: all exponent bits set, so adding one to the
// exponent carries into bit 31. And, add and or vectorise on every target, so the check costs
// an all-finite input next to nothing.
inline uint32_t non_finite_carry(uint32_t bits) { return (bits & 0x7f800000u) + 0x00800000u; }

inline uint32_t load_bits(const float* p) {
  uint32_t bits;
  std::memcpy(&bits, p, sizeof bits);
  return bits;
}

// Copies src[i * stride] to dst[i] for i < n; returns bit 31 set when one of them is an Inf or
// a NaN (non_finite_carry). Strides 1 and 2 are constants the compiler vectorises.
uint32_t copy_checked(float* dst, const float* src, size_t n, size_t stride) {
  uint32_t carries = 0;
  auto copy = [&](auto step) {
    for (size_t i = 0; i < n; ++i) {
      const uint32_t bits = load_bits(src + i * step);
      std::memcpy(dst + i, &bits, sizeof bits);
      carries |= non_finite_carry(bits);
    }
  };
  if (stride == 1) {
    copy(std::integral_constant<size_t, 1>{});
  } else if (stride == 2) {  // the common strided case
    copy(std::integral_constant<size_t, 2>{});
  } else {
    copy(stride);
  }
  return carries;
}

// Splits n column pairs: even[i] = src[2 i], odd[i] = src[2 i + 1], reading src once (a
// deinterleave the compiler vectorises); returns bit 31 set when one of them is an Inf or a NaN.
uint32_t split_checked(float* even, float* odd, const float* src, size_t n) {
  uint32_t carries = 0;
  for (size_t i = 0; i < n; ++i) {
    const uint32_t e = load_bits(src + 2 * i), o = load_bits(src + 2 * i + 1);
    std::memcpy(even + i, &e, sizeof e);
    std::memcpy(odd + i, &o, sizeof o);
    carries |= non_finite_carry(e) | non_finite_carry(o);
  }
  return carries;
}

// The plane columns [lo, hi) of one column phase that hold image columns; plane column lo holds
// image column `first` (meaningless when hi == lo: the phase then has no image column).
struct PhaseColumns {
  size_t lo, hi, first;
};

// Copies the image columns of phase `cols` from an image row (stride SW) into its plane row;
// returns copy_checked's carries. A phase without image columns forms no pointer.
uint32_t copy_columns(float* row, const float* image_row, const PhaseColumns& cols, size_t sw) {
  if (cols.hi == cols.lo) return 0;
  return copy_checked(row + cols.lo, image_row + cols.first, cols.hi - cols.lo, sw);
}

}  // namespace

// Gathering costs about as much as the multiply-adds when a residue class has few outputs
// (narrow layers), so tiles read straight from the image whenever that leaves at most a
// quarter of the lanes idle: rows of 12 to 15 pixels, or two rows of 6 to 8.
TileLayout choose_layout(size_t ow) {
  if (ow >= kNR || (ow > 8 && 4 * ow >= 3 * kNR)) return TileLayout::kRow;
  if (ow <= 8 && 8 * ow >= 3 * kNR) return TileLayout::kTwoRows;
  return TileLayout::kGathered;
}

// One run's state, shared by its tasks; x, y, z and the planes are those of the current chunk.
struct PSConv::Run {
  const PSConv* conv;
  uint64_t id;                 // unique per run in the process (compute_depthwise)
  Geometry geo;
  std::vector<size_t> image_rows;  // per plane row, the image row it holds, or kPadding
  std::vector<PhaseColumns> columns;  // per column phase
  const float* x;              // the chunk's first image
  float* xph;                  // GEMM: its phase planes, [image][c][phase][hs][ws], then kNR spare floats
  unsigned char* non_finite;   // per (image, channel): X holds an Inf or a NaN there
  const float* a;              // packed weights
  const size_t* pair_a;        // pair_offsets()
  std::vector<std::vector<int64_t>> rel;  // per class with outputs, B-row offsets within a group
  TileLayout layout;
  size_t tiles, tile_block;
  const float *bias, *z;
  float* y;
  Ukernel ukernel;
  Dwconv dwconv;
};

// Zeroes the padding of one channel's planes (geo.channel floats): the rows and columns that
// hold no image value. It lies at the same places for every channel of a run.
void PSConv::zero_padding(const Run& run, float* planes) {
  const Geometry& geo = run.geo;
  for (size_t ph = 0; ph < geo.phases; ++ph) {
    const PhaseColumns& c = run.columns[ph];
    for (size_t s = 0; s < geo.hs; ++s) {
      float* const row = planes + ph * geo.plane + s * geo.ws;
      if (run.image_rows[s] == kPadding) {
        std::fill_n(row, geo.ws, 0.0f);
      } else {
        std::fill_n(row, c.lo, 0.0f);
        std::fill_n(row + c.hi, geo.ws - c.hi, 0.0f);
      }
    }
  }
}

// Copies the image values of (image, channel) `task` of the chunk into its planes (geo.channel
// floats at `planes`, padding written by zero_padding), reading each image row once; returns
// whether they hold an Inf or a NaN (only values that some window reads count).
bool PSConv::copy_image(const Run& run, size_t task, float* planes) {
  // Locals, not loads through run: the stores below may alias anything.
  const size_t sw = run.conv->sw_, w = run.geo.w, ws = run.geo.ws, hs = run.geo.hs, plane = run.geo.plane;
  const size_t phases = run.geo.phases, pl = run.conv->pl_;
  const size_t* const image_rows = run.image_rows.data();
  const PhaseColumns* const cols = run.columns.data();
  const float* const image = run.x + task * run.geo.h * w;
  uint32_t carries = 0;
  if (sw == 2 && phases == 2) {
    // Image column x goes to plane column (x + PL) / 2 of phase (x + PL) mod 2. Windows read
    // columns [0, read) (fewer than w when WS cuts off the right); with PL odd, column 0 is
    // alone in phase 1, then come pairs (even phase, odd phase), then maybe one even column.
    const size_t read = 2 * ws > pl ? std::min(w, 2 * ws - pl) : 0;
    const size_t lone = std::min(read, pl % 2), pairs = (read - lone) / 2;
    const size_t at = (pl + lone) / 2;  // plane column of the first pair
    if (read == 0) return false;         // no window reads an image column (then `at` may lie past the row)
    for (size_t s = 0; s < hs; ++s) {
      if (image_rows[s] == kPadding) continue;
      const float* const src = image + image_rows[s] * w;
      float* const even = planes + s * ws + at;
      float* const odd = even + plane;
      if (lone) carries |= copy_checked(odd - 1, src, 1, 1);
      carries |= split_checked(even, odd, src + lone, pairs);
      if ((read - lone) % 2) carries |= copy_checked(even + pairs, src + read - 1, 1, 1);
    }
    return carries >> 31;
  }
  for (size_t s = 0; s < hs; ++s) {
    if (image_rows[s] == kPadding) continue;
    const float* const src = image + image_rows[s] * w;
    for (size_t ph = 0; ph < phases; ++ph) carries |= copy_columns(planes + ph * plane + s * ws, src, cols[ph], sw);
  }
  return carries >> 31;
}

// GEMM task (image, channel) of the chunk: the channel's planes into the chunk's scratch.
void PSConv::fill_phases(void* p, size_t task) {
  const Run& run = *static_cast<const Run*>(p);
  float* const planes = run.xph + task * run.geo.channel;
  zero_padding(run, planes);
  run.non_finite[task] = copy_image(run, task, planes);
}

// One task: a block of pixel tiles of one (group, class) pair of one image. Panels run outer
// and tiles inner, so a weight panel stays in L1 while the block's input rows stay in L2.
void PSConv::compute_tiles(void* p, size_t task) {
  const Run& run = *static_cast<const Run*>(p);
  const PSConv& cv = *run.conv;
  const Geometry& geo = run.geo;
  const size_t blocks = ceil_div(run.tiles, run.tile_block);
  const size_t t0 = (task % blocks) * run.tile_block;
  const size_t t_end = std::min(run.tiles, t0 + run.tile_block);
  const size_t pairs = cv.groups_ * cv.pairs_per_group_;
  const size_t q = task / blocks % pairs, n = task / blocks / pairs;
  const size_t g = q / cv.pairs_per_group_, j = q % cv.pairs_per_group_;
  const size_t first = g * cv.mg_ + j, r = (first + cv.shift_) % cv.p_;
  const Panels panels(ceil_div(cv.mg_ - j, cv.p_));
  const size_t k = cv.class_k_[r];
  const int64_t* rel = run.rel[r].data();
  const float* group_image = run.xph + n * geo.image + g * cv.cg_ * geo.channel;

  // B reads. Every half row a tile reads starts inside the planes, on a plane row that one of
  // the tile's valid outputs reads: a row tile's at most 15 floats and a two-row tile's at most
  // 2 floats before that row's end (OW >= 6), so their whole-vector tails end within the next
  // row or the kNR spare floats after the last plane. A two-row tile without a second output
  // row (odd OH) rereads its first (b_split = 0): row 2 * t + 1 would lie past the planes.
  // Gathered tiles read single valid pixels into a panel of kNR floats per row.
  struct Tile {
    const float* b_base;
    const int64_t* b_offsets;
    size_t b_split, y_offset, y_split, valid;
  } tiles[kMaxTileBlock];
  thread_local std::vector<float> gathered;
  if (run.layout == TileLayout::kGathered && gathered.size() < run.tile_block * k * kNR)
    gathered.resize(run.tile_block * k * kNR);
  const size_t row = geo.rs * geo.ws;  // plane floats from one output row's window to the next
  for (size_t t = t0; t < t_end; ++t) {
    Tile& tile = tiles[t - t0];
    if (run.layout == TileLayout::kRow) {
      const size_t tiles_per_row = ceil_div(geo.ow, kNR);
      const size_t oh = t / tiles_per_row, ow0 = (t % tiles_per_row) * kNR;
      tile = {group_image + oh * row + ow0, rel, 8, oh * geo.ow + ow0, 8, std::min(kNR, geo.ow - ow0)};
      continue;
    }
    if (run.layout == TileLayout::kTwoRows) {  // output rows oh and oh + 1, one per half
      const size_t oh = 2 * t;
      const bool second = oh + 1 < geo.oh;
      tile = {group_image + oh * row, rel, second ? row : 0, oh * geo.ow, geo.ow, second ? 8 + geo.ow : geo.ow};
      continue;
    }
    // The tile's pixels span output rows: gather them into kNR-wide rows.
    const size_t q0 = t * kNR, valid = std::min(kNR, geo.ohw - q0);
    int64_t pix[kNR];
    for (size_t i = 0; i < kNR; ++i) {
      const size_t px = q0 + std::min(i, valid - 1);
      pix[i] = static_cast<int64_t>((px / geo.ow) * row + px % geo.ow);
    }
    float* const panel = gathered.data() + (t - t0) * k * kNR;
    float* dst = panel;
    for (size_t kk = 0; kk < k; ++kk, dst += kNR) {
      const float* src = group_image + rel[kk];
      for (size_t i = 0; i < kNR; ++i) dst[i] = src[pix[i]];
    }
    tile = {panel, gathered_offsets(k), 8, q0, 8, valid};
  }

  UkernelArgs args{};
  args.k = k;
  args.lo = cv.lo_;
  args.hi = cv.hi_;
  args.y_row_stride = cv.p_ * geo.ohw;
  args.bias_stride = cv.p_;
  const float* a = run.a + run.pair_a[q];
  for (size_t panel = 0; panel < panels.panels; ++panel, a += kMR * k) {
    const size_t o = first + panels.start(panel) * cv.p_;
    args.a = a;
    args.m = panels.rows(panel);
    args.bias = run.bias ? run.bias + o : nullptr;
    for (size_t t = 0; t < t_end - t0; ++t) {
      const size_t y_index = (n * cv.m_ + o) * geo.ohw + tiles[t].y_offset;
      args.b_base = tiles[t].b_base;
      args.b_offsets = tiles[t].b_offsets;
      args.b_split = tiles[t].b_split;
      args.y_split = tiles[t].y_split;
      args.n = tiles[t].valid;
      args.y = run.y + y_index;
      args.z = run.z ? run.z + y_index : nullptr;
      run.ukernel(args);
    }
  }
}

// Task (image, input channel) of a depthwise layer: copies the channel into planes of this
// thread, where they stay in L1/L2, then computes the channel's Mg outputs, every row in one
// call each. An output's tap offsets are those of its residue class. The padding is zeroed
// once per run and thread: channels leave it as it is.
// B reads: a row's last half reads at most 7 floats past the row's last pixel, which end
// within the next plane row, the next phase's plane, or the kNR spare floats after the
// thread's planes (the buffer holds geo.channel + kNR floats; the spare ones hold zeros or an
// earlier run's values, read only into discarded lanes).
void PSConv::compute_depthwise(void* p, size_t task) {
  const Run& run = *static_cast<const Run*>(p);
  const PSConv& cv = *run.conv;
  const Geometry& geo = run.geo;
  struct Planes {
    std::vector<float> floats;  // kept for later runs, like compute_tiles' panels
    uint64_t padded_for = 0;    // the run whose padding they hold
  };
  thread_local Planes planes;
  if (planes.padded_for != run.id) {
    if (planes.floats.size() < geo.channel + kNR) planes.floats.resize(geo.channel + kNR);
    zero_padding(run, planes.floats.data());
    planes.padded_for = run.id;
  }
  run.non_finite[task] = copy_image(run, task, planes.floats.data());
  const size_t n = task / cv.c_, channel = task % cv.c_;
  DwconvArgs args{};
  args.b = planes.floats.data();
  args.b_row_stride = geo.rs * geo.ws;
  args.rows = geo.oh;
  args.n = geo.ow;
  args.y_row_stride = geo.ow;
  args.lo = cv.lo_;
  args.hi = cv.hi_;
  for (size_t o = channel * cv.mg_; o < (channel + 1) * cv.mg_; ++o) {
    const size_t r = (o + cv.shift_) % cv.p_, y_index = (n * cv.m_ + o) * geo.ohw;
    args.k = cv.class_k_[r];
    args.w = run.a + cv.depthwise_weights(o);
    args.b_offsets = run.rel[r].data();
    args.y = run.y + y_index;
    args.z = run.z ? run.z + y_index : nullptr;
    args.bias = run.bias ? run.bias[o] : 0.0f;
    run.dwconv(args);
  }
}

// Dense Conv multiplies every tap of a window, masked ones by zero, and 0 * Inf and 0 * NaN are
// NaN; the sparse kernel skips masked taps. So an output whose window holds a non-finite value
// of channel c at a masked tap of its kernel must be NaN (at kept taps the kernel computed what
// Conv does). NaN is a fixed point of the epilogue (bias, residual and clamp keep it), so such
// outputs are overwritten after it. Runs only for channels that hold non-finite values.
void PSConv::nan_masked_non_finite(const Geometry& geo, size_t c, const float* image, float* y) const {
  const size_t g = c / cg_, i = c % cg_;
  for (size_t ih = 0; ih < geo.h; ++ih) {
    for (size_t iw = 0; iw < geo.w; ++iw) {
      if (std::isfinite(image[ih * geo.w + iw])) continue;
      const size_t py = ih + pt_, px = iw + pl_;  // padded position
      for (size_t kh = 0; kh < kh_ && kh <= py; ++kh) {
        if ((py - kh) % sh_ || (py - kh) / sh_ >= geo.oh) continue;
        for (size_t kw = 0; kw < kw_ && kw <= px; ++kw) {
          if ((px - kw) % sw_ || (px - kw) / sw_ >= geo.ow) continue;
          const size_t bit = kh * kw_ + kw, at = (py - kh) / sh_ * geo.ow + (px - kw) / sw_;
          for (size_t o = g * mg_, j = (o + i + shift_) % p_; o < (g + 1) * mg_; ++o, j = j + 1 == p_ ? 0 : j + 1)
            if (!(patterns_[j] >> bit & 1)) y[o * geo.ohw + at] = std::numeric_limits<float>::quiet_NaN();
        }
      }
    }
  }
}

void PSConv::run(const Inputs& in, float* y, Ukernel ukernel, Dwconv dwconv, const Parallel& parallel) const {
  static std::atomic<uint64_t> runs{0};
  Run run{};
  run.conv = this;
  run.id = ++runs;
  run.geo = geometry(in.x_shape);
  const Geometry& geo = run.geo;
  if (geo.n == 0) return;

  std::vector<size_t> offsets;  // GEMM only: depthwise layers read W as it is
  std::vector<float> a_local;
  if (depthwise()) {
    run.a = prepacked_.empty() ? in.w : prepacked_.data();
  } else {
    offsets = pair_offsets();
    if (prepacked_.empty()) pack_weights(in.w, offsets, a_local);
    run.a = prepacked_.empty() ? a_local.data() : prepacked_.data();
    run.pair_a = offsets.data();
  }

  // B-row offsets of the classes that have outputs (at most len(W) of them in all).
  const size_t pairs = groups_ * pairs_per_group_;
  run.rel.resize(p_);
  size_t max_k = 1;
  for (size_t q = 0; q < pairs; ++q) {
    const size_t r = (q / pairs_per_group_ * mg_ + q % pairs_per_group_ + shift_) % p_;
    std::vector<int64_t>& rel = run.rel[r];
    if (!rel.empty()) continue;
    max_k = std::max(max_k, class_k_[r]);
    rel.reserve(class_k_[r]);
    for (size_t i = 0, j = r; i < cg_; ++i, j = j + 1 == p_ ? 0 : j + 1) {  // j = (r + i) mod P
      for (const Tap& tap : pattern_taps_[j])
        rel.push_back(static_cast<int64_t>(i * geo.channel + tap.phase * geo.plane + tap.row * geo.ws + tap.col));
    }
  }

  // Plane rows hold runs of RS padded rows, one run every SH rows (all rows when RS = SH).
  run.image_rows.resize(geo.hs);
  for (size_t s = 0; s < geo.hs; ++s) {
    const size_t padded = s / geo.rs * sh_ + s % geo.rs;
    run.image_rows[s] = padded >= pt_ && padded < pt_ + geo.h ? padded - pt_ : kPadding;
  }
  // Plane column idx of phase ph holds padded column idx * SW + ph; those in [pl, pl + w) are image columns.
  for (size_t ph = 0; ph < geo.phases; ++ph) {
    const size_t lo = pl_ > ph ? std::min(geo.ws, ceil_div(pl_ - ph, sw_)) : 0;
    const size_t hi = std::max(lo, std::min(geo.ws, ceil_div(pl_ + geo.w - ph, sw_)));
    run.columns.push_back({lo, hi, lo * sw_ + ph - pl_});  // wraps only when hi == lo: then unused
  }

  run.layout = choose_layout(geo.ow);
  run.tiles = run.layout == TileLayout::kRow       ? geo.oh * ceil_div(geo.ow, kNR)
              : run.layout == TileLayout::kTwoRows ? ceil_div(geo.oh, 2)
                                                   : ceil_div(geo.ohw, kNR);
  // Blocks of tiles whose input rows (about k * kNR floats each) fit in L2 together.
  run.tile_block = std::max<size_t>(1, std::min(kMaxTileBlock, 8192 / max_k));
  const size_t tasks_per_image = depthwise() ? c_ : pairs * ceil_div(run.tiles, run.tile_block);
  void (*const compute)(void*, size_t) = depthwise() ? compute_depthwise : compute_tiles;
  run.bias = in.has_b ? in.b : nullptr;
  run.ukernel = ukernel;
  run.dwconv = dwconv;

  // GEMM: the chunk's planes, then kNR spare floats that complete the last rows' whole-vector
  // reads ("B reads"). Uninitialised on purpose: fill_phases writes every float of every plane.
  // Depthwise tasks fill their own channel's planes (compute_depthwise).
  const size_t chunk = geo.chunk();
  std::unique_ptr<float[]> xph;
  if (!depthwise()) {
    xph.reset(new float[chunk * geo.image + kNR]);
    std::fill_n(xph.get() + chunk * geo.image, kNR, 0.0f);
  }
  std::vector<unsigned char> non_finite(chunk * c_);
  run.xph = xph.get();
  run.non_finite = non_finite.data();
  const size_t x_image = c_ * geo.h * geo.w, y_image = m_ * geo.ohw;
  for (size_t n0 = 0; n0 < geo.n; n0 += chunk) {
    const size_t images = std::min(chunk, geo.n - n0);
    run.x = in.x + n0 * x_image;
    run.y = y + n0 * y_image;
    run.z = in.z ? in.z + n0 * y_image : nullptr;
    if (!depthwise()) parallel.run(parallel.self, fill_phases, images * c_, &run);
    parallel.run(parallel.self, compute, images * tasks_per_image, &run);
    for (size_t t = 0; t < images * c_; ++t)
      if (non_finite[t]) nan_masked_non_finite(geo, t % c_, run.x + t * geo.h * geo.w, run.y + t / c_ * y_image);
  }
}

}  // namespace pscompress
