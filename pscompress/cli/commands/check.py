"""``pscompress check``: fail a build when accuracy, agreement, size or speed regress."""
from __future__ import annotations

import sys
import time

import click

from pscompress.board.evaluate import evaluate_file, load_result
from pscompress.board.gate import (Budgets, check as check_budgets, format_outcomes, junit_xml, markdown, passed,
                                   require_checkable)
from pscompress.cli.options import DATA_HELP, measurement_options
from pscompress.cli.output import write_json
from pscompress.core.errors import UserError
from pscompress.core.files import write_text_atomic
from pscompress.core.limits import parse_size


class ByteSize(click.ParamType):
    """A size such as 300000, 300K, 1.5MiB or 2MB (K and M are binary, KB and MB decimal)."""

    name = "size"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        size = parse_size(value)
        if size is None:
            self.fail(f"{value!r} is not a size: use e.g. 300000, 300K, 1.5MiB or 2MB", param, ctx)
        return size


_PERCENT = click.FloatRange(0, 100)
_RATIO = click.FloatRange(min=0, min_open=True)


@click.command("check")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--baseline", type=click.Path(dir_okay=False), metavar="FILE.json",
              help="Compare with a result written earlier by `pscompress eval --json`. "
                   "Its data set, split, image count and batch size become the defaults of this run.")
@click.option("--reference", type=click.Path(dir_okay=False), metavar="MODEL",
              help="Compare with another model (.pt, .onnx, .tflite) measured in this run on the same data, "
                   "e.g. the PyTorch model an export came from.")
@click.option("--data", "spec", metavar="SPEC", help=f"Labelled data set: {DATA_HELP}  [default: the baseline's]")
@measurement_options
@click.option("--min-accuracy", type=_PERCENT, metavar="PCT", help="Fail if top-1 accuracy is below PCT percent.")
@click.option("--min-top5", type=_PERCENT, metavar="PCT", help="Fail if top-5 accuracy is below PCT percent.")
@click.option("--max-drop", type=_PERCENT, metavar="POINTS",
              help="Fail if top-1 accuracy is more than POINTS percentage points below the reference's.")
@click.option("--max-disagreement", type=_PERCENT, metavar="PCT",
              help="Fail if the top-1 prediction differs from the reference's on more than PCT percent of the images.")
@click.option("--max-size", type=ByteSize(), metavar="SIZE", help="Fail if the model file is larger (e.g. 300K, 1.5MiB).")
@click.option("--max-size-ratio", type=_RATIO, metavar="R", help="Fail if the model file is more than R times the reference's.")
@click.option("--max-latency-ratio", type=_RATIO, metavar="R",
              help="Fail if per-image latency (p50) is more than R times the reference's. Compare timings taken "
                   "on the same machine: prefer --reference to a baseline from another machine.")
@click.option("--junit", "junit_out", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write a JUnit XML report: one test case per budget.")
@click.option("--summary", "summary_out", metavar="FILE|-",
              help="Write a markdown summary ('-' for stdout), e.g. for $GITHUB_STEP_SUMMARY.")
@click.option("--json", "json_out", metavar="FILE|-", help="Write MODEL's eval result as JSON (a new baseline).")
def check(model: str, baseline: str | None, reference: str | None, spec: str | None, split: str | None,
          limit: int | None, batch_size: int | None, native: bool | None, threads: int | None, trust_pickle: bool,
          output: str | None,
          min_accuracy: float | None, min_top5: float | None, max_drop: float | None, max_disagreement: float | None,
          max_size: int | None, max_size_ratio: float | None, max_latency_ratio: float | None,
          junit_out: str | None, summary_out: str | None, json_out: str | None) -> None:
    """Measure MODEL and fail when it breaks a budget.

    Exit status: 0 when every budget holds, 1 when one is broken (a regression), 2 on a usage
    error. Accuracy budgets are in percent; --max-drop, --max-disagreement and the ratios
    compare with a reference: a --baseline file or a --reference model.

    \b
    Examples:
      pscompress check model.onnx --baseline baseline.json --max-drop 0.5 --max-disagreement 1
      pscompress check model.onnx --reference model.pt --data fashion-mnist \\
          --max-disagreement 0.5 --max-size-ratio 0.6 --junit gate.xml --summary "$GITHUB_STEP_SUMMARY"
    """
    from pscompress.board.data import load_dataset

    began = time.perf_counter()
    if baseline and reference:
        raise UserError("give either --baseline or --reference, not both")
    budgets = Budgets(
        min_accuracy=_fraction(min_accuracy), min_top5=_fraction(min_top5), max_drop=_fraction(max_drop),
        max_disagreement=_fraction(max_disagreement), max_size=max_size, max_size_ratio=max_size_ratio,
        max_latency_ratio=max_latency_ratio,
    )
    # Catch a budget that cannot be checked before minutes of evaluation, not after.
    require_checkable(budgets, bool(baseline or reference))

    base = load_result(baseline) if baseline else None
    if base is not None:
        spec = spec or base.data.get("spec")
        split = split or base.data.get("split")
        limit = limit or base.data.get("images")
        batch_size = batch_size or base.latency.batch_size
    if not spec:
        raise UserError("name the data set with --data (or give a --baseline that records one)")
    split = split or "test"
    data = load_dataset(spec, split).subset(limit)
    # --output names the classifier of MODEL and of a --reference with several outputs alike.
    measure = dict(spec=spec, split=split, batch_size=batch_size or 100, threads=threads, trust_pickle=trust_pickle,
                   output=output)
    ref_result, ref_label = base, (f"baseline `{baseline}`" if baseline else None)
    if reference:
        ref_result, ref_label = evaluate_file(reference, data, **measure), f"`{reference}`"
    result = evaluate_file(model, data, native=native, **measure)
    outcomes = check_budgets(result, budgets, ref_result)

    # Machine-readable output on stdout moves the table to stderr, as with `eval --json -`.
    click.echo(format_outcomes(outcomes), err="-" in (json_out, summary_out))
    if junit_out:
        write_text_atomic(junit_out, junit_xml(outcomes, result, time.perf_counter() - began))
    if summary_out:
        summary = markdown(outcomes, result, ref_result, ref_label)
        click.echo(summary, nl=False) if summary_out == "-" else write_text_atomic(summary_out, summary)
    if json_out:
        write_json(result, json_out)
    if not passed(outcomes):
        sys.exit(1)


def _fraction(percent: float | None) -> float | None:
    return None if percent is None else percent / 100.0
