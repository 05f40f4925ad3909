"""Fine-tuning on real Fashion-MNIST images: learning, fixed masks, checkpoints, resume, distillation, CLI."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pscompress.workstation.finetune as ft
from pscompress.board.data import ArrayImages, ArrayDataset, load_dataset
from pscompress.workstation.agreement import recalibrate_batchnorm
from pscompress.workstation import archs
from pscompress.workstation.checkpoint import LoadedModel, load_model, save_checkpoint
from pscompress.workstation.finetune import FinetuneConfig, distillation_loss, finetune, state_path
from pscompress.workstation.sparsify import sparsify
from pscompress.workstation.surgery import psconv_layers

KWARGS = {"in_channels": 1, "num_classes": 10}
SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "fashion_resnet20.pt"


@pytest.fixture(scope="module")
def fashion():
    """512 training and 300 test images of the real data set."""
    return load_dataset("fashion-mnist", "train").subset(512), load_dataset("fashion-mnist", "test").subset(300)


def _model(sparse: bool = True, seed: int = 0) -> LoadedModel:
    torch.manual_seed(seed)
    module = archs.build("resnet20", **KWARGS)
    if sparse:
        sparsify(module, "4of9")
    return LoadedModel(module, "resnet20", dict(KWARGS), {"input_shape": [1, 28, 28]})


def _accuracy(module: torch.nn.Module, data: ArrayDataset) -> float:
    """Independent of finetune.evaluate: one batch, plain argmax."""
    module.eval()
    with torch.no_grad():
        predicted = module(torch.from_numpy(data.x)).argmax(1).numpy()
    return float((predicted == data.y).mean())


def _assert_masked_zero(module: torch.nn.Module) -> None:
    layers = psconv_layers(module)
    assert len(layers) == 18  # every 3x3 conv of resnet20 but the stem
    for layer in layers.values():
        assert torch.count_nonzero(layer.weight[~layer.mask]) == 0
        assert torch.count_nonzero(layer.weight[layer.mask]) == int(layer.mask.sum())


@pytest.fixture(scope="module")
def sample() -> LoadedModel:
    return load_model(SAMPLE)


def _sparse_copy(dense: LoadedModel, align: bool) -> LoadedModel:
    module = copy.deepcopy(dense.module)
    sparsify(module, "4of9", align=align)
    return LoadedModel(module, dense.arch, dict(dense.arch_kwargs), copy.deepcopy(dense.meta))


@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.01), ("adamw", 0.001)])
def test_finetune_recovers_accuracy_and_keeps_masked_weights_zero(sample, fashion, tmp_path, optimizer, lr):
    """The product's use: a trained model loses accuracy to 4of9 masks; a short fine-tune wins it back."""
    train, test = fashion
    model = _sparse_copy(sample, align=False)  # unaligned: a large, reliable drop to recover from
    before = {name: layer.weight.detach().clone() for name, layer in psconv_layers(model.module).items()}
    converted = _accuracy(model.module, test)
    config = FinetuneConfig(epochs=1, lr=lr, optimizer=optimizer, batch_size=32, limit=256)
    result = finetune(model, train, test, tmp_path / "out.pt", config, log=lambda _: None)

    assert result.accuracy > converted + 0.3, (converted, result.accuracy)
    _assert_masked_zero(model.module)
    for name, layer in psconv_layers(model.module).items():
        assert not torch.equal(layer.weight, before[name])  # kept weights did train
    saved = load_model(tmp_path / "out.pt")
    _assert_masked_zero(saved.module)
    assert saved.meta["accuracy"] == pytest.approx(_accuracy(saved.module, test))
    assert saved.meta["finetune"]["optimizer"] == optimizer and saved.meta["finetune"]["epochs_done"] == 1
    assert saved.meta["input_shape"] == [1, 28, 28] and saved.meta["classes"] == train.classes


def test_batchnorm_recalibration_uses_fresh_statistics(sample, fashion):
    train, _ = fashion
    net = copy.deepcopy(sample.module)
    recalibrate_batchnorm(net, train, examples=100, batch_size=40)  # three batches: 40, 40, 20
    assert not net.training
    with torch.no_grad():
        stem = net.conv1(torch.from_numpy(train.x[:100]))
    per_batch = [stem[i:i + 40] for i in (0, 40, 80)]
    # A cumulative average of per-batch statistics (unbiased variance), as torch's momentum=None defines.
    mean = torch.stack([b.mean((0, 2, 3)) for b in per_batch]).mean(0)
    var = torch.stack([b.transpose(0, 1).flatten(1).var(1) for b in per_batch]).mean(0)
    torch.testing.assert_close(net.bn1.running_mean, mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(net.bn1.running_var, var, rtol=1e-4, atol=1e-5)
    assert net.bn1.momentum == sample.module.bn1.momentum


def test_checkpoint_rewritten_atomically_after_every_epoch(fashion, tmp_path, monkeypatch):
    train, test = fashion
    out = tmp_path / "out.pt"
    seen = []
    real_train_epoch = ft._train_epoch

    def train_epoch_then_inspect(*args, **kwargs):
        if out.exists():  # the previous epoch's checkpoint is complete and loadable
            seen.append(load_model(out).meta["finetune"]["epochs_done"])
        if len(seen) == 2:
            raise KeyboardInterrupt  # killed in the middle of epoch 3
        real_train_epoch(*args, **kwargs)

    monkeypatch.setattr(ft, "_train_epoch", train_epoch_then_inspect)
    with pytest.raises(KeyboardInterrupt):
        finetune(_model(), train.subset(64), test.subset(50), out, FinetuneConfig(epochs=4, batch_size=32), log=lambda _: None)
    assert seen == [1, 2]
    assert load_model(out).meta["finetune"]["epochs_done"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pt", "out.pt.state"]  # no temporary left behind


def test_resume_matches_an_uninterrupted_run(fashion, tmp_path, monkeypatch):
    train, test = fashion
    train = train.subset(128)
    config = FinetuneConfig(epochs=2, lr=0.05, batch_size=32, augment=True, seed=3)
    straight = _model()
    finetune(straight, train, test, tmp_path / "straight.pt", config, log=lambda _: None)

    real_train_epoch, calls = ft._train_epoch, []

    def stop_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_train_epoch(*args, **kwargs)

    monkeypatch.setattr(ft, "_train_epoch", stop_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        finetune(_model(), train, test, tmp_path / "resumed.pt", config, log=lambda _: None)
    monkeypatch.setattr(ft, "_train_epoch", real_train_epoch)
    assert load_model(tmp_path / "resumed.pt").meta["finetune"]["epochs_done"] == 1

    resumed = _model(seed=99)  # fresh weights: resume must take them from the checkpoint
    result = finetune(resumed, train, test, tmp_path / "resumed.pt", config, resume=True, log=lambda _: None)
    assert len(result.epoch_seconds) == 1  # only the missing epoch ran
    a, b = straight.module.state_dict(), resumed.module.state_dict()
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(b[key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert resumed.meta["finetune"]["epoch_accuracies"] == straight.meta["finetune"]["epoch_accuracies"]
    assert torch.load(state_path(tmp_path / "resumed.pt"), weights_only=True)["epochs_done"] == 2


def test_distillation_loss_against_its_definition():
    torch.manual_seed(0)
    student, teacher, labels = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    t = 3.0
    p_teacher = torch.softmax(teacher / t, 1)
    kl = (p_teacher * (p_teacher.log() - torch.log_softmax(student / t, 1))).sum(1).mean()
    expected = 0.3 * F.cross_entropy(student, labels) + 0.7 * t * t * kl
    torch.testing.assert_close(distillation_loss(student, teacher, labels, 0.7, t), expected)
    torch.testing.assert_close(distillation_loss(student, student, labels, 0.9, t), 0.1 * F.cross_entropy(student, labels))
    torch.testing.assert_close(distillation_loss(student, teacher, None, 0.7, t), t * t * kl)  # per pixel: no labels


def _segmenter_pair(train: ArrayDataset) -> tuple[torch.nn.Module, LoadedModel]:
    """A dense U-Net for Fashion-MNIST's 1x28x28 images (batch norms estimated on real images, so its per-pixel
    classes vary) and its 4of9 conversion."""
    from pscompress.workstation.zoo.unet import UNet

    torch.manual_seed(0)
    teacher = UNet(num_classes=3, base=8, depth=2, in_channels=1)
    recalibrate_batchnorm(teacher, train, len(train))
    student = copy.deepcopy(teacher)
    sparsify(student, "4of9", input_shape=(1, 28, 28))
    return teacher.eval(), LoadedModel(student, None, {}, {"input_shape": [1, 28, 28]})  # saved pickled


def test_a_segmenter_trains_by_distillation_alone(fashion, tmp_path):
    """Data sets label whole images: a per-pixel model learns its teacher's per-pixel classes, and its metric
    is the per-pixel agreement with the teacher, as agreement.top1_agreement counts it independently."""
    from pscompress.workstation.agreement import predictions, top1_agreement

    train, test = fashion
    test = test.subset(100)
    teacher, student = _segmenter_pair(train)
    converted = top1_agreement(teacher, student.module, test)
    result = finetune(student, train, test, tmp_path / "seg.pt",
                      FinetuneConfig(epochs=4, lr=0.003, optimizer="adamw", batch_size=32, bn_recalibrate=256),
                      teacher=teacher, log=lambda _: None)
    assert result.metric == ft.AGREEMENT
    assert result.accuracy == pytest.approx(top1_agreement(teacher, student.module, test))
    majority = np.bincount(predictions(teacher, test).ravel()).max() / predictions(teacher, test).size
    assert result.accuracy > max(converted + 0.25, majority), (converted, majority, result.accuracy)
    saved = load_model(tmp_path / "seg.pt", trust_pickle=True).meta
    assert saved["agreement"] == pytest.approx(result.accuracy) and "accuracy" not in saved
    assert saved["finetune"]["metric"] == ft.AGREEMENT and "classes" not in saved  # the images' labels are no pixel classes
    for layer in psconv_layers(student.module).values():
        assert torch.count_nonzero(layer.weight[~layer.mask]) == 0


def test_a_segmenter_without_a_teacher_is_refused(fashion, tmp_path):
    train, test = fashion
    _, student = _segmenter_pair(train.subset(32))
    with pytest.raises(ft.UserError, match="distillation alone.*`teacher`"):
        finetune(student, train, test, tmp_path / "never.pt", FinetuneConfig(epochs=1), log=lambda _: None)
    assert not (tmp_path / "never.pt").exists()


def test_distillation_from_dense_teacher(sample, fashion, tmp_path):
    train, test = fashion
    student = _sparse_copy(sample, align=True)
    result = finetune(student, train, test, tmp_path / "student.pt",
                      FinetuneConfig(epochs=1, lr=0.005, batch_size=32, limit=128, distill_alpha=0.7),
                      teacher=sample.module, log=lambda _: None)
    _assert_masked_zero(student.module)
    assert result.accuracy == pytest.approx(_accuracy(student.module, test))
    assert result.accuracy > 0.6  # close to the teacher, far from chance
    assert load_model(tmp_path / "student.pt").meta["finetune"]["distill_alpha"] == 0.7


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory, fashion):
    train, test = fashion
    path = tmp_path_factory.mktemp("data") / "fashion_small.npz"
    to_uint8 = lambda d: (d.x[:, 0] * 255).round().astype(np.uint8)  # noqa: E731
    np.savez(path, x_train=to_uint8(train.subset(96)), y_train=train.y[:96], x_test=to_uint8(test.subset(64)),
             y_test=test.y[:64], classes=np.array(train.classes))
    return path


def test_cli_trains_a_dense_model(tmp_path, small_npz, run_cli):
    model = _model(sparse=False)
    save_checkpoint(model, tmp_path / "dense.pt")
    code, out, err = run_cli("finetune", tmp_path / "dense.pt", "--data", small_npz,
                          "-o", tmp_path / "out.pt", "--epochs", "1", "--batch-size", "32", "--limit", "64")
    assert code == 0, err
    saved = load_model(tmp_path / "out.pt")
    assert f"test accuracy {saved.meta['accuracy']:.2%}" in out + err
    assert saved.meta["finetune"]["train_examples"] == 64 and not psconv_layers(saved.module)


def test_cli_user_errors_exit_2(tmp_path, small_npz, run_cli):
    save_checkpoint(_model(), tmp_path / "m.pt")
    rgb = tmp_path / "rgb.npz"
    np.savez(rgb, x=np.zeros((4, 28, 28, 3), np.uint8), y=np.arange(4))
    cases = [
        (["finetune", tmp_path / "missing.pt", "--data", small_npz, "-o", tmp_path / "o.pt"], "no such file"),
        (["finetune", tmp_path / "m.pt", "--data", "no-such-set", "-o", tmp_path / "o.pt"], "unknown data set"),
        (["finetune", tmp_path / "m.pt", "--data", rgb, "-o", tmp_path / "o.pt"], "3-channel images, the model expects 1"),
        (["finetune", tmp_path / "m.pt", "--data", small_npz, "-o", tmp_path / "o.pt", "--resume"], "--resume needs"),
        (["finetune", tmp_path / "m.pt", "--data", small_npz, "-o", tmp_path / "o.pt", "--epochs", "0"], "--epochs must be"),
    ]
    for args, message in cases:
        code, out, err = run_cli(*args)
        text = out + err
        assert code == 2 and message in text and "Traceback" not in text, (args, text)
    assert not (tmp_path / "o.pt").exists()


def test_size_mismatch_is_refused_before_training(tmp_path):
    images = ArrayDataset(ArrayImages(np.zeros((4, 1, 32, 32), np.uint8)), np.arange(4) % 10,
                          [str(i) for i in range(10)], "padded")
    with pytest.raises(ft.UserError, match="32x32 images, the model expects 28x28"):
        finetune(_model(), images, images, tmp_path / "o.pt", FinetuneConfig())


class _SwappedHeads(torch.nn.Module):
    """A PNet whose outputs come in the other order: its output0 is the 4-value box map, not the face scores."""

    def __init__(self, pnet: torch.nn.Module) -> None:
        super().__init__()
        self.pnet = pnet

    def forward(self, x):
        face, box = self.pnet(x)
        return box, face


def test_cli_distills_a_model_without_a_linear_layer_from_its_dense_form(tmp_path, run_cli):
    """PNet (fully convolutional, no nn.Linear) distilled from its dense .pt2: the teacher is checked as the student
    is, by the output --train-output names; a teacher whose output scores other classes is refused in one line."""
    from pscompress.workstation.zoo import ZOO, build

    entry = ZOO["face_pnet"]
    shape = entry.input_shape()
    example = (torch.rand(1, *shape),)
    torch.export.save(torch.export.export(build("face_pnet"), example), str(tmp_path / "dense.pt2"))
    torch.export.save(torch.export.export(_SwappedHeads(build("face_pnet")).eval(), example), str(tmp_path / "swapped.pt2"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.integers(0, 256, (32, *shape), dtype=np.uint8), y=rng.integers(0, 2, 32))
    code, out, err = run_cli("convert", tmp_path / "dense.pt2", "--pattern", "4of9", "-o", tmp_path / "sparse.pt")
    assert code == 0, err
    common = ["finetune", tmp_path / "sparse.pt", "--data", tmp_path / "data.npz", "--epochs", "1", "--batch-size", "16",
              "--train-output", entry.classifier_output]

    code, out, err = run_cli(*common, "--distill-from", tmp_path / "dense.pt2", "-o", tmp_path / "tuned.pt")
    assert code == 0, err
    tuned = load_model(tmp_path / "tuned.pt")
    assert tuned.meta["finetune"]["distill_alpha"] == FinetuneConfig().distill_alpha and len(psconv_layers(tuned.module)) == 2

    code, out, err = run_cli(*common, "--distill-from", tmp_path / "swapped.pt2", "-o", tmp_path / "never.pt")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "scores 4 classes, the model 2: they must match" in err and "swapped.pt2" in err
    code, out, err = run_cli(*common[:-2], "--distill-from", tmp_path / "dense.pt2", "-o", tmp_path / "never.pt")
    assert code == 2 and err.count("\n") == 1 and "--train-output" in err, err  # two outputs: which one, for both
    assert not (tmp_path / "never.pt").exists()
