"""Valid PSConv / PSConvAdd cases over the whole operator contract (docs/operator.md), and
int8 depthwise QLinearPSConv ones (generate_valid: every 8th case), the ONNX models that hold
them and an independent numpy oracle. Shared by the fuzzers:
runtime/tests/fuzz_differential.py (valid and contract-violating cases, every runtime) and
runtime/tests/fuzz_psconv.py (random malformed attributes, the native kernel only).

Case `index` of run `seed` draws from its own generator, np.random.default_rng([seed, index]):
any case can be rebuilt alone from those two numbers. The oracle rebuilds the dense weights
from the contract text, not from the exporter's or the kernel's code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

import psconv_models  # next to this file: the one builder of PSConv nodes and their models
import qlinear_models  # and of QLinearPSConv nodes, with the exact int8 reference

OPTIONAL_DEFAULTS = {"strides": [1, 1], "pads": [0, 0, 0, 0], "dilations": [1, 1], "group": 1, "shift": 0,
                     "clip_min": -math.inf, "clip_max": math.inf}
# Bounds that keep one case cheap for every runtime (the numpy oracle works in float64, the
# reference evaluator pads the whole input): multiply-adds, padded input and output floats.
MAX_MACS = 1_500_000
MAX_PADDED = 3_000_000
MAX_OUTPUT = 150_000
MAX_PACKED_A = 2_000_000  # the native kernel's panels: groups * P * 6 * Cg * K2 at most


@dataclass
class Case:
    seed: int
    index: int
    op: str                      # "PSConv", "PSConvAdd" or "QLinearPSConv"
    attrs: dict                  # every attribute, defaults included (QLinearPSConv: no clip)
    omitted: tuple[str, ...]     # optional attributes left out of the node (they equal the default)
    n: int
    h: int
    w: int
    bias: bool
    w_constant: bool             # W an initializer (the native kernel prepacks it) or a graph input
    b_constant: bool
    nonfinite: tuple[str, ...]   # inputs with NaN / +-Inf sprinkled in
    static_shapes: bool = False  # graph inputs declare their shapes (batch symbolic) or nothing
    inputs: dict = field(default_factory=dict, repr=False)  # name ("X", "W", "B", "Z") -> array
    quant: dict = field(default_factory=dict, repr=False)   # QLinearPSConv: scales and zero points

    @property
    def residual(self) -> bool:
        return self.op == "PSConvAdd"

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        a = self.attrs
        (kh, kw), (sh, sw), (pt, pl, pb, pr) = a["kernel_shape"], a["strides"], a["pads"]
        return (self.n, a["out_channels"], (self.h + pt + pb - kh) // sh + 1, (self.w + pl + pr - kw) // sw + 1)

    @property
    def name(self) -> str:
        return f"c{self.index}"

    def describe(self) -> str:
        """One line: everything but the tensors (the seed and index rebuild those)."""
        a = self.attrs
        pats = a["patterns"]
        shown = str(pats) if len(pats) <= 8 else f"[{', '.join(map(str, pats[:8]))}, ... ({len(pats)})]"
        return (f"{self.op} N={self.n} C={a['in_channels']} H={self.h} W={self.w} M={a['out_channels']} "
                f"Y={list(self.output_shape)} kernel={a['kernel_shape']} strides={a['strides']} pads={a['pads']} "
                f"group={a['group']} P={len(pats)} patterns={shown} shift={a['shift']} "
                + (f"clip=({a['clip_min']}, {a['clip_max']}) " if "clip_min" in a else "")
                + f"bias={int(self.bias)} w_constant={int(self.w_constant)} "
                f"nonfinite={','.join(self.nonfinite) or '-'} omitted={','.join(self.omitted) or '-'} "
                f"shapes={'declared' if self.static_shapes else 'unknown'}")


def packed_length(kernel: list[int], patterns: list[int], shift: int, out_channels: int, cg: int) -> int:
    """len(W): popcount of patterns[(o + i + shift) mod P] over o in [0, M), i in [0, Cg)."""
    pop = [bin(p).count("1") for p in patterns]
    period = len(patterns)
    o = np.arange(out_channels)[:, None]
    i = np.arange(cg)[None, :]
    return int(np.asarray(pop)[(o + i + shift) % period].sum())


def _kernel_shape(rng: np.random.Generator) -> list[int]:
    roll = rng.random()
    if roll < 0.3:  # square, 3x3 most of all
        k = int(rng.choice([1, 2, 3, 3, 3, 4, 5, 6, 7]))
        return [k, k]
    if roll < 0.45:
        return [1, int(rng.integers(1, 64))]
    if roll < 0.6:
        return [int(rng.integers(1, 64)), 1]
    kh = int(rng.integers(1, 8))
    return [kh, int(rng.integers(1, 63 // kh + 1))]


def _pattern(rng: np.random.Generator, k2: int) -> int:
    roll = rng.random()
    count = k2 if roll < 0.15 else 1 if roll < 0.3 else int(rng.integers(1, k2 + 1))
    bits = rng.choice(k2, size=count, replace=False)
    return int(sum(1 << int(b) for b in bits))


def _channels(rng: np.random.Generator) -> tuple[int, int, int]:
    """(group, Cg, Mg)."""
    def size() -> int:
        return int(rng.integers(1, 9)) if rng.random() < 0.85 else int(rng.integers(9, 41))

    roll = rng.random()
    if roll < 0.55:
        return 1, size(), size()
    if roll < 0.75:  # depthwise: group == C, channel multiplier 1 (M == C) or 2
        return int(rng.integers(1, 25)), 1, int(rng.choice([1, 1, 2]))
    return int(rng.integers(2, 7)), size(), size()


def _activation(rng: np.random.Generator) -> tuple[float, float]:
    roll = rng.random()
    a, b = sorted(float(v) for v in np.round(rng.normal(0.0, 2.0, 2), 3))
    if roll < 0.3:
        return -math.inf, math.inf
    if roll < 0.55:
        return 0.0, math.inf  # Relu
    if roll < 0.8:
        return a, b if b > a else a + 1.0
    if roll < 0.87:
        return a, a  # a constant, except where T is NaN
    if roll < 0.94:
        return -math.inf, b
    return (a if a != 0.0 else -1.0), math.inf


def _geometry(rng: np.random.Generator, kernel: list[int]) -> tuple[list[int], list[int], int, int]:
    """(strides, pads, H, W) for an output of 1 to 20 pixels per side, or rarely a huge padding
    or stride (the output then grows to what the padding gives)."""
    large = rng.random() < 0.03
    strides = [int(rng.choice([1, 1, 2, 2, 3, 4])) for _ in range(2)]
    pads = [int(rng.choice([0, 0, 0, 1, 1, 2, 3])) for _ in range(4)]
    if large:
        for d in range(2):
            if rng.random() < 0.6:
                strides[d] = int(rng.choice([5, 8, 16, 33, 64]))
        for d in range(4):
            if rng.random() < 0.5:
                pads[d] = int(rng.choice([17, 100, 513, 1024]))
    wide = rng.random() < 0.1  # rows as wide as MobileNet's (many 8-pixel tiles per row)
    size = []
    for d in range(2):
        out = int(rng.integers(1, 21)) if d == 0 or not wide else int(rng.integers(21, 120))
        k, s, p = kernel[d], strides[d], pads[d] + pads[d + 2]
        size.append(max(1, (out - 1) * s + k - p + int(rng.integers(0, s))))
    return strides, pads, size[0], size[1]


def _fits(attrs: dict, n: int, h: int, w: int) -> bool:
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = attrs["kernel_shape"], attrs["strides"], attrs["pads"]
    hp, wp = h + pt + pb, w + pl + pr
    if hp < kh or wp < kw:
        return False
    oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    c, m, g = attrs["in_channels"], attrs["out_channels"], attrs["group"]
    k2 = kh * kw
    n1 = max(n, 1)
    return (n1 * m * oh * ow * (c // g) * k2 <= MAX_MACS and n1 * c * hp * wp <= MAX_PADDED
            and n1 * m * oh * ow <= MAX_OUTPUT and g * len(attrs["patterns"]) * 6 * (c // g) * k2 <= MAX_PACKED_A)


def _sprinkle(rng: np.random.Generator, a: np.ndarray) -> None:
    if a.size == 0:
        return
    count = int(rng.integers(1, max(2, a.size // 50) + 1))
    flat = a.reshape(-1)
    flat[rng.integers(0, a.size, count)] = rng.choice(np.array([np.nan, np.inf, -np.inf], np.float32), count)


def generate(seed: int, index: int) -> Case:
    """Valid case `index` of run `seed`."""
    rng = np.random.default_rng([seed, index])
    for _ in range(100):
        kernel = _kernel_shape(rng)
        k2 = kernel[0] * kernel[1]
        group, cg, mg = _channels(rng)
        roll = rng.random()
        period = (int(rng.integers(1, 5)) if roll < 0.55 else int(rng.integers(5, 17)) if roll < 0.85
                  else int(rng.integers(17, 65)) if roll < 0.97 else int(rng.integers(65, 257)))
        patterns = [_pattern(rng, k2) for _ in range(period)]
        strides, pads, h, w = _geometry(rng, kernel)
        clip_min, clip_max = _activation(rng)
        attrs = {"kernel_shape": kernel, "strides": strides, "pads": pads, "dilations": [1, 1], "group": group,
                 "in_channels": group * cg, "out_channels": group * mg, "patterns": patterns,
                 "shift": int(rng.integers(0, period)), "clip_min": clip_min, "clip_max": clip_max}
        n = int(rng.choice([0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3]))
        if _fits(attrs, n, h, w):
            break
    else:  # pragma: no cover - the draws above fit far more often than that
        raise RuntimeError(f"case {seed}:{index}: no draw fits the size bounds")
    residual = bool(rng.random() < 0.4)
    bias = bool(rng.random() < 0.7)
    omitted: tuple[str, ...] = ()
    if rng.random() < 0.25:  # rely on the contract's defaults for some of them
        omitted = tuple(k for k, v in OPTIONAL_DEFAULTS.items() if attrs[k] == v and rng.random() < 0.6)
    nonfinite: tuple[str, ...] = ()
    if rng.random() < 0.15:
        # Weights only without padding: onnxruntime's Conv skips padded taps, so 0 * Inf there
        # is 0 for it but NaN in IEEE arithmetic (and natively). The contract does not settle
        # it; real weights are finite.
        nonfinite = ("X",) + tuple(name for name, p in (("B", 0.2), ("Z", 0.3), ("W", 0.1))
                                   if rng.random() < p and (name != "B" or bias) and (name != "Z" or residual)
                                   and (name != "W" or not any(attrs["pads"])))
    case = Case(seed, index, "PSConvAdd" if residual else "PSConv", attrs, omitted, n, h, w, bias,
                w_constant=bool(rng.random() < 0.7), b_constant=bool(rng.random() < 0.5), nonfinite=nonfinite)
    length = packed_length(kernel, patterns, attrs["shift"], attrs["out_channels"], cg)
    case.inputs = {"X": rng.uniform(-2.0, 2.0, (n, attrs["in_channels"], h, w)).astype(np.float32),
                   "W": rng.standard_normal(length).astype(np.float32)}
    if bias:
        case.inputs["B"] = rng.standard_normal(attrs["out_channels"]).astype(np.float32)
    if residual:
        case.inputs["Z"] = rng.standard_normal(case.output_shape).astype(np.float32)
    for name in nonfinite:
        _sprinkle(rng, case.inputs[name])
    case.static_shapes = bool(rng.random() < 0.5)  # drawn last: the draws above do not depend on it
    return case


def generate_int8(seed: int, index: int) -> Case:
    """Valid int8 depthwise case `index` of run `seed` (group == C, multiplier 1 or 2: the
    native int8 depthwise kernel, qdwconv.h): the geometry and patterns of generate's draws,
    zero points at the ends and middle of the range, weights in [-64, 63] (onnxruntime's own
    QLinearConv, which the portable function calls, is exact there on every CPU)."""
    rng = np.random.default_rng([seed, index, 8])
    for _ in range(100):
        kernel = _kernel_shape(rng)
        c, mg = int(rng.integers(1, 41)), int(rng.choice([1, 1, 2]))
        period = int(rng.integers(1, 5)) if rng.random() < 0.7 else int(rng.integers(5, 17))
        patterns = [_pattern(rng, kernel[0] * kernel[1]) for _ in range(period)]
        strides, pads, h, w = _geometry(rng, kernel)
        attrs = {"kernel_shape": kernel, "strides": strides, "pads": pads, "dilations": [1, 1], "group": c,
                 "in_channels": c, "out_channels": c * mg, "patterns": patterns, "shift": int(rng.integers(0, period))}
        n = int(rng.choice([1, 1, 1, 2, 3]))
        if _fits(attrs, n, h, w):
            break
    else:  # pragma: no cover
        raise RuntimeError(f"case {seed}:{index}: no draw fits the size bounds")
    m, bias = c * mg, bool(rng.random() < 0.7)
    zero_points = [0, 128, 255, int(rng.integers(0, 256))]
    case = Case(seed, index, "QLinearPSConv", attrs, (), n, h, w, bias, w_constant=bool(rng.random() < 0.7),
                b_constant=True, nonfinite=())
    length = packed_length(kernel, patterns, attrs["shift"], m, 1)
    case.inputs = {"X": rng.integers(0, 256, (n, c, h, w)).astype(np.uint8),
                   "W": rng.integers(-64, 64, length).astype(np.int8)}
    if bias:
        case.inputs["B"] = rng.integers(-20000, 20000, m).astype(np.int32)
    w_scale = rng.uniform(0.002, 0.02, m if rng.random() < 0.7 else 1).astype(np.float32)
    case.quant = {"x_scale": np.array(rng.uniform(0.005, 0.05), np.float32),
                  "x_zero_point": np.array(zero_points[int(rng.integers(0, 4))], np.uint8), "w_scale": w_scale,
                  "y_scale": np.array(rng.uniform(0.02, 0.5) * 10.0 ** -rng.integers(0, 3), np.float32),
                  "y_zero_point": np.array(zero_points[int(rng.integers(0, 4))], np.uint8)}
    return case


def generate_valid(seed: int, index: int) -> Case:
    """Valid case `index` of run `seed`: every 8th an int8 depthwise one, the others fp32."""
    return generate_int8(seed, index) if index % 8 == 7 else generate(seed, index)


# ----------------------------------------------------------------------------------- models

def node_attributes(case: Case) -> dict:
    return {k: v for k, v in case.attrs.items() if k not in case.omitted}


def case_parts(case: Case, inputs: dict | None = None, attrs: dict | None = None, static_shapes: bool | None = None):
    """(node, graph inputs, initializers, feeds, output name) of one case, names prefixed by
    the case's name so that any number of cases share a graph (build_model). `inputs`, `attrs`
    and `static_shapes` override the case's own (the contract-violating cases use them)."""
    inputs = case.inputs if inputs is None else inputs
    attrs = node_attributes(case) if attrs is None else attrs
    static_shapes = case.static_shapes if static_shapes is None else static_shapes
    p = case.name + "_"
    if case.op == "QLinearPSConv":  # X and a run-time W are graph inputs, the rest initializers
        node_inputs = () if case.w_constant else ("W",)
        node, graph_inputs, inits, output = qlinear_models.qlinear_parts(
            attrs, {**case.quant, **{k: v for k, v in inputs.items() if k != "X"}}, node_inputs, p, case.name)
        return node, graph_inputs, inits, {p + k: inputs[k] for k in ("X", *node_inputs)}, output
    constants = {k: v for k, v in inputs.items() if {"W": case.w_constant, "B": case.b_constant}.get(k)}
    shapes = {k: [f"{p}N", *v.shape[1:]] if v.ndim == 4 else list(v.shape)  # the batch symbolic
              for k, v in inputs.items()} if static_shapes else None
    node, graph_inputs, inits, output = psconv_models.psconv_parts(
        attrs, residual=case.residual, bias="B" in inputs, constants=constants, shapes=shapes, prefix=p, name=case.name)
    return node, graph_inputs, inits, {p + k: v for k, v in inputs.items() if k not in constants}, output


def build_model(parts: list, portable: bool = False):
    """One graph (an onnx.ModelProto) holding the nodes of these case_parts; with the portable
    functions when `portable`, else only the native library can run it."""
    return psconv_models.graph_model([(node, gi, init, out) for node, gi, init, _, out in parts], portable)


# ----------------------------------------------------------------------------------- oracle

def dense_weights(case: Case, w: np.ndarray) -> np.ndarray:
    """Wd[M, Cg, KH, KW] per the contract, in float64: kernel (o, i) keeps the bits of
    patterns[(o + i + shift) mod P] and takes W's values in (o, i, p) order."""
    a = case.attrs
    kh, kw = a["kernel_shape"]
    m, cg, k2 = a["out_channels"], a["in_channels"] // a["group"], kh * kw
    pats = np.asarray(a["patterns"], dtype=np.int64)
    support = pats[(np.arange(m)[:, None] + np.arange(cg)[None, :] + a["shift"]) % len(pats)]
    keep = ((support[..., None] >> np.arange(k2)) & 1).astype(bool)  # [M, Cg, K2], row-major positions
    dense = np.zeros(keep.shape, np.float64)
    dense[keep] = w.astype(np.float64)  # boolean indexing walks (o, i, p) in C order: W's order
    return dense.reshape(m, cg, kh, kw)


def oracle(case: Case) -> tuple[np.ndarray, np.ndarray | None, int]:
    """(Y in float64 with IEEE NaN/Inf semantics, the sum of |terms| of each output, terms per
    output): direct convolution over the taps of the dense masked kernel, so a masked tap that
    meets an Inf gives NaN (0 * Inf) exactly as Conv on Wd does. QLinearPSConv: (Y, None, 0),
    Y from exact int64 sums and MLAS's float32 requantization (qlinear_models)."""
    a = case.attrs
    if case.op == "QLinearPSConv":
        wd = dense_weights(case, case.inputs["W"]).astype(np.int64)
        acc = qlinear_models.accumulate(case.inputs["X"], wd, int(case.quant["x_zero_point"]), a)
        return qlinear_models.requantize(acc, case.inputs.get("B"), case.quant), None, 0
    kh, kw = a["kernel_shape"]
    sh, sw = a["strides"]
    pt, pl, pb, pr = a["pads"]
    g, m, c = a["group"], a["out_channels"], a["in_channels"]
    cg, mg = c // g, m // g
    n, _, h, w = case.inputs["X"].shape
    _, _, oh, ow = case.output_shape
    x = case.inputs["X"].astype(np.float64)
    wd = dense_weights(case, case.inputs["W"])
    total = np.zeros((n, g, mg, oh, ow))
    scale = np.zeros_like(total)
    for values, weights, out in ((x, wd, total), (np.abs(np.nan_to_num(x, nan=0, posinf=0, neginf=0)),
                                                 np.abs(np.nan_to_num(wd, nan=0, posinf=0, neginf=0)), scale)):
        padded = np.zeros((n, c, h + pt + pb, w + pl + pr))
        padded[:, :, pt:pt + h, pl:pl + w] = values
        xg = padded.reshape(n, g, cg, *padded.shape[2:])
        wg = weights.reshape(g, mg, cg, kh, kw)
        with np.errstate(invalid="ignore", over="ignore"):
            for i in range(kh):
                for j in range(kw):
                    window = xg[:, :, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
                    out += np.einsum("gmc,ngcyx->ngmyx", wg[:, :, :, i, j], window)
    total = total.reshape(n, m, oh, ow)
    scale = scale.reshape(n, m, oh, ow)
    with np.errstate(invalid="ignore", over="ignore"):
        for key in ("B", "Z"):
            if key in case.inputs:
                v = case.inputs[key].astype(np.float64)
                v = v.reshape(1, m, 1, 1) if key == "B" else v
                total = total + v
                scale = scale + np.abs(np.nan_to_num(v, nan=0, posinf=0, neginf=0))
        y = np.clip(total, a["clip_min"], a["clip_max"])  # NaN stays NaN
    return y, scale, cg * kh * kw + 2


def compare(got: np.ndarray, want: np.ndarray, scale: np.ndarray | None, terms: int,
            exact: bool = True) -> tuple[str, str] | None:
    """None when got (float32) is want (float64) within float32 rounding, else (kind, detail).
    NaN where want has NaN and nowhere else; +-Inf exactly; finite values within the
    worst-case error of a float32 sum of `terms` terms in any order, 2 (terms + 1) u sum|term|.
    uint8 (QLinearPSConv, scale None): equal when `exact`, else within 1 (the contract's bound
    for implementations other than the native kernel, which meets QLinearConv exactly)."""
    if got.shape != want.shape:
        return "shape", f"shape {list(got.shape)}, expected {list(want.shape)}"
    got64 = got.astype(np.float64)
    if scale is None:
        bad = np.abs(got64 - want) > (0 if exact else 1)
        if got.dtype != np.uint8:
            return "dtype", f"dtype {got.dtype}, expected uint8"
        if not bad.any():
            return None
        where = tuple(int(v) for v in np.argwhere(bad)[0])
        return "value", (f"{int(bad.sum())} of {bad.size} outputs differ, first at {list(where)}: "
                         f"{int(got64[where])}, expected {int(want[where])}")
    nan_got, nan_want = np.isnan(got64), np.isnan(want)
    bad = nan_got != nan_want
    kind = "nan"
    if not bad.any():
        inf = np.isinf(got64) | np.isinf(want)
        bad = inf & (got64 != want)
        kind = "inf"
        if not bad.any():
            u = 2.0 ** -24
            tol = 2 * (terms + 1) * u * scale + u * np.abs(np.nan_to_num(want, posinf=0, neginf=0)) + 1e-30
            with np.errstate(invalid="ignore"):
                bad = ~nan_want & ~inf & ~(np.abs(got64 - want) <= tol)
            kind = "value"
            if not bad.any():
                return None
    where = tuple(int(v) for v in np.argwhere(bad)[0])
    return kind, (f"{int(bad.sum())} of {bad.size} outputs differ, first at {list(where)}: "
                  f"{float(got64[where])}, expected {float(want[where])}")


# ----------------------------------------------------------------------------------- running

def error_text(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def run_job(job: dict, library: str | None = None, threads: int = 1) -> dict:
    """One model in onnxruntime, with the native library registered when given:
    {"load_error": text} or {"runs": [{"outputs": [...]} or {"error": text}, one per feeds]}.
    job: {"model": bytes, "feeds": [dict, ...], "outputs": [names] or None}."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # the expected rejections would flood stderr
    if library:
        options.register_custom_ops_library(library)
    try:
        session = ort.InferenceSession(job["model"], options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - any rejection is an outcome
        return {"load_error": error_text(exc)}
    runs = []
    for feeds in job["feeds"]:
        try:
            runs.append({"outputs": session.run(job.get("outputs"), feeds)})
        except Exception as exc:  # noqa: BLE001
            runs.append({"error": error_text(exc)})
    return {"runs": runs}


def native_cpu_path(library: str) -> str:
    """The microkernel path the library picks in this process (PSCOMPRESS_KERNEL is read once)."""
    import ctypes

    lib = ctypes.CDLL(library)
    lib.pscompress_cpu_path.restype = ctypes.c_char_p
    return lib.pscompress_cpu_path().decode()
