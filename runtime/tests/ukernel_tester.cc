// Table-driven check of every microkernel this CPU can run: the scalar reference against a
// plain float64 evaluation of ukernel.h's formula, every SIMD path against the scalar one.
//   layouts:   every m (1 to kMR) x n (1 to kNR) x y_split (1 to 8 where n > 8 stores an
//              upper half) x b_split (0: reread, 6: halves overlapping in B as in two rows of
//              6, 8: contiguous, 29: a row further) x k (0, 1, around the AVX2 prefetch
//              distance of 6 and its unrolling by 2, long), with bias and residual, unclamped;
//   epilogues: every m x n x bias (none, stride 1, 3) x residual x clamp (none, Relu,
//              [-0.5, 0.75], [0.25, 0.25]) x finite data or NaN and +-Inf among B, bias and Z,
//              in a row and a two-row layout;
//   tiles:     1 to kUkernelTiles tiles per call, cycling over the cases (the same weights,
//              each tile its own B, Z, Y and pixel count).
// Every float of Y outside the tile's pixels holds a guard that must survive; B lanes that
// feed only discarded pixels hold NaN, as do the unread floats of Z and bias. B, Z and bias
// end at the last float the tile may read ("B reads": 8 floats per half), so that an ASan
// build (PSCOMPRESS_ASAN=ON) reports any read past them. Prints a line per path, with the
// count and the first mismatches; exit status 1 on any mismatch.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "dispatch.h"
#include "kernel_check.h"
#include "ukernel.h"

using namespace pscompress;

#if defined(PSCOMPRESS_EMULATED_AVX512)
namespace pscompress {
void ukernel_6x16_avx512f_emulated(const UkernelArgs* args, size_t count);  // tests/ukernel_6x16_avx512f_emulated.cc
}
#endif

namespace {

constexpr size_t kRowStride = 19;  // Y and Z floats per tile row: 16 and a gap of guards
constexpr size_t kLead = 8, kTrail = 8;  // guards before the first tile and after the last
constexpr size_t kTileFloats = kMR * kRowStride + 5;  // from one tile's row 0 to the next tile's
constexpr float kInf = INFINITY;

struct Case {
  size_t m, n, k, b_split, y_split;
  size_t bias_stride;  // 0: no bias
  bool residual;
  float lo, hi;
  bool non_finite;  // NaN and +-Inf among the pixels' B lanes, the bias and Z
  size_t tiles = 1;  // tiles per call; tile t < tiles - 1 has pixels(t) pixels, the last n

  size_t pixels(size_t t) const { return t + 1 == tiles ? n : (n + 5 * t) % kNR + 1; }
  std::string describe() const {
    char text[180];
    std::snprintf(text, sizeof text,
                  "m=%zu n=%zu k=%zu b_split=%zu y_split=%zu bias_stride=%zu z=%d clamp=[%g, %g]%s tiles=%zu", m, n,
                  k, b_split, y_split, bias_stride, residual, lo, hi, non_finite ? " NaN/Inf" : "", tiles);
    return text;
  }
  // Where a pixel of a tile's row lies from the tile's row 0, pixel 0 (in Y and in Z); in a B row.
  size_t place(size_t row, size_t pixel) const { return row * kRowStride + (pixel < 8 ? pixel : y_split + pixel - 8); }
  size_t lane(size_t pixel) const { return pixel < 8 ? pixel : b_split + pixel - 8; }
  // Where the pixel lies in the guarded output of all the call's tiles.
  size_t at(size_t tile, size_t row, size_t pixel) const { return kLead + tile * kTileFloats + place(row, pixel); }
};

// One case's buffers; B and Z per tile, each and the bias exactly as long as the tile may read.
struct Tile {
  std::vector<float> a, bias, y;  // y: guards everywhere
  std::vector<std::vector<float>> b, z;
  std::vector<int64_t> offsets;
  std::vector<bool> pixel;  // which floats of y the tiles store

  // A call: the arguments of each tile.
  std::vector<UkernelArgs> args(const Case& c, float* out) const {
    std::vector<UkernelArgs> call(c.tiles);
    for (size_t t = 0; t < c.tiles; ++t) {
      UkernelArgs& args = call[t];
      args.k = c.k;
      args.a = a.data();
      args.b_base = b[t].data();
      args.b_offsets = offsets.data();
      args.b_split = c.b_split;
      args.y = out + c.at(t, 0, 0);
      args.y_split = c.y_split;
      args.y_row_stride = kRowStride;
      args.bias = c.bias_stride ? bias.data() : nullptr;
      args.bias_stride = c.bias_stride;
      args.z = c.residual ? z[t].data() : nullptr;
      args.lo = c.lo;
      args.hi = c.hi;
      args.m = c.m;
      args.n = c.pixels(t);
    }
    return call;
  }
};

// A kernel as check_paths calls it: on a call's tiles.
struct Kernel {
  Ukernel fn;
  void operator()(const std::vector<UkernelArgs>& call) const { fn(call.data(), call.size()); }
  bool operator==(const Kernel& other) const { return fn == other.fn; }
};

Tile make_tile(const Case& c, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  Tile t;
  t.a.assign(c.k * kMR, 0.0f);  // rows past m stay zero, as packed
  for (size_t k = 0; k < c.k; ++k)
    for (size_t m = 0; m < c.m; ++m) t.a[k * kMR + m] = u(rng);
  const size_t row = std::max<size_t>(8, c.b_split + 8);  // both halves' 8 floats
  for (size_t k = 0; k < c.k; ++k) t.offsets.push_back(static_cast<int64_t>((c.k - 1 - k) * row));  // row 0 ends B
  if (c.bias_stride) {
    t.bias.assign((c.m - 1) * c.bias_stride + 1, NAN);
    for (size_t m = 0; m < c.m; ++m) t.bias[m * c.bias_stride] = u(rng);
  }
  t.b.resize(c.tiles);
  t.z.resize(c.tiles);
  t.y.assign(kLead + c.tiles * kTileFloats + kTrail, kGuard);
  t.pixel.assign(t.y.size(), false);
  const float specials[] = {NAN, kInf, -kInf};
  for (size_t tile = 0; tile < c.tiles; ++tile) {
    const size_t n = c.pixels(tile);
    std::vector<float>& b = t.b[tile];
    b.assign(c.k * row, NAN);
    for (size_t k = 0; k < c.k; ++k)
      for (size_t i = 0; i < n; ++i) b[t.offsets[k] + c.lane(i)] = u(rng);
    std::vector<float>& z = t.z[tile];
    if (c.residual) {
      size_t end = 0;  // past the last row's last pixel: the lower half's may lie past the upper's
      for (size_t i = 0; i < n; ++i) end = std::max(end, c.place(c.m - 1, i) + 1);
      z.assign(end, NAN);
      for (size_t m = 0; m < c.m; ++m)
        for (size_t i = 0; i < n; ++i) z[c.place(m, i)] = u(rng);
    }
    for (size_t m = 0; m < c.m; ++m)
      for (size_t i = 0; i < n; ++i) t.pixel[c.at(tile, m, i)] = true;
    if (c.non_finite) {
      std::uniform_int_distribution<size_t> pick_k(0, c.k ? c.k - 1 : 0), pick_m(0, c.m - 1), pick_n(0, n - 1);
      for (float special : specials) {
        if (c.k) b[t.offsets[pick_k(rng)] + c.lane(pick_n(rng))] = special;
        if (c.residual) z[c.place(pick_m(rng), pick_n(rng))] = special;
      }
    }
  }
  if (c.non_finite && c.bias_stride) {
    std::uniform_int_distribution<size_t> pick_m(0, c.m - 1), pick_special(0, 2);
    t.bias[pick_m(rng) * c.bias_stride] = specials[pick_special(rng)];
  }
  return t;
}

// ukernel.h's formula in float64, pixels stored in order; per pixel, the sum of its terms'
// magnitudes, which bounds the rounding error (0 when infinite: the result is then exact).
void reference(const Case& c, const Tile& t, std::vector<float>& y, std::vector<double>& magnitude) {
  y = t.y;
  magnitude.assign(y.size(), 0.0);
  for (size_t tile = 0; tile < c.tiles; ++tile) {
    const std::vector<float>& b = t.b[tile];
    for (size_t m = 0; m < c.m; ++m) {
      for (size_t n = 0; n < c.pixels(tile); ++n) {
        double acc = 0.0, sum = 0.0;
        auto add = [&](double term) { acc += term, sum += std::fabs(term); };
        for (size_t k = 0; k < c.k; ++k) add(double{t.a[k * kMR + m]} * b[t.offsets[k] + c.lane(n)]);
        if (c.bias_stride) add(t.bias[m * c.bias_stride]);
        if (c.residual) add(t.z[tile][c.place(m, n)]);
        acc = acc < c.lo ? c.lo : acc;  // keeps NaN
        acc = acc > c.hi ? c.hi : acc;
        y[c.at(tile, m, n)] = static_cast<float>(acc);
        magnitude[c.at(tile, m, n)] = std::isfinite(sum) ? sum : 0.0;
      }
    }
  }
}

constexpr size_t kKs[] = {0, 1, 5, 6, 7, 12, 13, 64, 257};
constexpr size_t kBSplits[] = {0, 6, 8, 29};
constexpr struct Clamp { float lo, hi; } kClamps[] = {{-kInf, kInf}, {0.0f, kInf}, {-0.5f, 0.75f}, {0.25f, 0.25f}};

std::vector<Case> cases() {
  std::vector<Case> all;
  for (size_t m = 1; m <= kMR; ++m) {
    for (size_t n = 1; n <= kNR; ++n) {
      for (size_t y_split = n > 8 ? 1 : 8; y_split <= 8; ++y_split)
        for (size_t b_split : kBSplits)
          for (size_t k : kKs) all.push_back({m, n, k, b_split, y_split, 3, true, -kInf, kInf, false});
      const size_t two_rows_b_split = n > 8 ? 29 : 0;  // no second row: reread the first
      for (size_t bias_stride : {0, 1, 3})
        for (bool residual : {false, true})
          for (Clamp clamp : kClamps)
            for (bool non_finite : {false, true}) {
              all.push_back({m, n, 13, 8, 8, bias_stride, residual, clamp.lo, clamp.hi, non_finite});
              all.push_back({m, n, 13, two_rows_b_split, 6, bias_stride, residual, clamp.lo, clamp.hi, non_finite});
            }
    }
  }
  for (size_t i = 0; i < all.size(); ++i) all[i].tiles = 1 + i % kUkernelTiles;
  return all;
}

}  // namespace

int main() {
  std::vector<std::pair<const char*, Kernel>> kernels;
#if defined(PSCOMPRESS_EMULATED_AVX512)
  kernels.emplace_back("avx512f-emulated", Kernel{ukernel_6x16_avx512f_emulated});
#endif
  const std::vector<CpuPath> paths = supported_paths();  // "scalar" last
  for (const CpuPath& path : paths) kernels.emplace_back(path.name, Kernel{path.ukernel});
  const bool ok = check_paths(kernels, Kernel{ukernel_6x16_scalar}, cases(), 1234, kLead, make_tile, reference);
#if defined(PSCOMPRESS_HAVE_AVX512)
  // Say so when a kernel this build has cannot run here, rather than pass in silence.
  if (std::none_of(paths.begin(), paths.end(), [](const CpuPath& p) { return p.ukernel == ukernel_6x16_avx512f; }))
    std::printf("avx512f: built, not run: this CPU has no AVX-512F\n");
#endif
  std::printf("dispatch picks: %s\n", cpu_path().name);
  return ok ? 0 : 1;
}
