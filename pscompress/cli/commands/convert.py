"""``pscompress convert``: replace a model's eligible convolutions by pSConv layers."""
from __future__ import annotations

from pathlib import Path

import click

from pscompress.cli.options import DATA_HELP, arch_option, input_metadata_options, input_shape_option, trust_pickle_option


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
@click.option("--method", type=click.Choice(["psconv", "lean"]),
              help="psconv: periodic sparse kernels (--pattern). lean: each square 3x3 conv becomes a depth-wise "
                   "star-stencil 3x3 conv plus a 1x1 conv (LeanResNet). See docs/convert.md.  [default: psconv; "
                   "none when --virtual-pool is given without --pattern]")
@click.option("--stencil", type=click.Choice(["5point", "4point"]),
              help="With --method lean: the depth-wise kernels' support, centre and 4 neighbours (5point) or the "
                   "4 neighbours alone (4point).  [default: 5point]")
@click.option("--virtual-pool", "virtual_pool", multiple=True, metavar="GLOB|auto",
              help="Virtual Pooling: compute each stride-1 conv whose module name matches (fnmatch, e.g. "
                   "'layers.7.*') at stride 2, a quarter of its MACs, and upsample its output back by 2 with linear "
                   "interpolation. Convs of other strides or sizes stay as they are; the first conv only when named "
                   "exactly. Applied after --pattern (the pSConv layer is what runs at stride 2); not with "
                   "--method lean. Repeatable. 'auto' (or auto:LOSS) instead chooses the layers, with --data: those "
                   "that save time on this CPU, ranked by agreement lost per millisecond saved, within LOSS of "
                   "top-1 agreement with the dense model (default 0.01).")
@click.option("--no-align", is_flag=True,
              help="Use the pattern's order as given with shift 0, instead of the order and shift that keep "
                   "the most weight energy.")
@click.option("--data", "spec", metavar="SPEC",
              help="Measure the conversion on real images: top-1 agreement with the dense model on the test split, "
                   "before and after re-estimating batch-norm statistics on the training split (--bn-recalibrate). "
                   + DATA_HELP)
@click.option("--bn-recalibrate", type=click.IntRange(min=0), default=2048, show_default=True, metavar="N",
              help="With --data: re-estimate batch-norm statistics on N training images (0: keep the dense model's).")
@arch_option()
@trust_pickle_option()
@input_shape_option("Input the model takes, recorded in the checkpoint (later commands need it no more) and used "
                    "to count MACs.  [default: the model's recorded input shape, else 1,28,28 for a 1-channel model "
                    "and 3,32,32 otherwise]")
@input_metadata_options
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint to write.  [default: MODEL's name with -psconv.pt (-lean.pt for --method lean; "
                   "-vip added for --virtual-pool), beside it]")
@click.option("--report-json", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Also write the conversion report (per layer and total) as JSON.")
def convert(model: Path, patterns: tuple[str, ...], period: int | None, dense_kernel: bool, include: tuple[str, ...],
            exclude: tuple[str, ...], method: str | None, stencil: str | None, virtual_pool: tuple[str, ...],
            no_align: bool, spec: str | None, bn_recalibrate: int, arch: str | None,
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
    --virtual-pool GLOB runs the matching stride-1 convs at stride 2 and upsamples their outputs back
    (Virtual Pooling), alone or after --pattern.
    Prints parameters, non-zeros and MACs per layer, dense against pSConv, and writes a checkpoint.
    With --data, also how often the converted model predicts what the dense one does, before and
    after batch-norm recalibration (the checkpoint keeps the recalibrated statistics).
    """
    import copy

    from pscompress.core.errors import UserError
    from pscompress.core.files import atomic_output
    from pscompress.core.inputs import parse_input_shape
    from pscompress.workstation.checkpoint import load_model, save_checkpoint
    from pscompress.workstation.agreement import measure_conversion
    from pscompress.workstation.lean import leanify
    from pscompress.workstation.measure import RECOGNISED
    from pscompress.workstation.model_io import default_input_shape, input_meta
    from pscompress.workstation.sparsify import SparsifyConfig, sparsify
    from pscompress.workstation.virtual_pool import virtual_pool as apply_virtual_pool
    from pscompress.workstation.virtual_pool_choice import choose_layers, parse_auto

    method = method or (None if virtual_pool and not patterns else "psconv")
    _check_method(method, stencil, patterns, period, dense_kernel, no_align, virtual_pool, bool(include or exclude))
    output = output or model.with_name(_default_name(model, method, virtual_pool))
    if output.resolve() == model.resolve():
        raise UserError(f"the output {output} would overwrite the input model: choose another -o")
    loaded = load_model(model, arch=arch, trust_pickle=trust_pickle)
    shape = parse_input_shape(input_shape) if input_shape else default_input_shape(loaded.module, loaded.meta)
    preprocess = {"mean": mean, "std": std, "channel_order": channel_order, "resize": resize}
    recorded = input_meta(loaded, shape, classes, preprocess)
    budget = parse_auto(virtual_pool)
    if budget is not None and not spec:
        raise UserError("--virtual-pool auto chooses layers by timing them and measuring their agreement with "
                        "the dense model on real images: give --data SPEC")
    data = _measurement_data(spec, shape, recorded.get("preprocess")) if spec else None
    dense = copy.deepcopy(loaded.module) if data else None
    report, recipe = None, {}
    if method == "lean":
        stencil = stencil or "5point"
        report = leanify(loaded.module, stencil, include, exclude, input_shape=shape)
        recipe = {"pattern": f"lean {stencil}", "lean": {"stencil": stencil, "include": list(include),
                                                         "exclude": list(exclude)}}
    elif method == "psconv":
        patterns = patterns or ("4of9",)
        config = SparsifyConfig(patterns[0] if len(patterns) == 1 else patterns, period=period,
                                dense_kernel=dense_kernel, include=include, exclude=exclude, align=not no_align)
        report = sparsify(loaded.module, config, input_shape=shape)
        recipe = {"pattern": "; ".join(patterns), "sparsify": config.to_dict()}
    if virtual_pool:  # after sparsify: the conv that runs at stride 2 is the pSConv layer
        recipe["virtual_pool"] = list(virtual_pool)
        if budget is not None:
            virtual_pool = tuple(choose_layers(dense, loaded.module, shape, *data, budget, log=click.echo))
            recipe["virtual_pool_layers"] = list(virtual_pool)
        report = apply_virtual_pool(loaded.module, virtual_pool, shape, prior=report) if virtual_pool else report
    report.notes = [*loaded.notes, *report.notes]  # what loading a .pt2 program left dense, then by kernel size
    agreement = measure_conversion(dense, loaded.module, *data, bn_recalibrate) if data else None
    # The measured accuracy belonged to the dense weights; keep it under a name that says so.
    if "accuracy" in loaded.meta:
        loaded.meta["dense_accuracy"] = loaded.meta.pop("accuracy")
    loaded.meta.pop("agreement", None)  # with the teacher it was fine-tuned from: it does not hold after conversion
    conversion = report.summary() | ({"agreement": agreement.summary()} if agreement else {})
    loaded.meta.update({**recipe, "input_shape": list(shape), "conversion": conversion, **recorded})
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
    if agreement:
        click.echo(agreement.describe())
    if method == "psconv" and not virtual_pool and all(layer.method == RECOGNISED for layer in report.converted):
        click.echo("every converted layer's zeros were already periodic (a pSConv model trained elsewhere): it computes "
                   "what it did before, no fine-tuning needed")
    else:
        click.echo(f"next: fine-tune it (pscompress finetune {output} --data {spec or 'SPEC'}, docs/finetune.md): until "
                   "then its predictions are not the dense model's" + ("" if agreement else " (convert --data SPEC measures how far)"))


def _measurement_data(spec: str, shape: tuple[int, int, int], preprocess: dict | None):
    """The train and test splits of ``spec`` as the model takes them (channel order, mean and std)."""
    from pscompress.board.data import check_compatible, load_dataset
    from pscompress.workstation.agreement import model_inputs

    splits = [load_dataset(spec, split) for split in ("train", "test")]
    for split in splits:  # labels are unused: agreement compares the two models' predictions
        check_compatible(split, shape[0], len(split.classes), shape[1:])
    return [model_inputs(split, preprocess) for split in splits]


def _check_method(method: str | None, stencil: str | None, patterns: tuple[str, ...], period: int | None,
                  dense_kernel: bool, no_align: bool, virtual_pool: tuple[str, ...], selects: bool) -> None:
    """Each method takes its own options: a stencil is lean's, patterns and alignment are pSConv's;
    Virtual Pooling wraps a conv or a pSConv layer, not a lean layer (two convs)."""
    from pscompress.core.errors import UserError

    if method != "lean" and stencil is not None:
        raise UserError("--stencil is for --method lean; pSConv layers take a --pattern")
    pattern_options = [name for name, given in (("--pattern", patterns), ("--period", period is not None),
                                                ("--dense-kernel", dense_kernel), ("--no-align", no_align)) if given]
    if method == "lean" and pattern_options:
        raise UserError(f"{pattern_options[0]} is for --method psconv; lean layers take a --stencil "
                        "(5point or 4point)")
    if method == "lean" and virtual_pool:
        raise UserError("--virtual-pool does not combine with --method lean: virtual-pool a model's convs "
                        "alone or with --pattern")
    if method is None and (pattern_options or selects):  # without a method they would select or change nothing
        given = pattern_options[0] if pattern_options else "--include/--exclude"
        raise UserError(f"{given} is for pSConv layers: add --pattern (or --method psconv); --virtual-pool "
                        "takes its layers by its own globs")


def _default_name(model: Path, method: str | None, virtual_pool: tuple[str, ...]) -> str:
    """MODEL's stem with -psconv / -lean, then -vip for Virtual Pooling: model.pt -> model-psconv-vip.pt."""
    parts = [model.stem, *([method] if method else []), *(["vip"] if virtual_pool else [])]
    return "-".join(parts) + ".pt"
