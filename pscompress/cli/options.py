"""Options several commands share, defined once so their names, types and help agree."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from pscompress.core.arch_names import ARCHITECTURE_NAMES
from pscompress.core.errors import UserError

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

DATA_HELP = ("'fashion-mnist' (the Debian package dataset-fashion-mnist), an image folder DIR/<class>/*.png, "
             "or an .npz with x and y.")
CALIBRATION_HELP = "How many images (a seeded random sample of the split) set the activation ranges."


def calibration_options(scope: str = "", required: bool = True, default: int | None = 100) -> Decorator:
    """``--data SPEC`` (parameter ``spec``) and ``--calibration N``: the images an int8 file's activation
    ranges come from (``quantize``, ``export --int8``); ``scope`` begins both helps (who takes them)."""
    def add(command: Callable[..., Any]) -> Callable[..., Any]:
        command = click.option("--calibration", default=default, show_default=default is not None,
                               type=click.IntRange(min=1), metavar="N", help=scope + CALIBRATION_HELP)(command)
        return click.option("--data", "spec", required=required, metavar="SPEC",
                            help=f"{scope}Calibration images: {DATA_HELP}")(command)
    return add


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


MAX_CLASSES_FILE_BYTES = 4 << 20  # a class-name file: one name a line


def input_metadata_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Options of ``convert`` that record what the model takes (docs/convert.md, "Recording the input")."""
    options = [
        click.option("--classes", callback=_class_names, metavar="FILE|a,b,c",
                     help="Class names: a text file with one name a line, or a comma-separated list."),
        click.option("--mean", callback=_numbers, metavar="M1,M2,M3",
                     help="Per-channel mean subtracted from [0, 1] pixels, in the model's channel order "
                          "(e.g. 0.485,0.456,0.406).  [default: 0]"),
        click.option("--std", callback=_numbers, metavar="S1,S2,S3",
                     help="Per-channel standard deviation the pixels are divided by after --mean, on the same "
                          "[0, 1] scale (e.g. 0.229,0.224,0.225).  [default: 1]"),
        click.option("--channel-order", metavar="rgb|bgr",
                     help="The order of a 3-channel model's input channels.  [default: rgb]"),
        click.option("--resize", callback=_integer, metavar="N",
                     help="Scale an image's shorter side to N pixels, then crop its centre to the input's H x W.  "
                          "[default: stretch to H x W]"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _numbers(ctx: click.Context, param: click.Parameter, value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(part) for part in value.split(",")]
    except ValueError:
        raise UserError(f"--{param.name} takes comma-separated numbers such as 0.5,0.5,0.5, got {value!r}") from None


def _integer(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"--{param.name} takes an integer number of pixels, got {value!r}") from None


def _class_names(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    """--classes: the lines of an existing file (blank ones skipped), else the comma-separated names."""
    if value is None:
        return None
    path = Path(value)
    if path.is_file():
        if path.stat().st_size > MAX_CLASSES_FILE_BYTES:
            raise UserError(f"--classes {path}: {path.stat().st_size:,} bytes, more than a class-name file needs "
                            f"({MAX_CLASSES_FILE_BYTES:,} at most)")
        try:
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"--classes {path}: cannot read it as UTF-8 text ({exc.__class__.__name__})") from exc
    else:
        names = [name.strip() for name in value.split(",")]
    if not names or not all(names):
        raise UserError(f"--classes {value!r}: give a file with one class name a line, or names separated by commas "
                        "(no empty names)")
    return names


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


def min_gain_option() -> Decorator:
    """``--min-gain F``: how much faster than the next more accurate rung a kept rung must be."""
    from pscompress.board.ladder import MIN_GAIN

    return click.option("--min-gain", default=MIN_GAIN, show_default=True, type=click.FloatRange(0, 1, max_open=True),
                        metavar="F", help="Keep a faster rung only if it saves more than this fraction of the next "
                                          "more accurate kept rung's median latency (less is timing noise).")
