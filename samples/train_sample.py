"""Train the bundled sample: a dense ResNet-20 on Fashion-MNIST, with pscompress's own trainer.

    .venv/bin/python samples/train_sample.py [--epochs 2] [--augment] [-o samples/fashion_resnet20.pt]

Writes a pscompress checkpoint (rewritten after every epoch; ``--resume`` continues an
interrupted run) whose meta records the input shape, the class names, the test accuracy and
how it was trained. 1x28x28 inputs in [0, 1], no normalisation.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from pscompress.board.data import load_dataset
from pscompress.workstation import archs
from pscompress.workstation.checkpoint import LoadedModel
from pscompress.workstation.finetune import FinetuneConfig, finetune

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--augment", action="store_true", help="random crop + flip (pays off only over more epochs)")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("-o", "--output", type=Path, default=HERE / "fashion_resnet20.pt")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    kwargs = {"in_channels": 1, "num_classes": 10}
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    model = LoadedModel(archs.build("resnet20", **kwargs), "resnet20", kwargs, {
        "input_shape": [1, 28, 28],
        "classes": list(train.classes),
        "preprocessing": "grey 28x28, pixel / 255 (float32 in [0, 1]), no mean/std normalisation",
        "trained_by": "samples/train_sample.py " + " ".join(sys.argv[1:] if argv is None else argv),
    })
    config = FinetuneConfig(epochs=args.epochs, lr=args.lr, optimizer="sgd", batch_size=args.batch_size,
                            weight_decay=5e-4, momentum=0.9, augment=args.augment, seed=args.seed)
    result = finetune(model, train, test, args.output, config, resume=args.resume, log=print)
    print(f"wrote {args.output}: test accuracy {result.accuracy:.2%}")


if __name__ == "__main__":
    main()
