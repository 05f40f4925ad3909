// Filling the phase planes (sparse_layer.h, Geometry) of one input channel, for any element
// type: Convert says how an input value becomes a plane element. fp32 PSConv copies floats and
// notes Inf and NaN (psconv.cc); QLinearPSConv stores x - x_zero_point as int16, or x in one
// lane of a Quad (qlinear_psconv.cc).
// Convert has In and Out (the input's and the planes' element types) and
//   uint32_t put(Out* dst, const In* src) const:  *dst from *src, returning flags that the
//   copy ORs together (copy_image returns them).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "sparse_layer.h"

namespace pscompress {

// Sets the padding of one channel's planes (geo.channel elements), the rows and columns that
// hold no image value, to `pad`. It lies at the same places for every channel of a run.
template <class Out>
void fill_padding(const Plan& plan, Out* planes, Out pad = Out{}) {
  const Geometry& geo = plan.geo;
  for (size_t ph = 0; ph < geo.phases; ++ph) {
    const PhaseColumns& c = plan.columns[ph];
    for (size_t s = 0; s < geo.hs; ++s) {
      Out* const row = planes + ph * geo.plane + s * geo.ws;
      if (plan.image_rows[s] == kPadding) {
        std::fill_n(row, geo.ws, pad);
      } else {
        std::fill_n(row, c.lo, pad);
        std::fill_n(row + c.hi, geo.ws - c.hi, pad);
      }
    }
  }
}

// Whether Convert has put_run(dst, src, n), its own loop over a run of n consecutive values
// (for a put the compiler does not vectorise), returning the flags as put's would OR together.
template <class Convert, class = void>
struct HasPutRun : std::false_type {};
template <class Convert>
struct HasPutRun<Convert, std::void_t<decltype(&Convert::put_run)>> : std::true_type {};

// Puts src[i * stride] into dst[i] for i < n, ORing the flags. Strides 1 and 2 are constants
// the compiler vectorises. The planes never overlap the input: __restrict spares every short
// row the vectorised loop's run-time overlap checks (a fifth of the copy's instructions on a
// 14x14 stride-2 layer, callgrind).
template <class Convert>
uint32_t copy_strided(typename Convert::Out* __restrict dst, const typename Convert::In* __restrict src, size_t n,
                      size_t stride, const Convert& convert) {
  if constexpr (HasPutRun<Convert>::value) {
    if (stride == 1) return convert.put_run(dst, src, n);
  }
  uint32_t flags = 0;
  auto copy = [&](auto step) {
    for (size_t i = 0; i < n; ++i) flags |= convert.put(dst + i, src + i * step);
  };
  if (stride == 1) {
    copy(std::integral_constant<size_t, 1>{});
  } else if (stride == 2) {  // the common strided case
    copy(std::integral_constant<size_t, 2>{});
  } else {
    copy(stride);
  }
  return flags;
}

// Splits n column pairs: even[i] from src[2 i], odd[i] from src[2 i + 1], reading src once (a
// deinterleave the compiler vectorises; no overlap, as in copy_strided).
template <class Convert>
uint32_t split_pairs(typename Convert::Out* __restrict even, typename Convert::Out* __restrict odd,
                     const typename Convert::In* __restrict src, size_t n, const Convert& convert) {
  uint32_t flags = 0;
  for (size_t i = 0; i < n; ++i) flags |= convert.put(even + i, src + 2 * i) | convert.put(odd + i, src + 2 * i + 1);
  return flags;
}

// Copies the image values of one channel (image: its H x W values) into its planes
// (geo.channel elements, padding written by fill_padding), reading each image row once;
// returns the flags of the values that some window reads.
template <class Convert>
uint32_t copy_image(const SparseLayer& layer, const Plan& plan, const typename Convert::In* image,
                    typename Convert::Out* planes, const Convert& convert) {
  using Out = typename Convert::Out;
  // Locals, not loads through plan: the stores below may alias anything.
  const size_t sw = layer.sw_, w = plan.geo.w, ws = plan.geo.ws, hs = plan.geo.hs, plane = plan.geo.plane;
  const size_t phases = plan.geo.phases, pl = layer.pl_;
  const size_t* const image_rows = plan.image_rows.data();
  const PhaseColumns* const cols = plan.columns.data();
  uint32_t flags = 0;
  if (sw == 2 && phases == 2) {
    // Image column x goes to plane column (x + PL) / 2 of phase (x + PL) mod 2. Windows read
    // columns [0, read) (fewer than w when WS cuts off the right); with PL odd, column 0 is
    // alone in phase 1, then come pairs (even phase, odd phase), then maybe one even column.
    const size_t read = 2 * ws > pl ? std::min(w, 2 * ws - pl) : 0;
    const size_t lone = std::min(read, pl % 2), pairs = (read - lone) / 2;
    const size_t at = (pl + lone) / 2;  // plane column of the first pair
    if (read == 0) return 0;            // no window reads an image column (then `at` may lie past the row)
    for (size_t s = 0; s < hs; ++s) {
      if (image_rows[s] == kPadding) continue;
      const auto* const src = image + image_rows[s] * w;
      Out* const even = planes + s * ws + at;
      Out* const odd = even + plane;
      if (lone) flags |= convert.put(odd - 1, src);
      flags |= split_pairs(even, odd, src + lone, pairs, convert);
      if ((read - lone) % 2) flags |= convert.put(even + pairs, src + read - 1);
    }
    return flags;
  }
  for (size_t s = 0; s < hs; ++s) {
    if (image_rows[s] == kPadding) continue;
    const auto* const src = image + image_rows[s] * w;
    for (size_t ph = 0; ph < phases; ++ph) {
      const PhaseColumns& c = cols[ph];
      if (c.hi == c.lo) continue;  // a phase without image columns forms no pointer
      flags |= copy_strided(planes + ph * plane + s * ws + c.lo, src + c.first, c.hi - c.lo, sw, convert);
    }
  }
  return flags;
}

}  // namespace pscompress
