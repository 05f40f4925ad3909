// Picks the fastest microkernel this CPU supports, once per process.
#pragma once

#include <vector>

#include "ukernel.h"

namespace pscompress {

struct CpuPath {
  const char* name;  // "avx2-fma", "neon", "scalar", or "unsupported:<forced name>"
  Ukernel ukernel;   // null for an unsupported forced name
};

// The paths this build can run on this CPU, fastest first; "scalar" is always there.
std::vector<CpuPath> supported_paths();

// The fastest supported path, or the one PSCOMPRESS_KERNEL names (for tests and triage). A
// name this build or CPU cannot run gives "unsupported:<name>": never silently another path.
const CpuPath& cpu_path();

// cpu_path()'s microkernel; throws std::runtime_error naming PSCOMPRESS_KERNEL when it is
// unsupported, so that a kernel cannot be created on a path nobody asked for.
Ukernel require_ukernel();

}  // namespace pscompress
