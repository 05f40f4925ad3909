"""``pscompress eval``: accuracy and latency of one or more models on a labelled data set."""
from __future__ import annotations

from pathlib import Path

import click

from pscompress.board.evaluate import disagreement, evaluate_file, format_agreement, format_report, pixel_agreement
from pscompress.cli.options import DATA_HELP, measurement_options
from pscompress.cli.output import write_json
from pscompress.core.errors import UserError

@click.command("eval")
@click.argument("models", nargs=-1, required=True, metavar="MODEL...", type=click.Path(dir_okay=False))
@click.option("--data", "spec", required=True, metavar="SPEC", help=f"Labelled data set: {DATA_HELP}")
@measurement_options
@click.option("--json", "json_out", metavar="FILE|-",
              help="Also write the full result as JSON (the baseline format of `pscompress check`); '-' for stdout. "
                   "One MODEL only.")
@click.option("--plot", type=click.Path(path_type=Path), metavar="FILE.png",
              help="Also draw the models side by side: accuracy against latency per image (p50) and against file size.")
@click.option("--reference", type=click.Path(dir_okay=False), metavar="REF",
              help="Also measure each MODEL's top-1 agreement with REF (its dense original, say) on the same images: "
                   "per image for a classifier, per pixel for a per-pixel model such as a segmenter, whose only "
                   "measure it is (data sets label whole images).")
def eval_(models: tuple[str, ...], spec: str, split: str | None, limit: int | None, batch_size: int | None,
          native: bool | None, threads: int | None, trust_pickle: bool, output: str | None, json_out: str | None,
          plot: Path | None, reference: str | None) -> None:
    """Measure each MODEL (.pt, .onnx or .tflite) on a labelled data set.

    Prints top-1 accuracy (and top-5 when there are more than five classes), the accuracy of
    each class, and the latency per batch and per image (p50, p90); with several models, one
    report after another, each under a line naming its file. A per-pixel model (a segmenter)
    is measured against --reference instead: the share of pixels whose top-1 class agrees.

    \b
    Examples:
      pscompress eval model.onnx --data fashion-mnist --json result.json
      pscompress eval dense.onnx sparse.onnx --data fashion-mnist --plot tradeoff.png
      pscompress eval unet-4of9.onnx --data images/ --reference unet-dense.onnx
    """
    from pscompress.board.data import load_dataset

    if json_out and len(models) > 1:
        raise UserError(f"--json takes one model, got {len(models)}: write one record per `pscompress eval` run")
    if plot is not None:
        from pscompress.board.tradeoff import check_plot_output

        check_plot_output(plot)  # before minutes of evaluation, not after
    split = split or "test"
    data = load_dataset(spec, split).subset(limit)
    run = {"spec": spec, "split": split, "batch_size": batch_size or 100, "native": native, "threads": threads,
           "trust_pickle": trust_pickle, "output": output}
    results, judged = [], None  # judged: the reference's own evaluation, once, for classifiers
    for i, model in enumerate(models):
        if len(models) > 1:
            click.echo(("\n" if i else "") + f"== {model} ==", err=json_out == "-")
        if reference is not None and _per_pixel(model, data, native, threads, trust_pickle, output):
            if plot is not None:
                raise UserError(f"{model} scores every pixel: --plot draws classifiers' accuracy")
            result = pixel_agreement(model, reference, data, **run)
            click.echo(format_agreement(result), err=json_out == "-")
        else:
            result = evaluate_file(model, data, **run)
            # With the JSON on stdout, the human-readable report goes to stderr so the two never mix.
            click.echo(format_report(result), err=json_out == "-")
            if reference is not None:
                judged = judged or evaluate_file(reference, data, **run)
                click.echo(f"agreement {1 - disagreement(result.predictions, judged.predictions):.2%} of "
                           f"{len(result.predictions):,} images with the top-1 class of {reference}", err=json_out == "-")
        results.append(result)
    if json_out:
        write_json(results[0], json_out)
    if plot is not None:
        from pscompress.board.tradeoff import plot_evaluations

        plot_evaluations(results, _labels(models), plot)
        click.echo(f"wrote {plot}", err=json_out == "-")


def _per_pixel(model: str, data, native, threads, trust_pickle, output) -> bool:
    from pscompress.board.evaluate import per_pixel_shape
    from pscompress.board.predictor import open_predictor

    predictor = open_predictor(model, native=native, threads=threads, trust_pickle=trust_pickle, output=output)
    return per_pixel_shape(predictor, data.in_channel_order(predictor.preprocess.get("channel_order"))) is not None


def _labels(models: tuple[str, ...]) -> list[str]:
    """The file names, or the paths as given when two files share a name."""
    names = [Path(m).name for m in models]
    return names if len(set(names)) == len(names) else list(models)
