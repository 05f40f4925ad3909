// Table-driven check of every int8 depthwise kernel this CPU can run (qdwconv.h): the scalar
// reference against an exact evaluation of qdwconv.h's formula (int64 sums, then the float32
// requantization), every SIMD path against the scalar one, byte for byte.
//   layouts:   rows (1 to 5, 7, 9, 13: one and two tile rows per half, odd rows left alone,
//              groups of tile rows) x n (1 to 17, 24, 31 to 33, 47, 48: two rows per tile up to
//              8, then every tail of 16-pixel tiles) x b_row_stride (n, and a gap of 5) x k (0 to
//              4, 9, 25, 63: odd and even, up to the 63 taps of a depthwise kernel), with bias;
//   epilogue:  rows x n x bias (none, a value) x y_zero_point (0, 128, 255) x values (random, or
//              extreme: x - zp = +-255, w = -128 / 127, |bias| = 2^30, or scales that round halves).
// Every byte of Y outside the rows' pixels holds a guard (random per case) that must survive; B
// elements that feed no pixel hold other in-range values. B ends at the last element a call may
// read (qdwconv.h, "B reads": 8 elements per half), so that an ASan build (PSCOMPRESS_ASAN=ON)
// reports any read past it. Prints a line per path; exit status 1 on any mismatch.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "dispatch.h"
#include "kernel_check.h"
#include "qdwconv.h"

using namespace pscompress;

namespace {

constexpr size_t kLead = 8, kTrail = 8;  // guards before row 0 and after the last row
constexpr size_t kRowGap = 3;            // guards between rows of Y
constexpr int32_t kBiasLimit = 1 << 30;

enum class Values { kRandom, kExtreme, kHalves };  // kHalves: scales 0.5 and 0.25, small sums

struct Case {
  size_t rows, n, k, b_row_stride;
  bool bias;
  int32_t y_zero_point;
  Values values;

  std::string describe() const {
    static const char* const names[] = {"random", "extreme", "halves"};
    char text[160];
    std::snprintf(text, sizeof text, "rows=%zu n=%zu k=%zu b_row_stride=%zu bias=%d y_zp=%d %s", rows, n, k,
                  b_row_stride, bias, y_zero_point, names[static_cast<int>(values)]);
    return text;
  }
  size_t y_row_stride() const { return n + kRowGap; }
  size_t place(size_t row, size_t x) const { return kLead + row * y_row_stride() + x; }
  // Elements one tap reads: every row's halves, 8 elements each.
  size_t tap_span() const { return (rows - 1) * b_row_stride + (n + 7) / 8 * 8; }
};

// One case's buffers; B exactly as long as the call may read.
struct Rows {
  std::vector<int8_t> w;
  std::vector<int16_t> b;
  std::vector<int64_t> offsets;
  int32_t bias = 0;
  float scale = 1.0f;
  std::vector<uint8_t> y;   // guards everywhere
  std::vector<bool> pixel;  // which bytes of y the call stores

  QDwconvArgs args(const Case& c, uint8_t* out) const {
    QDwconvArgs args{};
    args.k = c.k;
    args.w = w.data();
    args.b = b.data();
    args.b_offsets = offsets.data();
    args.b_row_stride = c.b_row_stride;
    args.rows = c.rows;
    args.n = c.n;
    args.y = out + kLead;
    args.y_row_stride = c.y_row_stride();
    args.bias = bias;
    args.scale = scale;
    args.y_zero_point = c.y_zero_point;
    return args;
  }
};

Rows make_rows(const Case& c, std::mt19937& rng) {
  std::uniform_int_distribution<int> x(-255, 255), w(-128, 127), sign(0, 1), byte(0, 255);
  std::uniform_int_distribution<int32_t> bias(-kBiasLimit, kBiasLimit);
  std::uniform_real_distribution<float> u(0.2f, 3.0f);
  const bool extreme = c.values == Values::kExtreme;
  Rows t;
  for (size_t k = 0; k < c.k; ++k) t.w.push_back(static_cast<int8_t>(extreme ? (sign(rng) ? 127 : -128) : w(rng)));
  const size_t span = c.tap_span();
  t.b.resize(std::max<size_t>(1, c.k * span));
  for (int16_t& e : t.b) e = static_cast<int16_t>(x(rng));  // read into discarded lanes only
  for (size_t k = 0; k < c.k; ++k) {
    t.offsets.push_back(static_cast<int64_t>((c.k - 1 - k) * span));  // backwards: tap 0 ends B
    for (size_t r = 0; r < c.rows; ++r)
      for (size_t p = 0; p < c.n; ++p)
        t.b[t.offsets[k] + r * c.b_row_stride + p] = static_cast<int16_t>(extreme ? (sign(rng) ? 255 : -255) : x(rng));
  }
  if (c.values == Values::kHalves) {
    t.scale = c.rows % 2 ? 0.25f : 0.5f;
  } else {  // outputs spread over the range, some clamped
    t.scale = u(rng) * 100.0f / (1.0f + std::sqrt(static_cast<float>(c.k)) * 255.0f * 64.0f);
    if (extreme) t.scale *= 0.02f;  // the bias dominates: keep some outputs unclamped
  }
  if (c.bias)
    t.bias = extreme ? (sign(rng) ? kBiasLimit : -kBiasLimit) : c.values == Values::kHalves ? x(rng) : bias(rng) / 4096;
  t.y.assign(kLead + c.rows * c.y_row_stride() + kTrail, static_cast<uint8_t>(byte(rng)));
  t.pixel.assign(t.y.size(), false);
  for (size_t r = 0; r < c.rows; ++r)
    for (size_t p = 0; p < c.n; ++p) t.pixel[c.place(r, p)] = true;
  return t;
}

// qdwconv.h's formula: exact int64 sums (which must fit int32 with the bias), then the float32
// requantization.
void reference(const Case& c, const Rows& t, std::vector<uint8_t>& y, std::vector<double>& magnitude) {
  y = t.y;
  magnitude.assign(y.size(), 0.0);
  for (size_t r = 0; r < c.rows; ++r) {
    for (size_t p = 0; p < c.n; ++p) {
      int64_t acc = t.bias;
      for (size_t k = 0; k < c.k; ++k) acc += int64_t{t.w[k]} * t.b[t.offsets[k] + r * c.b_row_stride + p];
      if (acc < INT32_MIN || acc > INT32_MAX) std::printf("reference: %s overflows int32\n", c.describe().c_str());
      float v = static_cast<float>(static_cast<int32_t>(acc)) * t.scale;
      v = std::fmin(static_cast<float>(255 - c.y_zero_point), std::fmax(static_cast<float>(-c.y_zero_point), v));
      y[c.place(r, p)] = static_cast<uint8_t>(std::nearbyint(v) + c.y_zero_point);
    }
  }
}

constexpr size_t kRows[] = {1, 2, 3, 4, 5, 7, 9, 13};
constexpr size_t kWidths[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 24, 31, 32, 33, 47, 48};
constexpr size_t kKs[] = {0, 1, 2, 3, 4, 9, 25, 63};

std::vector<Case> cases() {
  std::vector<Case> all;
  for (size_t rows : kRows) {
    for (size_t n : kWidths) {
      for (size_t gap : {0, 5})
        for (size_t k : kKs) all.push_back({rows, n, k, n + gap, true, 128, Values::kRandom});
      for (bool bias : {false, true})
        for (int32_t zp : {0, 128, 255})
          for (Values values : {Values::kRandom, Values::kExtreme, Values::kHalves})
            all.push_back({rows, n, 9, n + 5, bias, zp, values});
    }
  }
  return all;
}

}  // namespace

int main() {
  std::vector<std::pair<const char*, QDwconv>> kernels;
  for (const CpuPath& path : supported_paths()) kernels.emplace_back(path.name, path.qdwconv);  // "scalar" last
  const bool ok = check_paths(kernels, qdwconv_6x16_scalar, cases(), 4323, kLead, make_rows, reference, "exact");
  std::printf("dispatch picks: %s\n", cpu_path().name);
  return ok ? 0 : 1;
}
