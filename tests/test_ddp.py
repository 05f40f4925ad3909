"""`pscompress finetune` under torchrun: two gloo processes (DistributedDataParallel on CPU)."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from pscompress.board.data import load_dataset
from pscompress.workstation import archs
from pscompress.workstation.checkpoint import LoadedModel, load_model, save_checkpoint
from pscompress.workstation.sparsify import sparsify
from pscompress.workstation.surgery import psconv_layers


def _digest(state: dict) -> str:
    """The same fingerprint each rank records, recomputed here from the saved checkpoint."""
    h = hashlib.sha256()
    for name, value in sorted(state.items()):
        if isinstance(value, torch.Tensor):
            h.update(name.encode())
            h.update(value.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    train, test = load_dataset("fashion-mnist", "train").subset(128), load_dataset("fashion-mnist", "test").subset(64)
    data = tmp_path / "fashion_small.npz"
    to_uint8 = lambda d: (d.x[:, 0] * 255).round().astype(np.uint8)  # noqa: E731
    np.savez(data, x_train=to_uint8(train), y_train=train.y, x_test=to_uint8(test), y_test=test.y,
             classes=np.array(train.classes))
    torch.manual_seed(0)
    module = archs.build("resnet20", in_channels=1, num_classes=10)
    sparsify(module, "4of9")
    save_checkpoint(LoadedModel(module, "resnet20", {"in_channels": 1, "num_classes": 10}, {}), tmp_path / "sparse.pt")

    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "pscompress.cli", "finetune", str(tmp_path / "sparse.pt"), "--data", str(data),
           "-o", str(tmp_path / "out.pt"), "--epochs", "2", "--batch-size", "16", "--lr", "0.02"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=110, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    # Only rank 0 reports: one line per epoch and one summary.
    assert run.stdout.count("epoch 2/2: test accuracy") == 1 and run.stdout.count("wrote ") == 1, run.stdout

    saved = load_model(tmp_path / "out.pt")
    meta = saved.meta["finetune"]
    assert meta["world_size"] == 2 and meta["epochs_done"] == 2
    # Each rank saw half of every epoch: 64 examples in 4 steps of 16, not 8.
    assert torch.load(tmp_path / "out.pt.state", weights_only=True)["scheduler"]["last_epoch"] == 2 * 4
    # Both replicas ended with identical weights and buffers, and they are what rank 0 saved.
    digests = meta["replica_digests"]
    assert len(digests) == 2 and digests[0] == digests[1] == _digest(saved.module.state_dict())
    layers = psconv_layers(saved.module)
    assert len(layers) == 18
    for name, layer in layers.items():
        assert torch.count_nonzero(layer.weight[~layer.mask]) == 0, name
    assert not torch.equal(layers["layers.0.conv1"].weight, psconv_layers(module)["layers.0.conv1"].weight)
