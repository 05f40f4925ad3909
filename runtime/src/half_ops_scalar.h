// The portable path's operations on half a tile row, 8 floats, one operation per lane: what
// store_half (ukernel_tile.h) and the depthwise kernels (dwconv_tile.h) are written with, and
// the reference the SIMD paths' operations are tested against. In an anonymous namespace, as
// every path's operations: each file that includes them keeps its own copy (see ukernel_tile.h).
#pragma once

#include <cstddef>

namespace pscompress {
namespace {

struct Scalar {
  struct Half {
    float f[8];
  };
  static Half splat(float x) { return {{x, x, x, x, x, x, x, x}}; }
  static Half add(Half a, const Half& b) {
    for (size_t i = 0; i < 8; ++i) a.f[i] += b.f[i];
    return a;
  }
  // w * b + acc per lane, rounded twice (a product, then a sum).
  static Half fma(const Half& w, const Half& b, Half acc) {
    for (size_t i = 0; i < 8; ++i) acc.f[i] += w.f[i] * b.f[i];
    return acc;
  }
  static Half load(const float* p) {
    Half v;
    for (size_t i = 0; i < 8; ++i) v.f[i] = p[i];
    return v;
  }
  static void store_first(float* p, const Half& v, size_t count) {
    for (size_t i = 0; i < count; ++i) p[i] = v.f[i];
  }
  // NaN fails both comparisons and stays NaN.
  static Half clamp(Half v, const Half& lo, const Half& hi) {
    for (size_t i = 0; i < 8; ++i) {
      v.f[i] = v.f[i] < lo.f[i] ? lo.f[i] : v.f[i];
      v.f[i] = v.f[i] > hi.f[i] ? hi.f[i] : v.f[i];
    }
    return v;
  }
};

}  // namespace
}  // namespace pscompress
