// Portable reference int8 depthwise kernel (qdwconv.h): the semantics every SIMD path is tested
// against, its epilogue operations included (qint_ops_scalar.h), one operation per lane.
#include "qdwconv_tile.h"
#include "qint_ops_scalar.h"

namespace pscompress {
namespace {

struct ScalarDw : ScalarInt8 {
  struct Row {
    Int lower, upper;
  };
  struct Pair {
    int32_t w0, w1;
  };
  static Row zero() { return {}; }
  static Pair pair(int8_t w0, int8_t w1) { return {w0, w1}; }
  static constexpr size_t kHalf = 8;
  template <bool kContiguous>
  static void step(Row& acc, const int16_t* b0, const int16_t* b1, const QDwTiles& t, Pair w) {
    const size_t split = kContiguous ? kHalf : t.b_split;
    for (size_t l = 0; l < 8; ++l) {
      acc.lower.i[l] += w.w0 * b0[l] + w.w1 * b1[l];
      acc.upper.i[l] += w.w0 * b0[split + l] + w.w1 * b1[split + l];
    }
  }
  static void halves(const Row& acc, Int& lower, Int& upper) { lower = acc.lower, upper = acc.upper; }
  static void store_row(uint8_t* y, size_t y_split, const Int& lower, const Int& upper, size_t n0, size_t n1) {
    store_first(y, lower, n0);
    store_first(y + y_split, upper, n1);
  }
};

}  // namespace

void qdwconv_6x16_scalar(const QDwconvArgs& args) {
  static_assert(kQDwRows == 6, "the file name says the tile");
  qdwconv_rows<ScalarDw>(args);
}

}  // namespace pscompress
