"""``pscompress tune``: rewrite an exported model so each PSConv node runs its fastest way here (no PyTorch)."""
from __future__ import annotations

from pathlib import Path

import click

from pscompress.cli.options import threads_option


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), metavar="FILE",
              help="Where to write the tuned model; naming MODEL itself rewrites it in place.  "
                   "[default: MODEL-tuned.onnx beside MODEL]")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1), metavar="N",
              help="Images per inference call to tune for.")
@threads_option()
def tune(model: Path, output: Path | None, batch: int, threads: int | None) -> None:
    """Time each PSConv node of MODEL (.onnx) with the native kernel and as a dense Conv on this
    machine, and write a copy whose nodes run whichever is faster.

    The packed weights stay; a node the dense Conv wins moves to the ai.pscompress.dense domain,
    which onnxruntime folds into a Conv at load. The whole model is then timed every node native,
    every node dense and per node: when the per-node plan is not the fastest (within 2%), the
    fastest is written. The plan is recorded in the file (`pscompress info` shows it); `run`, `eval` and
    the Python Predictor follow it. Tune on the board, at the batch size and thread count it
    will run with (docs/tune.md).
    """
    from pscompress.board.tune import tune_model
    from pscompress.core.errors import UserError
    from pscompress.core.files import atomic_output

    if model.suffix.lower() != ".onnx":
        raise UserError(f"{model.name}: tune takes an exported .onnx model (see `pscompress export`)")
    if not model.is_file():
        raise UserError(f"cannot read {model}: no such file")
    output = output or model.with_name(model.stem + "-tuned.onnx")
    if output.suffix.lower() != ".onnx":
        raise UserError(f"`output` {output.name} must end in .onnx", "output")
    with atomic_output(output) as tmp:  # opened first: an unwritable destination fails before the timing
        data, plan = tune_model(model, batch=batch, threads=threads)
        tmp.write_bytes(data)
    for line in report(plan):
        click.echo(line)
    click.echo(f"wrote {output}")


def report(plan: dict) -> list[str]:
    """What tune found: one line per node, then the whole-model times and the plan written."""
    rows = [(n["name"], n["op"], f"{n['native_ms']:.3f}", f"{n['dense_ms']:.3f}", n["choice"]) for n in plan["nodes"]]
    header = ("node", "operator", "native ms", "dense ms", "runs")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    times = plan["model_ms"]
    lines.append("whole model: " + ", ".join(f"{name} {ms:.3f} ms" for name, ms in times.items()))
    dense = sum(n["choice"] == "dense" for n in plan["nodes"])
    written = times[plan["plan"]]
    lines.append(f"plan: {plan['plan']} ({dense} of {len(plan['nodes'])} nodes dense), speed {times['dense'] / written:.2f}x "
                 f"every node dense and {times['native'] / written:.2f}x every node native")
    if plan["fallback"]:
        lines.append("the per-node choices were slower as a whole model, so the fastest whole-model variant was written")
    return lines
