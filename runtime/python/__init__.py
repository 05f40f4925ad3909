"""The native PSConv kernel library's loader. Installed as pscompress.runtime; needs no PyTorch.

    from pscompress import runtime
    sess = runtime.create_session("model.onnx", threads=2)   # native kernels when built

The library (libpscompress_ort.so) registers the ``ai.pscompress`` operators PSConv and
PSConvAdd with onnxruntime; without it, exported models still run through their portable
ONNX functions. ``PSCOMPRESS_LIBRARY`` overrides where the library is looked for.
"""
from __future__ import annotations

import ctypes
import functools
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from pscompress.core.errors import UserError

if TYPE_CHECKING:
    import onnxruntime

__all__ = ["library_path", "native_available", "native_library", "cpu_path", "session_options", "create_session", "onnxruntime_errors",
           "first_line"]

LIBRARY_NAME = "libpscompress_ort.so"


def library_path() -> Path | None:
    """The built kernel library, or None when it was not built for this install."""
    override = os.environ.get("PSCOMPRESS_LIBRARY")
    # Absolute, so that the file checked here is the file dlopen loads: given a bare name
    # ("x.so", which is what Path("./x.so") prints as) dlopen searches the library path instead.
    path = Path(override).expanduser().resolve() if override else Path(__file__).with_name(LIBRARY_NAME)
    return path if path.is_file() else None


def native_available() -> bool:
    """Whether the native kernel library is present."""
    return library_path() is not None


@functools.lru_cache(maxsize=None)
def _cpu_path(path: str) -> str:
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return "unavailable"
    lib.pscompress_cpu_path.restype = ctypes.c_char_p
    return lib.pscompress_cpu_path().decode()


def cpu_path() -> str:
    """The microkernel path the library picked for this CPU ("avx512-vnni", "avx-vnni", "avx2-fma", "neon", "scalar", ...), or "unavailable"."""
    path = library_path()
    return _cpu_path(str(path)) if path else "unavailable"


def _ort_supports_library(version: str) -> bool:
    """The library is built against the onnxruntime 1.21 API (ORT_API_VERSION 21)."""
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return True  # a development build: let onnxruntime decide
    return (major, minor) >= (1, 21)


def native_library(native: bool | None = None) -> Path | None:
    """The kernel library a session registers, or None when it runs the portable functions.

    The one place that decides: native=None uses the library when it is built and this
    onnxruntime can load it, True requires it (UserError otherwise), False leaves it out.
    """
    import onnxruntime

    if native is False:
        return None
    path = library_path()
    if native and path is None:
        raise UserError(
            "the native PSConv kernel library is not built for this install "
            "(reinstall pscompress with a C++ compiler and cmake, see docs/runtime.md)"
        )
    if path is not None and not _ort_supports_library(onnxruntime.__version__):
        if native:
            raise UserError(f"the native PSConv kernels need onnxruntime >= 1.21 (found {onnxruntime.__version__})")
        return None  # older onnxruntime: the models' portable functions still run
    return path


def session_options(threads: int | None = None, native: bool | None = None) -> "onnxruntime.SessionOptions":
    """onnxruntime session options with the native kernels registered.

    threads: intra-op threads (None: onnxruntime's default). native: None registers the
    library when it is available, True requires it, False leaves it out (portable path).
    """
    import onnxruntime

    if threads is not None and threads < 1:
        raise UserError(f"threads must be >= 1, got {threads}")
    options = onnxruntime.SessionOptions()
    # Errors reach the caller as exceptions (create_session and pscompress.board.onnx_predictor turn them
    # into one-line UserErrors); onnxruntime's logger would print each one to stderr first.
    options.log_severity_level = 4  # fatal only
    if threads is not None:
        options.intra_op_num_threads = threads
    path = native_library(native)
    if path is not None:
        options.register_custom_ops_library(str(path))
    return options


def create_session(
    model: str | os.PathLike | bytes, threads: int | None = None, native: bool | None = None
) -> "onnxruntime.InferenceSession":
    """An onnxruntime CPU session for an exported model (a path or serialized bytes)."""
    import onnxruntime

    if not isinstance(model, bytes):
        if not Path(model).is_file():
            raise UserError(f"model file {model} does not exist")
        model = str(model)
    try:
        return onnxruntime.InferenceSession(
            model, sess_options=session_options(threads, native), providers=["CPUExecutionProvider"]
        )
    except onnxruntime_errors() as exc:  # the native kernels reject bad attributes here (RuntimeException)
        raise UserError(f"onnxruntime cannot load the model: {first_line(exc)}") from exc


@functools.lru_cache(maxsize=None)
def onnxruntime_errors() -> tuple[type[Exception], ...]:
    """Every exception type onnxruntime raises for a model it cannot load or run (Fail, InvalidGraph,
    RuntimeException, ...): they derive from Exception only, so they must be named."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return tuple(c for c in vars(state).values() if isinstance(c, type) and issubclass(c, Exception)) + (RuntimeError,)


def first_line(exc: BaseException) -> str:
    """The first line of an onnxruntime error, without its "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION :" prefix."""
    text = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
    return re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
