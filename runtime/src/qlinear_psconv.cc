#include "qlinear_psconv.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "gemm_tiles.h"
#include "phase_planes.h"

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

}  // namespace

QLinearPSConv::QLinearPSConv(const LayerAttributes& a) : layer_(a) {
  for (size_t o = 0; o < std::min(layer_.m_, layer_.p_); ++o)  // the classes that have outputs
    if (layer_.class_k(layer_.class_of(o)) > kMaxTaps)
      fail("in_channels: an output keeps " + std::to_string(layer_.class_k(layer_.class_of(o))) +
           " taps, over the 32768 that int32 accumulation allows");
}

void QLinearPSConv::prepack(const int8_t* w, size_t w_len) {
  layer_.check_w_length(w_len);
  layer_.pack<QGemmPacking>(w, layer_.pair_offsets<QGemmPacking>(), prepacked_);
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
  if (prepacked_.empty()) layer_.check_w_length(in.w_len);
  if (in.has_b) {
    layer_.check_per_output(in.b_shape, in.b_rank, "B");
    for (size_t o = 0; o < layer_.m_; ++o)
      if (in.b[o] > kMaxBias || in.b[o] < -kMaxBias) fail("B: |B[o]| exceeds 2^30, acc + B could overflow int32");
  }
  return y;
}

void QLinearPSConv::run(const QInputs& in, const Requantization& rq, uint8_t* y, QGemm qgemm,
                        const Parallel& parallel) const {
  if (in.x_shape[0] == 0) return;
  const Plan plan = layer_.plan(in.x_shape);
  const Geometry& geo = plan.geo;
  const std::vector<size_t> offsets = layer_.pair_offsets<QGemmPacking>();
  std::vector<int16_t> a_local;
  if (prepacked_.empty()) layer_.pack<QGemmPacking>(in.w, offsets, a_local);
  const int16_t* const a = prepacked_.empty() ? a_local.data() : prepacked_.data();
  const size_t m = layer_.m_, p = layer_.p_, ohw = geo.ohw, x_image = layer_.c_ * geo.h * geo.w;
  const SubtractZeroPoint convert{static_cast<int16_t>(rq.x_zero_point)};
  auto fill = [&](size_t n0, size_t task, int16_t* planes) {
    copy_image(layer_, plan, in.x + n0 * x_image + task * geo.h * geo.w, planes, convert);
  };
  auto kernel = [&](size_t n0, const PanelCall& call, const TileSource<int16_t>* tiles, size_t count) {
    QGemmArgs args{};
    args.k = call.k;
    args.a = a + offsets[call.q] + call.panel * kMR * QGemmPacking::slots(call.k);
    args.y_row_stride = p * ohw;
    args.bias = in.has_b ? in.b + call.o : nullptr;
    args.scale = rq.scale.data() + call.o;
    args.channel_stride = p;
    args.y_zero_point = rq.y_zero_point;
    args.m = call.rows;
    uint8_t* const y_panel = y + ((n0 + call.n) * m + call.o) * ohw;
    for (const TileSource<int16_t>* tile = tiles; tile < tiles + count; ++tile) {
      args.b_base = tile->b_base;
      args.b_offsets = tile->b_offsets;
      args.b_split = tile->b_split;
      args.y = y_panel + tile->y_offset;
      args.y_split = tile->y_split;
      args.n = tile->valid;
      qgemm(args);
    }
  };
  run_gemm<int16_t>(layer_, plan, parallel, fill, kernel, [](size_t, size_t) {});
}

}  // namespace pscompress
