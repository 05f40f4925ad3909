// Portable reference microkernel: the semantics every SIMD path is tested against, its
// epilogue operations (Scalar) included.
#include "ukernel_tile.h"

namespace pscompress {
namespace {

// Half a tile row as 8 floats, one operation per lane.
struct Scalar {
  struct Half {
    float f[8];
  };
  static Half splat(float x) { return {{x, x, x, x, x, x, x, x}}; }
  static Half add(Half a, const Half& b) {
    for (size_t i = 0; i < 8; ++i) a.f[i] += b.f[i];
    return a;
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

void ukernel_6x16_scalar(const UkernelArgs& args) {
  static_assert(kMR == 6 && kNR == 16, "the file name says the tile");
  Scalar::Half acc[kMR][2] = {};
  for (size_t k = 0; k < args.k; ++k) {
    const float* a = args.a + k * kMR;
    const float* b = args.b_base + args.b_offsets[k];
    for (size_t m = 0; m < kMR; ++m) {
      for (size_t i = 0; i < 8; ++i) {
        acc[m][0].f[i] += a[m] * b[i];
        acc[m][1].f[i] += a[m] * b[args.b_split + i];
      }
    }
  }
  store_tile<Scalar>(acc, args.m, args);
}

}  // namespace pscompress
