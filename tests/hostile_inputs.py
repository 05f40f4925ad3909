"""A corpus of hostile input files for the CLI, built small on disk in a folder.

Everything here is what an attacker (or an unlucky user) can hand `pscompress`: checkpoints
with malformed fields, ONNX models with malformed PSConv attributes or metadata, images,
arrays and archives whose headers promise gigabytes. The bombs are real (they do inflate to
what they claim) but are a few megabytes on disk: deflate streams of zeros are built by
repeating one compressed block instead of compressing gigabytes.
"""
from __future__ import annotations

import json
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

GiB, MiB = 1 << 30, 1 << 20
CLASSES = ["a", "b", "c"]
INPUT_SHAPE = [1, 8, 8]


# --- deflate, zip and PNG by hand --------------------------------------------------------

def deflate_zeros(count: int, prefix: bytes = b"") -> bytes:
    """A raw deflate stream of ``prefix`` then ``count`` zero bytes, about count / 1000 bytes long.

    Every block ends with a full flush, which resets the compressor: the block for a MiB of
    zeros is then the same wherever it stands, and is compressed once.
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = compressor.compress(prefix) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(bytes(MiB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    full, rest = divmod(count, MiB)
    return head + block * full + compressor.compress(bytes(rest)) + compressor.flush(zlib.Z_FINISH)


def crc32_zeros(count: int, prefix: bytes = b"") -> int:
    crc, chunk = zlib.crc32(prefix), bytes(64 * MiB)
    for _ in range(count // len(chunk)):
        crc = zlib.crc32(chunk, crc)
    return zlib.crc32(bytes(count % len(chunk)), crc)


def write_zip(path: Path, members: list[tuple[str, bytes, int, int, int]]) -> None:
    """A zip archive of (name, stored bytes, method, crc32, uncompressed size) members (no zip64)."""
    local, central = bytearray(), bytearray()
    for name, data, method, crc, size in members:
        encoded = name.encode()
        fields = struct.pack("<HHHHHIIIHH", 20, 0, method, 0, 0x21, crc, len(data), size, len(encoded), 0)
        central += struct.pack("<IH", 0x02014B50, 20) + fields + struct.pack("<HHHII", 0, 0, 0, 0, len(local)) + encoded
        local += struct.pack("<I", 0x04034B50) + fields + encoded + data
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(local), 0)
    path.write_bytes(bytes(local + central + end))


def zero_member(name: str, count: int, prefix: bytes = b"") -> tuple[str, bytes, int, int, int]:
    """A deflated member holding ``prefix`` and ``count`` zeros."""
    return name, deflate_zeros(count, prefix), zipfile.ZIP_DEFLATED, crc32_zeros(count, prefix), len(prefix) + count


def npy_header(shape: tuple[int, ...], dtype: str = "|u1") -> bytes:
    """The .npy (version 1.0) header of an array, as numpy writes it."""
    text = repr({"descr": dtype, "fortran_order": False, "shape": tuple(shape)}).encode()
    pad = 64 - (10 + len(text) + 1) % 64
    text += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text


def write_png(path: Path, width: int, height: int, pixel_data: bool = True) -> None:
    """A black grayscale PNG of width x height (real pixel data unless ``pixel_data`` is False)."""
    raw = (width + 1) * height  # a filter byte and the pixels of every row: all zeros
    if pixel_data:
        adler = ((raw % 65521) << 16) | 1  # adler32 of zeros
        idat = b"\x78\xda" + deflate_zeros(raw) + struct.pack(">I", adler)
    else:
        idat = zlib.compress(bytes(width + 1))  # one row: the header is what matters

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


# --- checkpoints ------------------------------------------------------------------------

def checkpoint_dict() -> dict:
    """A valid pscompress checkpoint (ResNet-20, one channel, 3 classes, 8x8 input, one pSConv layer)."""
    import torch

    from pscompress.workstation.archs import build
    from pscompress.workstation.checkpoint import FORMAT, VERSION
    from pscompress.workstation.surgery import replace_module
    from pscompress.workstation.layers import PSConv2d
    from pscompress.core.patterns import parse_pattern

    torch.manual_seed(0)
    module = build("resnet20", in_channels=1, num_classes=len(CLASSES))
    replace_module(module, "layers.0.conv1",
                   PSConv2d.from_conv(module.get_submodule("layers.0.conv1"), parse_pattern("4of9"), 1))
    return {"format": FORMAT, "version": VERSION, "arch": "resnet20",
            "arch_kwargs": {"in_channels": 1, "num_classes": len(CLASSES)},
            "state_dict": module.state_dict(), "meta": {"input_shape": list(INPUT_SHAPE), "classes": list(CLASSES)}}


def _extra(state: dict) -> dict:
    return state["layers.0.conv1._extra_state"]


def _nan(state: dict) -> dict:
    return {k: v.float().fill_(float("nan")) if hasattr(v, "is_floating_point") and v.is_floating_point() else v
            for k, v in state.items()}


# name -> change to a valid checkpoint dict (returns the object to save)
CHECKPOINTS = {
    "ckpt-unknown-kwarg": lambda c: {**c, "arch_kwargs": {**c["arch_kwargs"], "depth": 56}},
    "ckpt-negative-channels": lambda c: {**c, "arch_kwargs": {**c["arch_kwargs"], "in_channels": -3}},
    "ckpt-huge-classes": lambda c: {**c, "arch_kwargs": {**c["arch_kwargs"], "num_classes": 4_000_000_000}},
    "ckpt-float-classes": lambda c: {**c, "arch_kwargs": {**c["arch_kwargs"], "num_classes": 4e9}},
    "ckpt-kwargs-list": lambda c: {**c, "arch_kwargs": [1, 3]},
    "ckpt-meta-string": lambda c: {**c, "meta": "input_shape"},
    "ckpt-state-list": lambda c: {**c, "state_dict": [1, 2, 3]},
    "ckpt-no-state-dict": lambda c: {k: v for k, v in c.items() if k != "state_dict"},
    "ckpt-arch-list": lambda c: {**c, "arch": ["resnet20"]},
    "ckpt-input-shape-abc": lambda c: {**c, "meta": {**c["meta"], "input_shape": "abc"}},
    "ckpt-input-shape-huge": lambda c: {**c, "meta": {**c["meta"], "input_shape": [1, 100000, 100000]}},
    "ckpt-input-shape-negative": lambda c: {**c, "meta": {**c["meta"], "input_shape": [1, -8, 8]}},
    "ckpt-classes-int": lambda c: {**c, "meta": {**c["meta"], "classes": 5}},
    "ckpt-shift-x": lambda c: (_extra(c["state_dict"]).update(shift="x"), c)[1],
    "ckpt-shift-99": lambda c: (_extra(c["state_dict"]).update(shift=99), c)[1],
    "ckpt-kernel-size-text": lambda c: (_extra(c["state_dict"]).update(kernel_size="3x3"), c)[1],
    "ckpt-kernel-size-1x1": lambda c: (_extra(c["state_dict"]).update(kernel_size=[1, 1], patterns=[1], shift=0), c)[1],
    "ckpt-kernel-size-huge": lambda c: (_extra(c["state_dict"]).update(kernel_size=[100000, 100000]), c)[1],
    "ckpt-patterns-zero": lambda c: (_extra(c["state_dict"]).update(patterns=[0]), c)[1],
    "ckpt-patterns-text": lambda c: (_extra(c["state_dict"]).update(patterns="4of9"), c)[1],
    "ckpt-extra-no-shift": lambda c: (_extra(c["state_dict"]).pop("shift"), c)[1],
    "ckpt-nan": lambda c: {**c, "state_dict": _nan(c["state_dict"])},
}


def write_checkpoints(folder: Path) -> None:
    import torch

    for name, change in CHECKPOINTS.items():
        torch.save(change(checkpoint_dict()), folder / f"{name}.pt")
    torch.save(checkpoint_dict(), folder / "good.pt")
    torch.save(_nan(checkpoint_dict()["state_dict"]), folder / "nan-state.pt")  # a bare state dict
    # A torch.save archive whose pickle inflates to 3 GiB (over the 2 GB the tests allow), and one
    # of 256 MiB: under the size limit, but compressed 1000:1.
    for name, size in (("pt-bomb", 3 * GiB), ("pt-bomb-ratio", 256 * MiB)):
        write_zip(folder / f"{name}.pt", [("archive/version", b"3\n", 0, zlib.crc32(b"3\n"), 2),
                                          zero_member("archive/data.pkl", size, b"\x80\x02")])


# --- ONNX models ------------------------------------------------------------------------

PSCONV_ATTRIBUTES = {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1],
                     "group": 1, "in_channels": 1, "out_channels": 4, "patterns": [27, 54, 216, 432], "shift": 0,
                     "clip_min": 0.0, "clip_max": float("inf")}


def onnx_model(attributes: dict | None = None, metadata: dict | None = None, input_dims=("batch", 1, 8, 8),
               packed: int = 16):
    """A valid one-PSConv classifier (PSConv -> Flatten -> Gemm) with the portable functions."""
    import onnx
    from onnx import helper, numpy_helper

    from pscompress.exporters import psconv_onnx

    attributes = dict(PSCONV_ATTRIBUTES if attributes is None else attributes)
    metadata = {"input_shape": INPUT_SHAPE, "classes": CLASSES} if metadata is None else metadata
    rng = np.random.default_rng(0)
    weights = {"w": rng.standard_normal(packed), "b": np.zeros(4), "fc.weight": rng.standard_normal((3, 256)),
               "fc.bias": np.zeros(3)}
    nodes = [helper.make_node("PSConv", ["input", "w", "b"], ["h"], name="conv", domain=psconv_onnx.DOMAIN,
                              **attributes),
             helper.make_node("Flatten", ["h"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(
        nodes, "hostile", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, list(input_dims))],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v)
                                                    for d, v in psconv_onnx.opset_imports().items()],
                              functions=psconv_onnx.fallback_functions(), ir_version=8)
    for key, value in metadata.items():
        model.metadata_props.add(key=f"pscompress.{key}", value=value if isinstance(value, str) else json.dumps(value))
    return model


def _attributes(**change) -> dict:
    out = {**PSCONV_ATTRIBUTES, **change}
    return {k: v for k, v in out.items() if v is not None}


# name -> keyword arguments of onnx_model
ONNX_MODELS = {
    "onnx-group-0": dict(attributes=_attributes(group=0)),
    "onnx-out-channels-0": dict(attributes=_attributes(out_channels=0)),
    "onnx-no-kernel-shape": dict(attributes=_attributes(kernel_shape=None)),
    "onnx-no-patterns": dict(attributes=_attributes(patterns=None)),
    "onnx-float-kernel-shape": dict(attributes=_attributes(kernel_shape=[3.0, 3.0])),
    "onnx-kernel-shape-3": dict(attributes=_attributes(kernel_shape=[3, 3, 3])),
    "onnx-meta-input-huge": dict(metadata={"input_shape": [1, 60000, 60000], "classes": CLASSES}),
    "onnx-meta-input-abc": dict(metadata={"input_shape": "abc", "classes": CLASSES}),
    "onnx-meta-input-negative": dict(metadata={"input_shape": [1, -8, 8], "classes": CLASSES}),
    "onnx-meta-classes-5": dict(metadata={"input_shape": INPUT_SHAPE, "classes": 5}),
    # No metadata: the graph's own input size is what a runner would trust.
    "onnx-graph-input-huge": dict(metadata={}, input_dims=("batch", 1, 60000, 60000)),
    # Loads (attributes are valid, the input's channels symbolic), rejected when run: PSConv takes
    # 2 channels, the metadata (and the data) 1.
    "onnx-run-rejected": dict(attributes=_attributes(in_channels=2), input_dims=("batch", "channels", 8, 8), packed=32),
}


def write_onnx_models(folder: Path) -> None:
    import onnx

    for name, kwargs in {"good": {}, **ONNX_MODELS}.items():
        onnx.save(onnx_model(**kwargs), folder / f"{name}.onnx")


# --- arrays, data sets and images -------------------------------------------------------

def write_arrays_and_images(folder: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, *INPUT_SHAPE), dtype=np.uint8)
    y = np.arange(6) % len(CLASSES)
    np.savez(folder / "good.npz", x=x, y=y, classes=np.array(CLASSES))
    np.save(folder / "good.npy", x[:1])
    # Data sets (--data)
    np.savez(folder / "data-object.npz", x=np.array([[1], "two"], dtype=object), y=y)
    write_zip(folder / "data-bomb.npz", [zero_member("x.npy", 3 * GiB, npy_header((3 * GiB // 64, 1, 8, 8))),
                                         ("y.npy", _npy_bytes(y), 0, zlib.crc32(_npy_bytes(y)), len(_npy_bytes(y)))])
    lie = npy_header((1 << 40, 1, 8, 8))  # a stored member whose header promises 64 TiB
    write_zip(folder / "data-header-lie.npz", [("x.npy", lie, 0, zlib.crc32(lie), len(lie)),
                                               ("y.npy", _npy_bytes(y), 0, zlib.crc32(_npy_bytes(y)), len(_npy_bytes(y)))])
    for label in CLASSES[:2]:
        (folder / "data-png-bomb" / label).mkdir(parents=True)
        write_png(folder / "data-png-bomb" / label / "0.png", 20000, 20000, pixel_data=False)
    # Inputs (run -i)
    (folder / "npz-as.npy").write_bytes((folder / "good.npz").read_bytes())
    np.save(folder / "object.npy", np.array([1, "two"], dtype=object), allow_pickle=True)
    (folder / "header-lie.npy").write_bytes(npy_header((1 << 40, 1, 8, 8), "<f4"))
    write_png(folder / "png-header-20000.png", 20000, 20000, pixel_data=False)
    write_png(folder / "png-13000.png", 13000, 13000)


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def build_corpus(folder: Path) -> Path:
    """Write every hostile input (and the valid ones they are variants of) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    write_checkpoints(folder)
    write_onnx_models(folder)
    write_arrays_and_images(folder)
    return folder


# --- running the CLI on many inputs in one process ---------------------------------------

def run_cases(cases: list[dict], out_root: Path) -> list[dict]:
    """Run ``pscompress ARGS`` for each case in this process, as the console script would.

    File descriptors 1 and 2 are redirected per case, so what native libraries print (such
    as onnxruntime's logger) is captured with the rest. Each case writes into its own empty
    ``out_root/<id>`` folder; the result lists what is left in it afterwards.
    """
    import os
    import sys
    import tempfile
    import traceback

    from pscompress.cli import main

    results = []
    for case in cases:
        out = out_root / case["id"]
        out.mkdir(parents=True)
        argv = [a.replace("{out}", str(out)) for a in case["args"]]
        streams = {fd: tempfile.TemporaryFile() for fd in (1, 2)}
        saved = {fd: os.dup(fd) for fd in streams}
        sys.stdout.flush(), sys.stderr.flush()
        for fd, stream in streams.items():
            os.dup2(stream.fileno(), fd)
        sys.argv = ["pscompress", *argv]
        try:
            main()
            status = 0
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # what the interpreter would do with an uncaught exception
            traceback.print_exc()
            status = 1
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            for fd in streams:
                os.dup2(saved[fd], fd)
                os.close(saved[fd])
        text = {}
        for fd, stream in streams.items():
            stream.seek(0)
            text[fd] = stream.read().decode(errors="replace")
            stream.close()
        results.append({"id": case["id"], "status": status, "stdout": text[1], "stderr": text[2],
                        "left": sorted(p.name for p in out.iterdir())})
    return results


if __name__ == "__main__":  # python hostile_inputs.py CASES.json RESULTS.json OUT_DIR
    import sys

    cases = json.loads(Path(sys.argv[1]).read_text())
    Path(sys.argv[2]).write_text(json.dumps(run_cases(cases, Path(sys.argv[3]))))
