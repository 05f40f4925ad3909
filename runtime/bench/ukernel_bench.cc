// Times each microkernel this CPU can run, alone, on a few tile shapes, and prints GFLOP/s
// (2 * m * n * k per tile, kUkernelTiles tiles of the same B per call, per second of this
// thread's CPU time) and the ratio to the scalar path measured in the same run. B rows are
// scattered over a buffer as a layer's taps are over its phase planes. Then the same for the
// depthwise kernels (dwconv.h), one output channel of MobileNetV2's depthwise shapes per call
// (2 * rows * n * k), and for the int8 kernels (qgemm.h), pair and dot alike, on the GEMM
// shapes (2 * m * n * weights per row: k taps of one channel, or k / 4 elements of four), and
// the int8 depthwise kernels (qdwconv.h) on the depthwise shapes. Not a test.
//   ukernel_bench [seconds per measurement, default 0.2]
#include <time.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <type_traits>
#include <vector>

#include "dispatch.h"
#include "dwconv.h"
#include "qdwconv.h"
#include "qgemm.h"
#include "ukernel.h"

using namespace pscompress;

namespace {

// "model name" (x86), else "Model" (Raspberry Pi OS), else "CPU part" (other aarch64).
std::string cpu_model() {
  for (const char* key : {"model name", "Model", "CPU part"}) {
    std::ifstream info("/proc/cpuinfo");
    for (std::string line; std::getline(info, line);) {
      const size_t colon = line.find(':');
      if (line.rfind(key, 0) == 0 && colon != std::string::npos)
        return line.substr(std::min(line.size(), line.find_first_not_of(" \t", colon + 1)));
    }
  }
  return "unknown";
}

struct Shape {
  const char* what;
  size_t m, n, k, b_split, y_split;
};

// ResNet-like classes: 6 rows of 16-pixel tiles (4 of 9 taps of 64 and 256 channels), a
// narrow layer's 4 rows, and two 7-wide rows per tile.
const Shape kShapes[] = {
    {"6x16 k=256", 6, 16, 256, 8, 8},
    {"6x16 k=1024", 6, 16, 1024, 8, 8},
    {"4x16 k=64", 4, 16, 64, 8, 8},
    {"4x15 k=64 two rows", 4, 15, 64, 9, 7},
};

// One output channel of a depthwise layer: rows x n pixels, k kept taps, its phase plane rows
// ws floats apart (a stride-2 layer's planes hold twice the rows).
struct DwShape {
  const char* what;
  size_t rows, n, k, ws, row_stride;
};

const DwShape kDwShapes[] = {
    {"112x112 k=4", 112, 112, 4, 114, 114},
    {"56x56 k=4", 56, 56, 4, 58, 58},
    {"28x28 k=4 stride 2", 28, 28, 4, 29, 58},
    {"14x14 k=4", 14, 14, 4, 16, 16},
    {"7x7 k=4", 7, 7, 4, 9, 9},
    {"56x56 k=2", 56, 56, 2, 58, 58},
    {"56x56 k=9", 56, 56, 9, 58, 58},
};

// This thread's CPU time, not wall time: on a shared machine other processes taking the core
// away then do not count against whichever kernel was running.
double cpu_seconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

template <class Kernel, class Args>
double seconds_per_call(Kernel kernel, const Args& args, double budget) {
  double best = 1e30;
  for (int rep = 0; rep < 3; ++rep) {  // the best of three: other processes only slow it down
    size_t calls = 0;
    const double start = cpu_seconds();
    double elapsed;
    do {
      for (int i = 0; i < 64; ++i) kernel(args);
      calls += 64;
      elapsed = cpu_seconds() - start;
    } while (elapsed < budget / 3);
    best = std::min(best, elapsed / calls);
  }
  return best;
}

// The int8 kernels of one layout (pick(path): null where a path has none) on shape s, k
// weights per row; GOP/s against the same layout's scalar kernel. A dot kernel takes its
// kDotTiles tiles (of the same B here) per call.
template <class Args, class Packing, class Pick>
void time_int8(const char* layout, const Shape& s, Pick pick, double budget) {
  constexpr size_t kRowStride = 1156;
  const size_t k = s.k / Packing::kLanes;
  std::vector<typename Args::Weight> a(Packing::slots(k) * kMR, 3);
  std::vector<typename Args::Element> b(k * kRowStride + kNR);
  std::vector<int32_t> bias(kMR, 100);
  std::vector<float> scale(kMR, 1e-4f);
  std::vector<uint8_t> y(kMR * kNR);
  std::vector<int64_t> offsets(k);
  for (size_t i = 0; i < k; ++i) offsets[i] = static_cast<int64_t>((i * 37 % k) * kRowStride + i % 3);
  Args args{};
  args.k = k;
  args.a = a.data();
  args.b_base = b.data();
  args.b_offsets = offsets.data();
  args.b_split = s.b_split;
  args.y = y.data();
  args.y_split = s.y_split;
  args.y_row_stride = kNR;
  args.bias = bias.data();
  args.scale = scale.data();
  args.channel_stride = 1;
  args.y_zero_point = 128;
  args.m = s.m;
  args.n = s.n;
  std::vector<std::pair<const char*, double>> times;
  const Args tiles[kDotTiles] = {args, args, args, args};
  size_t per_call = 1;
  for (const CpuPath& path : supported_paths()) {
    const auto kernel = pick(path);
    if (!kernel) continue;
    if constexpr (std::is_same_v<Args, QDotArgs>) {
      per_call = kDotTiles;
      times.emplace_back(path.name, seconds_per_call([&](const Args*) { kernel(tiles, kDotTiles); }, tiles, budget));
    } else {
      times.emplace_back(path.name, seconds_per_call(kernel, args, budget));
    }
  }
  for (const auto& [name, t] : times)
    std::printf("%-20s %-5s %-11s %8.2f %9.2fx\n", s.what, layout, name, 2e-9 * s.m * s.n * s.k * per_call / t,
                times.back().second / t);
}

}  // namespace

int main(int argc, char** argv) {
  const double budget = argc > 1 ? std::atof(argv[1]) : 0.2;
  const std::vector<CpuPath> paths = supported_paths();  // "scalar" last
  std::printf("cpu: %s\n%-20s %-9s %8s %10s\n", cpu_model().c_str(), "shape", "path", "GFLOP/s", "vs scalar");
  for (const Shape& s : kShapes) {
    constexpr size_t kRowStride = 1156;  // a 34 x 34 phase plane per input channel
    std::vector<float> a(s.k * kMR, 0.5f), b(s.k * kRowStride + kNR, 0.25f), bias(kMR, 0.1f);
    std::vector<float> y(kMR * kNR);
    std::vector<int64_t> offsets(s.k);
    for (size_t i = 0; i < s.k; ++i) offsets[i] = static_cast<int64_t>((i * 37 % s.k) * kRowStride + i % 3);
    UkernelArgs args{};
    args.k = s.k;
    args.a = a.data();
    args.b_base = b.data();
    args.b_offsets = offsets.data();
    args.b_split = s.b_split;
    args.y = y.data();
    args.y_split = s.y_split;
    args.y_row_stride = kNR;
    args.bias = bias.data();
    args.bias_stride = 1;
    args.lo = 0.0f;
    args.hi = __builtin_inff();
    args.m = s.m;
    args.n = s.n;
    const UkernelArgs tiles[kUkernelTiles] = {args, args, args, args};  // one panel's tiles per call
    std::vector<double> times;
    for (const CpuPath& path : paths)
      times.push_back(seconds_per_call([&](const UkernelArgs*) { path.ukernel(tiles, kUkernelTiles); }, tiles, budget));
    for (size_t p = 0; p < paths.size(); ++p)
      std::printf("%-20s %-9s %8.2f %9.2fx\n", s.what, paths[p].name, 2e-9 * s.m * s.n * s.k * kUkernelTiles / times[p],
                  times.back() / times[p]);
  }
  std::printf("\n%-20s %-5s %-11s %8s %10s\n", "int8 shape", "kind", "path", "GOP/s", "vs scalar");
  for (const Shape& s : kShapes) {
    time_int8<QGemmArgs, QGemmPacking>("pairs", s, [](const CpuPath& p) { return p.qgemm; }, budget);
    time_int8<QDotArgs, QDotPacking>("dots", s, [](const CpuPath& p) { return p.qdot; }, budget);
  }
  // One output channel of each depthwise shape: its 3x3 taps' offsets, its plane (the taps' rows
  // and a spare one), then per path the seconds per call of `kernel(path)` on `args`.
  auto time_depthwise = [&](const char* title, const char* unit, auto kernel, auto make_args) {
    std::printf("\n%-20s %-9s %8s %10s\n", title, "path", unit, "vs scalar");
    for (const DwShape& s : kDwShapes) {
      std::vector<int64_t> offsets(s.k);
      for (size_t t = 0; t < s.k; ++t) offsets[t] = static_cast<int64_t>(t / 3 * s.ws + t % 3);
      const auto args = make_args(s, offsets, (s.rows + 2) * s.row_stride + kNR);
      std::vector<double> times;
      for (const CpuPath& path : paths) times.push_back(seconds_per_call(kernel(path), args.args, budget));
      for (size_t p = 0; p < paths.size(); ++p)
        std::printf("%-20s %-9s %8.2f %9.2fx\n", s.what, paths[p].name, 2e-9 * s.rows * s.n * s.k / times[p],
                    times.back() / times[p]);
    }
  };
  // The arguments and the buffers they point into (a move keeps the vectors' buffers).
  struct Fp32 {
    std::vector<float> w, b, y;
    DwconvArgs args{};
  };
  struct Int8 {
    std::vector<int8_t> w;
    std::vector<int16_t> b;
    std::vector<uint8_t> y;
    QDwconvArgs args{};
  };
  time_depthwise(
      "depthwise channel", "GFLOP/s", [](const CpuPath& p) { return p.dwconv; },
      [](const DwShape& s, const std::vector<int64_t>& offsets, size_t elements) {
        Fp32 t;
        t.w.assign(s.k, 0.5f), t.b.assign(elements, 0.25f), t.y.resize(s.rows * s.n);
        t.args = {s.k, t.w.data(), t.b.data(), offsets.data(), s.row_stride, s.rows, s.n, t.y.data(), s.n,
                nullptr, 0.1f, 0.0f, 6.0f};
        return t;
      });
  time_depthwise(
      "int8 depthwise", "GOP/s", [](const CpuPath& p) { return p.qdwconv; },
      [](const DwShape& s, const std::vector<int64_t>& offsets, size_t elements) {
        Int8 t;
        t.w.assign(s.k, 3), t.b.assign(elements, 25), t.y.resize(s.rows * s.n);
        t.args = {s.k, t.w.data(), t.b.data(), offsets.data(), s.row_stride, s.rows, s.n, t.y.data(), s.n,
                100, 1e-3f, 128};
        return t;
      });
  return 0;
}
