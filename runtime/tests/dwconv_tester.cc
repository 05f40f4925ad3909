// Table-driven check of every depthwise kernel this CPU can run (dwconv.h): the scalar
// reference against a plain float64 evaluation of dwconv.h's formula, every SIMD path against
// the scalar one, with the tolerance of ukernel_tester (the paths round differently: FMA).
//   layouts:   rows (1 to 5, 9: tiles of 4 half rows that span rows, and a last tile that
//              repeats its last half) x n (1 to 17, 24, 31 to 33, 47, 48: every tail of 8- and
//              16-pixel registers, and rows of several full ones) x
//              b_row_stride (n, and a gap of 5) x k (0, 1, 2, 4, 9, 25, 63), with bias and
//              residual, unclamped;
//   epilogues: rows x n x bias (none, a value) x residual x clamp (none, Relu, [-0.5, 0.75],
//              [0.25, 0.25]) x finite data or NaN and +-Inf among B, bias and Z.
// Every float of Y outside the rows' pixels holds a guard that must survive; B floats that feed
// no pixel (row gaps, the lanes past a row's end) hold NaN, as do Z's unread floats. B and Z end
// at the last float a call may read (dwconv.h, "B reads": 8 floats per half), so that an ASan
// build (PSCOMPRESS_ASAN=ON) reports any read past them. Prints a line per path; exit status 1
// on any mismatch.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "dispatch.h"
#include "dwconv.h"
#include "kernel_check.h"

using namespace pscompress;

namespace {

constexpr size_t kLead = 8, kTrail = 8;  // guards before row 0 and after the last row
constexpr size_t kRowGap = 3;            // guards between rows of Y
constexpr float kInf = INFINITY;

struct Case {
  size_t rows, n, k, b_row_stride;
  bool bias, residual;
  float lo, hi;
  bool non_finite;  // NaN and +-Inf among the pixels' B floats, the bias and Z

  std::string describe() const {
    char text[160];
    std::snprintf(text, sizeof text, "rows=%zu n=%zu k=%zu b_row_stride=%zu bias=%d z=%d clamp=[%g, %g]%s", rows, n,
                  k, b_row_stride, bias, residual, lo, hi, non_finite ? " NaN/Inf" : "");
    return text;
  }
  size_t y_row_stride() const { return n + kRowGap; }
  size_t place(size_t row, size_t x) const { return row * y_row_stride() + x; }  // in Y (from row 0) and Z
  // Floats one tap reads: every row's halves, 8 floats each.
  size_t tap_span() const { return (rows - 1) * b_row_stride + (n + 7) / 8 * 8; }
};

// One case's buffers; B and Z exactly as long as the call may read.
struct Rows {
  std::vector<float> w, b, z, y;  // y: guards everywhere
  std::vector<int64_t> offsets;
  float bias = 0.0f;
  std::vector<bool> pixel;  // which floats of y the call stores

  DwconvArgs args(const Case& c, float* out) const {
    DwconvArgs args{};
    args.k = c.k;
    args.w = w.data();
    args.b = b.data();
    args.b_offsets = offsets.data();
    args.b_row_stride = c.b_row_stride;
    args.rows = c.rows;
    args.n = c.n;
    args.y = out + kLead;
    args.y_row_stride = c.y_row_stride();
    args.z = c.residual ? z.data() : nullptr;
    args.bias = bias;
    args.lo = c.lo;
    args.hi = c.hi;
    return args;
  }
};

Rows make_rows(const Case& c, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  Rows t;
  for (size_t k = 0; k < c.k; ++k) t.w.push_back(u(rng));
  const size_t span = c.tap_span();
  t.b.assign(std::max<size_t>(1, c.k * span), NAN);
  for (size_t k = 0; k < c.k; ++k) {
    t.offsets.push_back(static_cast<int64_t>((c.k - 1 - k) * span));  // backwards: tap 0 ends B
    for (size_t r = 0; r < c.rows; ++r)
      for (size_t x = 0; x < c.n; ++x) t.b[t.offsets[k] + r * c.b_row_stride + x] = u(rng);
  }
  if (c.bias) t.bias = u(rng);
  if (c.residual) {
    t.z.assign(c.place(c.rows - 1, c.n - 1) + 1, NAN);
    for (size_t r = 0; r < c.rows; ++r)
      for (size_t x = 0; x < c.n; ++x) t.z[c.place(r, x)] = u(rng);
  }
  t.y.assign(kLead + c.rows * c.y_row_stride() + kTrail, kGuard);
  t.pixel.assign(t.y.size(), false);
  for (size_t r = 0; r < c.rows; ++r)
    for (size_t x = 0; x < c.n; ++x) t.pixel[kLead + c.place(r, x)] = true;
  if (c.non_finite) {
    const float specials[] = {NAN, kInf, -kInf};
    std::uniform_int_distribution<size_t> pick_k(0, c.k ? c.k - 1 : 0), pick_r(0, c.rows - 1), pick_x(0, c.n - 1);
    for (float s : specials) {
      if (c.k) t.b[t.offsets[pick_k(rng)] + pick_r(rng) * c.b_row_stride + pick_x(rng)] = s;
      if (c.residual) t.z[c.place(pick_r(rng), pick_x(rng))] = s;
    }
    if (c.bias) t.bias = specials[std::uniform_int_distribution<size_t>(0, 2)(rng)];
  }
  return t;
}

// dwconv.h's formula in float64; per pixel, the sum of its terms' magnitudes, which bounds
// the rounding error (0 when infinite: the result is then exact).
void reference(const Case& c, const Rows& t, std::vector<float>& y, std::vector<double>& magnitude) {
  y = t.y;
  magnitude.assign(y.size(), 0.0);
  for (size_t r = 0; r < c.rows; ++r) {
    for (size_t x = 0; x < c.n; ++x) {
      double acc = 0.0, sum = 0.0;
      auto add = [&](double term) { acc += term, sum += std::fabs(term); };
      for (size_t k = 0; k < c.k; ++k) add(double{t.w[k]} * t.b[t.offsets[k] + r * c.b_row_stride + x]);
      add(t.bias);
      if (c.residual) add(t.z[c.place(r, x)]);
      acc = acc < c.lo ? c.lo : acc;  // keeps NaN
      acc = acc > c.hi ? c.hi : acc;
      y[kLead + c.place(r, x)] = static_cast<float>(acc);
      magnitude[kLead + c.place(r, x)] = std::isfinite(sum) ? sum : 0.0;
    }
  }
}

constexpr size_t kRows[] = {1, 2, 3, 4, 5, 9};
constexpr size_t kWidths[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 24, 31, 32, 33, 47, 48};
constexpr size_t kKs[] = {0, 1, 2, 4, 9, 25, 63};
constexpr struct Clamp { float lo, hi; } kClamps[] = {{-kInf, kInf}, {0.0f, kInf}, {-0.5f, 0.75f}, {0.25f, 0.25f}};

std::vector<Case> cases() {
  std::vector<Case> all;
  for (size_t rows : kRows) {
    for (size_t n : kWidths) {
      for (size_t gap : {0, 5})
        for (size_t k : kKs) all.push_back({rows, n, k, n + gap, true, true, -kInf, kInf, false});
      for (bool bias : {false, true})
        for (bool residual : {false, true})
          for (Clamp clamp : kClamps)
            for (bool non_finite : {false, true})
              all.push_back({rows, n, 9, n + 5, bias, residual, clamp.lo, clamp.hi, non_finite});
    }
  }
  return all;
}

}  // namespace

#if defined(PSCOMPRESS_EMULATED_AVX512)
namespace pscompress {
void dwconv_6x16_avx512f_emulated(const DwconvArgs& args);  // tests/dwconv_6x16_avx512f_emulated.cc
}
#endif

int main() {
  std::vector<std::pair<const char*, Dwconv>> kernels;
#if defined(PSCOMPRESS_EMULATED_AVX512)
  kernels.emplace_back("avx512f-emulated", dwconv_6x16_avx512f_emulated);
#endif
  for (const CpuPath& path : supported_paths()) kernels.emplace_back(path.name, path.dwconv);  // "scalar" last
  const bool ok = check_paths(kernels, dwconv_6x8_scalar, cases(), 4321, kLead, make_rows, reference);
#if defined(PSCOMPRESS_HAVE_AVX512)
  // Say so when a kernel this build has cannot run here, rather than pass in silence.
  const std::vector<CpuPath> paths = supported_paths();
  if (std::none_of(paths.begin(), paths.end(), [](const CpuPath& p) { return p.dwconv == dwconv_6x16_avx512f; }))
    std::printf("avx512f: built, not run: this CPU has no AVX-512F\n");
#endif
  std::printf("dispatch picks: %s\n", cpu_path().name);
  return ok ? 0 : 1;
}
