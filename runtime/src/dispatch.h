// Picks the fastest microkernel this CPU supports, once per process.
#pragma once

#include "ukernel.h"

namespace pscompress {

struct CpuPath {
  const char* name;  // "avx2-fma", "neon" or "scalar"
  Ukernel ukernel;
};

// PSCOMPRESS_KERNEL=scalar in the environment forces the portable path (for tests and triage).
const CpuPath& cpu_path();

}  // namespace pscompress
