"""``pscompress eval``: accuracy and latency of one model on a labelled data set."""
from __future__ import annotations

from typing import Any, Callable

import click

from pscompress.board.evaluate import EvalResult, evaluate_file, format_report
from pscompress.core.files import write_text_atomic

SPEC_HELP = ("'fashion-mnist' (the Debian package dataset-fashion-mnist), an image folder DIR/<class>/*.png, "
             "or an .npz with x and y.")


def measurement_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by ``eval`` and ``check``: how the data is read and the model is run."""
    options = [
        click.option("--split", type=click.Choice(["test", "train"]), default=None,
                     help="Which split of the data set to use.  [default: test]"),
        click.option("--limit", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Use only the first N images."),
        click.option("--batch-size", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Images per inference call; latency is reported per batch of this size.  [default: 100]"),
        click.option("--native/--no-native", default=None,
                     help="ONNX only: run with or without the native pSConv kernel library.  [default: native if found]"),
        click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Intra-op threads for the runtime.  [default: the runtime's choice]"),
        click.option("--trust-pickle", is_flag=True,
                     help="Allow a .pt file that holds pickled Python objects (can run code: trusted files only)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def write_json(result: EvalResult, target: str) -> None:
    text = result.dumps()
    if target == "-":
        click.echo(text, nl=False)
    else:
        write_text_atomic(target, text)


@click.command("eval")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", "spec", required=True, metavar="SPEC", help=f"Labelled data set: {SPEC_HELP}")
@measurement_options
@click.option("--json", "json_out", metavar="FILE|-",
              help="Also write the full result as JSON (the baseline format of `pscompress check`); '-' for stdout.")
def eval_(model: str, spec: str, split: str | None, limit: int | None, batch_size: int | None, native: bool | None,
          threads: int | None, trust_pickle: bool, json_out: str | None) -> None:
    """Measure MODEL (.pt, .onnx or .tflite) on a labelled data set.

    Prints top-1 accuracy (and top-5 when there are more than five classes), the accuracy of
    each class, and the latency per batch and per image (p50, p90).

    \b
    Example:
      pscompress eval model.onnx --data fashion-mnist --json result.json
    """
    from pscompress.board.data import load_dataset

    split = split or "test"
    data = load_dataset(spec, split).subset(limit)
    result = evaluate_file(model, data, spec=spec, split=split, batch_size=batch_size or 100, native=native,
                           threads=threads, trust_pickle=trust_pickle)
    # With the JSON on stdout, the human-readable report goes to stderr so the two never mix.
    click.echo(format_report(result), err=json_out == "-")
    if json_out:
        write_json(result, json_out)
