"""pscompress.board.data: Fashion-MNIST idx files, .npz and image folders, and compatibility checks."""
from __future__ import annotations

import gzip
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pscompress.board.data import FASHION_MNIST_DIR, check_compatible, load_dataset, read_idx
from pscompress.core.errors import UserError


@pytest.fixture(scope="module")
def fashion_test():
    return load_dataset("fashion-mnist", "test")


def test_fashion_mnist_matches_published_facts(fashion_test):
    train = load_dataset("fashion-mnist", "train")
    assert len(train) == 60000 and len(fashion_test) == 10000
    assert train.shape == (1, 28, 28)
    # Fashion-MNIST is exactly balanced: 6000 training and 1000 test images per class.
    assert np.bincount(train.y).tolist() == [6000] * 10
    assert np.bincount(fashion_test.y).tolist() == [1000] * 10
    assert fashion_test.classes[0] == "T-shirt/top" and fashion_test.classes[9] == "Ankle boot"
    x = fashion_test.x
    assert x.dtype == np.float32 and x.shape == (10000, 1, 28, 28)
    assert x.min() == 0.0 and x.max() == 1.0
    # The first test label of Fashion-MNIST is 9 (ankle boot), the second 2 (pullover).
    assert fashion_test.y[:2].tolist() == [9, 2]


def test_idx_reader_matches_raw_bytes(fashion_test):
    """An independent decode of the idx header and pixels: offsets from the idx spec."""
    with gzip.open(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz", "rb") as f:
        raw = f.read()
    magic, n, h, w = struct.unpack(">IIII", raw[:16])
    assert magic == 0x0803 and (n, h, w) == (10000, 28, 28)
    image_7 = np.frombuffer(raw, np.uint8, count=784, offset=16 + 7 * 784).reshape(28, 28)
    np.testing.assert_array_equal(fashion_test.images[7][0], image_7.astype(np.float32) / 255)


def test_idx_reader_rejects_garbage_and_truncation(tmp_path):
    (tmp_path / "bad").write_bytes(b"not an idx file")
    with pytest.raises(UserError, match="not an idx"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(b"\0\0\x08\x01" + struct.pack(">I", 10) + b"\1\2")
    with pytest.raises(UserError, match="truncated"):
        read_idx(tmp_path / "short")


def test_npz_round_trip_nhwc_uint8_and_splits(tmp_path):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (6, 8, 9, 3), dtype=np.uint8)  # NHWC
    x_test = rng.integers(0, 256, (4, 8, 9, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x_train, y_train=np.arange(6) % 3, x_test=x_test,
             y_test=np.array([2, 1, 0, 2]), classes=np.array(["a", "b", "c"]))
    train = load_dataset(str(tmp_path / "d.npz"), "train")
    test = load_dataset(str(tmp_path / "d.npz"), "test")
    assert train.shape == (3, 8, 9) and test.classes == ["a", "b", "c"]
    np.testing.assert_allclose(test.x, x_test.transpose(0, 3, 1, 2) / 255.0, rtol=0, atol=1e-7)
    assert test.y.tolist() == [2, 1, 0] + [2] and test.y.dtype == np.int64


def test_npz_single_split_hw_float_and_implied_classes(tmp_path):
    x = np.random.default_rng(1).random((5, 7, 7)).astype(np.float64)
    np.savez(tmp_path / "f.npz", x=x, y=np.array([0, 4, 1, 1, 0]))
    data = load_dataset(str(tmp_path / "f.npz"), "test")
    assert data.shape == (1, 7, 7) and len(data.classes) == 5
    np.testing.assert_allclose(data.x[:, 0], x.astype(np.float32))


def test_npz_errors_are_user_errors(tmp_path):
    np.savez(tmp_path / "nokeys.npz", a=np.zeros(3))
    with pytest.raises(UserError, match="needs arrays 'x' and 'y'"):
        load_dataset(str(tmp_path / "nokeys.npz"))
    np.savez(tmp_path / "badlabels.npz", x=np.zeros((2, 4, 4), np.uint8), y=np.array([0, 5]), classes=np.array(["a", "b"]))
    with pytest.raises(UserError, match="labels must lie"):
        load_dataset(str(tmp_path / "badlabels.npz"))
    with pytest.raises(UserError, match="no such file"):
        load_dataset(str(tmp_path / "missing.npz"))
    with pytest.raises(UserError, match="unknown data set"):
        load_dataset("cifar-17")


def test_image_folder_round_trip_with_splits(tmp_path, fashion_test):
    """Write real Fashion-MNIST images as PNGs and read them back bit-exactly."""
    picked = {}
    for split, offset in (("train", 0), ("test", 50)):
        for cls in ("Bag", "Sandal"):
            label = fashion_test.classes.index(cls)
            idx = np.flatnonzero(fashion_test.y == label)[offset:offset + 3]
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for k, i in enumerate(idx):
                Image.fromarray((fashion_test.images[i][0] * 255).round().astype(np.uint8)).save(folder / f"{k}.png")
            picked[split, cls] = fashion_test.images[idx]
    test = load_dataset(str(tmp_path), "test")
    assert test.classes == ["Bag", "Sandal"] and test.shape == (1, 28, 28) and len(test) == 6
    np.testing.assert_allclose(test.x[:3], picked["test", "Bag"], atol=1e-6)
    np.testing.assert_allclose(test.x[3:], picked["test", "Sandal"], atol=1e-6)
    assert test.y.tolist() == [0, 0, 0, 1, 1, 1]
    np.testing.assert_allclose(load_dataset(str(tmp_path), "train").x[3:], picked["train", "Sandal"], atol=1e-6)
    batches = list(test.batches(4))
    assert [len(b[1]) for b in batches] == [4, 2]


def test_image_folder_rgb_and_bad_folders(tmp_path):
    (tmp_path / "cls").mkdir()
    rgb = np.random.default_rng(2).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "cls" / "a.png")
    data = load_dataset(str(tmp_path))
    assert data.shape == (3, 5, 6)
    np.testing.assert_allclose(data.x[0], rgb.transpose(2, 0, 1) / 255.0, atol=1e-6)
    Image.fromarray(rgb[:4]).save(tmp_path / "cls" / "b.png")
    with pytest.raises(UserError, match="resize"):
        load_dataset(str(tmp_path)).x
    (tmp_path / "empty" / "c").mkdir(parents=True)
    with pytest.raises(UserError, match="no images"):
        load_dataset(str(tmp_path / "empty"))


def test_check_compatible_names_each_mismatch(fashion_test):
    check_compatible(fashion_test, 1, 10, (28, 28))
    with pytest.raises(UserError, match="1-channel images, the model expects 3"):
        check_compatible(fashion_test, 3, 10)
    with pytest.raises(UserError, match="10 classes, the model has 100 outputs"):
        check_compatible(fashion_test, 1, 100)
    with pytest.raises(UserError, match="28x28 images, the model expects 32x32"):
        check_compatible(fashion_test, 1, 10, (32, 32))


def test_data_module_does_not_import_torch():
    """The board-side eval uses pscompress.board.data on machines without PyTorch."""
    code = "import sys, pscompress.board.data; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_subset_limits_examples(fashion_test):
    small = fashion_test.subset(100)
    assert len(small) == 100 and small.y.tolist() == fashion_test.y[:100].tolist()
    with pytest.raises(UserError, match="positive"):
        fashion_test.subset(0)
