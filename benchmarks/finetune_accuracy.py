"""Accuracy cost of 4of9 pSConv on the bundled sample, before and after a short masked fine-tune.

    .venv/bin/python benchmarks/finetune_accuracy.py [--epochs 1] [--limit N] [-o samples/fashion_resnet20_4of9.pt]

Steps: test top-1 of the dense sample (Fashion-MNIST, all 10000 test images); convert it with
``sparsify(model, "4of9")`` (energy-aligned); test top-1 straight after conversion; fine-tune
with masks fixed for at most 3 epochs, distilling from the dense model; test top-1 again.
Prints a markdown table (recorded in docs/benchmarks/finetune.md) and writes the fine-tuned
checkpoint. Target: the fine-tuned 4of9 model loses at most 0.5 points against the dense one.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch

from pscompress.board.data import load_dataset
from pscompress.workstation.checkpoint import LoadedModel, load_model
from pscompress.workstation.finetune import FinetuneConfig, finetune, sharded_accuracy
from pscompress.workstation.sparsify import sparsify

ROOT = Path(__file__).resolve().parent.parent
TARGET_DROP_POINTS = 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sample", type=Path, default=ROOT / "samples" / "fashion_resnet20.pt")
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "samples" / "fashion_resnet20_4of9.pt")
    parser.add_argument("--epochs", type=int, default=1, choices=(1, 2, 3))
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--limit", type=int, help="fine-tune on the first N training images only")
    parser.add_argument("--no-distill", action="store_true", help="plain cross-entropy, no teacher")
    args = parser.parse_args()

    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    dense = load_model(args.sample)
    dense_accuracy = sharded_accuracy(dense.module, test)

    sparse = LoadedModel(copy.deepcopy(dense.module), dense.arch, dict(dense.arch_kwargs), copy.deepcopy(dense.meta))
    report = sparsify(sparse.module, "4of9", input_shape=dense.meta.get("input_shape"))
    sparse.meta.update({"pattern": "4of9", "conversion": report.summary(),
                        "trained_by": f"benchmarks/finetune_accuracy.py from {args.sample.name}"})
    converted_accuracy = sharded_accuracy(sparse.module, test)

    config = FinetuneConfig(epochs=args.epochs, lr=args.lr, optimizer="sgd", limit=args.limit)
    started = time.perf_counter()
    result = finetune(sparse, train, test, args.output, config,
                      teacher=None if args.no_distill else dense.module, log=print)
    seconds = time.perf_counter() - started

    rows = [("dense (sample)", dense_accuracy), ("4of9 after conversion (aligned)", converted_accuracy),
            (f"4of9 after {args.epochs} epoch(s) masked fine-tune", result.accuracy)]
    drop = 100 * (dense_accuracy - result.accuracy)
    print()
    print("| model | test top-1 | vs dense |")
    print("|---|---|---|")
    for name, accuracy in rows:
        print(f"| {name} | {accuracy:.2%} | {100 * (accuracy - dense_accuracy):+.2f} pt |")
    print()
    print(f"conversion: {json.dumps(report.summary())}")
    print(f"fine-tune: {args.epochs} epoch(s) on {config.limit or len(train)} images, sgd lr {args.lr} cosine, "
          f"distillation {'off' if args.no_distill else 'on'}; "
          f"{', '.join(f'{s:.0f} s' for s in result.epoch_seconds)} per epoch ({seconds:.0f} s total, "
          f"{torch.get_num_threads()} torch threads, {platform.processor() or platform.machine()})")
    print(f"drop {drop:.2f} points: {'meets' if drop <= TARGET_DROP_POINTS else 'MISSES'} the <= {TARGET_DROP_POINTS} target")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
