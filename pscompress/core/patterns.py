"""Periodic kernel supports: the pattern families and the masks they induce.

A pattern set is a sequence of P supports over the KH*KW kernel positions (row-major,
0 = top-left). Kernel (o, i) -- output channel o, input channel i within its group --
keeps the positions of support ``(o + i + shift) mod P``. Nothing per weight is stored.

This module needs only numpy: the exporters and the board-side tools use it too.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

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
_PREFIX_RE = re.compile(r"^(\d+)\s*x\s*(\d+)\s*:(.*)$", re.DOTALL)


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


def family_supports(keep: int, kernel_size: Sequence[int] = (3, 3)) -> tuple[tuple[int, ...], ...]:
    """The supports of the built-in family "<keep>of<KH*KW>" for a ``kernel_size`` kernel, in order.

    3x3 kernels have the hand-made table above. Any other kernel has the *nearest-positions*
    family (docs/patterns.md): the ``keep`` positions nearest to each corner of the kernel
    (nearest by squared distance, ties to the position nearer the kernel's centre, then
    row-major), mirror images of one another, when together they cover the kernel; otherwise
    the ``keep`` positions nearest to every position of the kernel, in row-major order of the
    anchor. Repeated supports are listed once.
    """
    kh, kw = int(kernel_size[0]), int(kernel_size[1])
    n = _check_kernel_size(kh, kw)
    if not 1 <= keep <= n:
        raise UserError(f"\"{keep}of{n}\" is not a pattern family: keep between 1 and {n} of {n} positions")
    if (kh, kw) == (3, 3):
        return _FAMILIES_3X3[keep]
    corners = _distinct(_mirror(_nearest(keep, kh, kw, (0, 0)), kh, kw, flip_rows, flip_cols)
                        for flip_rows in (False, True) for flip_cols in (False, True))
    if set().union(*corners) == set(range(n)):
        return corners
    return _distinct(_nearest(keep, kh, kw, divmod(p, kw)) for p in range(n))


def _nearest(keep: int, kh: int, kw: int, anchor: tuple[int, int]) -> tuple[int, ...]:
    """The ``keep`` positions nearest to ``anchor`` (row, col); ties: nearer the centre, then row-major."""
    def key(p: int) -> tuple[int, float, int]:
        r, c = divmod(p, kw)
        return ((r - anchor[0]) ** 2 + (c - anchor[1]) ** 2, (r - (kh - 1) / 2) ** 2 + (c - (kw - 1) / 2) ** 2, p)
    return tuple(sorted(sorted(range(kh * kw), key=key)[:keep]))


def _mirror(support: tuple[int, ...], kh: int, kw: int, flip_rows: bool, flip_cols: bool) -> tuple[int, ...]:
    def flip(p: int) -> int:
        r, c = divmod(p, kw)
        return (kh - 1 - r if flip_rows else r) * kw + (kw - 1 - c if flip_cols else c)
    return tuple(sorted(flip(p) for p in support))


def _distinct(supports: Iterable[tuple[int, ...]]) -> tuple[tuple[int, ...], ...]:
    return tuple(dict.fromkeys(supports))


def parse_pattern(spec: str, period: int | None = None, dense_kernel: bool = False,
                  kernel_size: Sequence[int] | None = None) -> PatternSet:
    """Build a PatternSet from a CLI/API spec.

    ``spec`` is a family name such as ``4of9`` (k of the KH*KW positions) or an explicit list
    of supports, separated by ``/`` and positions by ``,`` (``0,1,3,4/4,5,7,8``), optionally
    prefixed by the kernel shape (``5x5:13of25``, ``2x2:0,1/2,3``). The shape is the prefix,
    else ``kernel_size``, else 3x3 for an explicit list and the square kernel of N positions
    for a family ``kofN``. ``period`` repeats the supports cyclically to that length;
    ``dense_kernel`` makes the last kernel of each period dense (the reference's "with 3x3" variants).
    """
    prefix, body = split_kernel_prefix(spec)
    shape = prefix or (tuple(int(k) for k in kernel_size) if kernel_size is not None else None)
    if prefix and kernel_size is not None and tuple(kernel_size) != prefix:
        raise UserError(f"pattern {spec.strip()!r} is for {_shape_text(prefix)} kernels, "
                        f"not {_shape_text(kernel_size)}")
    match = _FAMILY_RE.match(body)
    if match:
        keep, n = int(match.group(1)), int(match.group(2))
        shape = shape or _square(n, body)
        if n != shape[0] * shape[1]:
            raise UserError(f"pattern {body!r} does not fit a {_shape_text(shape)} kernel: "
                            f"use k of {shape[0] * shape[1]} positions, e.g. {max(1, shape[0] * shape[1] // 2)}"
                            f"of{shape[0] * shape[1]}")
        supports = family_supports(keep, shape)
    elif re.fullmatch(r"[\d,/\s]+", body or "x"):
        shape = shape or (3, 3)
        supports = tuple(_parse_support(part) for part in body.split("/"))
    else:
        raise UserError(f"bad pattern {spec.strip()!r}: use a family such as 4of9 or explicit supports such as "
                        "0,1,3,4/4,5,7,8, optionally after a kernel shape (5x5:13of25, 2x2:0,1/2,3)")
    return _with_period(PatternSet(shape, tuple(frozenset(s) for s in supports)), period, dense_kernel,
                        explicit=not match and prefix is None)


def split_kernel_prefix(spec: str) -> tuple[tuple[int, int] | None, str]:
    """(the ``KHxKW:`` prefix of a pattern spec as (KH, KW), or None; the rest of the spec)."""
    match = _PREFIX_RE.match(spec.strip())
    if not match:
        return None, spec.strip()
    shape = (int(match.group(1)), int(match.group(2)))
    _check_kernel_size(*shape)
    return shape, match.group(3).strip()


def family_positions(spec: str) -> int | None:
    """N of an unprefixed family ``kofN`` (which applies to every kernel of N positions), else None."""
    prefix, body = split_kernel_prefix(spec)
    match = _FAMILY_RE.match(body)
    return int(match.group(2)) if match and prefix is None else None


def _square(n: int, body: str) -> tuple[int, int]:
    side = int(round(n ** 0.5))
    if side * side != n:
        raise UserError(f"pattern {body!r}: {n} positions is no square kernel, so name the kernel shape "
                        f"(e.g. 1x{n}:{body})")
    return side, side


def _shape_text(shape: Sequence[int]) -> str:
    return f"{int(shape[0])}x{int(shape[1])}"


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


def _with_period(base: PatternSet, period: int | None, dense_kernel: bool, explicit: bool = False) -> PatternSet:
    if not base.covers_kernel():
        missing = sorted(set(range(base.positions)).difference(*base.supports))
        hint = " (a list without a KHxKW: prefix is for a 3x3 kernel, e.g. write 2x2:0,1/2,3)" if explicit else ""
        raise UserError(f"bad pattern: position(s) {', '.join(map(str, missing))} of the "
                        f"{_shape_text(base.kernel_size)} kernel are in no support, so those weights could never "
                        f"be used{hint}")
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


def pattern_name(kernel_shape: Sequence[int], bitmasks: Sequence[int]) -> str:
    """A built-in family's name ("4of9", "13of25") for these supports in any order, else the supports themselves.

    The name says k of N positions; the kernel shape travels beside it (the operator's kernel_shape).
    """
    pattern = PatternSet.from_bitmasks(kernel_shape, bitmasks)
    sizes = {len(s) for s in pattern.supports}
    if len(sizes) == 1:
        keep = sizes.pop()
        # Alignment reorders a family's supports per layer: it is still that family.
        family = family_supports(keep, pattern.kernel_size)
        if sorted(sum(1 << p for p in s) for s in family) == sorted(pattern.bitmasks):
            return f"{keep}of{pattern.positions}"
    return pattern.describe()


@dataclass(frozen=True)
class PatternChoice:
    """The pattern each kernel shape of a model gets, from one or more specs (``--pattern`` repeated).

    A spec with a ``KHxKW:`` prefix, an explicit list (3x3 without a prefix) or a PatternSet is for
    exactly that kernel shape; an unprefixed family ``kofN`` is for every kernel of N positions
    (``2of3``: 1x3 and 3x1; ``4of9``: 3x3, 1x9 and 9x1). For a given shape an exact entry wins over a
    family. Kernel shapes that no spec is for get none: those convs stay dense.
    """

    exact: dict[tuple[int, int], PatternSet]
    families: dict[int, str]  # N -> "kofN"
    period: int | None = None
    dense_kernel: bool = False

    def for_kernel(self, kernel_size: Sequence[int]) -> PatternSet | None:
        """The pattern for ``kernel_size`` kernels, or None when no spec is for them."""
        shape = (int(kernel_size[0]), int(kernel_size[1]))
        if shape in self.exact:
            return self.exact[shape]
        family = self.families.get(shape[0] * shape[1])
        return None if family is None else parse_pattern(family, self.period, self.dense_kernel, shape)

    def applies_to(self, kernel_size: Sequence[int]) -> bool:
        shape = (int(kernel_size[0]), int(kernel_size[1]))
        return shape in self.exact or shape[0] * shape[1] in self.families

    def unused(self, kernel_sizes: Iterable[Sequence[int]]) -> list[str]:
        """What each spec that fits none of ``kernel_sizes`` is for ("5x5", "kernels of 25 positions")."""
        shapes = {(int(k[0]), int(k[1])) for k in kernel_sizes}
        return [_shape_text(s) for s in self.exact if s not in shapes] + \
            [f"kernels of {n} positions" for n in self.families if all(kh * kw != n for kh, kw in shapes)]


def choose_patterns(specs: "str | PatternSet | Sequence[str | PatternSet]", period: int | None = None,
                    dense_kernel: bool = False) -> PatternChoice:
    """A PatternChoice from one spec or several (at most one per kernel shape, one family per N)."""
    items = [specs] if isinstance(specs, (str, PatternSet)) else list(specs)
    if not items:
        raise UserError("give at least one pattern")
    exact: dict[tuple[int, int], PatternSet] = {}
    families: dict[int, str] = {}
    for item in items:
        if isinstance(item, PatternSet):
            if period is not None or dense_kernel:
                raise UserError("`period` and `dense_kernel` apply to a pattern spec string, not to a PatternSet",
                                "period", "dense_kernel")
            key, value, table = item.kernel_size, item, exact
        elif (n := family_positions(item)) is not None:
            keep = int(_FAMILY_RE.match(item.strip()).group(1))
            if n > MAX_KERNEL_POSITIONS:
                raise UserError(f"\"{item.strip()}\": kernels of {n} positions are not supported "
                                f"(at most {MAX_KERNEL_POSITIONS})")
            if not 1 <= keep <= n:
                raise UserError(f"\"{item.strip()}\" is not a pattern family: keep between 1 and {n} of {n} positions")
            key, value, table = n, item.strip(), families
        else:
            value = parse_pattern(item, period, dense_kernel)
            key, table = value.kernel_size, exact
        if key in table:
            what = _shape_text(key) if table is exact else f"kernels of {key} positions"
            raise UserError(f"two patterns for {what}: give one per kernel size")
        table[key] = value
    return PatternChoice(exact, families, period, dense_kernel)
