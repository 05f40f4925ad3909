// Picks the fastest microkernels this CPU supports, once per process: a path is one ISA's
// GEMM kernel (ukernel.h), depthwise kernel (dwconv.h), int8 GEMM kernel (qgemm.h) and int8
// depthwise kernel (qdwconv.h), always chosen together, with the int8 dot kernel (qgemm.h,
// "Dots") where the CPU has one.
#pragma once

#include <vector>

#include "dwconv.h"
#include "qdwconv.h"
#include "qgemm.h"
#include "ukernel.h"

namespace pscompress {

struct CpuPath {
  const char* name;  // "avx512-vnni", "avx512f", "avx-vnni", "avx2-fma", "neon-dot", "neon", "scalar", or "unsupported:<forced name>"
  Ukernel ukernel;   // null for an unsupported forced name
  Dwconv dwconv;     // the same ISA's depthwise kernel; null likewise
  QGemm qgemm;       // the same ISA family's int8 pair kernel; null likewise
  QDot qdot;         // its int8 dot kernel; null where the ISA has no dot product the path may use
  QDwconv qdwconv;   // the same ISA family's int8 depthwise kernel; null for an unsupported forced name
};

// The paths this build can run on this CPU, fastest first; "scalar" is always there.
std::vector<CpuPath> supported_paths();

// The fastest supported path, or the one PSCOMPRESS_KERNEL names (for tests and triage). A
// name this build or CPU cannot run gives "unsupported:<name>": never silently another path.
const CpuPath& cpu_path();

// cpu_path(), with its kernels; throws std::runtime_error naming PSCOMPRESS_KERNEL when it is
// unsupported, so that a kernel cannot be created on a path nobody asked for.
const CpuPath& require_path();

}  // namespace pscompress
