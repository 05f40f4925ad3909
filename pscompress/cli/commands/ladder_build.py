"""``pscompress ladder build``: make every rung of a ladder from one dense model (workstation side)."""
from __future__ import annotations

from pathlib import Path

import click

from pscompress.cli.options import DATA_HELP, arch_option, min_gain_option, threads_option, trust_pickle_option
from pscompress.workstation.ladder_build import LadderBuildConfig, build_ladder, parse_rungs

_DEFAULTS = LadderBuildConfig(rungs=())


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", "spec", required=True, metavar="SPEC",
              help=f"Training, calibration and held-out images: {DATA_HELP} Accuracy is measured on its test split.")
@click.option("--patterns", "rungs", default="dense,6of9,4of9,3of9,2of9", show_default=True, metavar="LIST",
              help="The rungs, comma-separated: dense, a pattern family such as 4of9, or lean (LeanResNet "
                   "5-point); dense or a family may add +vip (Virtual Pooling of the --virtual-pool layers, "
                   "e.g. 4of9+vip); any of them ending in -int8 is that rung quantized to int8 (e.g. 4of9-int8).")
@click.option("--virtual-pool", "virtual_pool", multiple=True, metavar="GLOB|auto",
              help="+vip rungs: the convs to virtual-pool (module-name globs, repeatable), or auto[:LOSS] to choose "
                   "them per rung on this CPU and --data as `convert --virtual-pool auto` does.  [default: auto]")
@click.option("--epochs", default=_DEFAULTS.epochs, show_default=True, type=click.IntRange(min=0),
              help="Fine-tuning epochs per converted rung, distilled from MODEL (0: no fine-tuning).")
@click.option("--limit", type=click.IntRange(min=1), metavar="N",
              help="Fine-tune on the first N training images only (a quicker build).")
@click.option("--lr", default=_DEFAULTS.lr, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Peak fine-tuning learning rate (cosine decay).")
@click.option("--calibration", default=_DEFAULTS.calibration, show_default=True, type=click.IntRange(min=1),
              metavar="N", help="int8 rungs: calibration images (a seeded sample of the training split).")
@threads_option()
@click.option("--runs", default=_DEFAULTS.runs, show_default=True, type=click.IntRange(min=10, max=100_000),
              metavar="N", help="Timed batch-1 calls per rung (interleaved across rungs).")
@min_gain_option()
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The ladder folder to write (created if needed); a rung already built there is kept.")
@arch_option()
@trust_pickle_option()
def build(model: Path, spec: str, rungs: str, virtual_pool: tuple[str, ...], epochs: int, limit: int | None, lr: float, calibration: int,
          threads: int | None, runs: int, min_gain: float, output: Path, arch: str | None, trust_pickle: bool) -> None:
    """Build a ladder of MODEL (a dense checkpoint) in OUTPUT: one rung per --patterns item.

    Each rung is converted, fine-tuned with distillation from MODEL, exported to ONNX (int8 when
    asked), tuned for this CPU at batch 1 and evaluated on the test split. Then all rungs are
    timed together (p50/p90/p99, batch 1, --threads), the rungs each strictly more accurate than
    every faster one are kept, and OUTPUT/ladder.json is written. Rerun it after an interruption:
    finished rungs (OUTPUT/build/NAME.json) are kept, fine-tuning resumes from its last epoch.
    Re-time it on the board with `pscompress ladder measure OUTPUT`.
    """
    from pscompress.board.ladder_measure import format_rungs

    config = LadderBuildConfig(rungs=parse_rungs(rungs), epochs=epochs, limit=limit, lr=lr, calibration=calibration,
                               threads=threads, runs=runs, min_gain=min_gain,
                               virtual_pool=virtual_pool or _DEFAULTS.virtual_pool)
    manifest = build_ladder(model, spec, output, config, arch=arch, trust_pickle=trust_pickle, log=click.echo)
    for line in format_rungs(manifest):
        click.echo(line)
    kept = [r.name for r in manifest.rungs if r.kept]
    click.echo(f"wrote {output / 'ladder.json'}: {len(kept)} of {len(manifest.rungs)} rung(s) kept "
               f"({', '.join(kept)}) on {manifest.cpu}, {'default' if threads is None else threads} thread(s)")
