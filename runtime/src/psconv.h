// PSConv / PSConvAdd (docs/operator.md) independent of onnxruntime: the fp32 operator on the
// shared sparse layer (sparse_layer.h): its clamp, weight prepacking, the depthwise kernel and
// the NaN rule of non-finite inputs. Every violation of the contract throws
// std::invalid_argument naming the attribute or input, before any tensor memory is touched.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "dwconv.h"
#include "sparse_layer.h"
#include "ukernel.h"

namespace pscompress {

struct Attributes : LayerAttributes {
  float clip_min = -__builtin_inff(), clip_max = __builtin_inff();
};

struct Inputs {
  const int64_t* x_shape; size_t x_rank; const float* x;
  size_t w_len; const float* w;
  bool has_b;  // an absent optional input means no bias; a present B must have shape [M]
  const int64_t* b_shape; size_t b_rank; const float* b;
  const int64_t* z_shape; size_t z_rank; const float* z;  // z_rank == 0: no residual
};

class PSConv {
 public:
  // Validates every attribute; throws std::invalid_argument on the first violation.
  explicit PSConv(const Attributes& attrs);

  // Number of floats W must hold.
  size_t packed_length() const { return layer_.packed_length(); }
  // Packs constant weights once; later runs then ignore their W input.
  void prepack(const float* w, size_t w_len);
  // Checks inputs (and the memory bound of docs/operator.md) and returns Y's shape.
  std::vector<int64_t> output_shape(const Inputs& in, bool residual) const;
  // Computes Y (shape from output_shape) with the given microkernels of one path: dwconv for
  // layers with one input channel per group (Cg == 1), ukernel for the others.
  void run(const Inputs& in, float* y, Ukernel ukernel, Dwconv dwconv, const Parallel& parallel) const;

  // Memory held, in floats (docs/operator.md, "Memory"): the prepacked weights, and the phase
  // planes a run allocates for X of the given (valid) shape.
  size_t prepacked_floats() const { return prepacked_.size(); }
  size_t scratch_floats(const int64_t* x_shape) const;

 private:
  void nan_masked_non_finite(const Geometry& geo, size_t c, const float* image, float* y) const;

  SparseLayer layer_;
  float lo_, hi_;
  std::vector<float> prepacked_;
};

}  // namespace pscompress
