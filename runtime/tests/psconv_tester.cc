// Runs pscompress::PSConv end to end, without onnxruntime, on every microkernel this CPU can
// run, against a naive dense convolution of the masked weights (docs/operator.md): the three
// tile layouts and their tails, odd and even OH, large pads and strides, kernels wider than
// the image, groups, bias, residual, clamps, batches split into chunks, NaN and Inf inputs;
// then the memory bounds and the rejections. Build with PSCOMPRESS_ASAN=ON to check that no
// read leaves the buffers. Exit status 0 means all pass; prints one line per group of checks.
// `psconv_tester --layout OW...` instead prints the tile layout each output width gets.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "dispatch.h"
#include "psconv.h"

using namespace pscompress;

namespace {

struct Case {
  std::vector<int64_t> x_shape;  // N, C, H, W
  int64_t m = 1, group = 1;
  std::vector<int64_t> kernel{3, 3}, strides{1, 1}, pads{0, 0, 0, 0}, patterns{511};
  int64_t shift = 0;
  float lo = -INFINITY, hi = INFINITY;
  bool bias = true, residual = false;
};

Attributes attributes(const Case& c) {
  Attributes a;
  a.kernel_shape = c.kernel;
  a.strides = c.strides;
  a.pads = c.pads;
  a.group = c.group;
  a.in_channels = c.x_shape[1];
  a.out_channels = c.m;
  a.patterns = c.patterns;
  a.shift = c.shift;
  a.clip_min = c.lo;
  a.clip_max = c.hi;
  return a;
}

// Runs tasks in a shuffled order, so that no result may depend on the order.
struct Shuffled {
  std::mt19937 rng{7};
  static void run(void* self, void (*fn)(void*, size_t), size_t total, void* ctx) {
    std::vector<size_t> order(total);
    std::iota(order.begin(), order.end(), size_t{0});
    std::shuffle(order.begin(), order.end(), static_cast<Shuffled*>(self)->rng);
    for (size_t i : order) fn(ctx, i);
  }
};

struct Data {
  std::vector<float> x, w, b, z;
  std::vector<float> wd;  // dense [M, Cg, KH, KW], zeros at masked taps
};

Data make_data(const Case& c, size_t packed, size_t y_elems, bool non_finite, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const size_t cg = c.x_shape[1] / c.group, k2 = c.kernel[0] * c.kernel[1];
  Data d;
  d.x.resize(c.x_shape[0] * c.x_shape[1] * c.x_shape[2] * c.x_shape[3]);
  for (float& v : d.x) v = u(rng);
  if (non_finite && !d.x.empty()) {  // a few NaN and +-Inf, so that many windows hold one at a masked tap
    std::uniform_int_distribution<size_t> at(0, d.x.size() - 1);
    const float specials[] = {NAN, INFINITY, -INFINITY};
    for (size_t i = 0; i < 1 + d.x.size() / 40; ++i) d.x[at(rng)] = specials[i % 3];
    d.x.back() = INFINITY;  // the last column, alone at a stride-2 row's end when W + PL is odd
  }
  d.w.resize(packed);
  for (float& v : d.w) v = u(rng);
  d.b.resize(c.m);
  for (float& v : d.b) v = u(rng);
  d.z.resize(c.residual ? y_elems : 0);
  for (float& v : d.z) v = u(rng);
  d.wd.assign(c.m * cg * k2, 0.0f);
  size_t next = 0;
  for (size_t o = 0; o < static_cast<size_t>(c.m); ++o)
    for (size_t i = 0; i < cg; ++i) {
      const uint64_t s = c.patterns[(o + i + c.shift) % c.patterns.size()];
      for (size_t p = 0; p < k2; ++p)
        if (s >> p & 1) d.wd[(o * cg + i) * k2 + p] = d.w[next++];
    }
  return d;
}

// The contract's semantics, literally: every tap of the dense kernel, in double.
struct Reference {
  std::vector<double> y, magnitude;  // magnitude: sum of |terms|, to scale the tolerance
};

Reference reference(const Case& c, const Data& d, const std::vector<int64_t>& ys) {
  const size_t n = c.x_shape[0], ch = c.x_shape[1], h = c.x_shape[2], w = c.x_shape[3];
  const size_t m = c.m, oh = ys[2], ow = ys[3], kh = c.kernel[0], kw = c.kernel[1];
  const size_t cg = ch / c.group, mg = m / c.group;
  Reference r{std::vector<double>(n * m * oh * ow), std::vector<double>(n * m * oh * ow)};
  for (size_t b = 0; b < n; ++b)
    for (size_t o = 0; o < m; ++o)
      for (size_t y = 0; y < oh; ++y)
        for (size_t x = 0; x < ow; ++x) {
          double acc = c.bias ? d.b[o] : 0.0, mag = std::fabs(acc);
          for (size_t i = 0; i < cg; ++i)
            for (size_t u = 0; u < kh; ++u)
              for (size_t v = 0; v < kw; ++v) {
                const int64_t iy = static_cast<int64_t>(y * c.strides[0] + u) - c.pads[0];
                const int64_t ix = static_cast<int64_t>(x * c.strides[1] + v) - c.pads[1];
                if (iy < 0 || ix < 0 || iy >= static_cast<int64_t>(h) || ix >= static_cast<int64_t>(w)) continue;
                const size_t ci = o / mg * cg + i;
                const double term = static_cast<double>(d.wd[((o * cg + i) * kh + u) * kw + v]) *
                                    d.x[((b * ch + ci) * h + iy) * w + ix];
                acc += term;
                mag += std::fabs(term);
              }
          const size_t at = ((b * m + o) * oh + y) * ow + x;
          if (c.residual) acc += d.z[at];
          acc = acc < c.lo ? c.lo : acc;  // keeps NaN, as ONNX Clip
          r.y[at] = acc > c.hi ? c.hi : acc;
          r.magnitude[at] = mag;
        }
  return r;
}

bool same(double want, float got, double magnitude) {
  if (std::isnan(want) || std::isnan(got)) return std::isnan(want) && std::isnan(got);
  if (std::isinf(want) || std::isinf(got)) return want == got;
  return std::fabs(want - got) <= 1e-5 * (1.0 + magnitude);
}

Inputs inputs(const Case& c, const Data& d, const std::vector<int64_t>& b_shape, const std::vector<int64_t>& z_shape) {
  return {c.x_shape.data(), 4, d.x.data(),
          d.w.size(), d.w.data(),
          c.bias, b_shape.data(), b_shape.size(), d.b.data(),
          z_shape.data(), c.residual ? z_shape.size() : 0, c.residual ? d.z.data() : nullptr};
}

// One case on every path, with W prepacked and not, finite and with NaN/Inf inputs.
bool check(const Case& c, const std::vector<CpuPath>& paths, std::mt19937& rng, const char* label) {
  for (bool non_finite : {false, true}) {
    for (bool constant_w : {true, false}) {
      PSConv conv(attributes(c));
      Data d = make_data(c, conv.packed_length(), 0, non_finite, rng);
      const std::vector<int64_t> b_shape = {c.m};
      std::vector<int64_t> ys = conv.output_shape(inputs(c, d, b_shape, {}), false);
      const size_t y_elems = ys[0] * ys[1] * ys[2] * ys[3];
      if (c.residual) d = make_data(c, conv.packed_length(), y_elems, non_finite, rng);
      if (constant_w) conv.prepack(d.w.data(), d.w.size());
      const Inputs in = inputs(c, d, b_shape, ys);
      ys = conv.output_shape(in, c.residual);
      const Reference want = reference(c, d, ys);
      for (const CpuPath& path : paths) {
        std::vector<float> y(y_elems, 12345.0f);
        Shuffled shuffled;
        conv.run(in, y.data(), path.ukernel, path.dwconv, {Shuffled::run, &shuffled});
        for (size_t i = 0; i < y_elems; ++i) {
          if (!same(want.y[i], y[i], want.magnitude[i])) {
            std::printf("%s [%s, %s W%s]: MISMATCH at %zu of %zu: want %g, got %g\n", label, path.name,
                        constant_w ? "constant" : "variable", non_finite ? ", NaN/Inf X" : "", i, y_elems,
                        want.y[i], y[i]);
            return false;
          }
        }
      }
    }
  }
  return true;
}

std::vector<Case> fixed_cases() {
  std::vector<Case> cases;
  auto add = [&](Case c) { cases.push_back(std::move(c)); };
  // The security test's two-row over-read: OW = 8, OH = 7 (odd), stride 2 rows.
  add({{1, 1, 13, 8}, 1, 1, {3, 3}, {2, 1}, {1, 1, 1, 1}, {0b111000000}});
  // Its production segfault, fewer channels: 1x63 kernel, OH = 1, row stride 64.
  add({{3, 64, 1, 70}, 2, 1, {1, 63}, {64, 1}, {0, 0, 0, 0}, {int64_t{1} << 62}});
  // Two-row tiles, odd and even OH, stride 1 and 2, with groups, residual and clamps.
  add({{2, 6, 15, 8}, 6, 2, {3, 3}, {1, 1}, {1, 1, 1, 1}, {27, 54, 216, 432}, 1, -0.25f, 0.5f, true, true});
  add({{1, 4, 12, 6}, 5, 1, {3, 3}, {1, 1}, {1, 1, 1, 1}, {18, 24, 48, 144, 20}, 3, 0.0f, INFINITY, false, true});
  add({{2, 3, 9, 13}, 7, 1, {3, 3}, {2, 2}, {1, 1, 1, 1}, {27, 54, 216, 432}});
  // Row tiles with tails: OW 20 and 13.
  add({{2, 5, 4, 20}, 9, 1, {3, 3}, {1, 1}, {1, 1, 1, 1}, {27, 54, 216, 432, 511}, 2});
  add({{1, 3, 5, 13}, 4, 1, {3, 3}, {1, 1}, {1, 1, 1, 1}, {27, 54, 216, 432}, 0, -0.5f, 0.75f});
  // Gathered tiles, the last one partial.
  add({{2, 4, 5, 3}, 8, 2, {3, 3}, {1, 1}, {1, 1, 1, 1}, {27, 54, 216, 432}, 0, -INFINITY, INFINITY, true, true});
  // Large pads and strides: mostly padding, strides past the kernel (rows cropped per output row).
  add({{1, 2, 8, 8}, 3, 1, {3, 3}, {64, 64}, {1024, 1024, 1024, 1024}, {27, 54, 216, 432}});
  add({{2, 3, 1, 1}, 4, 1, {1, 1}, {64, 64}, {1024, 1024, 1024, 1024}, {1}});
  add({{1, 2, 10, 11}, 3, 1, {3, 2}, {4, 5}, {2, 3, 1, 4}, {5, 10, 63}});
  add({{1, 2, 9, 7}, 2, 1, {2, 3}, {3, 2}, {0, 5, 7, 0}, {33, 12, 63}});
  // Kernels wider and taller than the image, made to fit by padding.
  add({{1, 2, 1, 3}, 2, 1, {7, 9}, {1, 1}, {3, 4, 3, 4}, {INT64_MAX, 0x5555555555555555}});
  add({{2, 1, 2, 2}, 1, 1, {1, 63}, {1, 1}, {0, 31, 0, 31}, {int64_t{1} << 62, 1}});
  // Depthwise (Cg == 1, the direct kernel): multiplier 2, stride 2, odd pads, wide rows, residual.
  add({{2, 6, 11, 37}, 12, 6, {3, 3}, {2, 2}, {1, 0, 1, 1}, {27, 54, 216, 432}, 1, 0.0f, 6.0f, true, true});
  add({{1, 5, 9, 7}, 5, 5, {5, 5}, {1, 1}, {2, 2, 2, 2}, {0x1FFFFFF, 0x1041041}, 1});
  // Empty images: outputs read padding only (a phase with no image column at all).
  add({{1, 2, 0, 3}, 2, 1, {3, 3}, {1, 1}, {2, 0, 2, 0}, {27, 54, 216, 432}});
  add({{2, 2, 3, 0}, 3, 1, {3, 3}, {1, 4}, {0, 10, 0, 0}, {27, 54, 216, 432}});
  // More patterns than outputs (P > Mg): most residue classes have no output.
  add({{1, 4, 6, 7}, 3, 1, {3, 3}, {1, 1}, {1, 1, 1, 1}, {1, 2, 4, 8, 16, 32, 64, 128, 256, 3, 5}, 9});
  // Column phases split in one pass (stride 2): odd and even widths and left pads, a lone first
  // or last column, width 1, pads past the kernel, WS cutting columns off; depthwise with Mg = 2.
  add({{2, 3, 7, 9}, 6, 3, {3, 3}, {2, 2}, {1, 1, 1, 1}, {27, 54, 216, 432}, 1, -0.5f, 0.75f, true, true});
  add({{1, 2, 6, 10}, 2, 2, {3, 3}, {2, 2}, {0, 0, 0, 0}, {27, 54, 216, 432}});
  add({{1, 2, 6, 1}, 4, 2, {3, 3}, {2, 2}, {1, 1, 1, 1}, {27, 54, 216, 432}, 2});
  add({{1, 2, 5, 5}, 2, 2, {3, 3}, {2, 2}, {4, 5, 4, 5}, {27, 54, 216, 432}});
  add({{1, 2, 9, 10}, 2, 2, {3, 2}, {2, 2}, {0, 2, 0, 0}, {5, 10, 63}});
  add({{2, 3, 8, 11}, 4, 1, {3, 3}, {2, 2}, {1, 1, 1, 1}, {27, 54, 216, 432}});
  // Depthwise, stride 1: Mg = 3 outputs per channel task, residual and clamp.
  add({{2, 4, 7, 7}, 12, 4, {3, 3}, {1, 1}, {1, 1, 1, 1}, {27, 54, 216, 432}, 3, 0.0f, 6.0f, true, true});
  // A batch in several chunks: one image's planes exceed half the scratch budget.
  add({{3, 1, 1500, 1500}, 2, 1, {1, 1}, {1, 1}, {0, 0, 0, 0}, {1}});
  return cases;
}

Case random_case(std::mt19937& rng) {
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  Case c;
  c.group = pick(1, 3);
  c.kernel = {pick(1, 4), pick(1, 4)};
  c.strides = {pick(1, 4), pick(1, 4)};
  c.pads = {pick(0, 3), pick(0, 3), pick(0, 3), pick(0, 3)};
  const int64_t k2 = c.kernel[0] * c.kernel[1];
  c.patterns.resize(pick(1, 6));
  for (int64_t& s : c.patterns) s = pick(1, (int64_t{1} << k2) - 1);
  c.shift = pick(0, c.patterns.size() - 1);
  c.m = c.group * pick(1, 9);
  const int64_t h = std::max(pick(1, 20), c.kernel[0] - c.pads[0] - c.pads[2]);
  const int64_t w = std::max(pick(1, 24), c.kernel[1] - c.pads[1] - c.pads[3]);
  c.x_shape = {pick(1, 3), c.group * pick(1, 5), h, w};
  const float clips[][2] = {{-INFINITY, INFINITY}, {0.0f, INFINITY}, {-0.5f, 0.75f}};
  const auto& clip = clips[pick(0, 2)];
  c.lo = clip[0];
  c.hi = clip[1];
  c.bias = pick(0, 3) != 0;
  c.residual = pick(0, 1) != 0;
  return c;
}

// docs/operator.md, "Memory": prepacked weights <= kMR * len(W) floats; one run's phase
// planes <= 4 x (input + output of one image) + 2^22 (+ kNR spare) floats.
bool check_memory(const Case& c) {
  PSConv conv(attributes(c));
  const std::vector<float> w(conv.packed_length(), 1.0f);
  conv.prepack(w.data(), w.size());
  const std::vector<int64_t> b_shape = {c.m};
  const Inputs in{c.x_shape.data(), 4, nullptr, w.size(), w.data(), false, b_shape.data(), 1, nullptr,
                  nullptr, 0, nullptr};
  const std::vector<int64_t> ys = conv.output_shape(in, false);
  const double x1 = c.x_shape[1] * c.x_shape[2] * c.x_shape[3], y1 = ys[1] * ys[2] * ys[3];
  const size_t scratch = conv.scratch_floats(c.x_shape.data());
  if (conv.prepacked_floats() > kMR * w.size() || scratch > 4 * (x1 + y1) + (1 << 22) + kNR) {
    std::printf("memory: prepacked %zu floats for len(W) %zu, scratch %zu floats for input %g + output %g\n",
                conv.prepacked_floats(), w.size(), scratch, x1, y1);
    return false;
  }
  return true;
}

// A rejection with a message naming `name`, before any tensor memory is read.
bool rejects(const Case& c, const std::vector<int64_t>& b_shape, const std::vector<int64_t>& z_shape,
             const std::string& name) {
  try {
    PSConv conv(attributes(c));
    const std::vector<float> w(conv.packed_length(), 1.0f);
    const Inputs in{c.x_shape.data(), 4, nullptr, w.size(), w.data(), true, b_shape.data(), b_shape.size(),
                    nullptr, z_shape.data(), z_shape.size(), nullptr};
    conv.output_shape(in, !z_shape.empty());
  } catch (const std::invalid_argument& e) {
    if (std::string(e.what()).rfind(name, 0) == 0) return true;
    std::printf("rejection: expected an error on %s, got: %s\n", name.c_str(), e.what());
    return false;
  }
  std::printf("rejection: expected an error on %s, got none\n", name.c_str());
  return false;
}

// One "OW layout" line per output width (rows, two_rows or gathered): the layouts tests rely
// on come from the kernel itself, not from a copy of its rule.
int print_layouts(int count, char** widths) {
  for (int i = 0; i < count; ++i) {
    char* end;
    const unsigned long long ow = std::strtoull(widths[i], &end, 10);
    if (*end || end == widths[i]) {
      std::fprintf(stderr, "--layout: not an output width: %s\n", widths[i]);
      return 2;
    }
    const TileLayout layout = choose_layout(ow);
    std::printf("%llu %s\n", ow,
                layout == TileLayout::kRow ? "rows" : layout == TileLayout::kTwoRows ? "two_rows" : "gathered");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--layout") return print_layouts(argc - 2, argv + 2);
  const std::vector<CpuPath> paths = supported_paths();
  std::mt19937 rng(2024);
  bool ok = true;
  int index = 0;
  for (const Case& c : fixed_cases()) ok = check(c, paths, rng, ("fixed case " + std::to_string(index++)).c_str()) && ok;
  for (int i = 0; i < 150; ++i) ok = check(random_case(rng), paths, rng, ("random case " + std::to_string(i)).c_str()) && ok;
  std::printf("outputs: %s (%d fixed and 150 random cases vs dense reference on", ok ? "ok" : "FAILED", index);
  for (const CpuPath& p : paths) std::printf(" %s", p.name);
  std::printf(")\n");

  bool memory = true;
  // The security test's amplifications: pads 1024 with strides 64, and P = 256 with one output.
  memory = check_memory({{1, 64, 1, 1}, 16, 1, {1, 1}, {64, 64}, {1024, 1024, 1024, 1024}, {1}}) && memory;
  memory = check_memory({{1, 1024, 1, 1}, 16, 1, {1, 1}, {64, 64}, {1024, 1024, 1024, 1024}, {1}}) && memory;
  std::vector<int64_t> many(256);
  for (size_t i = 0; i < many.size(); ++i) many[i] = 1 + static_cast<int64_t>((i * 2654435761u) % ((1u << 31) - 1));
  memory = check_memory({{1, 512, 7, 9}, 1, 1, {7, 9}, {1, 1}, {0, 0, 0, 0}, many}) && memory;
  memory = check_memory({{8, 64, 32, 32}, 64, 1, {3, 3}, {1, 1}, {1, 1, 1, 1}, {27, 54, 216, 432}}) && memory;
  for (int i = 0; i < 50; ++i) memory = check_memory(random_case(rng)) && memory;
  std::printf("memory bounds: %s\n", memory ? "ok" : "FAILED");

  bool rejections = true;
  const Case small{{1, 4, 5, 5}, 8};
  rejections = rejects(small, {0}, {}, "B") && rejections;               // present but empty
  rejections = rejects(small, {}, {}, "B") && rejections;                // present, rank 0
  rejections = rejects(small, {8}, {1, 8, 3, 4}, "Z") && rejections;     // Y is [1, 8, 3, 3]
  rejections = rejects({{1, 1, 2, 2}, 1, 1, {3, 3}}, {1}, {}, "X") && rejections;  // kernel wider than image + pads
  // Mostly padding and many more input channels than outputs: over the scratch limit.
  rejections = rejects({{1, 4096, 2, 2}, 1, 1, {3, 3}, {64, 64}, {1024, 1024, 1024, 1024}}, {1}, {},
                       "pads/strides") && rejections;
  std::printf("rejections: %s\n", rejections ? "ok" : "FAILED");
  return ok && memory && rejections ? 0 : 1;
}
