"""``pscompress ladder``: a deadline-aware set of variants of one model (docs/ladder.md)."""
from __future__ import annotations

from pathlib import Path

import click

from pscompress.cli import _LADDER_COMMANDS, LazyGroup
from pscompress.cli.options import min_gain_option, threads_option


@click.group(cls=LazyGroup, lazy=_LADDER_COMMANDS, workstation=set(_LADDER_COMMANDS),
             context_settings={"help_option_names": ["-h", "--help"]})
def ladder() -> None:
    """Work with a model ladder: a folder of variants of one model and its ladder.json manifest.

    On the board, LadderPredictor (pscompress.board.ladder) runs the most accurate kept rung
    whose latency fits the time left before each deadline.
    """


@ladder.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("folder", type=click.Path(path_type=Path))
@threads_option()
@click.option("--runs", default=200, show_default=True, type=click.IntRange(min=10, max=100_000), metavar="N",
              help="Timed batch-1 calls per rung (interleaved across rungs).")
@min_gain_option()
def measure(folder: Path, threads: int | None, runs: int, min_gain: float) -> None:
    """Re-time every rung of the ladder in FOLDER on this machine (batch 1, wall time, p50/p90/p99),
    record the CPU model and keep the rungs each strictly more accurate than every faster one.

    Rewrites FOLDER/ladder.json atomically. Run it on the board, at the thread count it will run with.
    """
    from pscompress.board.ladder_measure import format_rungs, measure_ladder

    manifest = measure_ladder(folder, threads=threads, runs=runs, min_gain=min_gain)
    for line in format_rungs(manifest):
        click.echo(line)
    kept = sum(r.kept for r in manifest.rungs)
    click.echo(f"wrote {folder / 'ladder.json'}: {kept} of {len(manifest.rungs)} rung(s) kept on {manifest.cpu}, "
               f"{'default' if threads is None else threads} thread(s)")


@ladder.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("-o", "--output", "png", required=True, type=click.Path(path_type=Path), metavar="FILE.png",
              help="The picture to write.")
@click.option("--html", type=click.Path(path_type=Path), metavar="FILE.html",
              help="Also write a self-contained HTML page: the picture and a table of the rungs.")
def plot(folder: Path, png: Path, html: Path | None) -> None:
    """Draw the trade-off of the ladder in FOLDER: accuracy against latency (p90, a bar from p50
    to p99) and against file size, every rung labelled; the kept rungs filled and joined by the
    monotone frontier, the dropped ones hollow.

    Needs matplotlib (the workstation extra). Each file is written atomically.
    """
    from pscompress.board.ladder import load_manifest
    from pscompress.board.tradeoff import plot_ladder

    plot_ladder(load_manifest(folder), png, html)
    click.echo(f"wrote {png}" + (f" and {html}" if html is not None else ""))
