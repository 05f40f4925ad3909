// What the microkernel testers (ukernel_tester.cc, dwconv_tester.cc, qgemm_tester.cc) share:
// the comparison of two results (float or uint8), the per-path report of mismatches and the
// loop over cases and paths.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace pscompress {

constexpr float kGuard = -7777.0f;  // no kernel computes it: |values| stay below 300

// Two float results of up to k + 2 roundings each: NaN for NaN, infinities exact.
inline bool same(float want, float got, size_t k, double magnitude) {
  if (std::isnan(want) || std::isnan(got)) return std::isnan(want) && std::isnan(got);
  if (std::isinf(want) || std::isinf(got)) return want == got;
  return std::fabs(double{want} - got) <= (k + 3) * 0x1p-23 * (1.0 + magnitude);
}

// Two uint8 results (int8 kernels): exact.
inline bool same(uint8_t want, uint8_t got, size_t, double) { return want == got; }

// One path's results against what it should match, all mismatches counted.
struct Report {
  const char* path;
  const char* against;
  size_t cases = 0, bad_cases = 0, bad_floats = 0;
  std::vector<std::string> first;

  Report(const char* name, const char* reference) : path(name), against(reference) {}

  // Output buffers whose elements at `pixel` the kernel stores; all others must keep their
  // guards (what `want` holds there). `lead` guards precede output 0; describe() names the case.
  template <class Case, class T>
  void check(const Case& c, size_t k, const std::vector<bool>& pixel, size_t lead, const std::vector<T>& want,
             const std::vector<T>& got, const std::vector<double>& magnitude) {
    ++cases;
    size_t bad = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      if (pixel[i] ? same(want[i], got[i], k, magnitude[i]) : got[i] == want[i]) continue;
      if (bad++ == 0 && first.size() < 8) {
        char text[120];
        std::snprintf(text, sizeof text, ": y[%td] (%s) want %.9g, got %.9g", static_cast<ptrdiff_t>(i - lead),
                      pixel[i] ? "a pixel" : "no pixel: must stay untouched", static_cast<double>(want[i]), static_cast<double>(got[i]));
        first.push_back(c.describe() + text);
      }
    }
    bad_cases += bad != 0;
    bad_floats += bad;
  }

  bool print() const {
    if (!bad_cases) {
      std::printf("%s: ok (%zu cases vs %s)\n", path, cases, against);
      return true;
    }
    std::printf("%s: MISMATCH in %zu of %zu cases vs %s, %zu floats; first per case:\n", path, bad_cases, cases,
                against, bad_floats);
    for (const std::string& line : first) std::printf("  %s\n", line.c_str());
    return false;
  }
};

// Every case on every path: the scalar kernel against the `reference` (named `against`: a
// float64 or an exact integer evaluation), every other kernel against the scalar one.
// `kernels` are (name, kernel) pairs, "scalar" among them; make(case, rng) gives an input with
// t.y (the guarded output, a vector of float or uint8), t.pixel (the elements a kernel stores)
// and t.args(case, out); `lead` guards precede output 0. Prints a report per path.
template <class Kernel, class Cases, class Make, class Reference>
bool check_paths(const std::vector<std::pair<const char*, Kernel>>& kernels, Kernel scalar, const Cases& cases,
                 unsigned seed, size_t lead, Make make, Reference reference, const char* against = "float64") {
  std::vector<Report> reports;
  for (const auto& [name, kernel] : kernels) reports.emplace_back(name, kernel == scalar ? against : "scalar");
  std::mt19937 rng(seed);
  using Output = decltype(make(cases.front(), rng).y);
  Output want, scalar_y;
  std::vector<double> magnitude;
  for (const auto& c : cases) {
    const auto t = make(c, rng);
    reference(c, t, want, magnitude);
    scalar_y = t.y;
    scalar(t.args(c, scalar_y.data()));
    for (size_t p = 0; p < kernels.size(); ++p) {
      if (kernels[p].second == scalar) {
        reports[p].check(c, c.k, t.pixel, lead, want, scalar_y, magnitude);
        continue;
      }
      Output got = t.y;
      kernels[p].second(t.args(c, got.data()));
      reports[p].check(c, c.k, t.pixel, lead, scalar_y, got, magnitude);
    }
  }
  bool ok = true;
  for (const Report& report : reports) ok = report.print() && ok;
  return ok;
}

}  // namespace pscompress
