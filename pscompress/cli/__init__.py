"""The ``pscompress`` command line.

Each subcommand lives in its own module under pscompress/cli/commands/ and is imported only
when it runs, so board-side commands (``run``, ``info``) never import PyTorch.
"""
from __future__ import annotations

import importlib
import importlib.util  # not imported by `import importlib`: on a light install nothing else loads it
import sys

import click

from pscompress.core.errors import UserError

# name -> (module, function, one-line help shown in ``pscompress --help``)
_COMMANDS = {
    "convert": ("pscompress.cli.commands.convert", "convert", "Replace eligible convolutions by pSConv layers."),
    "finetune": ("pscompress.cli.commands.finetune", "finetune", "Fine-tune a pSConv model with its masks fixed."),
    "export": ("pscompress.cli.commands.export", "export", "Export a model to ONNX or TFLite."),
    "quantize": ("pscompress.cli.commands.quantize", "quantize", "Quantize an exported ONNX model to int8 (sparse int8 pSConv)."),
    "info": ("pscompress.cli.commands.info", "info", "Describe an exported model: layers, density, size."),
    "tune": ("pscompress.cli.commands.tune", "tune", "Run each PSConv node natively or densely, whichever is faster here."),
    "run": ("pscompress.cli.commands.run", "run", "Run an exported model on an image or .npy file."),
    "eval": ("pscompress.cli.commands.eval", "eval_", "Measure a model's accuracy and latency on a data set."),
    "check": ("pscompress.cli.commands.check", "check", "Fail when accuracy, size or speed regress."),
    "ladder": ("pscompress.cli.commands.ladder", "ladder", "Build, measure and plot model ladders (run-time model choice)."),
}
# `pscompress ladder`'s subcommands that need PyTorch; its board-side ones live in its own module.
_LADDER_COMMANDS = {
    "build": ("pscompress.cli.commands.ladder_build", "build",
              "Build a ladder on the workstation: convert, fine-tune, export, tune and measure each rung."),
}
# The commands that need PyTorch, which only the workstation extra installs.
_WORKSTATION = {"convert", "finetune", "export", "quantize"}
_WORKSTATION_NOTE = "needs the workstation extra: pip install 'pscompress[workstation]'"


def workstation_modules() -> set[str]:
    """The modules of every command that needs PyTorch, subcommands included (for the import-boundary test)."""
    return {_COMMANDS[name][0] for name in _WORKSTATION} | {module for module, _, _ in _LADDER_COMMANDS.values()}


class LazyGroup(click.Group):
    """A group whose subcommands in ``lazy`` (name -> module, function, help) are imported on first use.

    Those named in ``workstation`` need PyTorch: on an install without it they are listed, marked,
    and asking for one is a one-line error naming the extra. Commands added directly work as in click.
    """

    def __init__(self, *args, lazy: dict[str, tuple[str, str, str]], workstation: set[str] = frozenset(),
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy, self.workstation = lazy, workstation

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(dict.fromkeys([*self.lazy, *super().list_commands(ctx)]))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.lazy:
            return super().get_command(ctx, name)
        if name in self.workstation and not _torch_installed():
            raise UserError(f"`{ctx.command_path} {name}` {_WORKSTATION_NOTE} (this install has no PyTorch)")
        module, attr, _ = self.lazy[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        light = not _torch_installed()
        rows = []
        for name in self.list_commands(ctx):
            help_ = self.lazy[name][2] if name in self.lazy else super().get_command(ctx, name).get_short_help_str(80)
            rows.append((name, help_ + (" [workstation]" if light and name in self.workstation else "")))
        with formatter.section("Commands"):
            formatter.write_dl(rows)
            if light and self.workstation:
                formatter.write_paragraph()
                formatter.write_text(f"This install has no PyTorch: each command marked [workstation] {_WORKSTATION_NOTE}.")


def _torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


@click.group(cls=LazyGroup, lazy=_COMMANDS, workstation=_WORKSTATION,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pscompress")
def cli() -> None:
    """Compress CNNs with periodic sparse convolutions (pSConv) and export them for edge boards.

    Typical flow: convert -> finetune -> export -> tune -> run / eval -> check.
    """


def main() -> None:
    """Entry point: user mistakes become one line on stderr and exit status 2."""
    try:
        cli.main(standalone_mode=False)
    except UserError as exc:
        click.echo(f"Error: {exc.for_cli()}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)

