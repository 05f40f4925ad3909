"""How much a file handed to pscompress may make it allocate, and the checks that enforce it.

A few bytes of header can promise gigabytes: a zip member that inflates 1000-fold, an .npy
header with a huge shape, a PNG of 20000x20000 pixels, a checkpoint or ONNX model whose
metadata asks for a 60000x60000 input. Every such size is checked against a limit here
before anything is allocated. Two limits are the user's to raise, from the environment:

    PSCOMPRESS_MAX_INPUT_BYTES   bytes one input file may take once read (default 512M)
    PSCOMPRESS_MAX_IMAGE_PIXELS  pixels of one image, before it is resized (default 64M)

The others are fixed: they bound what the built-in architectures can use (see README).
numpy-free and torch-free: board-side commands import this.
"""
from __future__ import annotations

import numbers
import os
import re
from typing import Any, Sequence

from pscompress.core.errors import UserError

MAX_INPUT_BYTES_VARIABLE = "PSCOMPRESS_MAX_INPUT_BYTES"
MAX_IMAGE_PIXELS_VARIABLE = "PSCOMPRESS_MAX_IMAGE_PIXELS"
# The largest built-in model (VGG-16) is 60 MB, CIFAR-10's training set as uint8 150 MB:
# 512 MiB admits both with room to spare and still fits a 1 GB board.
DEFAULT_MAX_INPUT_BYTES = 512 << 20
# 64 Mi pixels (8192 x 8192) admits a 48-megapixel photo; decoding one takes about 200 MB.
DEFAULT_MAX_IMAGE_PIXELS = 64 << 20
# A zip member that deflates more than this (and is larger than the floor) is refused: image
# and weight data compress a few times, never a thousandfold. Uncompressed archives
# (torch.save, numpy.savez) are never refused for it.
MAX_COMPRESSION_RATIO = 100
COMPRESSION_RATIO_FLOOR = 1 << 20
# Channels and classes of a model; elements (C x H x W) of one input image. The built-in
# architectures keep the full input resolution through their first stage, so one 2^22-element
# image (3x1182x1182, 1x2048x2048) already costs ResNet-18 about a gigabyte of activations.
MAX_CHANNELS = 65536
MAX_CLASSES = 65536
MAX_INPUT_ELEMENTS = 1 << 22

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024 ** 2, "mb": 1000 ** 2, "mib": 1024 ** 2,
          "g": 1024 ** 3, "gb": 1000 ** 3, "gib": 1024 ** 3}


def parse_size(text: str) -> int | None:
    """300000, 300K, 1.5MiB, 2MB, 4G -> bytes (K, M, G binary; KB, MB, GB decimal); None if not a size."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _UNITS:
        return None
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def max_input_bytes() -> int:
    """The most bytes one input file may take once read: PSCOMPRESS_MAX_INPUT_BYTES, else 512 MiB."""
    return _from_environment(MAX_INPUT_BYTES_VARIABLE, DEFAULT_MAX_INPUT_BYTES)


def max_image_pixels() -> int:
    """The most pixels one image may have: PSCOMPRESS_MAX_IMAGE_PIXELS, else 64 Mi."""
    return _from_environment(MAX_IMAGE_PIXELS_VARIABLE, DEFAULT_MAX_IMAGE_PIXELS)


def _from_environment(variable: str, default: int) -> int:
    text = os.environ.get(variable)
    if text is None or not text.strip():
        return default
    value = parse_size(text)
    if not value:
        raise UserError(f"{variable}={text!r} is not a positive number: use e.g. {variable}=2G (K, M, G: powers of 1024)")
    return value


def check_bytes(what: str, size: int) -> None:
    """Refuse ``what`` when reading it would take more than PSCOMPRESS_MAX_INPUT_BYTES."""
    limit = max_input_bytes()
    if size > limit:
        raise UserError(f"{what} would take {human_bytes(size)} once read, more than the {human_bytes(limit)} "
                        f"allowed: if you trust it, raise {MAX_INPUT_BYTES_VARIABLE} (e.g. "
                        f"{MAX_INPUT_BYTES_VARIABLE}={_suggest(size)})")


def check_pixels(what: str, width: int, height: int) -> None:
    """Refuse an image of more than PSCOMPRESS_MAX_IMAGE_PIXELS."""
    if width * height > max_image_pixels():
        raise too_many_pixels(what, (width, height))


def too_many_pixels(what: str, size: tuple[int, int] | None = None) -> UserError:
    """The error for an image over the pixel limit (size None: a frame Pillow found too large)."""
    limit = max_image_pixels()
    described = f"is {size[0]}x{size[1]} pixels" if size else "holds an image (or frame)"
    wanted = size[0] * size[1] if size else 4 * limit
    return UserError(f"{what} {described}, more than the {limit:,} pixels allowed: if you trust it, raise "
                     f"{MAX_IMAGE_PIXELS_VARIABLE} (e.g. {MAX_IMAGE_PIXELS_VARIABLE}={_suggest(wanted)})")


def check_ratio(what: str, compressed: int, size: int) -> None:
    """Refuse a zip member that inflates suspiciously far (a zip bomb)."""
    if size > COMPRESSION_RATIO_FLOOR and size > MAX_COMPRESSION_RATIO * max(compressed, 1):
        raise UserError(f"{what} is compressed {size // max(compressed, 1):,}:1 ({human_bytes(compressed)} inflating "
                        f"to {human_bytes(size)}), more than the {MAX_COMPRESSION_RATIO}:1 real data reaches: "
                        "refused as a likely zip bomb (if you trust it, save it uncompressed)")


def check_count(what: str, value: Any, limit: int) -> int:
    """An integer in [1, limit] (channels, classes), else UserError."""
    if not is_int(value):
        raise UserError(f"{what} must be an integer, got {value!r}")
    if not 1 <= value <= limit:
        raise UserError(f"{what} must lie in [1, {limit:,}], got {value:,}")
    return int(value)


def check_input_shape(shape: Any, what: str = "input shape") -> tuple[int, int, int]:
    """(C, H, W) as three positive integers whose product fits MAX_INPUT_ELEMENTS, else UserError."""
    if not isinstance(shape, (list, tuple)) or len(shape) != 3 or not all(is_int(d) for d in shape):
        raise UserError(f"{what} {shape!r} is not [C, H, W]: three integers, such as [3, 32, 32]")
    c, h, w = (int(d) for d in shape)
    if min(c, h, w) < 1:
        raise UserError(f"{what} {c}x{h}x{w} is not C,H,W with positive sizes")
    if c > MAX_CHANNELS or c * h * w > MAX_INPUT_ELEMENTS:
        raise UserError(f"{what} {c}x{h}x{w} has {c * h * w:,} elements, more than the {MAX_INPUT_ELEMENTS:,} "
                        f"one input image may have (at most {MAX_CHANNELS:,} channels): downscale the input")
    return c, h, w


def is_int(value: Any) -> bool:
    """An integer (Python or numpy) and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def human_bytes(size: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:,.0f} {unit}" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _suggest(size: float) -> str:
    """A round value above ``size`` to put in the message (bytes or pixels, binary units)."""
    for unit, scale in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30)):
        if size < 1024 * scale:
            return f"{int(size // scale) + 1}{unit}"
    return f"{int(size // (1 << 30)) + 1}G"


def shape_bytes(shape: Sequence[int], itemsize: int) -> int:
    """Bytes of an array of ``shape``; Python ints, so no overflow."""
    total = itemsize
    for d in shape:
        total *= int(d)
    return total
