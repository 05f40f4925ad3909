// Compares every microkernel this CPU can run against the portable reference, on random
// data, full and partial tiles, contiguous, split and reread (b_split = 0) halves, with and
// without bias, residual and clamping, and with NaN and +-Inf among B, bias and residual
// lanes. Exit status 0 means all agree; prints one line per kernel.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "dispatch.h"
#include "ukernel.h"

using namespace pscompress;

namespace {

// Equal, NaN for NaN, infinities exactly, finite values within a relative tolerance.
bool same(float want, float got) {
  if (std::isnan(want) || std::isnan(got)) return std::isnan(want) && std::isnan(got);
  if (std::isinf(want) || std::isinf(got)) return want == got;
  return std::fabs(want - got) <= 1e-4f * (1.0f + std::fabs(want));
}

// A few NaN and +-Inf among v's values.
void poison(std::vector<float>& v, std::mt19937& rng) {
  std::uniform_int_distribution<size_t> at(0, v.size() - 1);
  const float specials[] = {NAN, INFINITY, -INFINITY};
  for (size_t i = 0; i < 3; ++i) v[at(rng)] = specials[i];
}

bool check(const CpuPath& simd, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::uniform_int_distribution<size_t> pick_k(1, 300), pick_m(1, kMR), pick_n(1, kNR), coin(0, 1);
  std::uniform_int_distribution<size_t> pick_split(1, 8);
  for (int trial = 0; trial < 500; ++trial) {
    const size_t k = pick_k(rng), m = pick_m(rng), n = pick_n(rng);
    const size_t row_stride = kNR + 3, b_stride = kNR + 5;
    std::vector<float> a(k * kMR), b(k * b_stride + 2 * kNR), bias(kMR * 2), z(kMR * row_stride);
    for (auto* v : {&a, &b, &bias, &z})
      for (float& x : *v) x = u(rng);
    if (trial % 4 == 3)
      for (auto* v : {&b, &bias, &z}) poison(*v, rng);
    std::vector<int64_t> offsets(k);
    for (size_t i = 0; i < k; ++i) offsets[i] = static_cast<int64_t>(((i * 7) % k) * b_stride);
    std::vector<float> y_ref(kMR * row_stride, 42.0f), y_simd = y_ref;
    UkernelArgs args{};
    args.k = k;
    args.a = a.data();
    args.b_base = b.data();
    args.b_offsets = offsets.data();
    const size_t splits[] = {8, 8 + b_stride / 2, 0};
    args.b_split = splits[trial % 3];
    args.y_split = coin(rng) ? 8 : pick_split(rng);
    args.y_row_stride = row_stride;
    args.bias = coin(rng) ? bias.data() : nullptr;
    args.bias_stride = 2;
    args.z = coin(rng) ? z.data() : nullptr;
    args.lo = coin(rng) ? 0.0f : -INFINITY;
    args.hi = coin(rng) ? 0.5f : INFINITY;
    args.m = m;
    args.n = n;
    args.y = y_ref.data();
    ukernel_scalar(args);
    args.y = y_simd.data();
    simd.ukernel(args);
    for (size_t i = 0; i < y_ref.size(); ++i) {
      if (!same(y_ref[i], y_simd[i])) {
        std::printf("%s: MISMATCH k=%zu m=%zu n=%zu at %zu: %g vs %g\n", simd.name, k, m, n, i,
                    y_ref[i], y_simd[i]);
        return false;
      }
    }
  }
  std::printf("%s: ok (500 random tiles vs scalar)\n", simd.name);
  return true;
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  bool ok = true;
  for (const CpuPath& path : supported_paths()) ok = check(path, rng) && ok;
  std::printf("dispatch picks: %s\n", cpu_path().name);
  return ok ? 0 : 1;
}
