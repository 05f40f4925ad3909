"""Fixtures every test module may use: the one CLI runner; and a check that the tests run
against this checkout."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The PSConv model builder and the fuzzers live in runtime/tests/ (they also run as scripts there).
sys.path.insert(0, str(ROOT / "runtime" / "tests"))


def pytest_configure(config: pytest.Config) -> None:
    """Test this checkout, never another installed copy (docs/architecture.md, "Importing from a checkout")."""
    import pscompress
    import pscompress.exporters
    import pscompress.runtime

    for module, folder in ((pscompress, "pscompress"), (pscompress.exporters, "exporters"),
                           (pscompress.runtime, "runtime/python")):
        if Path(module.__file__).resolve().parent != ROOT / folder:
            raise pytest.UsageError(f"{module.__name__} comes from {Path(module.__file__).parent}, not this checkout's "
                                    f"{folder}/: run the tests in the environment scripts/bootstrap.sh makes")


class CliResult(NamedTuple):
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(capsys, monkeypatch) -> Callable[..., CliResult]:
    """``run_cli("convert", "m.pt", ...)`` runs ``pscompress ARGS`` in this process exactly as the
    console script does (user mistakes: one line, exit 2) and returns its status and output."""
    from pscompress.cli import main

    def run(*args: object) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["pscompress", *map(str, args)])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> Callable[..., tuple]:
    """``exported(arch, pattern, dense)``: (path, summary, model) of a test model's ONNX export, made once per session."""
    from export_models import export_model

    made: dict[tuple, tuple] = {}

    def get(arch: str = "resnet20", pattern: str | None = "4of9", dense: bool = False) -> tuple:
        key = (arch, pattern, dense)
        if key not in made:
            made[key] = export_model(tmp_path_factory.mktemp("export"), arch, pattern, dense)
        return made[key]

    return get
