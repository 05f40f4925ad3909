#include "qlinear_psconv.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "depthwise_tasks.h"
#include "gemm_tiles.h"
#include "phase_planes.h"
#include "quad_interleave.h"

namespace pscompress {
namespace {

constexpr size_t kMaxTaps = 32768;          // |acc| <= 32768 * 255 * 128 < 2^30
constexpr int64_t kMaxBias = int64_t{1} << 30;  // then acc + B fits int32

// The planes hold x - x_zero_point, so that padding (0) counts as x_zero_point.
struct SubtractZeroPoint {
  using In = uint8_t;
  using Out = int16_t;
  int16_t zero_point;
  uint32_t put(int16_t* dst, const uint8_t* src) const {
    *dst = static_cast<int16_t>(*src - zero_point);
    return 0;
  }
};

template <class T>
bool scalar_shape(const TensorRef<T>& t) {
  return t.rank == 0 || (t.rank == 1 && t.shape[0] == 1);
}

template <class T>
T scalar(const TensorRef<T>& t, const char* name) {
  if (!scalar_shape(t)) fail(std::string(name) + ": expected a scalar (shape [] or [1])");
  return t.data[0];
}

float scale(const TensorRef<float>& t, const char* name) {
  const float s = scalar(t, name);
  if (!(std::isfinite(s) && s > 0)) fail(std::string(name) + ": must be finite and > 0");
  return s;
}

// The planes of the dot kernels hold x itself, four channels to a Quad: a whole Quad from
// the four channels' images (`stride` bytes apart) in one pass, or one lane of it.
struct CopyQuad {
  using In = uint8_t;
  using Out = Quad;
  size_t stride;
  uint32_t put(Quad* dst, const uint8_t* src) const {
    interleave_quads(dst, src, stride, 1);
    return 0;
  }
  uint32_t put_run(Quad* dst, const uint8_t* src, size_t n) const {  // copy_strided at stride 1
    interleave_quads(dst, src, stride, n);
    return 0;
  }
};
struct CopyToLane {
  using In = uint8_t;
  using Out = Quad;
  size_t lane;
  uint32_t put(Quad* dst, const uint8_t* src) const {
    dst->lane[lane] = *src;
    return 0;
  }
};

// A block's tiles to a kernel: the pair kernels one at a time, the dot kernels kDotTiles at a time.
void run_kernel(QGemm kernel, const QGemmArgs* tiles, size_t count) {
  for (size_t t = 0; t < count; ++t) kernel(tiles[t]);
}
void run_kernel(QDot kernel, const QDotArgs* tiles, size_t count) { run_tile_groups(kernel, tiles, count, kDotTiles); }

// Runs `kernel` on every tile of the run, fill(n0, task, planes) filling the planes first
// (run_gemm); a holds the weights as Packing packs them, bias the per-output bias (nullable).
template <class Packing, class Args, class Kernel, class Fill>
void run_tiles(const SparseLayer& layer, const Plan& plan, const Requantization& rq, const int32_t* bias,
               const typename Args::Weight* a, Kernel kernel, uint8_t* y, Fill&& fill, const Parallel& parallel) {
  const std::vector<size_t> offsets = layer.pair_offsets<Packing>();
  const size_t m = layer.m_, p = layer.p_, ohw = plan.geo.ohw;
  auto tiles_kernel = [&](size_t n0, const PanelCall& call, const TileSource<typename Args::Element>* tiles,
                          size_t count) {
    Args panel{};  // built once and copied: value-initialising each tile costs a rep stos
    panel.k = call.k;
    panel.a = a + offsets[call.q] + call.panel * kMR * Packing::slots(call.k);
    panel.y_row_stride = p * ohw;
    panel.bias = bias ? bias + call.o : nullptr;
    panel.scale = rq.scale.data() + call.o;
    panel.channel_stride = p;
    panel.y_zero_point = rq.y_zero_point;
    panel.m = call.rows;
    uint8_t* const y_panel = y + ((n0 + call.n) * m + call.o) * ohw;
    Args args[kMaxTileBlock];
    for (size_t t = 0; t < count; ++t) {
      args[t] = panel;
      args[t].b_base = tiles[t].b_base;
      args[t].b_offsets = tiles[t].b_offsets;
      args[t].b_split = tiles[t].b_split;
      args[t].y = y_panel + tiles[t].y_offset;
      args[t].y_split = tiles[t].y_split;
      args[t].n = tiles[t].valid;
    }
    run_kernel(kernel, args, count);
  };
  run_gemm<typename Args::Element>(layer, plan, parallel, fill, tiles_kernel, [](size_t, size_t) {});
}

}  // namespace

QLinearPSConv::QLinearPSConv(const LayerAttributes& a, QKernels kernels)
    : layer_(a, kernels.dot ? QDotPacking::kLanes : 1), kernels_(kernels) {
  for (size_t o = 0; o < std::min(layer_.m_, layer_.p_); ++o)  // the classes that have outputs
    if (layer_.class_taps(layer_.class_of(o)) > kMaxTaps)
      fail("in_channels: an output keeps " + std::to_string(layer_.class_taps(layer_.class_of(o))) +
           " taps, over the 32768 that int32 accumulation allows");
}

void QLinearPSConv::pack(const int8_t* w, Packed& packed) const {
  if (layer_.depthwise()) return packed.depthwise.assign(w, w + layer_.packed_length());  // read as it is
  if (!uses_dot()) return layer_.pack<QGemmPacking>(w, layer_.pair_offsets<QGemmPacking>(), packed.pairs);
  layer_.pack<QDotPacking>(w, layer_.pair_offsets<QDotPacking>(), packed.dots);
  packed.sums.assign(layer_.m_, 0);  // |sum| <= 128 * 32768
  for (size_t o = 0, start = 0; o < layer_.m_; ++o) {
    const size_t taps = layer_.class_taps(layer_.class_of(o));
    for (size_t i = 0; i < taps; ++i) packed.sums[o] += w[start + i];
    start += taps;
  }
}

void QLinearPSConv::prepack(const int8_t* w, size_t w_len) {
  layer_.check_w_length(w_len);
  pack(w, prepacked_);
  is_prepacked_ = true;
}

Requantization QLinearPSConv::requantization(const QuantizationInputs& q) const {
  Requantization rq;
  const float x_scale = scale(q.x_scale, "x_scale"), y_scale = scale(q.y_scale, "y_scale");
  rq.x_zero_point = scalar(q.x_zero_point, "x_zero_point");
  rq.y_zero_point = scalar(q.y_zero_point, "y_zero_point");
  const TensorRef<float>& w = q.w_scale;
  const bool per_channel = w.rank == 1 && w.shape[0] == static_cast<int64_t>(layer_.m_);
  if (!per_channel && !scalar_shape(w)) fail("w_scale: expected shape [out_channels], [1] or []");
  rq.scale.resize(layer_.m_);
  for (size_t o = 0; o < layer_.m_; ++o) {
    const float s = w.data[per_channel ? o : 0];
    if (!(std::isfinite(s) && s > 0)) fail("w_scale: every scale must be finite and > 0");
    rq.scale[o] = x_scale * s / y_scale;
  }
  return rq;
}

std::vector<int64_t> QLinearPSConv::output_shape(const QInputs& in) const {
  const std::vector<int64_t> y = layer_.output_shape(in.x_shape, in.x_rank);
  if (!is_prepacked_) layer_.check_w_length(in.w_len);
  if (in.has_b) {
    layer_.check_per_output(in.b_shape, in.b_rank, "B");
    for (size_t o = 0; o < layer_.m_; ++o)
      if (in.b[o] > kMaxBias || in.b[o] < -kMaxBias) fail("B: |B[o]| exceeds 2^30, acc + B could overflow int32");
  }
  return y;
}

void QLinearPSConv::run(const QInputs& in, const Requantization& rq, uint8_t* y, const Parallel& parallel) const {
  if (in.x_shape[0] == 0) return;
  if (layer_.depthwise())  // W as it is
    return run_depthwise(in, rq, y, is_prepacked_ ? prepacked_.depthwise.data() : in.w, parallel);
  Packed local;
  if (!is_prepacked_) pack(in.w, local);
  const Packed& packed = is_prepacked_ ? prepacked_ : local;
  if (uses_dot()) return run_dots(in, rq, y, packed, parallel);
  run_pairs(in, rq, y, packed.pairs.data(), parallel);
}

void QLinearPSConv::run_pairs(const QInputs& in, const Requantization& rq, uint8_t* y, const int16_t* a,
                              const Parallel& parallel) const {
  const std::shared_ptr<const Plan> cached = layer_.cached_plan(in.x_shape);
  const Plan& plan = *cached;
  const size_t x_image = layer_.c_ * plan.geo.h * plan.geo.w;
  const SubtractZeroPoint convert{static_cast<int16_t>(rq.x_zero_point)};
  auto fill = [&](size_t n0, size_t task, int16_t* planes) {
    fill_padding(plan, planes);
    copy_image(layer_, plan, in.x + n0 * x_image + task * plan.geo.h * plan.geo.w, planes, convert);
  };
  run_tiles<QGemmPacking, QGemmArgs>(layer_, plan, rq, in.has_b ? in.b : nullptr, a, kernels_.gemm, y, fill, parallel);
}

void QLinearPSConv::run_dots(const QInputs& in, const Requantization& rq, uint8_t* y, const Packed& packed,
                             const Parallel& parallel) const {
  const std::shared_ptr<const Plan> cached = layer_.cached_plan(in.x_shape);
  const Plan& plan = *cached;
  const size_t channel = plan.geo.h * plan.geo.w, x_image = layer_.c_ * channel;
  const size_t p = layer_.p_, cg = layer_.cg_, cq = layer_.cq_, per_image = layer_.plane_channels();
  // sum W * (x - zp) = sum W * x - zp * sum W; within int32 as |B| <= 2^30 and |zp * sum W| < 2^23.
  std::vector<int32_t> bias(layer_.m_);
  for (size_t o = 0; o < layer_.m_; ++o)
    bias[o] = (in.has_b ? in.b[o] : 0) - rq.x_zero_point * packed.sums[o];
  const uint8_t zp = static_cast<uint8_t>(rq.x_zero_point);
  const Quad pad{{zp, zp, zp, zp}};  // padding counts as x_zero_point, as in QLinearConv
  auto fill = [&](size_t n0, size_t task, Quad* planes) {
    const size_t n = n0 + task / per_image, g = task % per_image / cq, q = task % per_image % cq;
    const size_t first = q / p * QDotPacking::kLanes * p + q % p;  // lane 0's channel in the group
    const size_t lanes = std::min(QDotPacking::kLanes, (cg - first + p - 1) / p);
    if (lanes < QDotPacking::kLanes) {
      std::fill_n(planes, plan.geo.channel, pad);  // lanes without a channel: any value, zero weights
    } else {
      fill_padding(plan, planes, pad);
    }
    const uint8_t* const x = in.x + n * x_image + (g * cg + first) * channel;
    if (lanes == QDotPacking::kLanes) {
      copy_image(layer_, plan, x, planes, CopyQuad{p * channel});
      return;
    }
    for (size_t lane = 0; lane < lanes; ++lane)
      copy_image(layer_, plan, x + lane * p * channel, planes, CopyToLane{lane});
  };
  run_tiles<QDotPacking, QDotArgs>(layer_, plan, rq, bias.data(), packed.dots.data(), kernels_.dot, y, fill, parallel);
}

// Tasks (image, channel) as fp32 PSConv's (depthwise_tasks.h), on planes of x - x_zero_point.
void QLinearPSConv::run_depthwise(const QInputs& in, const Requantization& rq, uint8_t* y, const int8_t* w,
                                  const Parallel& parallel) const {
  const std::shared_ptr<const Plan> cached = layer_.cached_plan(in.x_shape);
  const Plan& plan = *cached;
  const Geometry& geo = plan.geo;
  const SubtractZeroPoint convert{static_cast<int16_t>(rq.x_zero_point)};
  QDwconvArgs args{};  // what every output shares
  args.b_row_stride = geo.rs * geo.ws;
  args.rows = geo.oh;
  args.n = geo.ow;
  args.y_row_stride = geo.ow;
  args.y_zero_point = rq.y_zero_point;
  auto fill = [&](size_t t, int16_t* planes) { copy_image(layer_, plan, in.x + t * geo.h * geo.w, planes, convert); };
  auto output = [&](const DepthwiseOutput& out, const int16_t* planes) {
    QDwconvArgs a = args;
    a.k = out.k;
    a.w = w + out.weights;
    a.b = planes;
    a.b_offsets = out.b_offsets;
    a.y = y + out.y;
    a.bias = in.has_b ? in.b[out.o] : 0;
    a.scale = rq.scale[out.o];
    kernels_.dwconv(a);
  };
  pscompress::run_depthwise<int16_t>(layer_, plan, parallel, geo.n, fill, output);
}

}  // namespace pscompress
