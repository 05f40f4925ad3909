"""Runs inside the emulated Raspberry Pi (aarch64 Python with only the Pi's site packages):
executes ONNX models as a job file says and writes outputs and facts for the host to compare.

Job: {"cases": [...], "out": folder, "result": json path}, each case either
  {"name", "model", "inputs": {input: .npy}, "native": null | true | false, "threads": null | int}:
      native null runs a plain onnxruntime session (no pscompress); true/false go through
      pscompress.runtime. Profiling is on, so the host sees which kernel ran each node.
      With "tolerate_errors": true an onnxruntime error is the case's result ({"error": text})
      instead of ending the job (the differential fuzz cases: one bad batch is one finding);
  or {"name", "argv": [...]}: the `pscompress` command line, as its console script runs it.
"""
import contextlib
import io
import json
import os
import platform
import sys

import numpy as np
import onnxruntime as ort


def profiled_op_names(session):
    with open(session.end_profiling()) as f:
        events = json.load(f)
    os.remove(f.name)
    return sorted({e["args"]["op_name"] for e in events if e.get("cat") == "Node" and "op_name" in e.get("args", {})})


def run_case(case, out):
    feeds = {name: np.load(path) for name, path in case["inputs"].items()}
    if case["native"] is None:
        options = ort.SessionOptions()
    else:
        from pscompress import runtime

        options = runtime.session_options(threads=case.get("threads"), native=case["native"])
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(out, case["name"])
    session = ort.InferenceSession(case["model"], options, providers=["CPUExecutionProvider"])
    outputs = session.run(None, feeds)
    paths = []
    for k, y in enumerate(outputs):
        paths.append(os.path.join(out, f"{case['name']}.{k}.npy"))
        np.save(paths[-1], y)
    return {"outputs": paths, "op_names": profiled_op_names(session)}


def run_command(case):
    from pscompress.cli import main as pscompress_main

    sys.argv = ["pscompress", *case["argv"]]
    stdout, stderr, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            pscompress_main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return {"exit_code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}


def main(job_path):
    with open(job_path) as f:
        job = json.load(f)
    result = {"machine": platform.machine(), "onnxruntime": ort.__version__, "cases": {}}
    if any(case.get("native") is not None or "argv" in case for case in job["cases"]):
        from pscompress import runtime

        result.update(cpu_path=runtime.cpu_path(), native_available=runtime.native_available(),
                      library_path=str(runtime.library_path()))
    for case in job["cases"]:
        if "argv" in case:
            result["cases"][case["name"]] = run_command(case)
            continue
        try:
            result["cases"][case["name"]] = run_case(case, job["out"])
        except Exception as exc:
            if not case.get("tolerate_errors"):
                raise
            result["cases"][case["name"]] = {"error": " ".join(str(exc).split())[:500]}
    with open(job["result"], "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
