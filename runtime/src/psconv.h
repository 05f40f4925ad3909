// PSConv / PSConvAdd (docs/operator.md) independent of onnxruntime: attribute validation,
// weight prepacking and the threaded computation. Every violation of the contract throws
// std::invalid_argument naming the attribute or input, before any tensor memory is touched.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "dwconv.h"
#include "ukernel.h"

namespace pscompress {

struct Attributes {
  std::vector<int64_t> kernel_shape, strides{1, 1}, pads{0, 0, 0, 0}, dilations{1, 1};
  int64_t group = 1;
  int64_t in_channels = 0;   // required: 0 means absent
  int64_t out_channels = 0;  // required: 0 means absent
  std::vector<int64_t> patterns;
  int64_t shift = 0;
  float clip_min = -__builtin_inff(), clip_max = __builtin_inff();
};

// Runs fn(ctx, i) for every i in [0, total), possibly in parallel.
struct Parallel {
  void (*run)(void* self, void (*fn)(void*, size_t), size_t total, void* ctx);
  void* self;
};

struct Inputs {
  const int64_t* x_shape; size_t x_rank; const float* x;
  size_t w_len; const float* w;
  bool has_b;  // an absent optional input means no bias; a present B must have shape [M]
  const int64_t* b_shape; size_t b_rank; const float* b;
  const int64_t* z_shape; size_t z_rank; const float* z;  // z_rank == 0: no residual
};

// How a tile's kNR output pixels map onto the phase planes, by the output width alone. Row
// and two-row tiles are read straight from the image (pixels contiguous per half); other
// tiles are gathered first. Public so that tests can ask which layout a shape gets.
enum class TileLayout { kRow, kTwoRows, kGathered };
TileLayout choose_layout(size_t ow);

class PSConv {
 public:
  // Validates every attribute; throws std::invalid_argument on the first violation.
  explicit PSConv(const Attributes& attrs);

  // Number of floats W must hold.
  size_t packed_length() const { return packed_len_; }
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
  struct Tap {               // where a kept tap of a pattern reads its input channel's planes
    uint32_t phase, row, col;  // kw mod stride_w, kh, kw / stride_w
  };
  struct Geometry;
  struct Run;
  Geometry geometry(const int64_t* x_shape) const;
  std::vector<size_t> pair_offsets() const;
  void pack_weights(const float* w, const std::vector<size_t>& offsets, std::vector<float>& a) const;
  void nan_masked_non_finite(const Geometry& geo, size_t c, const float* image, float* y) const;
  // Depthwise (Cg == 1): W is already one contiguous run of weights per output, used unpacked.
  bool depthwise() const { return cg_ == 1; }
  size_t depthwise_weights(size_t o) const;
  static void zero_padding(const Run& run, float* planes);
  static bool copy_image(const Run& run, size_t task, float* planes);
  static void fill_phases(void* run, size_t task);
  static void compute_tiles(void* run, size_t task);
  static void compute_depthwise(void* run, size_t task);

  size_t kh_, kw_, sh_, sw_, pt_, pl_, pb_, pr_, groups_, c_, m_, cg_, mg_, p_, shift_;
  size_t pairs_per_group_;  // (group, residue class) pairs with outputs, per group: min(Mg, P)
  float lo_, hi_;
  std::vector<uint64_t> patterns_;
  std::vector<size_t> class_k_;  // per residue class r = (o + shift) mod P: kept taps per output
  std::vector<std::vector<Tap>> pattern_taps_;  // per pattern, its kept taps in W's order
  std::vector<size_t> period_starts_;  // depthwise: where output o's weights start in W, for o < P, then P
  size_t packed_len_ = 0;
  std::vector<float> prepacked_;
};

}  // namespace pscompress
