"""Input metadata recorded once at convert (shape, classes, mean/std, channel order, resize) and applied
everywhere: checkpoints, ONNX and TFLite metadata, `run`, `eval`, `info` and every Predictor, exactly once."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from export_models import randomise_batchnorm
from pscompress.core.errors import UserError
from pscompress.core.metadata import check_metadata
from pscompress.workstation import archs
from pscompress.workstation.checkpoint import LoadedModel, load_model, save_checkpoint

SHAPE = (3, 24, 20)  # C, H, W: not square, so a swapped H and W shows
MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
RESIZE = 28
CLASSES = list("abcdefghij")
CONVERT_ARGS = ["--input-shape", ",".join(map(str, SHAPE)), "--mean", ",".join(map(str, MEAN)),
                "--std", ",".join(map(str, STD)), "--channel-order", "bgr", "--resize", str(RESIZE),
                "--classes", ",".join(CLASSES)]


def cli(*args: object) -> None:
    """``pscompress ARGS`` in this process (a module fixture cannot use conftest's function-scoped run_cli)."""
    from pscompress.cli import cli as group

    group.main([str(a) for a in args], standalone_mode=False)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A pickled module of no recorded input (the issue's case), converted with every option, exported both ways."""
    folder = tmp_path_factory.mktemp("preprocess")
    torch.manual_seed(0)
    module = torch.nn.Sequential(  # an importable class, as a pickled module needs; no built-in architecture
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10))
    randomise_batchnorm(module)
    torch.save(module.eval(), folder / "pickled.pt")
    cli("convert", folder / "pickled.pt", "--trust-pickle", *CONVERT_ARGS, "-o", folder / "conv.pt")
    # No --input-shape from here on: the checkpoint records it.
    cli("export", folder / "conv.pt", "--trust-pickle", "-o", folder / "m.onnx")
    cli("export", folder / "conv.pt", "--trust-pickle", "-o", folder / "m.tflite")
    return folder


def reference(folder) -> torch.nn.Module:
    return load_model(folder / "conv.pt", trust_pickle=True).module.eval()


def torch_logits(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def by_hand(x01: np.ndarray) -> np.ndarray:
    """(x - mean) / std written out per channel, independently of pscompress.core.inputs."""
    out = np.empty_like(x01, dtype=np.float64)
    for c in range(3):
        out[:, c] = (x01[:, c] - MEAN[c]) / STD[c]
    return out.astype(np.float32)


def photo_by_hand(path) -> np.ndarray:
    """The docs' rule for an image file: RGB, shorter side to RESIZE, centre crop H x W, BGR, /255."""
    _, h, w = SHAPE
    with Image.open(path) as image:
        rgb = image.convert("RGB")
        width, height = rgb.size
        new = (RESIZE, round(height * RESIZE / width)) if width <= height else (round(width * RESIZE / height), RESIZE)
        big = np.asarray(rgb.resize(new, Image.BILINEAR), dtype=np.float32)
    top, left = (big.shape[0] - h) // 2, (big.shape[1] - w) // 2
    crop = big[top:top + h, left:left + w, ::-1]  # RGB -> BGR
    return (crop.transpose(2, 0, 1) / 255.0)[None]


@pytest.fixture(scope="module")
def photo(made):
    """A 45x31 RGB photo: another size and aspect than the model's 20x24, in RGB while the model takes BGR."""
    rng = np.random.default_rng(1)
    path = made / "photo.png"
    Image.fromarray(rng.integers(0, 256, (31, 45, 3), dtype=np.uint8), "RGB").save(path)
    return path


def flat_images(rng: np.random.Generator, count: int) -> np.ndarray:
    """uint8 [N, H, W, 3] images of one random colour each plus noise: a random network's predictions vary
    between them (on pure noise every image looks the same to it after global pooling)."""
    colour = rng.random((count, 1, 1, 3)) + 0.1 * rng.standard_normal((count, SHAPE[1], SHAPE[2], 3))
    return np.round(np.clip(colour, 0, 1) * 255).astype(np.uint8)


def test_convert_records_everything_in_the_checkpoint(made):
    meta = load_model(made / "conv.pt", trust_pickle=True).meta
    assert meta["input_shape"] == list(SHAPE) and meta["classes"] == CLASSES
    assert meta["preprocess"] == {"mean": MEAN, "std": STD, "channel_order": "bgr", "resize": RESIZE}


def test_onnx_and_tflite_metadata_carry_it(made):
    import onnx

    from pscompress.board.tflite_reader import metadata_buffer

    props = {p.key: p.value for p in onnx.load(made / "m.onnx").metadata_props}
    want = {"mean": MEAN, "std": STD, "channel_order": "bgr", "resize": RESIZE}
    assert json.loads(props["pscompress.preprocess"]) == want
    assert json.loads(props["pscompress.input_shape"]) == list(SHAPE)
    assert json.loads(props["pscompress.classes"]) == CLASSES
    tflite = json.loads(metadata_buffer((made / "m.tflite").read_bytes()))
    assert tflite["preprocess"] == want and tflite["input_shape"] == list(SHAPE)


@pytest.mark.parametrize("suffix", [".onnx", ".tflite", ".pt"])
def test_every_predictor_normalises_exactly_once(made, suffix):
    from pscompress.board.predictor import open_predictor

    path = made / ("conv.pt" if suffix == ".pt" else f"m{suffix}")
    predictor = open_predictor(path, trust_pickle=suffix == ".pt")
    x = flat_images(np.random.default_rng(2), 3).transpose(0, 3, 1, 2) / np.float32(255)
    module = reference(made)
    once = torch_logits(module, by_hand(x))
    got = predictor.predict(x)
    scale = np.abs(once).max()
    assert np.abs(got - once).max() <= 1e-4 * scale
    for wrong in (torch_logits(module, x), torch_logits(module, by_hand(by_hand(x)))):  # never, or twice
        assert np.abs(got - wrong).max() > 1e-2 * scale
    assert tuple(predictor.input_shape) == SHAPE


def test_run_on_a_photo_matches_pytorch_on_the_image_preprocessed_by_hand(made, photo, run_cli):
    from pscompress.board.onnx_predictor import OnnxPredictor
    from pscompress.board.predictor import topk_of
    from pscompress.core.inputs import load_input

    expected = torch_logits(reference(made), by_hand(photo_by_hand(photo)))
    predictor = OnnxPredictor(made / "m.onnx")
    logits = predictor.predict(load_input(photo, predictor.input_shape, predictor.preprocess))
    assert np.abs(logits - expected).max() <= 1e-4 * np.abs(expected).max()
    status, out, err = run_cli("run", made / "m.onnx", "--input", photo, "-k", "3")
    assert status == 0, err
    top = topk_of(expected, 3)
    for rank in range(3):
        name, probability = CLASSES[top.indices[0, rank]], top.values[0, rank]
        assert f"{rank + 1}. {name:<20} {probability:7.2%}" in out


def test_eval_normalises_array_data_sets_like_the_predictors(made, tmp_path, run_cli):
    rng = np.random.default_rng(3)
    x = flat_images(rng, 40).transpose(0, 3, 1, 2)
    expected = torch_logits(reference(made), by_hand(x.astype(np.float32) / 255.0)).argmax(1)
    y = np.where(np.arange(40) % 2 == 0, expected, (expected + 1) % 10)  # half right, whatever the model says
    np.savez(tmp_path / "data.npz", x=x, y=y, classes=np.array(CLASSES))
    for model in ("m.onnx", "m.tflite"):
        status, out, err = run_cli("eval", made / model, "--data", tmp_path / "data.npz", "--json", tmp_path / "r.json")
        assert status == 0, err
        record = json.loads((tmp_path / "r.json").read_text())
        assert record["predictions"] == expected.tolist() and record["top1"] == 0.5
    assert len(set(expected.tolist())) > 1  # the check can fail: the model's answer depends on the images


def test_eval_decodes_an_image_folder_in_the_models_channel_order(made, tmp_path, run_cli):
    rng = np.random.default_rng(6)
    rgb = flat_images(rng, 10)
    for name, image in zip(CLASSES, rgb):  # one image per class, so the folder's order is the classes'
        (tmp_path / "data" / name).mkdir(parents=True)
        Image.fromarray(image, "RGB").save(tmp_path / "data" / name / "0.png")
    bgr = rgb[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    expected = torch_logits(reference(made), by_hand(bgr)).argmax(1)
    status, out, err = run_cli("eval", made / "m.onnx", "--data", tmp_path / "data", "--json", tmp_path / "r.json")
    assert status == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["predictions"] == expected.tolist()
    rgb_order = torch_logits(reference(made), by_hand(bgr[:, ::-1])).argmax(1)
    assert rgb_order.tolist() != expected.tolist()  # the check can fail: channel order changes the answers


def test_info_shows_the_preprocessing(made, run_cli):
    status, out, err = run_cli("info", made / "m.onnx")
    assert status == 0, err
    line = next(line for line in out.splitlines() if line.startswith("preprocess:"))
    assert "shorter side to 28, centre crop" in line and "bgr" in line
    assert "mean 0.4, 0.5, 0.6" in line and "std 0.2, 0.25, 0.3" in line


def test_finetune_keeps_the_record_and_trains_on_normalised_images(tmp_path, run_cli):
    torch.manual_seed(0)
    module = archs.build("resnet20", in_channels=3, num_classes=10)
    save_checkpoint(LoadedModel(module, "resnet20", {"in_channels": 3, "num_classes": 10}), tmp_path / "r20.pt")
    assert run_cli("convert", tmp_path / "r20.pt", *CONVERT_ARGS, "-o", tmp_path / "c.pt").code == 0
    rng = np.random.default_rng(4)
    x_train = rng.random((16, *SHAPE), dtype=np.float32)
    np.savez(tmp_path / "d.npz", x_train=x_train, y_train=rng.integers(0, 10, 16),
             x_test=rng.random((8, *SHAPE), dtype=np.float32), y_test=rng.integers(0, 10, 8), classes=np.array(CLASSES))
    # One batch of all 16 images, batch norm recalibrated on them, a learning rate too small to move a weight.
    status, out, err = run_cli("finetune", tmp_path / "c.pt", "--data", tmp_path / "d.npz", "--epochs", "1", "--lr", "1e-9",
                               "--bn-recalibrate", "16", "--batch-size", "16", "--workers", "0", "--no-augment",
                               "-o", tmp_path / "ft.pt")
    assert status == 0, err
    tuned = load_model(tmp_path / "ft.pt")
    assert tuned.meta["preprocess"] == load_model(tmp_path / "c.pt").meta["preprocess"]
    # The first batch norm's running mean is then the mean of the first conv's output on what training fed it.
    with torch.no_grad():
        def first_conv_mean(x: np.ndarray) -> np.ndarray:
            return tuned.module.conv1(torch.from_numpy(x)).mean(dim=(0, 2, 3)).numpy()

        normalised, raw = first_conv_mean(by_hand(x_train)), first_conv_mean(x_train)
    got = tuned.module.bn1.running_mean.numpy()
    assert np.abs(got - normalised).max() <= 1e-4 * np.abs(normalised).max()
    assert np.abs(got - raw).max() > 0.1 * np.abs(normalised).max()


@pytest.mark.parametrize("args, message", [
    (["--mean", "0.5,0.5"], "--mean has 2 value(s), the model takes 3 channel(s)"),
    (["--std", "0.2,0,0.2"], "--std must be positive finite numbers"),
    (["--std", "nan,1,1"], "--std must be positive finite numbers"),
    (["--mean", "inf,0,0"], "--mean must be finite numbers"),
    (["--mean", "a,b,c"], "--mean takes comma-separated numbers"),
    (["--channel-order", "gbr"], "--channel-order must be one of rgb, bgr"),
    (["--resize", "20"], "--resize 20 is smaller than the model's 32x32 input"),
    (["--resize", "big"], "--resize takes an integer"),
    (["--classes", "a,b"], "--classes has 2 names, but no output of the model has 2 scores"),
    (["--classes", "a,,b"], "no empty names"),
])
def test_bad_values_are_one_line_and_exit_2(tmp_path, run_cli, args, message):
    torch.manual_seed(0)
    save_checkpoint(LoadedModel(archs.build("resnet20", in_channels=3), "resnet20", {"in_channels": 3}),
                    tmp_path / "m.pt")
    status, out, err = run_cli("convert", tmp_path / "m.pt", "--input-shape", "3,32,32", *args, "-o", tmp_path / "o.pt")
    assert status == 2 and err.startswith("Error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in out + err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_bgr_needs_three_channels(tmp_path, run_cli):
    save_checkpoint(LoadedModel(archs.build("resnet20", in_channels=1), "resnet20", {"in_channels": 1}),
                    tmp_path / "m.pt")
    status, out, err = run_cli("convert", tmp_path / "m.pt", "--channel-order", "bgr", "-o", tmp_path / "o.pt")
    assert status == 2 and "--channel-order bgr applies to 3-channel models" in err and err.count("\n") == 1


def test_classes_from_a_file(tmp_path, run_cli):
    save_checkpoint(LoadedModel(archs.build("resnet20", in_channels=1), "resnet20", {"in_channels": 1}),
                    tmp_path / "m.pt")
    (tmp_path / "names.txt").write_text("\n".join(f"class {i}" for i in range(10)) + "\n\n")
    assert run_cli("convert", tmp_path / "m.pt", "--classes", tmp_path / "names.txt", "-o", tmp_path / "o.pt").code == 0
    assert load_model(tmp_path / "o.pt").meta["classes"] == [f"class {i}" for i in range(10)]


def test_a_file_without_the_field_runs_on_raw_pixels_as_before(exported):
    from pscompress.board.onnx_predictor import OnnxPredictor

    path, _, model = exported("resnet20", "4of9")
    predictor = OnnxPredictor(path)
    assert "preprocess" not in predictor.meta and predictor.preprocess == {}
    x = np.random.default_rng(5).random((2, *predictor.input_shape), dtype=np.float32)
    expected = torch_logits(model.module.eval(), x)
    assert np.abs(predictor.predict(x) - expected).max() <= 1e-4 * np.abs(expected).max()


@pytest.mark.parametrize("preprocess, message", [
    ({"mean": [0.5], "stretch": True}, "unknown step(s) stretch"),
    ({"std": [-1.0, 1.0, 1.0]}, "`std` must be positive"),
    ({"mean": [0.5, 0.5]}, "`mean` has 2 value(s), the model takes 3"),
    ({"channel_order": "BGR"}, "`channel_order` must be one of rgb, bgr"),
    ({"resize": 8}, "`resize` 8 is smaller"),
    ([0.5, 0.5, 0.5], "preprocess must be a mapping"),
])
def test_damaged_preprocess_metadata_is_a_user_error(preprocess, message):
    with pytest.raises(UserError) as caught:
        check_metadata({"input_shape": [3, 32, 32], "preprocess": preprocess}, "m.onnx")
    assert message in str(caught.value) and str(caught.value).startswith("m.onnx: ")

