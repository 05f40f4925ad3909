// QLinearPSConv (docs/operator.md), PSConv's int8 sibling, independent of onnxruntime: uint8
// X and Y, int8 symmetric W packed as PSConv's, int32 B, per-output-channel w_scale. Its
// outputs are onnxruntime's QLinearConv's on the dense masked weights (w_zero_point 0):
//   acc = sum Wd * (X - x_zero_point), padding counting as x_zero_point;
//   Y = clamp(nearbyint(float(acc + B) * ((x_scale * w_scale[o]) / y_scale)) + y_zero_point, 0, 255).
// With a dot kernel (qgemm.h, "Dots") and channels enough to fill its lanes, the planes hold
// X itself, four channels to an element, padding x_zero_point, and the bias carries
// -x_zero_point * sum W[o]: the same acc. Else the pair kernel runs on X - x_zero_point, or,
// for depthwise layers (one input channel per group), the depthwise kernel (qdwconv.h).
// The layer itself (attributes, planes, tiles, tasks) is the shared SparseLayer's. Every
// violation of the contract throws std::invalid_argument naming the attribute or input,
// before any tensor memory is written.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "qdwconv.h"
#include "qgemm.h"
#include "sparse_layer.h"

namespace pscompress {

// A tensor input as the operator sees it: shape and data (null when absent or empty).
template <class T>
struct TensorRef {
  const int64_t* shape;
  size_t rank;
  const T* data;
};

// The scales and zero points, as given (types already checked by the caller).
struct QuantizationInputs {
  TensorRef<float> x_scale;
  TensorRef<uint8_t> x_zero_point;
  TensorRef<float> w_scale;  // [M], or one element ([1] or []) for every output channel
  TensorRef<float> y_scale;
  TensorRef<uint8_t> y_zero_point;
};

// What a run needs of them: zero points and the requantization scale of every output channel.
struct Requantization {
  int32_t x_zero_point, y_zero_point;
  std::vector<float> scale;  // (x_scale * w_scale[o]) / y_scale, in float32 in that order
};

struct QInputs {
  const int64_t* x_shape; size_t x_rank; const uint8_t* x;
  size_t w_len; const int8_t* w;
  bool has_b;  // an absent optional input means no bias; a present B must have shape [M]
  const int64_t* b_shape; size_t b_rank; const int32_t* b;
};

// One CPU path's int8 kernels: the pair and depthwise kernels always, the dot kernel where
// the CPU has one.
struct QKernels {
  QGemm gemm;
  QDot dot;  // nullable
  QDwconv dwconv;
};

class QLinearPSConv {
 public:
  // Validates every attribute, and that int32 accumulators cannot overflow: at most 32768
  // kept taps per output (then |acc| < 2^30). Chooses the kernel and the planes' layout.
  QLinearPSConv(const LayerAttributes& attrs, QKernels kernels);
  bool uses_dot() const { return layer_.lanes() > 1; }

  size_t packed_length() const { return layer_.packed_length(); }
  // Packs constant weights once; later runs then ignore their W input.
  void prepack(const int8_t* w, size_t w_len);
  // Checks the scales (finite, > 0) and zero points (scalars) and computes the scales.
  Requantization requantization(const QuantizationInputs& q) const;
  // Checks X, W and B (shape, and |B[o]| <= 2^30 so that acc + B fits int32); returns Y's shape.
  std::vector<int64_t> output_shape(const QInputs& in) const;
  // Computes Y (shape from output_shape).
  void run(const QInputs& in, const Requantization& rq, uint8_t* y, const Parallel& parallel) const;

 private:
  // Packed weights for one kernel: pairs (int16), dots (int8, with each output's weight sum),
  // or W as it is for the depthwise kernel.
  struct Packed {
    std::vector<int16_t> pairs;
    std::vector<int8_t> dots;
    std::vector<int32_t> sums;
    std::vector<int8_t> depthwise;
  };
  void pack(const int8_t* w, Packed& packed) const;
  void run_pairs(const QInputs& in, const Requantization& rq, uint8_t* y, const int16_t* a,
                 const Parallel& parallel) const;
  void run_dots(const QInputs& in, const Requantization& rq, uint8_t* y, const Packed& packed,
                const Parallel& parallel) const;
  void run_depthwise(const QInputs& in, const Requantization& rq, uint8_t* y, const int8_t* w,
                     const Parallel& parallel) const;

  SparseLayer layer_;
  QKernels kernels_;
  Packed prepacked_;
  bool is_prepacked_ = false;
};

}  // namespace pscompress
