// Portable reference int8 microkernel (qgemm.h): the semantics every SIMD path is tested
// against, its epilogue operations included, one operation per lane.
#include <cmath>

#include "qgemm_tile.h"

namespace pscompress {
namespace {

struct ScalarInt8 {
  struct Int {
    int32_t i[8];
  };
  struct Real {
    float f[8];
  };
  static Int splat_int(int32_t x) { return {{x, x, x, x, x, x, x, x}}; }
  static Real splat_real(float x) { return {{x, x, x, x, x, x, x, x}}; }
  static Int add(Int a, const Int& b) {
    for (size_t l = 0; l < 8; ++l) a.i[l] += b.i[l];
    return a;
  }
  static Real to_real(const Int& a) {
    Real r;
    for (size_t l = 0; l < 8; ++l) r.f[l] = static_cast<float>(a.i[l]);
    return r;
  }
  static Real mul(Real a, const Real& b) {
    for (size_t l = 0; l < 8; ++l) a.f[l] *= b.f[l];
    return a;
  }
  static Real clamp(Real v, const Real& lo, const Real& hi) {
    for (size_t l = 0; l < 8; ++l) v.f[l] = std::fmin(hi.f[l], std::fmax(lo.f[l], v.f[l]));
    return v;
  }
  static Int round(const Real& v) {  // the default rounding mode: to nearest even
    Int r;
    for (size_t l = 0; l < 8; ++l) r.i[l] = static_cast<int32_t>(std::nearbyint(v.f[l]));
    return r;
  }
  static void store_first(uint8_t* p, const Int& v, size_t count) {
    for (size_t l = 0; l < count; ++l) p[l] = static_cast<uint8_t>(v.i[l]);
  }
};

}  // namespace

void qgemm_6x16_scalar(const QGemmArgs& args) {
  static_assert(kMR == 6 && kNR == 16, "the file name says the tile");
  ScalarInt8::Int acc[kMR][2] = {};
  for (size_t k = 0; k < args.k; ++k) {
    const int16_t* b = args.b_base + args.b_offsets[k];
    for (size_t m = 0; m < kMR; ++m) {
      const int32_t w = args.a[QGemmPacking::at(k, m)];
      for (size_t l = 0; l < 8; ++l) {
        acc[m][0].i[l] += w * b[l];
        acc[m][1].i[l] += w * b[args.b_split + l];
      }
    }
  }
  requantize_tile<ScalarInt8>(acc, args.m, args);
}

}  // namespace pscompress
