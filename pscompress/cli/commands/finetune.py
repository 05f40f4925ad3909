"""``pscompress finetune``: train a (pSConv or dense) model with its masks fixed."""
from __future__ import annotations

import os
from pathlib import Path

import click

from pscompress.cli.options import arch_option, trust_pickle_option

from pscompress.workstation.finetune import OPTIMIZERS, FinetuneConfig

_DEFAULTS = FinetuneConfig()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", "data_spec", required=True, metavar="SPEC",
              help="Data set: 'fashion-mnist', an image folder (DIR/<class>/*.png, or DIR/train and DIR/test), or an .npz file.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Checkpoint to write (rewritten atomically after every epoch; OUTPUT.state holds what --resume needs).")
@click.option("--epochs", type=int, default=_DEFAULTS.epochs, show_default=True, help="Epochs over the training split.")
@click.option("--lr", type=float, default=_DEFAULTS.lr, show_default=True, help="Peak learning rate (cosine decay to zero over all epochs).")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=_DEFAULTS.optimizer, show_default=True,
              help="sgd (Nesterov momentum) or adamw.")
@click.option("--batch-size", type=int, default=_DEFAULTS.batch_size, show_default=True, help="Examples per step and process.")
@click.option("--weight-decay", type=float, default=_DEFAULTS.weight_decay, show_default=True, help="Weight decay.")
@click.option("--augment/--no-augment", default=_DEFAULTS.augment, show_default=True,
              help="Random crop (zero padding) and horizontal flip of training images.")
@click.option("--bn-recalibrate", type=int, default=_DEFAULTS.bn_recalibrate, show_default=True, metavar="N",
              help="Before training, re-estimate batch-norm statistics on N training images (0: keep them).")
@click.option("--distill-from", "--teacher", "distill_from", type=click.Path(dir_okay=False, path_type=Path),
              help="Dense teacher checkpoint: add a knowledge-distillation loss on its softened outputs "
                   "(required for a per-pixel model, a segmenter, which trains by distillation alone).")
@click.option("--distill-alpha", type=float, default=_DEFAULTS.distill_alpha, show_default=True,
              help="Weight of the distillation loss (1 - alpha weighs the label loss).")
@click.option("--distill-temperature", type=float, default=_DEFAULTS.distill_temperature, show_default=True,
              help="Softmax temperature for distillation.")
@click.option("--resume", is_flag=True, help="Continue the run that wrote OUTPUT from its last finished epoch.")
@click.option("--limit", type=int, help="Train on the first N training examples only (for quick runs).")
@click.option("--seed", type=int, default=_DEFAULTS.seed, show_default=True, help="Seed for shuffling and augmentation.")
@click.option("--workers", type=int, default=_DEFAULTS.workers, show_default=True, help="Data-loading worker processes.")
@click.option("--train-output", metavar="NAME",
              help="The output to train as the classifier, for a model with several (a detector's face/no-face head: "
                   "output0 of a tuple, a dict's key); as `eval --output` names it.")
@arch_option()
@trust_pickle_option()
def finetune(model: Path, data_spec: str, output: Path, epochs: int, lr: float, optimizer: str, batch_size: int,
             weight_decay: float, augment: bool, bn_recalibrate: int, distill_from: Path | None, distill_alpha: float,
             distill_temperature: float, resume: bool, limit: int | None, seed: int, workers: int,
             train_output: str | None, arch: str | None, trust_pickle: bool) -> None:
    """Fine-tune MODEL on a data set with its pSConv masks fixed, and write the result to OUTPUT.

    Masked weights stay exactly zero. Prints the test accuracy after each epoch and records the
    final one in the checkpoint's meta["accuracy"] (a fraction in [0, 1]). A dense model trains
    the same way. A segmenter (scores per pixel, [N, classes, H, W]) trains by distillation alone
    from --distill-from, since data sets label whole images: its metric is the per-pixel top-1
    agreement with the teacher on the test images, recorded as meta["agreement"]. Runs unchanged
    under `torchrun --nproc-per-node N` (DistributedDataParallel).
    """
    from pscompress.board.data import load_dataset
    from pscompress.core.errors import UserError
    from pscompress.workstation.checkpoint import load_model
    from pscompress.workstation.finetune import check_data, finetune as run_finetune

    config = FinetuneConfig(epochs=epochs, lr=lr, optimizer=optimizer, batch_size=batch_size,
                            weight_decay=weight_decay, augment=augment, bn_recalibrate=bn_recalibrate, distill_alpha=distill_alpha,
                            distill_temperature=distill_temperature, seed=seed, workers=workers, limit=limit,
                            train_output=train_output)
    loaded = load_model(model, arch=arch, trust_pickle=trust_pickle)
    if loaded.arch is None:
        raise UserError(f"{model} is a pickled module of no built-in architecture: fine-tuning writes pscompress checkpoints only")
    train, test = load_dataset(data_spec, "train"), load_dataset(data_spec, "test")
    teacher = None
    if distill_from is not None:
        teacher = load_model(distill_from, arch=arch, trust_pickle=trust_pickle).module
        check_data(loaded, train, test, train_output)  # the student first, as finetune checks it
        _check_teacher(teacher, loaded.module, tuple(loaded.meta.get("input_shape") or train.shape), train_output,
                       distill_from)
    result = run_finetune(loaded, train, test, output, config, teacher=teacher, resume=resume, log=click.echo)
    if os.environ.get("RANK", "0") == "0":  # torchrun: only rank 0 reports
        click.echo(f"wrote {output}: {result.metric} {result.accuracy:.2%}")


def _check_teacher(teacher, student, shape: tuple[int, ...], train_output: str | None, path: Path) -> None:
    """The teacher scores what the student (already checked) trains: on one blank image of the student's input
    shape, its output ``train_output`` has the student's classes and form (per image or per pixel). A model
    without a linear layer (a fully convolutional detector) is a teacher like any other."""
    from pscompress.core.errors import UserError
    from pscompress.workstation.finetune import trained_scores

    want = trained_scores(student, shape, train_output).shape
    got = trained_scores(teacher, shape, train_output, f"teacher {path}").shape
    if got[1] != want[1]:
        raise UserError(f"teacher {path} scores {got[1]} classes, the model {want[1]}: they must match")
    if len(got) != len(want):
        forms = {2: "per image", 4: "per pixel"}
        raise UserError(f"teacher {path} scores classes {forms[len(got)]}, the model {forms[len(want)]}: they must match")
