// dwconv_6x16_avx512f.cc compiled for AVX2 with tests/avx512_on_avx2.h standing in for the
// AVX-512F intrinsics: it defines dwconv_6x16_avx512f_emulated, which
// dwconv_tester_avx512_emulated checks like every other path.
#include "avx512_on_avx2.h"

#include "../src/dwconv_6x16_avx512f.cc"
