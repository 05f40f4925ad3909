// Table-driven check of every int8 GEMM microkernel this CPU can run (qgemm.h), pair and dot
// kernels alike: the scalar reference against an exact evaluation of qgemm.h's formula (int64
// sums, then the float32 requantization), every SIMD path against the scalar one, byte for byte.
//   layouts:  every m (1 to kMR) x n (1 to kNR) x y_split (1 to 8 where n > 8 stores an upper
//             half) x b_split (0: reread, 6: halves overlapping in B as in two rows of 6,
//             8: contiguous, 29: a row further) x k (0, 1, 2, odd and even around the AVX2
//             prefetch distance and its steps of two taps, long), with bias;
//   epilogue: every m x n x bias (none, stride 1, 3) x y_zero_point (0, 128, 255) x values
//             (random, or extreme: x - zp = +-255, w = -128 / 127, |bias| = 2^30, scales that
//             round halves), in a row and a two-row layout;
//   limits:   32767 and 32768 weights per row of extreme values with |bias| = 2^30, the
//             largest accumulations the operator admits (qlinear_psconv.cc).
// Pair kernels take x - zp in [-255, 255], dot kernels x in [0, 255] in each of four lanes and
// 1 to kDotTiles tiles per call (the same weights, each tile its own B, Y and pixel count).
// Every byte of Y outside the tile's pixels holds a guard (random per case) that must survive;
// B lanes that feed only discarded pixels hold other in-range values. B, bias and scale end at
// the last element the tile may read, so that an ASan build reports any read past them.
// Prints a line per path; exit status 1 on any mismatch.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "dispatch.h"
#include "kernel_check.h"
#include "qgemm.h"
#include "quad_interleave.h"

using namespace pscompress;

namespace {

constexpr size_t kRowStride = 19;  // Y bytes per tile row: 16 and a gap of guards
constexpr size_t kLead = 8, kTrail = 8;  // guards before row 0 and after row kMR - 1
constexpr size_t kTileBytes = kMR * kRowStride + 5;  // from one tile's row 0 to the next tile's
constexpr int32_t kBiasLimit = 1 << 30;

enum class Values { kRandom, kExtreme, kHalves };  // kHalves: scales 0.5 and 0.25, small sums

struct Case {
  size_t m, n, k, b_split, y_split;
  size_t bias_stride;  // 0: no bias
  int32_t y_zero_point;
  Values values;
  size_t tiles = 1;  // tiles per call; tile t < tiles - 1 has pixels(t) pixels, the last n

  size_t pixels(size_t t) const { return t + 1 == tiles ? n : (n + 5 * t) % kNR + 1; }

  std::string describe() const {
    static const char* const names[] = {"random", "extreme", "halves"};
    char text[160];
    std::snprintf(text, sizeof text, "m=%zu n=%zu k=%zu b_split=%zu y_split=%zu bias_stride=%zu y_zp=%d %s tiles=%zu",
                  m, n, k, b_split, y_split, bias_stride, y_zero_point, names[static_cast<int>(values)], tiles);
    return text;
  }
  size_t place(size_t t, size_t row, size_t pixel) const {
    return kLead + t * kTileBytes + row * kRowStride + (pixel < 8 ? pixel : y_split + pixel - 8);
  }
  size_t lane(size_t pixel) const { return pixel < 8 ? pixel : b_split + pixel - 8; }
};

// A B element's lanes: one for the pair kernels, four for the dot kernels.
int32_t lane_value(int16_t e, size_t) { return e; }
int32_t lane_value(const Quad& e, size_t lane) { return e.lane[lane]; }
void set_lane(int16_t& e, size_t, int v) { e = static_cast<int16_t>(v); }
void set_lane(Quad& e, size_t lane, int v) { e.lane[lane] = static_cast<uint8_t>(v); }

// One case's buffers; B, bias and scale exactly as long as the tiles may read.
template <class Args, class Packing>
struct Tile {
  static constexpr size_t kLanes = Packing::kLanes;
  std::vector<typename Args::Weight> a;
  std::vector<std::vector<typename Args::Element>> b;  // per tile, rows at the same offsets
  std::vector<int32_t> bias;
  std::vector<float> scale;
  std::vector<uint8_t> y;  // guards everywhere
  std::vector<int64_t> offsets;
  std::vector<bool> pixel;  // which bytes of y the tiles store

  int32_t weight(size_t k, size_t lane, size_t m) const { return a[Packing::at(k * kLanes + lane, m)]; }

  // A call: the arguments of each tile.
  std::vector<Args> args(const Case& c, uint8_t* out) const {
    std::vector<Args> call(c.tiles);
    for (size_t t = 0; t < c.tiles; ++t) {
      Args& args = call[t];
      args.k = c.k;
      args.a = a.data();
      args.b_base = b[t].data();
      args.b_offsets = offsets.data();
      args.b_split = c.b_split;
      args.y = out + c.place(t, 0, 0);
      args.y_split = c.y_split;
      args.y_row_stride = kRowStride;
      args.bias = c.bias_stride ? bias.data() : nullptr;
      args.scale = scale.data();
      args.channel_stride = c.bias_stride ? c.bias_stride : 2;  // without bias, scales still have a stride
      args.y_zero_point = c.y_zero_point;
      args.m = c.m;
      args.n = c.pixels(t);
    }
    return call;
  }
};

// A kernel of either layout as check_paths calls it: on a call's tiles.
template <class Fn>
struct Kernel {
  Fn fn;
  void operator()(const std::vector<QGemmArgs>& call) const { fn(call[0]); }
  void operator()(const std::vector<QDotArgs>& call) const { fn(call.data(), call.size()); }
  bool operator==(const Kernel& other) const { return fn == other.fn; }
};

size_t channel_stride(const Case& c) { return c.bias_stride ? c.bias_stride : 2; }

template <class Args, class Packing>
Tile<Args, Packing> make_tile(const Case& c, std::mt19937& rng) {
  using T = Tile<Args, Packing>;
  constexpr bool kPairs = T::kLanes == 1;  // B holds x - zp, else x
  std::uniform_int_distribution<int> x(kPairs ? -255 : 0, 255), w(-128, 127), sign(0, 1), byte(0, 255);
  std::uniform_int_distribution<int32_t> bias(-kBiasLimit, kBiasLimit);
  std::uniform_real_distribution<float> u(0.2f, 3.0f);
  const bool extreme = c.values == Values::kExtreme;
  auto pick_x = [&] { return extreme ? (sign(rng) ? 255 : kPairs ? -255 : 0) : x(rng); };
  auto pick_w = [&] { return extreme ? (sign(rng) ? 127 : -128) : w(rng); };
  T t;
  t.a.assign(Packing::slots(c.k) * kMR, 0);  // rows past m and an odd k's last partner stay zero
  for (size_t k = 0; k < c.k; ++k)
    for (size_t lane = 0; lane < T::kLanes; ++lane)
      for (size_t m = 0; m < c.m; ++m) t.a[Packing::at(k * T::kLanes + lane, m)] = static_cast<typename Args::Weight>(pick_w());
  const size_t row = std::max<size_t>(8, c.b_split + 8);  // both halves' 8 elements
  for (size_t k = 0; k < c.k; ++k) t.offsets.push_back(static_cast<int64_t>((c.k - 1 - k) * row));  // row 0 ends B
  t.b.resize(c.tiles);
  for (size_t tile = 0; tile < c.tiles; ++tile) {
    auto& b = t.b[tile];
    b.resize(c.k * row);
    for (auto& e : b)
      for (size_t lane = 0; lane < T::kLanes; ++lane) set_lane(e, lane, x(rng));  // read into discarded lanes only
    for (size_t k = 0; k < c.k; ++k)
      for (size_t n = 0; n < c.pixels(tile); ++n)
        for (size_t lane = 0; lane < T::kLanes; ++lane) set_lane(b[t.offsets[k] + c.lane(n)], lane, pick_x());
  }
  const size_t stride = channel_stride(c), rows_len = (c.m - 1) * stride + 1;
  const float products = static_cast<float>(c.k * T::kLanes);
  t.scale.resize(rows_len);
  for (size_t m = 0; m < rows_len; ++m) {
    if (c.values == Values::kHalves) {
      t.scale[m] = m % 2 ? 0.25f : 0.5f;
    } else {  // outputs spread over the range, some clamped
      t.scale[m] = u(rng) * 100.0f / (1.0f + std::sqrt(products) * 255.0f * 64.0f);
      if (extreme) t.scale[m] *= 0.02f;  // the bias dominates: keep some outputs unclamped
    }
  }
  if (c.bias_stride) {
    t.bias.resize(rows_len);
    for (size_t m = 0; m < rows_len; ++m)
      t.bias[m] = extreme ? (sign(rng) ? kBiasLimit : -kBiasLimit) : c.values == Values::kHalves ? x(rng) : bias(rng) / 4096;
  }
  t.y.assign(kLead + c.tiles * kTileBytes + kTrail, static_cast<uint8_t>(byte(rng)));
  t.pixel.assign(t.y.size(), false);
  for (size_t tile = 0; tile < c.tiles; ++tile)
    for (size_t m = 0; m < c.m; ++m)
      for (size_t n = 0; n < c.pixels(tile); ++n) t.pixel[c.place(tile, m, n)] = true;
  return t;
}

// qgemm.h's formula: exact int64 sums (which must fit int32 with the bias), then the float32
// requantization, pixels stored in order.
template <class T>
void reference(const Case& c, const T& t, std::vector<uint8_t>& y, std::vector<double>& magnitude) {
  y = t.y;
  magnitude.assign(y.size(), 0.0);
  const size_t stride = channel_stride(c);
  for (size_t tile = 0; tile < c.tiles; ++tile) {
    for (size_t m = 0; m < c.m; ++m) {
      for (size_t n = 0; n < c.pixels(tile); ++n) {
        int64_t acc = c.bias_stride ? t.bias[m * stride] : 0;
        for (size_t k = 0; k < c.k; ++k)
          for (size_t lane = 0; lane < T::kLanes; ++lane)
            acc += int64_t{t.weight(k, lane, m)} * lane_value(t.b[tile][t.offsets[k] + c.lane(n)], lane);
        if (acc < INT32_MIN || acc > INT32_MAX) std::printf("reference: %s overflows int32\n", c.describe().c_str());
        float v = static_cast<float>(static_cast<int32_t>(acc)) * t.scale[m * stride];
        v = std::fmin(static_cast<float>(255 - c.y_zero_point), std::fmax(static_cast<float>(-c.y_zero_point), v));
        y[c.place(tile, m, n)] = static_cast<uint8_t>(std::nearbyint(v) + c.y_zero_point);
      }
    }
  }
}

constexpr size_t kKs[] = {0, 1, 2, 5, 6, 7, 8, 12, 13, 14, 15, 64, 257};
constexpr size_t kBSplits[] = {0, 6, 8, 29};

// `lanes` weights per B element (the limits are in weights per row); up to `tiles` per call,
// cycling through 1 to `tiles`.
std::vector<Case> cases(size_t lanes, size_t tiles) {
  std::vector<Case> all;
  for (size_t m = 1; m <= kMR; ++m) {
    for (size_t n = 1; n <= kNR; ++n) {
      for (size_t y_split = n > 8 ? 1 : 8; y_split <= 8; ++y_split)
        for (size_t b_split : kBSplits)
          for (size_t k : kKs) all.push_back({m, n, k, b_split, y_split, 3, 128, Values::kRandom});
      const size_t two_rows_b_split = n > 8 ? 29 : 0;  // no second row: reread the first
      for (size_t bias_stride : {0, 1, 3})
        for (int32_t zp : {0, 128, 255})
          for (Values values : {Values::kRandom, Values::kExtreme, Values::kHalves})
            for (size_t k : {13, 14}) {
              all.push_back({m, n, k, 8, 8, bias_stride, zp, values});
              all.push_back({m, n, k, two_rows_b_split, 6, bias_stride, zp, values});
            }
    }
  }
  for (size_t k : {32767 / lanes, 32768 / lanes})
    for (int32_t zp : {0, 255}) {
      all.push_back({6, 16, k, 8, 8, 1, zp, Values::kExtreme});
      all.push_back({5, 13, k, 29, 6, 3, zp, Values::kExtreme});
    }
  for (size_t i = 0; i < all.size(); ++i) all[i].tiles = 1 + i % tiles;
  return all;
}

// Every path's kernel of one layout (pick(path): null where the path has none) against the scalar one.
template <class Args, class Packing, class Fn, class Pick>
bool check_layout(const char* layout, Pick pick, Fn scalar, size_t tiles, unsigned seed) {
  std::vector<std::string> names;  // outlive the reports that point at them
  std::vector<CpuPath> paths;       // "scalar" last; it has both layouts' scalar kernels
  for (const CpuPath& path : supported_paths())
    if (pick(path)) paths.push_back(path), names.push_back(std::string(layout) + " " + path.name);
  std::vector<std::pair<const char*, Kernel<Fn>>> kernels;
  for (size_t i = 0; i < paths.size(); ++i) kernels.emplace_back(names[i].c_str(), Kernel<Fn>{pick(paths[i])});
  return check_paths(kernels, Kernel<Fn>{scalar}, cases(Packing::kLanes, tiles), seed, kLead,
                     make_tile<Args, Packing>, reference<Tile<Args, Packing>>, "exact");
}

}  // namespace

// interleave_quads (the dot kernels' plane fill) against its definition: runs of every length
// to past three SIMD blocks, at channel strides equal to, longer than and far from the run.
bool check_interleave_quads() {
  std::mt19937 rng(4323);
  std::vector<uint8_t> src(4 * 200);
  for (uint8_t& v : src) v = static_cast<uint8_t>(rng());
  bool ok = true;
  for (size_t n = 0; n <= 50; ++n) {
    for (size_t stride : {n, n + 3, size_t{200}}) {
      std::vector<Quad> got(n + 1, Quad{{7, 7, 7, 7}});
      interleave_quads(got.data(), src.data(), stride, n);
      for (size_t i = 0; i < n; ++i)
        for (size_t l = 0; l < 4; ++l) ok &= got[i].lane[l] == src[l * stride + i];
      for (size_t l = 0; l < 4; ++l) ok &= got[n].lane[l] == 7;  // nothing written past the run
    }
  }
  std::printf("quad interleave: %s\n", ok ? "ok" : "MISMATCH");
  return ok;
}

int main() {
  // avx512f and avx512-vnni run avx2's pair kernel; only some paths have a dot kernel.
  const bool pairs = check_layout<QGemmArgs, QGemmPacking, QGemm>(
      "pairs", [](const CpuPath& p) { return p.qgemm; }, qgemm_6x16_scalar, 1, 4321);
  const bool dots = check_layout<QDotArgs, QDotPacking, QDot>(
      "dots", [](const CpuPath& p) { return p.qdot; }, qdot_6x16_scalar, kDotTiles, 4322);
#if defined(PSCOMPRESS_HAVE_NEON)
  // Say so when the sdot kernel this build has cannot run here (ARMv8.0: the Pi 4's A72).
  const std::vector<CpuPath> paths = supported_paths();
  if (std::none_of(paths.begin(), paths.end(), [](const CpuPath& p) { return p.qdot == qdot_6x16_neondot; }))
    std::printf("dots neon-dot: built, not run: this CPU has no dot product\n");
#endif
  const bool interleave = check_interleave_quads();
  std::printf("dispatch picks: %s\n", cpu_path().name);
  return pairs && dots && interleave ? 0 : 1;
}
