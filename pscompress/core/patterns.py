"""Periodic kernel supports: the pattern families and the masks they induce.

A pattern set is a sequence of P supports over the K*K kernel positions (row-major,
0 = top-left). Kernel (o, i) -- output channel o, input channel i within its group --
keeps the positions of support ``(o + i + shift) mod P``. Nothing per weight is stored.

This module needs only numpy: the exporters and the board-side tools use it too.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pscompress.core.errors import UserError

# Built-in 3x3 families: k -> the supports of "kof9", listed in their default order.
# Every family's union covers all nine positions; see docs/patterns.md for pictures.
_FAMILIES_3X3: dict[int, tuple[tuple[int, ...], ...]] = {
    1: tuple((p,) for p in range(9)),
    2: ((4, 0), (4, 1), (4, 2), (4, 3), (4, 5), (4, 6), (4, 7), (4, 8)),
    3: ((3, 4, 5), (1, 4, 7), (0, 4, 8), (2, 4, 6)),
    4: ((0, 1, 3, 4), (1, 2, 4, 5), (3, 4, 6, 7), (4, 5, 7, 8)),
    5: ((1, 3, 4, 5, 7), (0, 2, 4, 6, 8)),
    6: ((0, 1, 2, 3, 4, 5), (3, 4, 5, 6, 7, 8), (0, 1, 3, 4, 6, 7), (1, 2, 4, 5, 7, 8)),
    7: ((1, 2, 3, 4, 5, 6, 7), (0, 1, 3, 4, 5, 7, 8)),
    8: tuple(tuple(p for p in range(9) if p != corner) for corner in (0, 2, 6, 8)),
    9: (tuple(range(9)),),
}

# Caps that keep every mask a 63-bit integer and every period small enough to search.
MAX_KERNEL_POSITIONS = 63
MAX_PERIOD = 256

_FAMILY_RE = re.compile(r"^(\d+)of(\d+)$")


@dataclass(frozen=True)
class PatternSet:
    """A periodic sequence of supports for a (kh, kw) kernel."""

    kernel_size: tuple[int, int]
    supports: tuple[frozenset[int], ...]

    def __post_init__(self) -> None:
        kh, kw = self.kernel_size
        n = _check_kernel_size(kh, kw)
        if not self.supports:
            raise UserError("a pattern set needs at least one support")
        if len(self.supports) > MAX_PERIOD:
            raise UserError(f"period {len(self.supports)} is larger than the maximum {MAX_PERIOD}")
        for s in self.supports:
            if not s:
                raise UserError("a support must keep at least one position")
            bad = [p for p in s if not 0 <= p < n]
            if bad:
                raise UserError(f"position {bad[0]} is outside a {kh}x{kw} kernel (valid: 0..{n - 1})")

    @property
    def period(self) -> int:
        return len(self.supports)

    @property
    def positions(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]

    @property
    def bitmasks(self) -> list[int]:
        """One integer per support, bit p set when position p is kept (the operator's encoding)."""
        return [sum(1 << p for p in s) for s in self.supports]

    @classmethod
    def from_bitmasks(cls, kernel_size: Sequence[int], bitmasks: Sequence[int]) -> "PatternSet":
        kh, kw = int(kernel_size[0]), int(kernel_size[1])
        n = _check_kernel_size(kh, kw)  # before 1 << n: a huge n would take all memory
        supports = []
        for m in bitmasks:
            m = int(m)
            if m <= 0 or m >= (1 << n):
                raise UserError(f"pattern bitmask {m} is outside [1, 2^{n})")
            supports.append(frozenset(p for p in range(n) if m >> p & 1))
        return cls((kh, kw), tuple(supports))

    def covers_kernel(self) -> bool:
        return frozenset().union(*self.supports) == frozenset(range(self.positions))

    def support_table(self) -> np.ndarray:
        """Boolean [P, K*K]: row j marks the positions of support j."""
        table = np.zeros((self.period, self.positions), dtype=bool)
        for j, s in enumerate(self.supports):
            table[j, sorted(s)] = True
        return table

    def residues(self, out_channels: int, in_per_group: int, shift: int = 0) -> np.ndarray:
        """Int [M, Cg]: the support index of each kernel, (o + i + shift) mod P."""
        o = np.arange(out_channels)[:, None]
        i = np.arange(in_per_group)[None, :]
        return (o + i + shift) % self.period

    def mask(self, out_channels: int, in_per_group: int, shift: int = 0) -> np.ndarray:
        """Boolean [M, Cg, KH, KW] mask of the kept weights."""
        if not 0 <= shift < self.period:
            raise UserError(f"shift {shift} is outside [0, {self.period})")
        kh, kw = self.kernel_size
        table = self.support_table()
        return table[self.residues(out_channels, in_per_group, shift)].reshape(out_channels, in_per_group, kh, kw)

    def density(self) -> float:
        """Fraction of weights kept, averaged over one period."""
        return sum(len(s) for s in self.supports) / (self.period * self.positions)

    def describe(self) -> str:
        return "/".join(",".join(str(p) for p in sorted(s)) for s in self.supports)


def _check_kernel_size(kh: int, kw: int) -> int:
    """The number of positions of a kh x kw kernel, if supported."""
    if kh < 1 or kw < 1 or kh * kw > MAX_KERNEL_POSITIONS:
        raise UserError(f"kernel size {kh}x{kw} is not supported (at most {MAX_KERNEL_POSITIONS} positions)")
    return kh * kw


def family_supports(keep: int, positions: int = 9) -> tuple[tuple[int, ...], ...]:
    """The supports of the built-in family "<keep>of<positions>"."""
    if positions != 9:
        raise UserError(f"built-in families exist for 3x3 kernels only (\"kof9\"), not \"{keep}of{positions}\"")
    if keep not in _FAMILIES_3X3:
        raise UserError(f"\"{keep}of9\" is not a pattern family: keep between 1 and 9 of 9 positions")
    return _FAMILIES_3X3[keep]


def parse_pattern(spec: str, period: int | None = None, dense_kernel: bool = False) -> PatternSet:
    """Build a PatternSet from a CLI/API spec.

    ``spec`` is a family name such as ``4of9`` or an explicit list of supports over a 3x3
    kernel, supports separated by ``/`` and positions by ``,`` (``0,1,3,4/4,5,7,8``).
    ``period`` repeats the supports cyclically to that length; ``dense_kernel`` makes the
    last kernel of each period dense (the reference's "with 3x3" variants).
    """
    spec = spec.strip()
    match = _FAMILY_RE.match(spec)
    if match:
        supports = family_supports(int(match.group(1)), int(match.group(2)))
    elif re.fullmatch(r"[\d,/\s]+", spec or "x"):
        supports = tuple(_parse_support(part) for part in spec.split("/"))
    else:
        raise UserError(f"bad pattern {spec!r}: use a family such as 4of9 or explicit supports such as 0,1,3,4/4,5,7,8")
    return _with_period(PatternSet((3, 3), tuple(frozenset(s) for s in supports)), period, dense_kernel)


def _parse_support(text: str) -> tuple[int, ...]:
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in items):
        raise UserError("bad pattern: an empty support or position in the explicit list")
    if not all(t.isdigit() for t in items):
        raise UserError(f"bad pattern: positions in support {text.strip()!r} must be separated by commas")
    positions = tuple(int(t) for t in items)
    if len(set(positions)) != len(positions):
        raise UserError(f"bad pattern: position repeated in support {text.strip()!r}")
    return positions


def _with_period(base: PatternSet, period: int | None, dense_kernel: bool) -> PatternSet:
    if not base.covers_kernel():
        missing = sorted(set(range(base.positions)).difference(*base.supports))
        raise UserError(f"bad pattern: position(s) {', '.join(map(str, missing))} are in no support, so those weights could never be used")
    sparse = list(base.supports)
    length = period if period is not None else len(sparse) + (1 if dense_kernel else 0)
    if length < 1 or length > MAX_PERIOD:
        raise UserError(f"period {length} is outside [1, {MAX_PERIOD}]")
    n_sparse = length - 1 if dense_kernel else length
    if dense_kernel and n_sparse < 1:
        raise UserError("a period with a dense kernel needs a length of at least 2")
    supports = [sparse[j % len(sparse)] for j in range(n_sparse)]
    if dense_kernel:
        supports.append(frozenset(range(base.positions)))
    result = PatternSet(base.kernel_size, tuple(supports))
    if not result.covers_kernel():
        raise UserError(
            f"period {length} uses only {n_sparse} of the {len(sparse)} supports, "
            "so some kernel positions would never be used: choose a longer period or --dense-kernel"
        )
    return result


def pattern_name(kernel_shape, bitmasks) -> str:
    """A built-in family's name ("4of9") for these supports in any order, else the supports themselves."""
    pattern = PatternSet.from_bitmasks(kernel_shape, bitmasks)
    if pattern.kernel_size == (3, 3):
        for keep in range(1, 10):
            # Alignment reorders a family's supports per layer: it is still that family.
            if sorted(parse_pattern(f"{keep}of9").bitmasks) == sorted(pattern.bitmasks):
                return f"{keep}of9"
    return pattern.describe()
