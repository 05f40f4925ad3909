"""Opening the files a user hands us so that their headers cannot decide how much we allocate.

- zip archives (torch.save's .pt, numpy's .npz): the central directory is checked before any
  member is inflated: the sum of uncompressed sizes, and each member's compression ratio.
- .npy arrays, alone or inside an .npz: the header (dtype, shape) is checked before the data
  is read: no Python objects, no more bytes than the file or member holds, within the limit.
- images: the size in the header is checked before the pixels are decoded.

And turning a file into what a model takes (``load_input``, then ``normalize``), following the
``preprocess`` metadata (pscompress.core.metadata): an image file is converted to the model's
channels, resized (shorter side to ``resize`` and a centre crop, else stretched to H x W),
put in ``channel_order`` and scaled to [0, 1]; an .npy array is taken as it is (already the
model's size and channel order, uint8 or [0, 1]). ``normalize`` then computes (x - mean) / std:
the predictors call it on every input, so it runs exactly once whichever way the images came.

Limits are in pscompress.core.limits. numpy and Pillow only (board-side commands use this).
"""
from __future__ import annotations

import contextlib
import os
import warnings
import zipfile
from pathlib import Path
from typing import IO, Any, Iterator, Mapping

import numpy as np
from numpy.lib import format as npy_format

from pscompress.core.errors import UserError
from pscompress.core.limits import (check_bytes, check_input_shape, check_pixels, check_ratio, max_image_pixels,
                                    shape_bytes, too_many_pixels)

_IMAGE_MODES = {1: "L", 3: "RGB"}

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


def check_zip(path: str | os.PathLike | IO[bytes], what: str | None = None) -> None:
    """Refuse a zip archive (a path or a seekable binary file) that would inflate beyond the limits; nothing
    is decompressed."""
    what = what or str(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:  # ValueError: a malformed central directory
        raise UserError(f"{what} is a damaged zip archive ({exc})") from exc
    # The sum counts members that overlap in the file once each, as inflating them would.
    check_bytes(what, sum(m.file_size for m in members))
    for member in members:
        check_ratio(f"{what}: member {member.filename}", member.compress_size, member.file_size)


def parse_input_shape(text: str) -> tuple[int, int, int]:
    """'C,H,W' or 'CxHxW' -> (C, H, W)."""
    parts = text.replace("x", ",").split(",")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise UserError(f"bad input shape {text!r}: expected C,H,W with positive integers, such as 3,32,32")
    return check_input_shape(shape)


def load_npy(path: str | os.PathLike) -> np.ndarray:
    """A numeric array from an .npy file, its header checked before the data is read."""
    path = Path(path)
    with open(path, "rb") as f:
        start = f.read(len(_NPY_MAGIC))
        if start.startswith(_ZIP_MAGIC[:2]):
            raise UserError(f"{path} is a zip archive (an .npz renamed?), not an .npy array")
        f.seek(0)
        _check_header(f, str(path), os.fstat(f.fileno()).st_size)
        f.seek(0)
        return npy_format.read_array(f, allow_pickle=False)


class NpzReader:
    """The arrays of an .npz file, each read only when asked for and only after its header is checked."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        check_zip(self.path)
        self._archive = zipfile.ZipFile(self.path)
        self.files = [name[:-4] for name in self._archive.namelist() if name.endswith(".npy")]

    def __getitem__(self, key: str) -> np.ndarray:
        member = self._archive.getinfo(f"{key}.npy")
        what = f"{self.path}: array {key!r} ({member.filename})"
        try:
            with self._archive.open(member) as f:
                _check_header(f, what, member.file_size)
                f.seek(0)
                return npy_format.read_array(f, allow_pickle=False)
        except (zipfile.BadZipFile, EOFError, OSError) as exc:  # a bad CRC, a truncated member
            raise UserError(f"{what} is damaged ({exc})") from exc

    def close(self) -> None:
        self._archive.close()

    def __enter__(self) -> "NpzReader":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _check_header(f: IO[bytes], what: str, available: int) -> None:
    """Raise UserError unless the .npy stream ``f`` holds a numeric array of at most ``available`` bytes."""
    try:
        version = npy_format.read_magic(f)
        read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        shape, _, dtype = read_header(f)
    except (ValueError, SyntaxError, EOFError, OSError) as exc:
        raise UserError(f"{what} is not an .npy array ({exc})") from exc
    if dtype.hasobject:
        raise UserError(f"{what} holds Python objects (dtype {dtype}), not numbers: store a numeric array")
    size = shape_bytes(shape, dtype.itemsize)
    if size > available - f.tell():
        raise UserError(f"{what} is truncated: its header promises {shape} {dtype} ({size:,} bytes), "
                        f"it holds {max(available - f.tell(), 0):,}")
    check_bytes(what, size)


@contextlib.contextmanager
def opened_image(path: str | os.PathLike) -> Iterator["PIL.Image.Image"]:  # noqa: F821
    """``path`` opened with Pillow, refused before decoding when it has more pixels than allowed.

    Decode (convert, load) inside the block: Pillow's own checks of later frames use the same
    limit. Pillow's errors for unreadable files (UnidentifiedImageError, OSError) pass through.
    """
    from PIL import Image

    limit = max_image_pixels()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            Image.MAX_IMAGE_PIXELS = None  # opening reads the header only: our check, with our message, comes next
            with Image.open(path) as image:
                check_pixels(str(path), *image.size)
                # Pillow warns beyond MAX_IMAGE_PIXELS (an error here) and refuses beyond twice that:
                # its checks of what it decodes next (other frames, tiles) then use our limit too.
                Image.MAX_IMAGE_PIXELS = limit
                yield image
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise too_many_pixels(str(path)) from exc
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def load_input(path: str | os.PathLike, input_shape: tuple[int, int, int],
               preprocess: Mapping[str, Any] | None = None) -> np.ndarray:
    """Images for a model from a file, float32 [N, C, H, W] in [0, 1] (not yet normalised).

    An image (any format Pillow reads) is converted to the model's channels (1: grayscale, 3:
    RGB), resized as ``preprocess`` says and put in its channel order. Arrays (.npy) may be
    [H, W], [C, H, W] or [N, C, H, W] at the model's size and in its channel order; uint8
    arrays are scaled by 1/255, float arrays must already be in [0, 1].
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"cannot read {path}: no such file")
    if path.suffix.lower() == ".npy":
        return _array_input(path, input_shape)
    from PIL import UnidentifiedImageError

    channels = input_shape[0]
    if channels not in _IMAGE_MODES:
        raise UserError(f"the model takes {channels}-channel input: give a .npy array instead of an image")
    try:
        with opened_image(path) as image:
            pixels = image_pixels(image, input_shape, preprocess or {})
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"{path} is neither an image Pillow can read nor a .npy file") from exc
    return pixels[None]


def image_pixels(image: "PIL.Image.Image", input_shape: tuple[int, int, int],  # noqa: F821
                 preprocess: Mapping[str, Any]) -> np.ndarray:
    """One decoded image as the model's float32 [C, H, W] in [0, 1]: channels, size and channel order."""
    from PIL import Image

    channels, height, width = input_shape
    image = image.convert(_IMAGE_MODES[channels])
    resize = preprocess.get("resize")
    if resize:
        scale = resize / min(image.size)
        scaled = (max(width, round(image.size[0] * scale)), max(height, round(image.size[1] * scale)))
        check_pixels("the resized image", *scaled)
        image = image.resize(scaled, Image.BILINEAR)
        left, top = (scaled[0] - width) // 2, (scaled[1] - height) // 2
        image = image.crop((left, top, left + width, top + height))
    else:
        image = image.resize((width, height), Image.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    pixels = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    if preprocess.get("channel_order") == "bgr":
        pixels = pixels[::-1]
    return np.ascontiguousarray(pixels)


def normalize(x: np.ndarray, preprocess: Mapping[str, Any] | None) -> np.ndarray:
    """(x - mean) / std per channel of float32 images [N, C, H, W] in [0, 1]; x itself without mean or std."""
    preprocess = preprocess or {}
    if "mean" not in preprocess and "std" not in preprocess:
        return x
    x = np.asarray(x, dtype=np.float32)
    channels = len(preprocess.get("mean") or preprocess["std"])
    if x.ndim != 4 or x.shape[1] != channels:
        raise UserError(f"the model normalises {channels}-channel images [N, C, H, W], got an array of shape {list(x.shape)}")
    mean = np.asarray(preprocess.get("mean", [0.0] * channels), np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(preprocess.get("std", [1.0] * channels), np.float32).reshape(1, -1, 1, 1)
    return (x - mean) / std


def _array_input(path: Path, input_shape: tuple[int, int, int]) -> np.ndarray:
    array = load_npy(path)
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    elif not np.issubdtype(array.dtype, np.floating):
        raise UserError(f"{path} holds {array.dtype} values: use uint8 (0..255) or float (0..1)")
    while array.ndim < 4:
        array = array[None]
    if tuple(array.shape[1:]) != tuple(input_shape):
        raise UserError(f"{path} has shape {list(array.shape)}; the model takes [N, {', '.join(map(str, input_shape))}]")
    if array.size and (array.min() < 0 or array.max() > 1):
        raise UserError(f"{path} has values outside [0, 1]: models take images scaled to [0, 1]")
    return array.astype(np.float32)
