"""Options several commands share, defined once so their names, types and help agree."""
from __future__ import annotations

from typing import Any, Callable

import click

from pscompress.core.arch_names import ARCHITECTURE_NAMES
from pscompress.core.errors import UserError

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

DATA_HELP = ("'fashion-mnist' (the Debian package dataset-fashion-mnist), an image folder DIR/<class>/*.png, "
             "or an .npz with x and y.")


def arch_option() -> Decorator:
    return click.option("--arch", metavar="NAME", callback=_known_arch,
                        help=f"Architecture of a bare state dict: {', '.join(ARCHITECTURE_NAMES)}.")


def _known_arch(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and value not in ARCHITECTURE_NAMES:
        raise UserError(f"unknown architecture {value!r}: choose one of {', '.join(ARCHITECTURE_NAMES)}")
    return value


def trust_pickle_option() -> Decorator:
    return click.option("--trust-pickle", is_flag=True,
                        help="Allow a .pt file that holds pickled Python objects (can run code: trusted files only).")


def input_shape_option(help_text: str) -> Decorator:
    return click.option("--input-shape", metavar="C,H,W", help=help_text)


def threads_option() -> Decorator:
    return click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N",
                        help="Intra-op threads for the runtime.  [default: the runtime's choice]")


def native_option() -> Decorator:
    return click.option("--native/--no-native", default=None,
                        help="ONNX only: require (--native) or never use (--no-native) the pSConv kernel library.  "
                             "[default: use it when installed]")


def measurement_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Options of ``eval`` and ``check``: how the data is read and the model is run."""
    options = [
        click.option("--split", type=click.Choice(["test", "train"]), default=None,
                     help="Which split of the data set to use.  [default: test]"),
        click.option("--limit", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Use only the first N images."),
        click.option("--batch-size", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Images per inference call; latency is reported per batch of this size.  [default: 100]"),
        native_option(),
        threads_option(),
        trust_pickle_option(),
        click.option("--output", "output", metavar="NAME",
                     help="The classifier output of a model with several (`pscompress info` lists them).  "
                          "[default: the model's only output]"),
    ]
    for option in reversed(options):
        command = option(command)
    return command
