"""pscompress.runtime: the loader other parts of the project (and boards without PyTorch) use."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

import psconv_models
from native_cases import expected_cpu_path
from pscompress import UserError, runtime


def psconv_bytes() -> bytes:
    """A bare PSConv node, Y = 2 X[:, 0] - X[:, 1], its optional attributes left out; no portable
    function, so only the library can run it."""
    attrs = {"kernel_shape": [1, 1], "in_channels": 2, "out_channels": 1, "patterns": [1]}
    w = np.array([2.0, -1.0], np.float32)
    return psconv_models.psconv_model(attrs, bias=False, constants={"W": w}).SerializeToString()


def test_imports_without_torch() -> None:
    code = "import sys, pscompress.runtime as r; r.cpu_path(); assert 'torch' not in sys.modules; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr


def test_built_library_is_found_and_reports_its_path() -> None:
    assert runtime.native_available(), "the install should have built the library (see docs/runtime.md)"
    assert runtime.library_path().name == "libpscompress_ort.so"
    assert runtime.cpu_path() == expected_cpu_path()


def test_create_session_runs_psconv_natively() -> None:
    x = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
    (y,) = runtime.create_session(psconv_bytes(), threads=1).run(None, {"X": x})
    np.testing.assert_allclose(y, 2.0 * x[:, :1] - x[:, 1:])


def test_without_native_the_custom_op_is_unknown() -> None:
    # This bare model has no portable function, so only the library can run it.
    with pytest.raises(UserError, match="cannot load"):
        runtime.create_session(psconv_bytes(), native=False)


def test_native_required_but_missing(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PSCOMPRESS_LIBRARY", str(tmp_path / "absent.so"))
    assert runtime.library_path() is None and not runtime.native_available()
    assert runtime.cpu_path() == "unavailable"
    with pytest.raises(UserError, match="not built"):
        runtime.session_options(native=True)
    assert isinstance(runtime.session_options(), ort.SessionOptions)  # None: quietly portable


def test_user_mistakes_are_user_errors(tmp_path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        runtime.create_session(tmp_path / "missing.onnx")
    with pytest.raises(UserError, match="threads"):
        runtime.session_options(threads=0)


def test_older_onnxruntime_falls_back_to_portable(monkeypatch) -> None:
    monkeypatch.setattr(ort, "__version__", "1.20.1")
    options = runtime.session_options()  # must not try to register the 1.21-API library
    # so a bare PSConv node is unknown to this session
    unknown = r"ai\.pscompress:PSConv\(.*\) is not a registered function/op"
    with pytest.raises(runtime.onnxruntime_errors(), match=unknown):
        ort.InferenceSession(psconv_bytes(), options, providers=["CPUExecutionProvider"])
    with pytest.raises(UserError, match="1.21"):
        runtime.session_options(native=True)


def test_relative_library_override_loads_that_file(monkeypatch, tmp_path) -> None:
    # Path("./copy.so") prints as "copy.so", which dlopen would look up on the library path.
    built = runtime.library_path()
    (tmp_path / "copy.so").write_bytes(built.read_bytes())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PSCOMPRESS_LIBRARY", "./copy.so")
    assert runtime.library_path() == tmp_path / "copy.so"
    x = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
    (y,) = runtime.create_session(psconv_bytes(), threads=1, native=True).run(None, {"X": x})
    np.testing.assert_allclose(y, 2.0 * x[:, :1] - x[:, 1:])
