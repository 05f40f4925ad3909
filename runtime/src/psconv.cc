#include "psconv.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <stdexcept>

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

// The B-row offsets of a gathered panel: row k starts at k * kNR.
const int64_t* panel_offsets(size_t k) {
  thread_local std::vector<int64_t> offsets;
  while (offsets.size() < k) offsets.push_back(static_cast<int64_t>(offsets.size() * kNR));
  return offsets.data();
}

// A residue class's outputs split into ceil(count / kMR) panels of near-equal height, so no
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
  classes_.resize(p_);
  const size_t per_class_outputs = ceil_div(mg_, p_);  // most outputs one class has in a group
  const size_t panels = ceil_div(per_class_outputs, kMR);
  for (size_t r = 0; r < p_; ++r) {
    size_t k = mul(cg_ / p_, period_sum, "in_channels");
    for (size_t i = 0; i < cg_ % p_; ++i) k += pop[(r + i) % p_];
    classes_[r].k = k;
    classes_[r].a_offset = group_a_len_;
    group_a_len_ = add(group_a_len_, mul(mul(panels, kMR, "weights"), k, "weights"), "weights");
    const size_t outputs = m_ / p_ + ((r + p_ - shift_) % p_ < m_ % p_ ? 1 : 0);
    packed_len_ = add(packed_len_, mul(outputs, k, "W"), "W");
  }
  if (packed_len_ > kMaxElements || mul(group_a_len_, groups_, "weights") > kMaxElements)
    fail("W: the layer is too large for the native kernel");
}

size_t PSConv::class_first_output(size_t g, size_t r) const {
  const size_t start = g * mg_;
  const size_t first = start + (r + p_ - (start + shift_) % p_) % p_;
  return first < start + mg_ ? first : start + mg_;
}

void PSConv::pack_weights(const float* w, std::vector<float>& a) const {
  a.assign(group_a_len_ * groups_, 0.0f);
  size_t start = 0;  // W offset of output o's first weight
  for (size_t o = 0; o < m_; ++o) {
    const size_t g = o / mg_, r = (o + shift_) % p_, k = classes_[r].k;
    const size_t first = class_first_output(g, r);
    const Panels panels(((g + 1) * mg_ - first + p_ - 1) / p_);
    const size_t j = (o - first) / p_, panel = panels.panel_of(j);
    float* dst = a.data() + g * group_a_len_ + classes_[r].a_offset + panel * kMR * k + (j - panels.start(panel));
    for (size_t t = 0; t < k; ++t) dst[t * kMR] = w[start + t];
    start += k;
  }
}

void PSConv::prepack(const float* w, size_t w_len) {
  if (w_len != packed_len_)
    fail("W: length " + std::to_string(w_len) + " does not match the patterns and channels (expected " +
         std::to_string(packed_len_) + ")");
  pack_weights(w, prepacked_);
}

std::vector<int64_t> PSConv::output_shape(const Inputs& in, bool residual) const {
  if (in.x_rank != 4) fail("X: expected rank 4 [N, C, H, W]");
  for (size_t d = 0; d < 4; ++d)
    if (in.x_shape[d] < 0 || static_cast<uint64_t>(in.x_shape[d]) > kMaxElements) fail("X: bad dimension");
  if (static_cast<size_t>(in.x_shape[1]) != c_) fail("X: channel dimension does not equal in_channels");
  const size_t n = in.x_shape[0], h = in.x_shape[2], w = in.x_shape[3];
  const size_t hp = h + pt_ + pb_, wp = w + pl_ + pr_;
  if (hp < kh_ || wp < kw_) fail("X: spatial size smaller than the (padded) kernel, output would be empty");
  const size_t oh = (hp - kh_) / sh_ + 1, ow = (wp - kw_) / sw_ + 1;
  mul(mul(mul(n, c_, "X"), hp, "X"), mul(ceil_div(wp, sw_), sw_, "X"), "X");
  const size_t y_elems = mul(mul(mul(n, m_, "Y"), oh, "Y"), ow, "Y");
  if (y_elems > kMaxElements) fail("Y: too large");
  if (prepacked_.empty() && in.w_len != packed_len_)
    fail("W: length " + std::to_string(in.w_len) + " does not match the patterns and channels (expected " +
         std::to_string(packed_len_) + ")");
  if (in.b && (in.b_rank != 1 || static_cast<size_t>(in.b_shape[0]) != m_))
    fail("B: expected shape [out_channels]");
  std::vector<int64_t> y = {static_cast<int64_t>(n), static_cast<int64_t>(m_), static_cast<int64_t>(oh),
                            static_cast<int64_t>(ow)};
  if (residual) {  // presence by rank: an empty Z (N == 0) may have no data pointer
    if (in.z_rank != 4 || !std::equal(y.begin(), y.end(), in.z_shape))
      fail("Z: expected the output's shape [N, out_channels, OH, OW]");
  }
  return y;
}

namespace {

constexpr size_t kMaxTileBlock = 8;

// How a tile's kNR output pixels map onto the phase planes. Row and two-row tiles are read
// straight from the image (pixels contiguous per half); other tiles are gathered first.
enum class TileLayout { kRow, kTwoRows, kGathered };

// Gathering costs about as much as the multiply-adds when a residue class has few outputs
// (narrow layers), so tiles read straight from the image whenever that leaves at most a
// quarter of the lanes idle: rows of 12 to 15 pixels, or two rows of 6 to 8.
TileLayout choose_layout(size_t ow) {
  if (ow >= kNR || (ow > 8 && 4 * ow >= 3 * kNR)) return TileLayout::kRow;
  if (ow <= 8 && 8 * ow >= 3 * kNR) return TileLayout::kTwoRows;
  return TileLayout::kGathered;
}

struct RunContext {
  // geometry
  size_t n, c, h, w, hp, wph, sw, sh, pt, pl, oh, ow, ohw, plane;  // plane = hp * wph
  size_t m, cg, mg, p, groups, tiles, tile_block;
  TileLayout layout;
  const float* x;
  float* xph;  // padded input split into sw column phases: [n][phase][c][hp][wph]
  size_t image;  // floats per image in xph
  // weights and epilogue
  const float* a;
  size_t group_a_len;
  const std::vector<size_t>* class_k;
  const std::vector<size_t>* class_a;
  const std::vector<std::vector<int64_t>>* rel;  // per class, B-row offsets within a group
  const PSConv* self;
  size_t (*first_output)(const PSConv*, size_t, size_t);
  const float *bias, *z;
  float* y;
  float lo, hi;
  Ukernel ukernel;
};

// Writes image n, channel c into its sw phase planes; only the padding is zeroed.
void fill_phases(void* p, size_t task) {
  const RunContext& ctx = *static_cast<const RunContext*>(p);
  const size_t n = task / ctx.c, c = task % ctx.c;
  const size_t phase_stride = ctx.c * ctx.plane;
  const float* image = ctx.x + (n * ctx.c + c) * ctx.h * ctx.w;
  for (size_t ph = 0; ph < ctx.sw; ++ph) {
    float* plane = ctx.xph + n * ctx.image + c * ctx.plane + ph * phase_stride;
    // Phase ph holds padded columns idx * sw + ph; those in [pl, pl + w) are image columns.
    const size_t lo = ctx.pl > ph ? std::min(ctx.wph, ceil_div(ctx.pl - ph, ctx.sw)) : 0;
    const size_t hi = std::max(lo, std::min(ctx.wph, ceil_div(ctx.pl + ctx.w - ph, ctx.sw)));
    std::fill_n(plane, ctx.pt * ctx.wph, 0.0f);
    std::fill_n(plane + (ctx.pt + ctx.h) * ctx.wph, (ctx.hp - ctx.pt - ctx.h) * ctx.wph, 0.0f);
    for (size_t ih = 0; ih < ctx.h; ++ih) {
      float* row = plane + (ih + ctx.pt) * ctx.wph;
      const float* src = image + ih * ctx.w + (lo * ctx.sw + ph - ctx.pl);
      std::fill_n(row, lo, 0.0f);
      if (ctx.sw == 1) {
        std::memcpy(row + lo, src, (hi - lo) * sizeof(float));
      } else if (ctx.sw == 2) {  // the common case, with a constant stride the compiler vectorises
        for (size_t idx = 0; idx < hi - lo; ++idx) row[lo + idx] = src[2 * idx];
      } else {
        for (size_t idx = lo; idx < hi; ++idx) row[idx] = src[(idx - lo) * ctx.sw];
      }
      std::fill_n(row + hi, ctx.wph - hi, 0.0f);
    }
  }
}

// One task: a block of pixel tiles of one residue class of one image. Panels run outer and
// tiles inner, so a weight panel stays in L1 while the block's input rows stay in L2.
void compute_tiles(void* p, size_t task) {
  const RunContext& ctx = *static_cast<const RunContext*>(p);
  const size_t blocks = ceil_div(ctx.tiles, ctx.tile_block);
  const size_t t0 = (task % blocks) * ctx.tile_block;
  const size_t t_end = std::min(ctx.tiles, t0 + ctx.tile_block);
  size_t rest = task / blocks;
  const size_t r = rest % ctx.p;
  rest /= ctx.p;
  const size_t g = rest % ctx.groups, n = rest / ctx.groups;
  const size_t first = ctx.first_output(ctx.self, g, r);
  const size_t group_end = (g + 1) * ctx.mg;
  if (first >= group_end) return;
  const Panels panels((group_end - first + ctx.p - 1) / ctx.p);
  const size_t k = (*ctx.class_k)[r];
  const int64_t* rel = (*ctx.rel)[r].data();
  const float* group_image = ctx.xph + n * ctx.image + g * ctx.cg * ctx.plane;

  struct Tile {
    const float* b_base;
    const int64_t* b_offsets;
    size_t b_split, y_offset, y_split, valid;
  } tiles[kMaxTileBlock];
  thread_local std::vector<float> gathered;
  if (ctx.layout == TileLayout::kGathered && gathered.size() < ctx.tile_block * k * kNR) gathered.resize(ctx.tile_block * k * kNR);
  for (size_t t = t0; t < t_end; ++t) {
    Tile& tile = tiles[t - t0];
    if (ctx.layout == TileLayout::kRow) {
      const size_t tiles_per_row = ceil_div(ctx.ow, kNR);
      const size_t oh = t / tiles_per_row, ow0 = (t % tiles_per_row) * kNR;
      tile = {group_image + oh * ctx.sh * ctx.wph + ow0, rel, 8, oh * ctx.ow + ow0, 8, std::min(kNR, ctx.ow - ow0)};
      continue;
    }
    if (ctx.layout == TileLayout::kTwoRows) {  // output rows oh and oh + 1, one per half
      const size_t oh = 2 * t;
      tile = {group_image + oh * ctx.sh * ctx.wph, rel, ctx.sh * ctx.wph, oh * ctx.ow, ctx.ow,
              oh + 1 < ctx.oh ? 8 + ctx.ow : ctx.ow};
      continue;
    }
    // The tile's pixels span output rows: gather them into kNR-wide rows.
    const size_t q0 = t * kNR, valid = std::min(kNR, ctx.ohw - q0);
    int64_t pix[kNR];
    for (size_t j = 0; j < kNR; ++j) {
      const size_t q = q0 + std::min(j, valid - 1);
      pix[j] = static_cast<int64_t>((q / ctx.ow) * ctx.sh * ctx.wph + q % ctx.ow);
    }
    float* const panel = gathered.data() + (t - t0) * k * kNR;
    float* dst = panel;
    for (size_t kk = 0; kk < k; ++kk, dst += kNR) {
      const float* src = group_image + rel[kk];
      for (size_t j = 0; j < kNR; ++j) dst[j] = src[pix[j]];
    }
    tile = {panel, panel_offsets(k), 8, q0, 8, valid};
  }

  UkernelArgs args{};
  args.k = k;
  args.lo = ctx.lo;
  args.hi = ctx.hi;
  args.y_row_stride = ctx.p * ctx.ohw;
  args.bias_stride = ctx.p;
  const float* a = ctx.a + g * ctx.group_a_len + (*ctx.class_a)[r];
  for (size_t panel = 0; panel < panels.panels; ++panel, a += kMR * k) {
    const size_t o = first + panels.start(panel) * ctx.p;
    args.a = a;
    args.m = panels.rows(panel);
    args.bias = ctx.bias ? ctx.bias + o : nullptr;
    for (size_t t = 0; t < t_end - t0; ++t) {
      const size_t y_index = (n * ctx.m + o) * ctx.ohw + tiles[t].y_offset;
      args.b_base = tiles[t].b_base;
      args.b_offsets = tiles[t].b_offsets;
      args.b_split = tiles[t].b_split;
      args.y_split = tiles[t].y_split;
      args.n = tiles[t].valid;
      args.y = ctx.y + y_index;
      args.z = ctx.z ? ctx.z + y_index : nullptr;
      ctx.ukernel(args);
    }
  }
}

}  // namespace

void PSConv::run(const Inputs& in, float* y, Ukernel ukernel, const Parallel& parallel) const {
  RunContext ctx{};
  ctx.n = in.x_shape[0];
  ctx.c = c_;
  ctx.h = in.x_shape[2];
  ctx.w = in.x_shape[3];
  ctx.hp = ctx.h + pt_ + pb_;
  const size_t wp = ctx.w + pl_ + pr_;
  ctx.sw = sw_;
  ctx.sh = sh_;
  ctx.wph = ceil_div(wp, sw_);
  ctx.pt = pt_;
  ctx.pl = pl_;
  ctx.oh = (ctx.hp - kh_) / sh_ + 1;
  ctx.ow = (wp - kw_) / sw_ + 1;
  ctx.ohw = ctx.oh * ctx.ow;
  ctx.plane = ctx.hp * ctx.wph;
  ctx.image = sw_ * c_ * ctx.plane;
  if (ctx.n == 0) return;

  std::vector<float> a_local;
  if (prepacked_.empty()) pack_weights(in.w, a_local);
  ctx.a = prepacked_.empty() ? a_local.data() : prepacked_.data();
  ctx.group_a_len = group_a_len_;

  std::vector<size_t> class_k(p_), class_a(p_);
  std::vector<std::vector<int64_t>> rel(p_);
  for (size_t r = 0; r < p_; ++r) {
    class_k[r] = classes_[r].k;
    class_a[r] = classes_[r].a_offset;
    rel[r].reserve(classes_[r].k);
    for (size_t i = 0, j = r; i < cg_; ++i, j = j + 1 == p_ ? 0 : j + 1) {  // j = (r + i) mod P
      for (const Tap& tap : pattern_taps_[j])
        rel[r].push_back(static_cast<int64_t>((tap.phase * c_ + i) * ctx.plane + tap.row * ctx.wph + tap.col));
    }
  }
  ctx.class_k = &class_k;
  ctx.class_a = &class_a;
  ctx.rel = &rel;

  // kNR spare floats let a tile at the end of a row read whole vectors (extra lanes discarded).
  // Uninitialised on purpose: fill_phases writes every float of every plane.
  std::unique_ptr<float[]> xph(new float[ctx.n * ctx.image + kNR]);
  std::fill_n(xph.get() + ctx.n * ctx.image, kNR, 0.0f);
  ctx.x = in.x;
  ctx.xph = xph.get();
  parallel.run(parallel.self, fill_phases, ctx.n * c_, &ctx);

  ctx.m = m_;
  ctx.cg = cg_;
  ctx.mg = mg_;
  ctx.p = p_;
  ctx.groups = groups_;
  ctx.layout = choose_layout(ctx.ow);
  ctx.tiles = ctx.layout == TileLayout::kRow       ? ctx.oh * ceil_div(ctx.ow, kNR)
              : ctx.layout == TileLayout::kTwoRows ? ceil_div(ctx.oh, 2)
                                                   : ceil_div(ctx.ohw, kNR);
  ctx.self = this;
  ctx.first_output = [](const PSConv* s, size_t g, size_t r) { return s->class_first_output(g, r); };
  ctx.bias = in.b;
  ctx.z = in.z;
  ctx.y = y;
  ctx.lo = lo_;
  ctx.hi = hi_;
  ctx.ukernel = ukernel;
  // Blocks of tiles whose input rows (about k * kNR floats each) fit in L2 together.
  size_t max_k = 1;
  for (const ClassInfo& info : classes_) max_k = std::max(max_k, info.k);
  ctx.tile_block = std::max<size_t>(1, std::min(kMaxTileBlock, 8192 / max_k));
  parallel.run(parallel.self, compute_tiles, ctx.n * groups_ * p_ * ceil_div(ctx.tiles, ctx.tile_block), &ctx);
}

}  // namespace pscompress
