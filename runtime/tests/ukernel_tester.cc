// Compares every microkernel this CPU can run against the portable reference, on random
// data, full and partial tiles, contiguous and split halves, with and without bias, residual
// and clamping. Exit status 0 means all agree; prints one line per kernel.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "dispatch.h"
#include "ukernel.h"

using namespace pscompress;

namespace {

struct Named {
  const char* name;
  Ukernel kernel;
};

bool check(const Named& simd, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::uniform_int_distribution<size_t> pick_k(1, 300), pick_m(1, kMR), pick_n(1, kNR), coin(0, 1);
  std::uniform_int_distribution<size_t> pick_split(1, 8);
  for (int trial = 0; trial < 500; ++trial) {
    const size_t k = pick_k(rng), m = pick_m(rng), n = pick_n(rng);
    const size_t row_stride = kNR + 3, b_stride = kNR + 5;
    std::vector<float> a(k * kMR), b(k * b_stride + 2 * kNR), bias(kMR * 2), z(kMR * row_stride);
    for (auto* v : {&a, &b, &bias, &z})
      for (float& x : *v) x = u(rng);
    std::vector<int64_t> offsets(k);
    for (size_t i = 0; i < k; ++i) offsets[i] = static_cast<int64_t>(((i * 7) % k) * b_stride);
    std::vector<float> y_ref(kMR * row_stride, 42.0f), y_simd = y_ref;
    UkernelArgs args{};
    args.k = k;
    args.a = a.data();
    args.b_base = b.data();
    args.b_offsets = offsets.data();
    args.b_split = coin(rng) ? 8 : 8 + b_stride / 2;
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
    simd.kernel(args);
    for (size_t i = 0; i < y_ref.size(); ++i) {
      const float tol = 1e-4f * (1.0f + std::fabs(y_ref[i]));
      if (!(std::fabs(y_ref[i] - y_simd[i]) <= tol)) {
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
  std::vector<Named> kernels = {{"scalar", ukernel_scalar}};
#if defined(PSCOMPRESS_HAVE_AVX2)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    kernels.push_back({"avx2-fma", ukernel_avx2_fma});
#endif
#if defined(PSCOMPRESS_HAVE_NEON)
  kernels.push_back({"neon", ukernel_neon});
#endif
  bool ok = true;
  for (const Named& k : kernels) ok = check(k, rng) && ok;
  std::printf("dispatch picks: %s\n", cpu_path().name);
  return ok ? 0 : 1;
}
