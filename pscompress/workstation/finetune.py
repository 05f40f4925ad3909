"""Fine-tuning (or training) with pSConv masks fixed, on one process or under torchrun.

Masks need no special care here: PSConv2d multiplies its weight by the mask in forward, so
the gradient of a masked weight is exactly zero and no optimizer (SGD momentum, AdamW moments,
decoupled weight decay on a zero) can revive it. A dense model trains the same way.

Under ``torchrun --nproc-per-node N`` the model is wrapped in DistributedDataParallel (gloo on
CPU); each rank trains on its shard of every epoch, evaluates a shard of the test set, and only
rank 0 writes files and prints. Batch-norm running statistics are taken from rank 0 before
every evaluation, so all replicas hold the same weights and buffers at each checkpoint.

Data sets hold images in [0, 1]; the checkpoint's recorded ``preprocess`` mean and std are
applied to every batch (training, batch-norm recalibration, evaluation) exactly as the
predictors apply them, and the checkpoint written keeps that record.

A dense-prediction model (a segmenter: scores [N, classes, H, W] for every pixel) trains by
distillation alone: data sets label whole images, so its loss is the softened KL divergence to
a dense teacher at every pixel, and its test metric is per-pixel top-1 agreement with that
teacher (meta["agreement"]), not label accuracy.
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pscompress.board.data import ArrayDataset, check_compatible
from pscompress.board.predictor import classifier_output
from pscompress.core.errors import UserError
from pscompress.core.files import atomic_output
from pscompress.workstation.agreement import model_inputs, recalibrate_batchnorm
from pscompress.workstation.checkpoint import LoadedModel, save_checkpoint
from pscompress.workstation.model_io import known_io, named_outputs
from pscompress.workstation.surgery import psconv_layers

OPTIMIZERS = ("sgd", "adamw")


@dataclass
class FinetuneConfig:
    """Hyper-parameters; recorded in the checkpoint's meta["finetune"]."""

    epochs: int = 3
    lr: float = 0.01
    optimizer: str = "sgd"
    batch_size: int = 128
    weight_decay: float = 5e-4
    momentum: float = 0.9
    augment: bool = False
    bn_recalibrate: int = 2048
    distill_alpha: float = 0.5
    distill_temperature: float = 4.0
    seed: int = 0
    workers: int = 0
    limit: int | None = None
    train_output: str | None = None  # the output trained as the classifier (a multi-output model's); None: the only one


ACCURACY = "test accuracy"
AGREEMENT = "test pixel agreement with the teacher"


@dataclass
class FinetuneResult:
    accuracy: float             # the metric after the last epoch, in [0, 1]
    epoch_accuracies: list[float]
    epoch_seconds: list[float]  # wall time of each epoch run by this call (training + evaluation)
    metric: str = ACCURACY      # what `accuracy` measures: ACCURACY, or AGREEMENT for a per-pixel model


def state_path(out: str | os.PathLike) -> Path:
    """The sibling file that holds what --resume needs: epoch, optimizer and scheduler state."""
    return Path(f"{out}.state")


def finetune(model: LoadedModel, train: ArrayDataset, test: ArrayDataset, out: str | os.PathLike,
             config: FinetuneConfig, teacher: nn.Module | None = None, resume: bool = False,
             log: Callable[[str], None] = tqdm.write) -> FinetuneResult:
    """Train ``model`` in place for ``config.epochs`` epochs and write ``out`` after each one.

    ``out`` is a pscompress checkpoint whose meta["accuracy"] is the test top-1 so far
    (meta["agreement"] for a per-pixel model, which needs a ``teacher``); ``out.state`` lets a
    later call with ``resume=True`` continue after the last finished epoch (the model passed in
    then only supplies the architecture: weights come from ``out``).
    """
    _check_config(config)
    per_pixel = check_data(model, train, test, config.train_output)
    if per_pixel and teacher is None:
        raise UserError("the model scores every pixel ([N, classes, H, W]) and data sets label whole images: "
                        "fine-tune it by distillation alone, from its dense original as `teacher`", "teacher")
    metric = AGREEMENT if per_pixel else ACCURACY
    preprocess = model.meta.get("preprocess")
    train = model_inputs(train.subset(config.limit), preprocess)
    test = model_inputs(test, preprocess)
    world, rank = _init_distributed()
    is_main = rank == 0
    torch.manual_seed(config.seed)

    saved_state = _load_resume(model, out, config) if resume else None
    net = model.module.train()
    optimizer = _make_optimizer(config, [p for p in net.parameters() if p.requires_grad])
    # Cosine decay per step in closed form: it depends only on the step count, so a resumed
    # run (even one given more --epochs) follows the curve from where it stopped.
    total_steps = config.epochs * math.ceil(math.ceil(len(train) / world) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)))
    start_epoch = 0
    if saved_state is not None:
        optimizer.load_state_dict(saved_state["optimizer"])
        scheduler.load_state_dict(saved_state["scheduler"])
        start_epoch = int(saved_state["epochs_done"])
    replica = nn.parallel.DistributedDataParallel(net) if world > 1 else net
    if teacher is not None:
        teacher.eval()

    if start_epoch == 0:
        recalibrate_batchnorm(net, train, config.bn_recalibrate, config.batch_size, world, rank)
        _sync_buffers(net, world)
    accuracies = list(model.meta.get("finetune", {}).get("epoch_accuracies", [])) if resume else []
    seconds: list[float] = []
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        _train_epoch(replica, teacher, train, optimizer, scheduler, config, epoch, world, rank)
        _sync_buffers(net, world)
        accuracy = sharded_accuracy(net, test, config.batch_size, world, rank, config.train_output,
                                    teacher if per_pixel else None)
        accuracies.append(accuracy)
        seconds.append(time.perf_counter() - started)
        model.meta.update(_meta(model, train, test, config, accuracies, world, epoch + 1, _replica_digests(net, world),
                                per_pixel))
        if is_main:
            log(f"epoch {epoch + 1}/{config.epochs}: {metric} {accuracy:.2%} ({seconds[-1]:.0f} s)")
            _write(model, optimizer, scheduler, out, epoch + 1)
        if world > 1:
            dist.barrier()
    net.eval()
    final = accuracies[-1] if accuracies else float(model.meta.get(_metric_key(per_pixel), float("nan")))
    return FinetuneResult(final, accuracies, seconds, metric)


@torch.no_grad()
def sharded_accuracy(net: nn.Module, data: ArrayDataset, batch_size: int = 256, world: int = 1, rank: int = 0,
                     output: str | None = None, teacher: nn.Module | None = None) -> float:
    """Top-1 in [0, 1] during training: against the labels, or with a ``teacher`` its agreement with the
    teacher's top-1 (per pixel for a per-pixel model). Under DDP each rank scores a shard and the counts are
    summed. The model's own evaluation (any format, latency, per-class) is pscompress.board.evaluate.
    """
    was_training = net.training
    net.eval()
    counts = torch.zeros(2, dtype=torch.float64)
    for x, y in data.batches(batch_size, np.arange(rank, len(data), world)):
        images = torch.from_numpy(x)
        predicted = class_scores(net(images), output).argmax(1)
        wanted = torch.from_numpy(y) if teacher is None else class_scores(teacher(images), output).argmax(1)
        counts += torch.tensor([(predicted == wanted).sum().item(), predicted.numel()], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(counts)
    net.train(was_training)
    return float(counts[0] / counts[1]) if counts[1] else float("nan")


def class_scores(result, output: str | None = None) -> torch.Tensor:
    """The class scores in a forward's ``result``: its output named ``output`` (None: the only one), as
    [N, classes] or, per pixel, [N, classes, H, W]. A head of 1x1 maps [N, classes, 1, 1] (a fully
    convolutional detector on a crop of its window size) counts as [N, classes]. UserError for any other shape."""
    outputs = named_outputs(result)
    chosen = classifier_output(list(outputs), output, "the model")
    if chosen is None:
        raise UserError(f"the model has {len(outputs)} outputs ({', '.join(outputs)}): choose the classifier to "
                        "train with `train_output`", "train_output")
    scores = outputs[chosen]
    if scores.dim() == 4 and tuple(scores.shape[2:]) == (1, 1):
        scores = scores.flatten(1)
    if scores.dim() not in (2, 4):
        shape = ", ".join(["N", *map(str, scores.shape[1:])])
        raise UserError(f"the model's output {chosen} is [{shape}]: finetune trains a model that scores classes per "
                        "image ([N, classes]) or per pixel ([N, classes, H, W])")
    return scores


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None,
                      alpha: float, temperature: float) -> torch.Tensor:
    """(1 - alpha) * cross-entropy + alpha * T^2 * KL(teacher || student) on softened logits [rows, classes];
    without ``labels`` (a per-pixel model, whose data labels whole images) the distillation term alone."""
    soft = temperature ** 2 * F.kl_div(F.log_softmax(student / temperature, 1), F.log_softmax(teacher / temperature, 1),
                                       reduction="batchmean", log_target=True)
    if labels is None:
        return soft
    return (1 - alpha) * F.cross_entropy(student, labels) + alpha * soft


def _pixel_rows(scores: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] per-pixel scores as [N*H*W, C]: one row per pixel, as the losses take them."""
    return scores.permute(0, 2, 3, 1).reshape(-1, scores.shape[1])


class _BatchSource(torch.utils.data.Dataset):
    """Hands out whole batches by index list, so no per-image collate cost."""

    def __init__(self, data: ArrayDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices)
        return torch.from_numpy(self.data.images[idx]), torch.from_numpy(self.data.y[idx])


def _train_epoch(replica: nn.Module, teacher: nn.Module | None, train: ArrayDataset, optimizer, scheduler,
                 config: FinetuneConfig, epoch: int, world: int, rank: int) -> None:
    # DistributedSampler even on one process: its shuffle depends only on (seed, epoch), so a
    # resumed run sees exactly the batches an uninterrupted one would have.
    sampler = torch.utils.data.DistributedSampler(range(len(train)), num_replicas=world, rank=rank,
                                                  shuffle=True, seed=config.seed)
    sampler.set_epoch(epoch)
    batches = torch.utils.data.BatchSampler(sampler, config.batch_size, drop_last=False)
    loader = torch.utils.data.DataLoader(_BatchSource(train), sampler=batches, batch_size=None,
                                         num_workers=config.workers)
    augment_rng = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch * 1009 + rank)
    replica.train()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", disable=rank != 0, leave=False)
    for x, y in bar:
        if config.augment:
            x = _augment(x, augment_rng)
        logits = class_scores(replica(x), config.train_output)
        if teacher is not None:
            with torch.no_grad():
                target = class_scores(teacher(x), config.train_output)
            if logits.dim() == 4:
                loss = distillation_loss(_pixel_rows(logits), _pixel_rows(target), None, 1.0,
                                         config.distill_temperature)
            else:
                loss = distillation_loss(logits, target, y, config.distill_alpha, config.distill_temperature)
        else:
            loss = F.cross_entropy(logits, y)
        if not torch.isfinite(loss):
            raise UserError(f"the loss became {loss.item()} in epoch {epoch + 1}: lower `lr`", "lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)


def _augment(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding (1/7 of the side) and random horizontal flip."""
    n, _, h, w = x.shape
    pad = max(1, min(h, w) // 7)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=rng)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=rng)
    flip = torch.rand(n, generator=rng) < 0.5
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    out[flip] = out[flip].flip(-1)
    return out


def _make_optimizer(config: FinetuneConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay, nesterov=config.momentum > 0)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def _check_config(config: FinetuneConfig) -> None:
    if config.optimizer not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {config.optimizer!r}: choose {' or '.join(OPTIMIZERS)}")
    if config.epochs < 1:
        raise UserError(f"`epochs` must be at least 1, got {config.epochs}", "epochs")
    if config.batch_size < 1:
        raise UserError(f"`batch_size` must be at least 1, got {config.batch_size}", "batch_size")
    if not config.lr > 0:
        raise UserError(f"`lr` must be positive, got {config.lr}", "lr")
    if not 0 <= config.distill_alpha <= 1:
        raise UserError(f"`distill_alpha` must lie in [0, 1], got {config.distill_alpha}", "distill_alpha")
    if not config.distill_temperature > 0:
        raise UserError(f"`distill_temperature` must be positive, got {config.distill_temperature}",
                        "distill_temperature")


def check_data(model: LoadedModel, train: ArrayDataset, test: ArrayDataset, output: str | None = None) -> bool:
    """UserError unless ``train`` and ``test`` can train ``model``: channels, image size, and as many
    classes as its classifier output (``output``, a multi-output model's) scores. Returns whether that
    output scores every pixel (then the data's labels go unused, and their classes need not match)."""
    in_channels, _ = known_io(model.module.state_dict())
    if in_channels is None:
        raise UserError("the model has no convolution: it is not an image classifier")
    input_shape = model.meta.get("input_shape")
    if train.shape[0] != in_channels:
        raise UserError(f"data set {train.name} has {train.shape[0]}-channel images, the model expects {in_channels}")
    scores = trained_scores(model.module, tuple(input_shape or train.shape), output)
    per_pixel = scores.dim() == 4
    for data in (train, test):
        check_compatible(data, in_channels, None if per_pixel else scores.shape[1],
                         input_shape[1:] if input_shape else None)
    if train.shape != test.shape:
        raise UserError(f"train images are {train.shape}, test images {test.shape}: they must match")
    return per_pixel


@torch.no_grad()
def trained_scores(module: nn.Module, shape: tuple[int, ...], output: str | None, what: str = "the model") -> torch.Tensor:
    """The trained output's scores (class_scores) of one run on a blank image of ``shape`` (in eval mode, so
    batch-norm statistics are untouched); ``what`` names the module in a UserError."""
    was_training = module.training
    module.eval()
    try:
        return class_scores(module(torch.zeros(1, *shape)), output)
    except RuntimeError as exc:
        reason = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise UserError(f"{what} cannot run on images of shape {list(shape)}: {reason}") from exc
    except UserError as exc:
        if what == "the model":
            raise
        raise UserError(f"{what}: {exc}", *exc.parameters) from exc
    finally:
        module.train(was_training)


def _init_distributed() -> tuple[int, int]:
    """(world size, rank): joins the torchrun process group when there is one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 1, 0
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_world_size(), dist.get_rank()


def _sync_buffers(net: nn.Module, world: int) -> None:
    """Batch-norm statistics drift per rank in the last step: take rank 0's everywhere."""
    if world > 1:
        for buffer in net.buffers():
            dist.broadcast(buffer, 0)


def _replica_digests(net: nn.Module, world: int) -> list[str]:
    """One digest of weights and buffers per rank: equal digests prove the replicas agree."""
    h = hashlib.sha256()
    for name, value in sorted(net.state_dict().items()):
        if isinstance(value, torch.Tensor):
            h.update(name.encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
    digest = h.hexdigest()[:16]
    if world == 1:
        return [digest]
    gathered: list[str | None] = [None] * world
    dist.all_gather_object(gathered, digest)
    return [str(d) for d in gathered]


def _meta(model: LoadedModel, train: ArrayDataset, test: ArrayDataset, config: FinetuneConfig,
          accuracies: list[float], world: int, epochs_done: int, digests: list[str], per_pixel: bool) -> dict:
    meta = {
        _metric_key(per_pixel): accuracies[-1],
        "accuracy_data": test.name,
        "finetune": {**asdict(config), "train_data": train.name, "train_examples": len(train),
                     "metric": AGREEMENT if per_pixel else ACCURACY,
                     "epochs_done": epochs_done, "epoch_accuracies": list(accuracies),
                     "world_size": world, "replica_digests": digests,
                     "sparse_layers": len(psconv_layers(model.module))},
    }
    meta.setdefault("input_shape", list(model.meta.get("input_shape") or train.shape))
    if "classes" not in model.meta and not per_pixel:  # a per-pixel model's classes are not the images' labels
        meta["classes"] = list(train.classes)
    return meta


def _metric_key(per_pixel: bool) -> str:
    return "agreement" if per_pixel else "accuracy"


def _write(model: LoadedModel, optimizer, scheduler, out: str | os.PathLike, epochs_done: int) -> None:
    """Checkpoint first, then the resume state; both carry the epoch so a mismatch is detected."""
    save_checkpoint(model, out)
    with atomic_output(state_path(out)) as tmp:
        torch.save({"epochs_done": epochs_done, "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict()}, tmp)


def _load_resume(model: LoadedModel, out: str | os.PathLike, config: FinetuneConfig) -> dict:
    """Swap in the model and meta saved in ``out``; return ``out.state`` (epoch, optimizer, scheduler)."""
    from pscompress.core.inputs import check_zip
    from pscompress.workstation.checkpoint import load_model

    saved_path = state_path(out)
    if not Path(out).is_file() or not saved_path.is_file():
        raise UserError(f"`resume` needs {out} and {saved_path} from an earlier run; one is missing", "resume")
    saved = load_model(out)
    check_zip(saved_path)
    try:
        state = torch.load(saved_path, map_location="cpu", weights_only=True)
        done = int(state["epochs_done"])
    except (RuntimeError, OSError, EOFError, KeyError, TypeError) as exc:
        raise UserError(f"{saved_path} is not a pscompress fine-tuning state: {exc}") from exc
    if saved.meta.get("finetune", {}).get("epochs_done") != done:
        raise UserError(f"{out} and {saved_path} come from different epochs: cannot resume")
    if saved.arch != model.arch or saved.arch_kwargs != model.arch_kwargs:
        raise UserError(f"{out} holds a {saved.arch} model, not the {model.arch} given: cannot resume")
    if done >= config.epochs:
        raise UserError(f"{out} already finished {done} epochs; ask for more with `epochs`", "epochs")
    model.module, model.meta = saved.module, saved.meta
    return state
