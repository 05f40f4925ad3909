"""``pscompress eval``: accuracy and latency of one model on a labelled data set."""
from __future__ import annotations

import click

from pscompress.board.evaluate import evaluate_file, format_report
from pscompress.cli.options import DATA_HELP, measurement_options
from pscompress.cli.output import write_json

@click.command("eval")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", "spec", required=True, metavar="SPEC", help=f"Labelled data set: {DATA_HELP}")
@measurement_options
@click.option("--json", "json_out", metavar="FILE|-",
              help="Also write the full result as JSON (the baseline format of `pscompress check`); '-' for stdout.")
def eval_(model: str, spec: str, split: str | None, limit: int | None, batch_size: int | None, native: bool | None,
          threads: int | None, trust_pickle: bool, output: str | None, json_out: str | None) -> None:
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
                           threads=threads, trust_pickle=trust_pickle, output=output)
    # With the JSON on stdout, the human-readable report goes to stderr so the two never mix.
    click.echo(format_report(result), err=json_out == "-")
    if json_out:
        write_json(result, json_out)
