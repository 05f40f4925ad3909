"""Every subcommand's --help, and the light (torch-free) install's command list."""
from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from pscompress.cli import _COMMANDS, cli

# Runs the CLI as the board's light install sees it: importing torch fails.
LIGHT = "import sys; sys.modules['torch'] = None; from pscompress.cli import main; sys.argv[0] = 'pscompress'; main()"


@pytest.mark.parametrize("name", sorted(_COMMANDS))
def test_every_subcommand_has_help(name: str) -> None:
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: cli {name} ") and "Options:" in result.output
    assert "--help" in result.output


def light(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LIGHT, *args], capture_output=True, text=True, timeout=120)


def test_light_install_help_names_the_workstation_commands() -> None:
    done = light("--help")
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines()[1:] if line.startswith("  ")}
    for name in ("convert", "finetune", "export"):
        assert lines[name].endswith("[workstation]")
    for name in ("info", "run", "eval", "check"):
        assert "workstation" not in lines[name]
    assert "pip install 'pscompress[workstation]'" in " ".join(done.stdout.split())


@pytest.mark.parametrize("name", ["convert", "finetune", "export"])
def test_light_install_workstation_command_is_one_line(name: str) -> None:
    done = light(name, "model.pt")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("Error: ") and "pscompress[workstation]" in done.stderr


def test_arch_help_lists_exactly_the_built_in_architectures() -> None:
    from pscompress.workstation.archs import ARCHITECTURES

    for name in ("convert", "finetune", "export"):
        text = " ".join(CliRunner().invoke(cli, [name, "--help"]).output.split())
        assert f"Architecture of a bare state dict: {', '.join(ARCHITECTURES)}." in text, name
