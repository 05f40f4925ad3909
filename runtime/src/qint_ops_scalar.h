// The int8 epilogue's operations (qgemm_tile.h) one lane at a time: the reference every SIMD
// path is tested against. Included by the scalar int8 kernels (qgemm, qdot) only.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

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
  static Int add(Int a, const Int& b) {  // modulo 2^32, as the SIMD additions (qgemm.h)
    for (size_t l = 0; l < 8; ++l)
      a.i[l] = static_cast<int32_t>(static_cast<uint32_t>(a.i[l]) + static_cast<uint32_t>(b.i[l]));
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
}  // namespace pscompress
