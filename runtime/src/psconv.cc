#include "psconv.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "depthwise_tasks.h"
#include "gemm_tiles.h"
#include "phase_planes.h"

namespace pscompress {
namespace {

// Bit 31 set when `bits` is an Inf or a NaN: all exponent bits set, so adding one to the
// exponent carries into bit 31. And, add and or vectorise on every target, so the check costs
// an all-finite input next to nothing.
inline uint32_t non_finite_carry(uint32_t bits) { return (bits & 0x7f800000u) + 0x00800000u; }

// fp32 planes hold the input's floats bit for bit (phase_planes.h); the flags' bit 31 says an
// Inf or a NaN was among them.
struct CopyFloats {
  using In = float;
  using Out = float;
  uint32_t put(float* dst, const float* src) const {
    uint32_t bits;
    std::memcpy(&bits, src, sizeof bits);
    std::memcpy(dst, &bits, sizeof bits);
    return non_finite_carry(bits);
  }
};

bool copy_checked(const SparseLayer& layer, const Plan& plan, const float* image, float* planes) {
  return copy_image(layer, plan, image, planes, CopyFloats{}) >> 31;
}

}  // namespace

PSConv::PSConv(const Attributes& a) : layer_(a) {
  if (!(a.clip_min <= a.clip_max)) fail("clip_min/clip_max: need clip_min <= clip_max");
  lo_ = a.clip_min;
  hi_ = a.clip_max;
}

void PSConv::prepack(const float* w, size_t w_len) {
  layer_.check_w_length(w_len);
  if (layer_.depthwise()) {
    prepacked_.assign(w, w + w_len);  // already in the order the depthwise kernel reads
  } else {
    layer_.pack<UkernelPacking>(w, layer_.pair_offsets<UkernelPacking>(), prepacked_);
  }
}

// Depthwise layers hold one channel's planes per thread (run_depthwise), others a chunk's.
size_t PSConv::scratch_floats(const int64_t* x_shape) const {
  const Geometry g = layer_.geometry(x_shape);
  return (layer_.depthwise() ? g.channel : g.chunk() * g.image) + kNR;
}

std::vector<int64_t> PSConv::output_shape(const Inputs& in, bool residual) const {
  const std::vector<int64_t> y = layer_.output_shape(in.x_shape, in.x_rank);
  if (prepacked_.empty()) layer_.check_w_length(in.w_len);
  if (in.has_b) layer_.check_per_output(in.b_shape, in.b_rank, "B");
  if (residual) {  // presence by rank: an empty Z (N == 0) may have no data pointer
    if (in.z_rank != 4 || !std::equal(y.begin(), y.end(), in.z_shape))
      fail("Z: expected the output's shape [N, out_channels, OH, OW]");
  }
  return y;
}

// Dense Conv multiplies every tap of a window, masked ones by zero, and 0 * Inf and 0 * NaN are
// NaN; the sparse kernel skips masked taps. So an output whose window holds a non-finite value
// of channel c at a masked tap of its kernel must be NaN (at kept taps the kernel computed what
// Conv does). NaN is a fixed point of the epilogue (bias, residual and clamp keep it), so such
// outputs are overwritten after it. Runs only for channels that hold non-finite values.
void PSConv::nan_masked_non_finite(const Geometry& geo, size_t c, const float* image, float* y) const {
  const SparseLayer& l = layer_;
  const size_t g = c / l.cg_, i = c % l.cg_;
  for (size_t ih = 0; ih < geo.h; ++ih) {
    for (size_t iw = 0; iw < geo.w; ++iw) {
      if (std::isfinite(image[ih * geo.w + iw])) continue;
      const size_t py = ih + l.pt_, px = iw + l.pl_;  // padded position
      for (size_t kh = 0; kh < l.kh_ && kh <= py; ++kh) {
        if ((py - kh) % l.sh_ || (py - kh) / l.sh_ >= geo.oh) continue;
        for (size_t kw = 0; kw < l.kw_ && kw <= px; ++kw) {
          if ((px - kw) % l.sw_ || (px - kw) / l.sw_ >= geo.ow) continue;
          const size_t bit = kh * l.kw_ + kw, at = (py - kh) / l.sh_ * geo.ow + (px - kw) / l.sw_;
          for (size_t o = g * l.mg_, j = (o + i + l.shift_) % l.p_; o < (g + 1) * l.mg_;
               ++o, j = j + 1 == l.p_ ? 0 : j + 1)
            if (!(l.patterns_[j] >> bit & 1)) y[o * geo.ohw + at] = std::numeric_limits<float>::quiet_NaN();
        }
      }
    }
  }
}

void PSConv::run(const Inputs& in, float* y, Ukernel ukernel, Dwconv dwconv, const Parallel& parallel) const {
  if (in.x_shape[0] == 0) return;
  const std::shared_ptr<const Plan> cached = layer_.cached_plan(in.x_shape);
  const Plan& plan = *cached;
  const Geometry& geo = plan.geo;
  const size_t c = layer_.c_, m = layer_.m_, p = layer_.p_, ohw = geo.ohw;
  const size_t x_image = c * geo.h * geo.w, y_image = m * ohw;
  std::vector<unsigned char> non_finite(geo.chunk() * c);  // per (image, channel) of a chunk
  auto nan_pass = [&](size_t n0, size_t images) {
    for (size_t t = 0; t < images * c; ++t)
      if (non_finite[t]) nan_masked_non_finite(geo, t % c, in.x + n0 * x_image + t * geo.h * geo.w, y + (n0 + t / c) * y_image);
  };

  if (layer_.depthwise()) {
    const float* const w = prepacked_.empty() ? in.w : prepacked_.data();
    DwconvArgs args{};  // what every output shares
    args.b_row_stride = geo.rs * geo.ws;
    args.rows = geo.oh;
    args.n = geo.ow;
    args.y_row_stride = geo.ow;
    args.lo = lo_;
    args.hi = hi_;
    for (size_t n0 = 0; n0 < geo.n; n0 += geo.chunk()) {
      const size_t images = std::min(geo.chunk(), geo.n - n0);
      const float* const x = in.x + n0 * x_image;
      float* const y_chunk = y + n0 * y_image;
      const float* const z = in.z ? in.z + n0 * y_image : nullptr;
      auto fill = [&](size_t t, float* planes) {
        non_finite[t] = copy_checked(layer_, plan, x + t * geo.h * geo.w, planes);
      };
      auto output = [&](const DepthwiseOutput& out, const float* planes) {
        DwconvArgs a = args;
        a.k = out.k;
        a.w = w + out.weights;
        a.b = planes;
        a.b_offsets = out.b_offsets;
        a.y = y_chunk + out.y;
        a.z = z ? z + out.y : nullptr;
        a.bias = in.has_b ? in.b[out.o] : 0.0f;
        dwconv(a);
      };
      run_depthwise<float>(layer_, plan, parallel, images, fill, output);
      nan_pass(n0, images);
    }
    return;
  }

  const std::vector<size_t> offsets = layer_.pair_offsets<UkernelPacking>();
  std::vector<float> a_local;
  if (prepacked_.empty()) layer_.pack<UkernelPacking>(in.w, offsets, a_local);
  const float* const a = prepacked_.empty() ? a_local.data() : prepacked_.data();
  const float* const bias = in.has_b ? in.b : nullptr;
  auto fill = [&](size_t n0, size_t task, float* planes) {
    fill_padding(plan, planes);
    non_finite[task] = copy_checked(layer_, plan, in.x + n0 * x_image + task * geo.h * geo.w, planes);
  };
  // Per panel the fields of all its tiles, per tile the others (as ukernel.h orders them).
  auto kernel = [&](size_t n0, const PanelCall& call, const TileSource<float>* tiles, size_t count) {
    UkernelArgs panel{};  // built once and copied: value-initialising each tile costs a rep stos
    panel.k = call.k;
    panel.a = a + offsets[call.q] + call.panel * kMR * call.k;
    panel.y_row_stride = p * ohw;
    panel.bias = bias ? bias + call.o : nullptr;
    panel.bias_stride = p;
    panel.lo = lo_;
    panel.hi = hi_;
    panel.m = call.rows;
    const size_t y_panel = ((n0 + call.n) * m + call.o) * ohw;
    UkernelArgs args[kMaxTileBlock];
    for (size_t t = 0; t < count; ++t) {
      UkernelArgs& tile = args[t];
      tile = panel;
      tile.b_base = tiles[t].b_base;
      tile.b_offsets = tiles[t].b_offsets;
      tile.b_split = tiles[t].b_split;
      tile.y = y + y_panel + tiles[t].y_offset;
      tile.y_split = tiles[t].y_split;
      tile.z = in.z ? in.z + y_panel + tiles[t].y_offset : nullptr;
      tile.n = tiles[t].valid;
    }
    run_tile_groups(ukernel, args, count, kUkernelTiles);
  };
  run_gemm<float>(layer_, plan, parallel, fill, kernel, nan_pass);
}

}  // namespace pscompress
