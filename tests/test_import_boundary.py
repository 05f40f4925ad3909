"""The board side imports nothing that only the workstation extra installs.

A board has the base install (numpy, onnxruntime, Pillow, click, tqdm), so an import of torch,
the ONNX tooling or the workstation/exporter code in board-side code fails only there. The
sources are read (ast) rather than imported, so an import inside a function that no test calls
is caught too.

The board side reaches PyTorch in one place: pscompress.board.predictor.FORMATS holds the
*name* of pscompress.workstation.torch_predictor, imported with importlib only when a .pt/.pth
file is opened (which needs torch anyway); open_predictor turns a missing torch into a one-line
UserError naming the workstation extra. A name held in a table is no import, so this checker
lets it through; a literal ``importlib.import_module("torch")`` it does catch.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pscompress.cli import _WORKSTATION, workstation_modules

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_ROOTS = {"torch", "onnx", "onnxscript", "scipy", "tflite", "flatbuffers"}
FORBIDDEN_PACKAGES = ("pscompress.workstation", "pscompress.exporters")
DYNAMIC_IMPORTS = {"import_module", "__import__"}


def is_forbidden(name: str) -> bool:
    return name.split(".")[0] in FORBIDDEN_ROOTS or any(name == p or name.startswith(p + ".") for p in FORBIDDEN_PACKAGES)


def imported_names(tree: ast.AST, package: str):
    """(line, module name) of every import in the tree: statements anywhere, and dynamic imports of a literal name."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            yield node.lineno, module
            # `from pscompress import workstation` imports the subpackage
            yield from ((node.lineno, f"{module}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in DYNAMIC_IMPORTS:
                yield node.lineno, node.args[0].value


def forbidden_imports(source: str, package: str) -> list[str]:
    """'line: module' for each forbidden import; ``package`` resolves relative imports."""
    hits = {f"{line}: {name}" for line, name in imported_names(ast.parse(source), package) if is_forbidden(name)}
    return sorted(hits, key=lambda hit: (int(hit.split(":")[0]), hit))


def board_side_files() -> dict[Path, str]:
    """Every board-side source file and the package its relative imports are resolved against."""
    workstation_commands = {ROOT / (module.replace(".", "/") + ".py") for module in workstation_modules()}
    files = {ROOT / "pscompress" / "__init__.py": "pscompress"}
    for folder, package in (("pscompress/core", "pscompress.core"), ("pscompress/board", "pscompress.board"),
                            ("runtime/python", "pscompress.runtime"), ("pscompress/cli", "pscompress.cli")):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path not in workstation_commands:
                parts = path.relative_to(ROOT / folder).with_suffix("").parts[:-1]
                files[path] = ".".join((package, *parts))
    return files


FILES = board_side_files()


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_board_side_source_imports_no_workstation_module(path):
    assert forbidden_imports(path.read_text(), FILES[path]) == []


def test_the_board_side_is_what_the_cli_says():
    names = {str(p.relative_to(ROOT)) for p in FILES}
    board_commands = {f"pscompress/cli/commands/{name}.py" for name in ("run", "info", "eval", "check")}
    assert board_commands | {"pscompress/board/predictor.py", "runtime/python/__init__.py",
                             "pscompress/core/errors.py", "pscompress/cli/__init__.py"} <= names
    assert _WORKSTATION == {"convert", "finetune", "export", "quantize"}  # quantize needs onnx, a workstation package
    assert not names & {f"pscompress/cli/commands/{name}.py" for name in (*_WORKSTATION, "ladder_build")}
    assert "pscompress/cli/commands/ladder.py" in names  # ladder measure and plot are board commands


def test_the_checker_catches_every_kind_of_import():
    source = '''
import torch
import onnxruntime, tflite_runtime.interpreter
import scipy.sparse as sp
from pscompress.core.errors import UserError
from pscompress import runtime, exporters
from ..workstation import checkpoint
from .onnx_reader import read_onnx

def later(name):
    from onnx import helper
    import importlib
    importlib.import_module("flatbuffers")
    importlib.import_module(name)
    __import__("onnxscript")
    from pscompress.workstation.checkpoint import load_model
'''
    assert forbidden_imports(source, "pscompress.board") == [
        "2: torch", "4: scipy.sparse", "6: pscompress.exporters", "7: pscompress.workstation",
        "7: pscompress.workstation.checkpoint", "11: onnx", "11: onnx.helper", "13: flatbuffers", "15: onnxscript",
        "16: pscompress.workstation.checkpoint", "16: pscompress.workstation.checkpoint.load_model",
    ]


def test_a_pytorch_model_without_torch_names_the_workstation_extra(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"\0" * 16)
    np.savez(tmp_path / "data.npz", x=np.zeros((2, 28, 28), np.uint8), y=np.zeros(2, np.int64))
    code = ("import sys; sys.modules['torch'] = None; from pscompress.cli import main; "
            f"sys.argv = ['pscompress', 'eval', {str(tmp_path / 'model.pt')!r}, '--data', {str(tmp_path / 'data.npz')!r}]; "
            "main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("Error: model.pt: ") and done.stderr.count("\n") == 1
    assert "pip install 'pscompress[workstation]'" in done.stderr
