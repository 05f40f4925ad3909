"""``pscompress convert``: replace a model's eligible convolutions by pSConv layers."""
from __future__ import annotations

from pathlib import Path

import click

from pscompress.cli.options import arch_option, input_metadata_options, input_shape_option, trust_pickle_option


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--pattern", "patterns", multiple=True, metavar="SPEC",
              help="A family kofN (k of the N = KH*KW positions; it applies to every kernel of N positions: "
                   "4of9 to 3x3, 2of3 to 1x3 and 3x1) or explicit supports such as '0,1,3,4/4,5,7,8' "
                   "(positions row-major, 0 = top-left; 3x3 unless prefixed, e.g. '2x2:0,1/2,3', '5x5:13of25'). "
                   "Repeat it, once per kernel size; convs of other kernel sizes stay dense.  "
                   "[default: 4of9] See docs/patterns.md.")
@click.option("--period", type=int, metavar="N",
              help="Repeat the pattern's supports cyclically to a period of N kernels.")
@click.option("--dense-kernel", is_flag=True, help="Make the last kernel of every period dense (all its positions).")
@click.option("--include", multiple=True, metavar="GLOB",
              help="Also convert convs whose module name matches (fnmatch), even the first conv or an --exclude "
                   "match. Repeatable.")
@click.option("--exclude", multiple=True, metavar="GLOB",
              help="Leave convs whose module name matches dense. Repeatable.")
@click.option("--method", type=click.Choice(["psconv", "lean"]), default="psconv", show_default=True,
              help="psconv: periodic sparse kernels (--pattern). lean: each square 3x3 conv becomes a depth-wise "
                   "star-stencil 3x3 conv plus a 1x1 conv (LeanResNet). See docs/convert.md.")
@click.option("--stencil", type=click.Choice(["5point", "4point"]),
              help="With --method lean: the depth-wise kernels' support, centre and 4 neighbours (5point) or the "
                   "4 neighbours alone (4point).  [default: 5point]")
@click.option("--no-align", is_flag=True,
              help="Use the pattern's order as given with shift 0, instead of the order and shift that keep "
                   "the most weight energy.")
@arch_option()
@trust_pickle_option()
@input_shape_option("Input the model takes, recorded in the checkpoint (later commands need it no more) and used "
                    "to count MACs.  [default: the model's recorded input shape, else 1,28,28 for a 1-channel model "
                    "and 3,32,32 otherwise]")
@input_metadata_options
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint to write.  [default: MODEL's name with -psconv.pt (-lean.pt for --method lean), "
                   "beside it]")
@click.option("--report-json", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Also write the conversion report (per layer and total) as JSON.")
def convert(model: Path, patterns: tuple[str, ...], period: int | None, dense_kernel: bool, include: tuple[str, ...],
            exclude: tuple[str, ...], method: str, stencil: str | None, no_align: bool, arch: str | None,
            trust_pickle: bool, input_shape: str | None, classes: list[str] | None, mean: list[float] | None,
            std: list[float] | None, channel_order: str | None, resize: int | None, output: Path | None,
            report_json: Path | None) -> None:
    """Convert MODEL's convolutions (all but the first) of each kernel size a --pattern is for to pSConv layers.

    MODEL is a pscompress checkpoint, a state dict (with --arch), a torch.export program (.pt2,
    no class needed) or, with --trust-pickle, a pickled nn.Module. Layers whose weights are
    already periodic sparse keep their pattern exactly; the others get the order and shift of
    --pattern that keep the most weight energy.
    --method lean instead turns each 3x3 conv with as many input as output channels into a depth-wise
    star-stencil conv plus a 1x1 conv (LeanResNet; docs/convert.md).
    Prints parameters, non-zeros and MACs per layer, dense against pSConv, and writes a checkpoint.
    """
    from pscompress.core.errors import UserError
    from pscompress.core.files import atomic_output
    from pscompress.core.inputs import parse_input_shape
    from pscompress.workstation.checkpoint import load_model, save_checkpoint
    from pscompress.workstation.lean import leanify
    from pscompress.workstation.model_io import default_input_shape, input_meta
    from pscompress.workstation.sparsify import SparsifyConfig, sparsify

    _check_method(method, stencil, patterns, period, dense_kernel, no_align)
    output = output or model.with_name(f"{model.stem}-{method}.pt")
    if output.resolve() == model.resolve():
        raise UserError(f"the output {output} would overwrite the input model: choose another -o")
    loaded = load_model(model, arch=arch, trust_pickle=trust_pickle)
    shape = parse_input_shape(input_shape) if input_shape else default_input_shape(loaded.module, loaded.meta)
    if method == "lean":
        stencil = stencil or "5point"
        report = leanify(loaded.module, stencil, include, exclude, input_shape=shape)
        recipe = {"pattern": f"lean {stencil}", "lean": {"stencil": stencil, "include": list(include),
                                                         "exclude": list(exclude)}}
    else:
        patterns = patterns or ("4of9",)
        config = SparsifyConfig(patterns[0] if len(patterns) == 1 else patterns, period=period,
                                dense_kernel=dense_kernel, include=include, exclude=exclude, align=not no_align)
        report = sparsify(loaded.module, config, input_shape=shape)
        recipe = {"pattern": "; ".join(patterns), "sparsify": config.to_dict()}
    report.notes = [*loaded.notes, *report.notes]  # what loading a .pt2 program left dense, then by kernel size
    recorded = input_meta(loaded, shape, classes, {"mean": mean, "std": std, "channel_order": channel_order,
                                                   "resize": resize})
    # The measured accuracy belonged to the dense weights; keep it under a name that says so.
    if "accuracy" in loaded.meta:
        loaded.meta["dense_accuracy"] = loaded.meta.pop("accuracy")
    loaded.meta.update({**recipe, "input_shape": list(shape), "conversion": report.summary(), **recorded})
    if report_json is None:
        save_checkpoint(loaded, output)
    else:
        with atomic_output(report_json) as tmp:  # the report appears only if the checkpoint was written
            tmp.write_text(report.to_json())
            save_checkpoint(loaded, output)
    click.echo(report.format_table())
    click.echo(f"wrote {output}: {len(report.converted)} layer(s) converted, "
               f"{report.macs_dense / max(report.macs, 1):.2f}x fewer MACs, "
               f"{report.nonzero:,} of {report.params:,} parameters non-zero")


def _check_method(method: str, stencil: str | None, patterns: tuple[str, ...], period: int | None,
                  dense_kernel: bool, no_align: bool) -> None:
    """Each method takes its own options: a stencil is lean's, patterns and alignment are pSConv's."""
    from pscompress.core.errors import UserError

    if method == "psconv" and stencil is not None:
        raise UserError("--stencil is for --method lean; pSConv layers take a --pattern")
    pattern_options = [name for name, given in (("--pattern", patterns), ("--period", period is not None),
                                                ("--dense-kernel", dense_kernel), ("--no-align", no_align)) if given]
    if method == "lean" and pattern_options:
        raise UserError(f"{pattern_options[0]} is for --method psconv; lean layers take a --stencil "
                        "(5point or 4point)")
