"""Labelled image data sets as NumPy arrays: float32 NCHW images in [0, 1] and int64 labels.

NumPy (and Pillow for image folders) only: the board-side ``pscompress eval`` imports this
module too, and boards have no PyTorch.

A data set SPEC is one of:

- ``fashion-mnist``: the Debian package ``dataset-fashion-mnist`` (idx files, gzip).
- ``DIR``: an image folder, ``DIR/<class>/*.png|jpg|...``; if DIR has ``train/`` and
  ``test/`` subfolders, the split picks one. Images are decoded batch by batch, so a large
  folder never sits in memory at once.
- ``FILE.npz``: keys ``x``, ``y`` and optional ``classes``, or ``x_train``/``y_train``/
  ``x_test``/``y_test``. ``x`` may be uint8 (scaled by 1/255) or float in [0, 1], shaped
  [N, H, W], [N, C, H, W] or [N, H, W, C] with C in {1, 3}.

Arrays are taken to be in the model's channel order already; an image folder's files are
decoded as RGB, or BGR for a model that records ``channel_order`` "bgr"
(``ArrayDataset.in_channel_order``). Mean/std normalisation is never applied here: the
predictors apply it (pscompress.core.inputs.normalize).
"""
from __future__ import annotations

import contextlib
import gzip
import os
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from pscompress.core.errors import UserError
from pscompress.core.inputs import NpzReader, opened_image

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
SPLITS = ("train", "test")


class ArrayImages:
    """Images held in memory (uint8 or float); scaled to float32 [0, 1] when indexed."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape = tuple(array.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        return _to_unit_float(self.array[index])


class FileImages:
    """Images decoded from files only when indexed, so a large folder costs no memory up front."""

    def __init__(self, paths: Sequence[Path], channels: int, hw: tuple[int, int], channel_order: str = "rgb") -> None:
        self.paths = list(paths)
        self.shape = (len(self.paths), channels, *hw)
        self.channel_order = channel_order

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        picked = np.arange(len(self.paths))[index]
        if np.ndim(picked) == 0:
            return self._decode(self.paths[int(picked)])
        return np.stack([self._decode(self.paths[int(i)]) for i in picked]) if len(picked) else \
            np.zeros((0, *self.shape[1:]), np.float32)

    def _decode(self, path: Path) -> np.ndarray:
        channels, h, w = self.shape[1:]
        with _image(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            if img.size != (w, h):
                raise UserError(f"{path} is {img.size[0]}x{img.size[1]}, other images are {w}x{h}: resize the data set first")
            pixels = np.asarray(img, dtype=np.uint8)
        pixels = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
        if self.channel_order == "bgr":
            pixels = pixels[::-1]
        return pixels.astype(np.float32) / 255.0


@dataclass
class ArrayDataset:
    """A labelled image set. ``images[idx]`` gives float32 [k, C, H, W] in [0, 1]."""

    images: ArrayImages | FileImages
    y: np.ndarray
    classes: list[str]
    name: str

    @property
    def x(self) -> np.ndarray:
        """Every image at once, float32 [N, C, H, W]; use ``batches`` for large sets."""
        return self.images[:]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, limit: int | None) -> "ArrayDataset":
        """The first ``limit`` examples (all of them when limit is None)."""
        if limit is None or limit >= len(self):
            return self
        if limit <= 0:
            raise UserError(f"`limit` must be positive, got {limit}", "limit")
        if isinstance(self.images, ArrayImages):
            images: ArrayImages | FileImages = ArrayImages(self.images.array[:limit])
        else:
            images = FileImages(self.images.paths[:limit], self.shape[0], self.shape[1:], self.images.channel_order)
        return ArrayDataset(images, self.y[:limit], self.classes, self.name)

    def in_channel_order(self, order: str | None) -> "ArrayDataset":
        """This data set for a model taking ``order`` ("rgb", "bgr"; None: rgb): image files are decoded in it.

        Arrays are returned as they are: they are taken to be in the model's order already.
        """
        if not isinstance(self.images, FileImages) or self.images.channel_order == (order or "rgb"):
            return self
        return replace(self, images=FileImages(self.images.paths, self.shape[0], self.shape[1:], order or "rgb"))

    def batches(self, batch_size: int, indices: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(x, y) batches in order, over ``indices`` (default: all)."""
        order = np.arange(len(self)) if indices is None else np.asarray(indices)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            yield self.images[chunk], self.y[chunk]


def load_dataset(spec: str, split: str = "train") -> ArrayDataset:
    """Load the ``split`` ("train" or "test") of the data set named by ``spec`` (see module doc)."""
    if split not in SPLITS:
        raise UserError(f"`split` must be one of {SPLITS}, got {split!r}", "split")
    if spec.lower() == "fashion-mnist":
        return _load_fashion_mnist(split)
    path = Path(spec)
    if path.is_dir():
        return _load_image_folder(path, split)
    if path.suffix == ".npz":
        if not path.is_file():
            raise UserError(f"cannot read data set {path}: no such file")
        return _load_npz(path, split)
    if not path.exists():
        raise UserError(f"unknown data set {spec!r}: give 'fashion-mnist', an image folder or an .npz file")
    raise UserError(f"cannot use {spec} as a data set: expected an image folder or an .npz file")


def check_compatible(dataset: ArrayDataset, in_channels: int, num_classes: int | None,
                     input_hw: Sequence[int] | None = None) -> None:
    """Raise UserError when the data set's images or labels cannot feed the model (``num_classes`` None:
    its labels go unused)."""
    channels, h, w = dataset.shape
    if channels != in_channels:
        raise UserError(f"data set {dataset.name} has {channels}-channel images, the model expects {in_channels}")
    if num_classes is not None and len(dataset.classes) != num_classes:
        raise UserError(f"data set {dataset.name} has {len(dataset.classes)} classes, the model has {num_classes} outputs")
    if input_hw is not None and (h, w) != tuple(input_hw):
        raise UserError(f"data set {dataset.name} has {h}x{w} images, the model expects {input_hw[0]}x{input_hw[1]}")


def _to_unit_float(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    return x.astype(np.float32, copy=False)


def _load_fashion_mnist(split: str) -> ArrayDataset:
    prefix = "train" if split == "train" else "t10k"
    images_path = FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz"
    labels_path = FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz"
    if not images_path.is_file() or not labels_path.is_file():
        raise UserError(f"Fashion-MNIST is not installed (no {images_path}): run `sudo apt-get install dataset-fashion-mnist`")
    images = read_idx(images_path)
    labels = read_idx(labels_path).astype(np.int64)
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise UserError(f"{images_path} and {labels_path} do not form an image set")
    return ArrayDataset(ArrayImages(images[:, None]), labels, list(FASHION_MNIST_CLASSES), f"fashion-mnist/{split}")


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (the MNIST format), gzipped or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise UserError(f"{path} is not an idx file")
    dtype, ndim = np.dtype(_IDX_TYPES[data[2]]), data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = data[4 + 4 * ndim:]
    if len(body) != int(np.prod(dims)) * dtype.itemsize:
        raise UserError(f"{path} is truncated: header says {dims}")
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _load_npz(path: Path, split: str) -> ArrayDataset:
    with NpzReader(path) as archive:
        keys = set(archive.files)
        if {f"x_{split}", f"y_{split}"} <= keys:
            x, y = archive[f"x_{split}"], archive[f"y_{split}"]
        elif {"x", "y"} <= keys:
            x, y = archive["x"], archive["y"]
        else:
            raise UserError(f"{path} needs arrays 'x' and 'y' (or 'x_{split}' and 'y_{split}'); it has {sorted(keys)}")
        classes = [str(c) for c in archive["classes"].tolist()] if "classes" in keys else None
    x = _to_nchw(x, path)
    if not (np.issubdtype(x.dtype, np.floating) or x.dtype == np.uint8):
        raise UserError(f"{path}: images must be uint8 or float, got {x.dtype}")
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != x.shape[0] or not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{path}: 'y' must hold one integer label per image ({x.shape[0]}), got {y.dtype} {y.shape}")
    y = y.astype(np.int64)
    if classes is None:
        classes = [str(i) for i in range(int(y.max()) + 1 if len(y) else 0)]
    if len(y) and (y.min() < 0 or y.max() >= len(classes)):
        raise UserError(f"{path}: labels must lie in [0, {len(classes)}), found {y.min()}..{y.max()}")
    return ArrayDataset(ArrayImages(x), y, classes, f"{path.name}/{split}")


def _to_nchw(x: np.ndarray, path: Path) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        if x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
            return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return x
    raise UserError(f"{path}: images must be [N, H, W], [N, C, H, W] or [N, H, W, C], got shape {x.shape}")


def _load_image_folder(root: Path, split: str) -> ArrayDataset:
    if (root / "train").is_dir() and (root / "test").is_dir():
        root = root / split
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir())
    if not class_dirs:
        raise UserError(f"image folder {root} has no class subfolders (expected {root}/<class>/*.png)")
    paths, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise UserError(f"image folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    channels, hw = _probe_image(paths[0])
    return ArrayDataset(FileImages(paths, channels, hw), np.asarray(labels, np.int64),
                        [d.name for d in class_dirs], f"{root.name}/{split}")


def _probe_image(path: Path) -> tuple[int, tuple[int, int]]:
    """Channel count and (H, W) of the folder, from its first image: grey stays 1 channel."""
    with _image(path) as img:
        channels = 1 if img.mode in ("1", "L", "I", "I;16", "F") else 3
        return channels, (img.size[1], img.size[0])


@contextlib.contextmanager
def _image(path: Path) -> Iterator["PIL.Image.Image"]:  # noqa: F821
    """An image of the folder, opened within the pixel limit; unreadable files are a UserError."""
    from PIL import UnidentifiedImageError  # Pillow only when an image folder is used

    try:
        with opened_image(path) as img:
            yield img
    except (OSError, UnidentifiedImageError) as exc:
        raise UserError(f"cannot read image {path}: {exc}") from exc
