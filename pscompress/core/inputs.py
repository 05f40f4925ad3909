"""Opening the files a user hands us so that their headers cannot decide how much we allocate.

- zip archives (torch.save's .pt, numpy's .npz): the central directory is checked before any
  member is inflated: the sum of uncompressed sizes, and each member's compression ratio.
- .npy arrays, alone or inside an .npz: the header (dtype, shape) is checked before the data
  is read: no Python objects, no more bytes than the file or member holds, within the limit.
- images: the size in the header is checked before the pixels are decoded.

Limits are in pscompress.core.limits. numpy and Pillow only (board-side commands use this).
"""
from __future__ import annotations

import contextlib
import os
import warnings
import zipfile
from pathlib import Path
from typing import IO, Iterator

import numpy as np
from numpy.lib import format as npy_format

from pscompress.core.errors import UserError
from pscompress.core.limits import check_bytes, check_pixels, check_ratio, max_image_pixels, shape_bytes, too_many_pixels

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


def check_zip(path: str | os.PathLike, what: str | None = None) -> None:
    """Refuse a zip archive that would inflate beyond the limits; nothing is decompressed."""
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
