"""Differential fuzzer for the PSConv operators (docs/operator.md; docs/fuzzing.md).

Valid cases over the whole contract (runtime/tests/fuzz_cases.py; every 8th an int8 depthwise
QLinearPSConv) run on every implementation:
  native:<path>  the kernel library given on the command line, once per CPU path, each path in
                 its own worker process (PSCOMPRESS_KERNEL is read once per process);
  portable       the same model without the library: onnxruntime inlines the model's functions;
  reference      onnx.reference.ReferenceEvaluator on the model with its functions;
and each output is compared with a float64 numpy oracle (dense masked weights, direct
convolution): NaN exactly where the oracle has NaN, +-Inf exactly, finite values within the
worst-case float32 rounding of the sum of |w * x| terms; int8 outputs equal to the exact int8
reference natively and within 1 elsewhere. Many cases share one model (one node
and its own inputs each), so one session serves a batch; a failing batch is rerun case by case.

Contract violations (shapes of Z, B, W and X, missing and invalid attributes) must be rejected
cleanly: by the native kernel always, by the portable functions when they concern inputs or a
required attribute. --mutate adds random attribute mutations (runtime/tests/fuzz_psconv.py),
native only: a clean result or a clean error, never a crash.

Native runs happen in forked children of the workers, so a crash or a sanitizer abort costs
one child and is pinned to its case. Prints one line per mismatch with a reproducer, then a
JSON summary; exits 1 on any mismatch.

    python runtime/tests/fuzz_differential.py LIBRARY --cases 3000 --invalid 300 --seed 1
    python runtime/tests/fuzz_differential.py LIBRARY --seed 1 --case 1234     # one case again
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import dataclasses
import json
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fuzz_cases as fc  # noqa: E402

KERNELS = "default,scalar,avx2-fma,avx-vnni,avx512f,avx512-vnni,neon,neon-dot"  # candidates; duplicates of one path are dropped
SANITIZER_MARKERS = ("AddressSanitizer", "runtime error:", "LeakSanitizer", "UndefinedBehaviorSanitizer")
JOB_TIMEOUT = 300.0


# ----------------------------------------------------------------------------- worker processes

def send(stream, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def recv(stream):
    head = stream.read(8)
    if len(head) < 8:
        return None
    (size,) = struct.unpack("<Q", head)
    return pickle.loads(stream.read(size))


def sanitizer_summary(text: str) -> str:
    """The line that names a sanitizer finding, else the last non-empty line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("SUMMARY:") or "runtime error:" in line:
            return line[:300]
    for line in lines:
        if "ERROR: AddressSanitizer" in line:
            return line[:300]
    return lines[-1][:300] if lines else "no output"


def forked(jobs: list[dict], library: str, threads: int) -> list[dict]:
    """fuzz_cases.run_job for each job, in order, in forked children: a crash, a sanitizer
    abort or a hang ends the child and is that job's result; the next child goes on."""
    results: list[dict] = []
    while len(results) < len(jobs):
        results += _forked_child(jobs[len(results):], library, threads)
    return results


def _forked_child(jobs: list[dict], library: str, threads: int) -> list[dict]:
    """The results of one child: all of them, or those it finished plus the job it died in."""
    read_fd, write_fd = os.pipe()
    with tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # the child: its stderr (sanitizer reports) goes to the file
            os.close(read_fd)
            os.dup2(err.fileno(), 2)
            with os.fdopen(write_fd, "wb") as out:
                for job in jobs:
                    try:
                        result = fc.run_job(job, library, threads)
                    except BaseException as exc:  # noqa: BLE001
                        result = {"load_error": f"worker: {fc.error_text(exc)}"}
                    send(out, result)
            os._exit(0)
        os.close(write_fd)
        results, hung = [], False
        with os.fdopen(read_fd, "rb") as pipe:
            while len(results) < len(jobs):
                ready, _, _ = select.select([pipe], [], [], JOB_TIMEOUT)
                if not ready:
                    hung = True
                    os.kill(pid, signal.SIGKILL)
                    break
                result = recv(pipe)
                if result is None:
                    break
                results.append(result)
        _, status = os.waitpid(pid, 0)
        err.seek(0)
        text = err.read().decode(errors="replace")
    if any(marker in text for marker in SANITIZER_MARKERS) and len(results) == len(jobs) and status == 0:
        results[-1] = {"crash": f"sanitizer report: {sanitizer_summary(text)}", "stderr": text[-6000:]}
    elif len(results) < len(jobs):
        how = (f"hang: no result after {JOB_TIMEOUT:.0f} s" if hung else
               f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}")
        results.append({"crash": f"{how}: {sanitizer_summary(text)}", "stderr": text[-6000:]})
    return results


def worker_main(library: str, threads: int) -> int:
    """A fork server: loads onnxruntime once, runs each list of jobs it is sent in children."""
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints must not corrupt the protocol
    import onnxruntime  # noqa: F401 - loaded once, before any fork

    send(proto_out, {"cpu_path": fc.native_cpu_path(library)})
    while (jobs := recv(proto_in)) is not None:
        send(proto_out, forked(jobs, library, threads))
    return 0


class Worker:
    """A fork server process for one PSCOMPRESS_KERNEL value; `preload` is its LD_PRELOAD
    (the ASan runtime for a sanitizer build: the driver itself then runs without it, about
    four times faster, since onnxruntime's allocations do not go through ASan's allocator)."""

    def __init__(self, library: str, kernel: str, threads: int, preload: str | None):
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
        env.pop("PSCOMPRESS_KERNEL", None)
        if kernel != "default":
            env["PSCOMPRESS_KERNEL"] = kernel
        if preload:
            env["LD_PRELOAD"] = preload
        self.kernel = kernel
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), library, "--worker",
                                      "--threads", str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env)
        self.path = self.name = None

    def hello(self) -> None:
        hello = recv(self.proc.stdout)
        if hello is None:
            raise RuntimeError(f"the native worker for PSCOMPRESS_KERNEL={self.kernel} did not start")
        self.path = hello["cpu_path"]
        self.name = f"native:{self.path}"

    def submit(self, *jobs: dict) -> None:
        send(self.proc.stdin, list(jobs))

    def collect(self) -> list[dict]:
        results = recv(self.proc.stdout)
        if results is None:
            raise RuntimeError(f"{self.name}: the worker died")
        return results

    def run(self, *jobs: dict) -> list[dict]:
        self.submit(*jobs)
        return self.collect()

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait(timeout=60)


def start_workers(library: str, kernels: str, threads: int, preload: str | None) -> list[Worker]:
    """One worker per distinct CPU path among the candidate PSCOMPRESS_KERNEL values."""
    candidates = [Worker(library, k.strip(), threads, preload) for k in kernels.split(",")
                  if k.strip() and k.strip() != "none"]
    workers, seen = [], set()
    for worker in candidates:
        worker.hello()
        # A name this build or CPU cannot run reports "unsupported:<name>" (docs/operator.md);
        # an older library ignores unknown names and reports its default path again.
        if worker.path in seen or worker.path.startswith("unsupported"):
            worker.close()
        else:
            seen.add(worker.path)
            workers.append(worker)
    return workers


# ----------------------------------------------------------------------------- in-process runners

def bind_function_defaults(model):
    """A copy whose nodes spell out the defaults their model-local functions declare.
    onnx.reference (1.23) ignores FunctionProto.attribute_proto (onnxruntime does not): the
    defaults tested are still the functions' own."""
    model = copy.deepcopy(model)
    functions = {(f.domain, f.name): f for f in model.functions}
    for node in model.graph.node:
        function = functions.get((node.domain, node.op_type))
        if function is None:
            continue
        present = {a.name for a in node.attribute}
        node.attribute.extend(a for a in function.attribute_proto if a.name not in present)
        # ... and it wants every declared input, the omitted optional ones as "".
        node.input.extend([""] * (len(function.input) - len(node.input)))
    return model


def run_reference(model, feeds: dict, outputs: list[str]) -> dict:
    from onnx.reference import ReferenceEvaluator

    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            got = ReferenceEvaluator(bind_function_defaults(model)).run(outputs, feeds)
    except Exception as exc:  # noqa: BLE001
        return {"runs": [{"error": fc.error_text(exc)}]}
    return {"runs": [{"outputs": [np.asarray(y) for y in got]}]}


# ----------------------------------------------------------------------------- the fuzzer

class Fuzzer:
    def __init__(self, library: str, seed: int, workers: list[Worker], quiet: bool = False, report_limit: int = 200,
                 preload: str | None = None):
        self.library, self.seed, self.workers, self.quiet = library, seed, workers, quiet
        self.mismatches: list[dict] = []
        self.by_kind: collections.Counter = collections.Counter()
        self.counts: collections.Counter = collections.Counter()
        self.report_limit = report_limit
        self.seconds: collections.Counter = collections.Counter()
        self.started = self.last_progress = time.monotonic()
        self.progress_every = 0.0
        self.script = f"python runtime/tests/fuzz_differential.py {library} --seed {seed}" + (
            f" --worker-preload '{preload}'" if preload else "")

    @contextlib.contextmanager
    def clock(self, what: str):
        start = time.monotonic()
        yield
        self.seconds[what] += time.monotonic() - start

    # reporting
    def mismatch(self, impl: str, kind: str, case: fc.Case, detail: str, mode: str = "valid", extra: str = "") -> None:
        label = f"{impl}/{kind}"
        self.by_kind[label] += 1
        repro = f"{self.script} --case {case.index}" + ("" if mode == "valid" else f" --mode {mode}")
        record = {"kind": label, "case": f"{case.seed}:{case.index}", "mode": mode, "detail": detail,
                  "case_line": (extra + " " if extra else "") + case.describe(), "repro": repro}
        self.mismatches.append(record)
        if not self.quiet and len(self.mismatches) <= self.report_limit:
            print(f"MISMATCH {label} case={record['case']} {record['case_line']} :: {detail} :: repro: {repro}",
                  flush=True)

    # models
    def models(self, parts: list) -> tuple[bytes, object]:
        """(native model bytes: no functions, so only the library can run it; portable model)."""
        native = fc.build_model(parts)
        portable = fc.build_model(parts, portable=True)
        return native.SerializeToString(), portable

    # ------------------------------------------------------------------ valid cases
    def progress(self, every: float) -> None:
        """A line on stderr at most every `every` seconds (0: never): a long run shows how far it got."""
        now = time.monotonic()
        if every and now - self.last_progress >= every:
            self.last_progress = now
            c = self.counts
            print(f"progress: {c['valid_cases']} valid, {c['invalid_cases']} invalid, "
                  f"{c['mutate:cases']} mutated cases, {len(self.mismatches)} mismatches, "
                  f"{now - self.started:.0f} s", file=sys.stderr, flush=True)

    def run_valid(self, indices: list[int], batch: int) -> None:
        for start in range(0, len(indices), batch):
            with self.clock("generate"):
                cases = [fc.generate_valid(self.seed, i) for i in indices[start:start + batch]]
            self.valid_batch(cases)
            self.progress(self.progress_every)

    def valid_batch(self, cases: list[fc.Case]) -> None:
        jobs = self.jobs(cases)
        for worker in self.workers:  # the native runs overlap with the in-process ones
            worker.submit(jobs[0])
        results = {}
        for impl in ("portable", "reference"):
            with self.clock(impl):
                results[impl] = self.execute(impl, jobs)
        with self.clock("oracle"):
            expected = [fc.oracle(c) for c in cases]
        with self.clock("native (waiting)"):
            for worker in self.workers:
                (results[worker.name],) = worker.collect()
        self.counts["valid_cases"] += len(cases)
        self.counts["valid_batches"] += 1
        for impl, result in results.items():
            per_case = self.split(result, len(cases))
            if per_case is None:  # the batch failed: find the cases that fail
                self.counts[f"isolated:{impl}"] += 1
                with self.clock("isolating failed batches"):
                    per_case = self.isolate(impl, cases)
            with self.clock("compare"):
                for case, outcome, want in zip(cases, per_case, expected):
                    self.judge(impl, case, outcome, want)

    def jobs(self, cases: list[fc.Case]) -> tuple[dict, object]:
        """(the native job, the portable model) for these cases in one graph."""
        parts = [fc.case_parts(c) for c in cases]
        native_bytes, portable = self.models(parts)
        feeds = {k: v for part in parts for k, v in part[3].items()}
        return {"model": native_bytes, "feeds": [feeds], "outputs": [part[4] for part in parts]}, portable

    def execute(self, impl: str, jobs: tuple[dict, object]) -> dict:
        job, portable = jobs
        if impl == "portable":
            return fc.run_job({**job, "model": portable.SerializeToString()})
        if impl == "reference":
            return run_reference(portable, job["feeds"][0], job["outputs"])
        (result,) = next(w for w in self.workers if w.name == impl).run(job)
        return result

    @staticmethod
    def split(result: dict, count: int):
        """Per-case outcomes of a batch that ran, else None."""
        if "runs" not in result or "outputs" not in result["runs"][0]:
            return None
        outputs = result["runs"][0]["outputs"]
        return [{"output": y} for y in outputs] if len(outputs) == count else None

    def isolate(self, impl: str, cases: list[fc.Case]) -> list[dict]:
        """Per-case outcomes of a batch that failed. In process: by bisection. Native: every
        case alone, in one sequence of forked children (a crash costs one child, no reruns)."""
        if impl.startswith("native:"):
            worker = next(w for w in self.workers if w.name == impl)
            results = worker.run(*[self.jobs([c])[0] for c in cases])
            return [self.outcome(r) for r in results]
        if len(cases) == 1:
            return [self.outcome(self.execute(impl, self.jobs(cases)))]
        half = len(cases) // 2
        outcomes = []
        for part in (cases[:half], cases[half:]):
            outcomes += self.split(self.execute(impl, self.jobs(part)), len(part)) or self.isolate(impl, part)
        return outcomes

    @staticmethod
    def outcome(result: dict) -> dict:
        """A one-case result as {"output"}, {"error"} or {"crash"}."""
        if "crash" in result:
            return {"crash": result["crash"]}
        if "load_error" in result:
            return {"error": "at load: " + result["load_error"]}
        run = result["runs"][0]
        return {"output": run["outputs"][0]} if "outputs" in run else {"error": run["error"]}

    def judge(self, impl: str, case: fc.Case, outcome: dict, want) -> None:
        self.counts[f"compared:{impl}"] += 1
        if "crash" in outcome:
            self.mismatch(impl, "crash", case, outcome["crash"])
        elif "error" in outcome:
            self.mismatch(impl, "error", case, outcome["error"])
        else:
            verdict = fc.compare(np.asarray(outcome["output"]), *want, exact=impl.startswith("native:"))
            if verdict:
                self.mismatch(impl, verdict[0], case, verdict[1])

    # ------------------------------------------------------------------ contract violations
    def run_invalid(self, indices: list[int], chunk: int = 32) -> None:
        """Each violation in its own model (one rejection would hide the others); the native
        workers take a chunk at a time while the portable and reference runs go on here."""
        for start in range(0, len(indices), chunk):
            violations, jobs, portables = [], [], []
            for index in indices[start:start + chunk]:
                cls, case, inputs, attrs, note = make_violation(self.seed, index)
                parts = [fc.case_parts(case, inputs=inputs, attrs=attrs)]
                native_bytes, portable = self.models(parts)
                violations.append((cls, case, f"violation={cls} ({note})"))
                jobs.append({"model": native_bytes, "feeds": [parts[0][3]], "outputs": [parts[0][4]]})
                portables.append(portable)
            for worker in self.workers:
                worker.submit(*jobs)
            local = [{"portable": fc.run_job({**job, "model": portable.SerializeToString()}),
                      "reference": run_reference(portable, job["feeds"][0], job["outputs"])}
                     for job, portable in zip(jobs, portables)]
            for worker in self.workers:
                for results, result in zip(local, worker.collect()):
                    results[worker.name] = result
            for (cls, case, extra), results in zip(violations, local):
                self.counts["invalid_cases"] += 1
                self.counts[f"invalid:{cls}"] += 1
                for impl, result in results.items():
                    self.judge_rejection(impl, cls, case, result, extra)
            self.progress(self.progress_every)

    def judge_rejection(self, impl: str, cls: str, case: fc.Case, result: dict, extra: str) -> None:
        if "crash" in result:
            self.mismatch(impl, "crash", case, result["crash"], "invalid", extra)
            return
        if "runs" not in result or "outputs" not in result["runs"][0]:
            return  # rejected: as it must be
        shape = list(np.asarray(result["runs"][0]["outputs"][0]).shape)
        if impl.startswith("native:") or (impl == "portable" and cls in PORTABLE_MUST_REJECT):
            self.mismatch(impl, f"accepted:{cls}", case, f"ran and gave Y {shape}; must be an error", "invalid", extra)
        else:  # recorded, not a failure: the portable functions leave attribute values to the
            self.counts[f"lenient:{impl}:{cls}"] += 1  # native kernel; onnx.reference is lax on shapes

    # ------------------------------------------------------------------ random mutations
    def run_mutate(self, indices: list[int], chunk: int = 64) -> None:
        import fuzz_psconv

        tally: collections.Counter = collections.Counter()
        for start in range(0, len(indices), chunk):
            made = [fuzz_psconv.mutated_job(self.seed, index) for index in indices[start:start + chunk]]
            for worker in self.workers:
                worker.submit(*[job for job, _, _ in made])
            for number, worker in enumerate(self.workers):
                counts = tally if number == 0 else collections.Counter()  # outcomes once, checks per path
                for (job, m, case), result in zip(made, worker.collect()):
                    if "crash" in result:
                        self.mismatch(worker.name, "crash", case, result["crash"], "mutate")
                        continue
                    problem = fuzz_psconv.tally(result, job, m, counts)
                    if problem:
                        self.mismatch(worker.name, "bad_output", case, problem, "mutate")
            self.counts["mutate:cases"] = tally["cases"]
            self.progress(self.progress_every)
        for key, value in tally.items():
            self.counts[f"mutate:{key}"] = value


# Input-shape violations and missing required attributes: the portable functions must reject
# these too (invalid attribute values are the native kernel's to check, see docs/operator.md).
PORTABLE_MUST_REJECT = {"z_batch", "z_dim_one", "z_rank", "z_size", "b_empty", "b_one", "b_wrong", "w_long", "w_short",
                        "w_rank", "x_channels", "x_rank", "missing_required"}
INVALID_ATTRIBUTES = [
    ("patterns", "zero"), ("patterns", "too_wide"), ("patterns", "too_many"), ("shift", "P"), ("shift", "negative"),
    ("strides", "zero"), ("strides", "65"), ("pads", "1025"), ("pads", "negative"), ("pads", "three"),
    ("group", "not_dividing"), ("kernel_shape", "k2_64"), ("kernel_shape", "zero"), ("clip_min", "above_max"),
    ("clip_min", "nan"), ("dilations", "two"), ("in_channels", "zero"), ("out_channels", "negative"),
]


def make_violation(seed: int, index: int) -> tuple[str, fc.Case, dict, dict, str]:
    """(class, case, inputs, node attributes, what was broken) for violation `index`."""
    rng = np.random.default_rng([seed, index, 1])
    case = fc.generate(seed, index)
    inputs = dict(case.inputs)
    attrs = fc.node_attributes(case)
    n, m, oh, ow = case.output_shape
    classes = ["z_batch", "z_dim_one", "z_rank", "z_size", "b_empty", "b_empty", "b_one", "b_wrong", "w_long",
               "w_short", "w_rank", "x_channels", "x_rank", "missing_required", "bad_attribute", "bad_attribute"]
    cls = str(rng.choice(classes))
    z = rng.standard_normal
    if cls.startswith("z_") and not case.residual:
        case = dataclasses.replace(case, op="PSConvAdd")
    if cls.startswith("w_"):  # a constant W is checked when the model loads, an input on every run
        case = dataclasses.replace(case, w_constant=bool(rng.random() < 0.3))
    note = ""
    if cls == "z_batch":
        shape = (2 if n == 1 else 1, m, oh, ow)
    elif cls == "z_dim_one":
        dims = [d for d in (1, 2, 3) if (n, m, oh, ow)[d] > 1]
        shape = [n, m, oh, ow]
        if dims:
            shape[int(rng.choice(dims))] = 1
        else:
            shape[0] = 2 if n == 1 else 1
        shape = tuple(shape)
    elif cls == "z_rank":
        shape = (m, oh, ow) if rng.random() < 0.5 else (1, n, m, oh, ow)
    elif cls == "z_size":
        shape = (n, m, oh, ow + 1)
    if cls.startswith("z_"):
        inputs["Z"] = z(shape).astype(np.float32)
        note = f"Z {list(shape)} for Y {[n, m, oh, ow]}"
    elif cls.startswith("b_"):
        length = {"b_empty": 0, "b_one": 1 if m > 1 else 2, "b_wrong": m + 1}[cls]
        inputs["B"] = z(length).astype(np.float32)
        note = f"B [{length}] for M={m}"
        case = dataclasses.replace(case, b_constant=bool(rng.random() < 0.5))
    elif cls in ("w_long", "w_short", "w_rank"):
        w = case.inputs["W"]
        inputs["W"] = (np.concatenate([w, z(1).astype(np.float32)]) if cls == "w_long" else
                       w[:-1] if cls == "w_short" else w.reshape(1, -1))
        note = f"W {list(inputs['W'].shape)}, {len(w)} kept weights, {'constant' if case.w_constant else 'input'}"
    elif cls == "x_channels":
        x = case.inputs["X"]
        inputs["X"] = np.concatenate([x, x[:, :1]], axis=1)
        note = f"X {list(inputs['X'].shape)} for C={x.shape[1]}"
    elif cls == "x_rank":
        inputs["X"] = case.inputs["X"].reshape(-1, *case.inputs["X"].shape[2:])
        note = f"X {list(inputs['X'].shape)}"
    elif cls == "missing_required":
        name = str(rng.choice(["kernel_shape", "in_channels", "out_channels", "patterns"]))
        attrs.pop(name)
        note = f"no {name}"
    else:
        name, how = INVALID_ATTRIBUTES[int(rng.integers(len(INVALID_ATTRIBUTES)))]
        attrs = dict(case.attrs)  # every attribute present, one of them wrong
        a = case.attrs
        k2 = a["kernel_shape"][0] * a["kernel_shape"][1]
        value = {
            ("patterns", "zero"): a["patterns"][:-1] + [0],
            ("patterns", "too_wide"): a["patterns"][:-1] + [1 << k2] if k2 < 63 else a["patterns"][:-1] + [-1],
            ("patterns", "too_many"): (a["patterns"] * 257)[:257],
            ("shift", "P"): len(a["patterns"]), ("shift", "negative"): -1,
            ("strides", "zero"): [0, a["strides"][1]], ("strides", "65"): [a["strides"][0], 65],
            ("pads", "1025"): a["pads"][:3] + [1025], ("pads", "negative"): [-1] + a["pads"][1:],
            ("pads", "three"): a["pads"][:3],
            ("group", "not_dividing"): a["in_channels"] + 1,
            ("kernel_shape", "k2_64"): [8, 8], ("kernel_shape", "zero"): [0, a["kernel_shape"][1]],
            ("clip_min", "above_max"): (a["clip_max"] if a["clip_max"] < np.inf else 1.0) + 1.0,
            ("clip_min", "nan"): float("nan"), ("dilations", "two"): [2, 1],
            ("in_channels", "zero"): 0, ("out_channels", "negative"): -a["out_channels"],
        }[name, how]
        attrs[name] = value
        if (name, how) == ("clip_min", "above_max") and a["clip_max"] == np.inf:
            attrs["clip_max"] = 1.0
        cls = "bad_attribute"
        note = f"{name}: {how}"
    return cls, case, inputs, attrs, note


# ----------------------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("library", help="libpscompress_ort.so (an ASan build for the CI run); with --kernels none, "
                        "any placeholder")
    parser.add_argument("--cases", type=int, default=1000, help="valid cases (default 1000)")
    parser.add_argument("--invalid", type=int, default=0, help="contract-violating cases")
    parser.add_argument("--mutate", type=int, default=0, help="randomly mutated models (native only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--first", type=int, default=0, help="index of the first case (to split a long run)")
    parser.add_argument("--case", type=int, help="run only this case (with --mode) and print it")
    parser.add_argument("--mode", choices=["valid", "invalid", "mutate"], default="valid", help="for --case")
    parser.add_argument("--batch", type=int, default=48, help="valid cases per model")
    parser.add_argument("--kernels", default=KERNELS, help=f"PSCOMPRESS_KERNEL candidates (default {KERNELS}); "
                        "none: no native runs, the portable functions and the reference evaluator only")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of the native sessions")
    parser.add_argument("--worker-preload", help="LD_PRELOAD of the native workers only (the ASan runtime)")
    parser.add_argument("--report", type=int, default=200, help="print at most this many mismatch lines")
    parser.add_argument("--json", help="also write the summary (and every mismatch) to this file")
    parser.add_argument("--progress", type=float, default=0, help="a progress line on stderr every this many seconds")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(args.library, args.threads)
    library = str(Path(args.library).resolve())
    started = time.monotonic()
    workers = start_workers(library, args.kernels, args.threads, args.worker_preload)
    fuzzer = Fuzzer(library, args.seed, workers, report_limit=args.report, preload=args.worker_preload)
    fuzzer.progress_every = args.progress
    timings = {}
    try:
        if args.case is not None:
            if args.mode == "valid":
                case = fc.generate_valid(args.seed, args.case)
                print(case.describe())
                print("inputs (shape, NaNs, Infs):",
                      {k: (list(v.shape), int(np.isnan(v).sum()), int(np.isinf(v).sum())) for k, v in case.inputs.items()})
                fuzzer.valid_batch([case])
            elif args.mode == "invalid":
                violation = make_violation(args.seed, args.case)
                print(violation[0], violation[4], violation[1].describe())
                fuzzer.run_invalid([args.case])
            else:
                fuzzer.run_mutate([args.case])
        else:
            for name, count, run in (("valid", args.cases, lambda ix: fuzzer.run_valid(ix, args.batch)),
                                     ("invalid", args.invalid, fuzzer.run_invalid),
                                     ("mutate", args.mutate, fuzzer.run_mutate)):
                t0 = time.monotonic()
                if count:
                    run(list(range(args.first, args.first + count)))
                timings[name] = round(time.monotonic() - t0, 2)
    finally:
        for worker in workers:
            worker.close()
    seconds = time.monotonic() - started
    summary = {
        "seed": args.seed, "library": library, "paths": [w.path for w in workers],
        "implementations": [w.name for w in workers] + ["portable", "reference"],
        "cases": fuzzer.counts["valid_cases"], "invalid_cases": fuzzer.counts["invalid_cases"],
        "mutated_models": args.mutate if args.case is None else 0,
        "mismatches": len(fuzzer.mismatches), "by_kind": dict(sorted(fuzzer.by_kind.items())),
        "counts": dict(sorted(fuzzer.counts.items())), "seconds": round(seconds, 1), "seconds_per_mode": timings,
        "driver_seconds": {k: round(v, 1) for k, v in sorted(fuzzer.seconds.items())},
        "valid_cases_per_second": round(fuzzer.counts["valid_cases"] / timings["valid"], 1)
        if timings.get("valid") else None,
    }
    if args.json:
        Path(args.json).write_text(json.dumps({**summary, "mismatch_list": fuzzer.mismatches}, indent=1))
    print(json.dumps(summary))
    return 1 if fuzzer.mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
