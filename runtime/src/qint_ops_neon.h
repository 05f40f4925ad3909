// The int8 epilogue's operations (qgemm_tile.h) on 8 int32 / float lanes in two q registers,
// for the NEON int8 kernels (qgemm, qdwconv): in an anonymous namespace (see ukernel_tile.h).
#pragma once

#include <arm_neon.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace pscompress {
namespace {

struct NeonInt8 {
  using Int = int32x4x2_t;
  using Real = float32x4x2_t;
  static Int splat_int(int32_t x) { return {{vdupq_n_s32(x), vdupq_n_s32(x)}}; }
  static Real splat_real(float x) { return {{vdupq_n_f32(x), vdupq_n_f32(x)}}; }
  static Int add(Int a, Int b) { return {{vaddq_s32(a.val[0], b.val[0]), vaddq_s32(a.val[1], b.val[1])}}; }
  static Real to_real(Int a) { return {{vcvtq_f32_s32(a.val[0]), vcvtq_f32_s32(a.val[1])}}; }
  static Real mul(Real a, Real b) { return {{vmulq_f32(a.val[0], b.val[0]), vmulq_f32(a.val[1], b.val[1])}}; }
  static Real clamp(Real v, Real lo, Real hi) {
    return {{vminq_f32(hi.val[0], vmaxq_f32(lo.val[0], v.val[0])), vminq_f32(hi.val[1], vmaxq_f32(lo.val[1], v.val[1]))}};
  }
  static Int round(Real v) { return {{vcvtnq_s32_f32(v.val[0]), vcvtnq_s32_f32(v.val[1])}}; }  // to nearest even
  static void store_first(uint8_t* p, Int v, size_t count) {
    const uint8x8_t bytes = vqmovn_u16(vcombine_u16(vqmovun_s32(v.val[0]), vqmovun_s32(v.val[1])));
    if (count == 8) return vst1_u8(p, bytes);
    uint8_t part[8];
    vst1_u8(part, bytes);
    std::memcpy(p, part, count);
  }
};

}  // namespace
}  // namespace pscompress
