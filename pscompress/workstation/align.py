"""Placing a periodic pattern on a conv's weights: align it to a dense layer, or recognise it.

Kernel (o, i) uses support ``(o + i + shift) mod P``, so the kernels fall into P residue
classes of ``(o + i) mod P`` and a placement (support order + shift) is just an assignment
of the P supports to those classes. Aligning picks the assignment that keeps the most weight
energy (sum of squared kept weights); recognising reads the assignment off the zeros of a
layer that is already periodic sparse.

Every placement is written in one normal form so that equal masks give equal results: the
support sequence is the rotation that is lexicographically smallest (supports compared as
sorted position tuples), with the smallest shift on ties.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from pscompress.core.errors import UserError
from pscompress.core.patterns import PatternSet

# The longest period recognition tries. The pSConv papers use period 8 and every built-in family
# has a period of at most 9; a longer period leaves so few kernels in each class of (o + i) mod P
# that the few exact zeros of a trained dense layer fit it by chance (issue 14: two EfficientNet
# layers with 8 and 15 zeros "recognised" with periods 80 and 102, keeping 99% of their weights).
MAX_RECOGNISED_PERIOD = 16
# The densest layout kept as recognised (sparsify): 8 of 9 positions per kernel on average, the
# densest built-in family (8of9). A denser "pattern" skips almost no work: such a layer is dense
# with a few zeros, and gets the requested pattern instead.
MAX_RECOGNISED_DENSITY = 8 / 9


def recognised_density_limit(kernel_size: Sequence[int]) -> float:
    """The densest layout kept as recognised for a kernel: 8/9, or all positions but one of a smaller
    kernel ((N - 1) / N: 3/4 for 2x2, 2/3 for 1x3, 0 for 1x1, where no layout is sparse)."""
    n = int(kernel_size[0]) * int(kernel_size[1])
    return min(MAX_RECOGNISED_DENSITY, (n - 1) / n)


@dataclass(frozen=True)
class Placement:
    """A pattern set in the order a layer uses it, its shift, and the weight energy it keeps."""

    pattern: PatternSet
    shift: int
    retained_energy: float  # fraction of sum(w^2) inside the mask; 1.0 for an all-zero layer


def class_energy(weight: np.ndarray, pattern: PatternSet) -> np.ndarray:
    """Float [P, P]: entry (r, j) is the energy support j keeps on the kernels with (o + i) mod P == r."""
    out_channels, in_per_group = weight.shape[:2]
    squares = np.asarray(weight, dtype=np.float64).reshape(out_channels * in_per_group, -1) ** 2
    classes = pattern.residues(out_channels, in_per_group).ravel()
    # per_class[r, p]: energy at kernel position p summed over the kernels of class r
    per_class = np.stack(
        [np.bincount(classes, weights=squares[:, p], minlength=pattern.period) for p in range(squares.shape[1])],
        axis=1,
    )
    return per_class @ pattern.support_table().T.astype(np.float64)


def align(weight: np.ndarray, pattern: PatternSet) -> Placement:
    """The order and shift of ``pattern``'s supports that keep the most energy of ``weight`` [M, Cg, KH, KW]."""
    _check_shape(weight, pattern)
    energy = class_energy(weight, pattern)
    classes, chosen = linear_sum_assignment(energy, maximize=True)
    by_class = [pattern.supports[j] for j in chosen[np.argsort(classes)]]
    placed, shift = normal_form(pattern.kernel_size, by_class)
    total = float(np.square(weight, dtype=np.float64).sum())
    kept = float(energy[classes, chosen].sum())
    return Placement(placed, shift, kept / total if total > 0 else 1.0)


def default_placement(weight: np.ndarray, pattern: PatternSet) -> Placement:
    """``pattern`` as given with shift 0, and the energy it keeps (no alignment)."""
    _check_shape(weight, pattern)
    total = float(np.square(weight, dtype=np.float64).sum())
    kept = float(np.trace(class_energy(weight, pattern)))
    return Placement(pattern, 0, kept / total if total > 0 else 1.0)


def recognise(weight: np.ndarray, max_period: int = MAX_RECOGNISED_PERIOD) -> Placement | None:
    """The placement whose mask equals the non-zeros of ``weight`` exactly, or None.

    Tries periods 1, 2, ... (up to ``max_period``, see ``MAX_RECOGNISED_PERIOD``) and returns
    the first whose class unions of non-zero positions keep no zero weight. A layer with no
    zero weight is dense, not pSConv, and an all-zero layer reveals no pattern: both give None.
    """
    out_channels, in_per_group, kh, kw = weight.shape
    nonzero = (np.asarray(weight) != 0).reshape(out_channels, in_per_group, kh * kw)
    if nonzero.all() or not nonzero.any():
        return None
    # The class of kernel (o, i) depends on d = o + i only: fold each anti-diagonal d first.
    diagonals = out_channels + in_per_group - 1
    diagonal_union = np.zeros((diagonals, kh * kw), dtype=bool)
    for o in range(out_channels):
        diagonal_union[o : o + in_per_group] |= nonzero[o]
    kernels_on_diagonal = np.convolve(np.ones(out_channels, dtype=np.int64), np.ones(in_per_group, dtype=np.int64))
    target = int(nonzero.sum())
    # Beyond M + Cg - 1 every diagonal is its own class already: longer periods cannot do better.
    for period in range(1, min(max_period, diagonals) + 1):
        padded = np.zeros((-(-diagonals // period) * period, kh * kw), dtype=bool)
        padded[:diagonals] = diagonal_union
        class_union = padded.reshape(-1, period, kh * kw).any(axis=0)
        if not class_union.any(axis=1).all():
            continue  # a class with no non-zero weight at all cannot be given a support
        kept = int((kernels_on_diagonal * class_union[np.arange(diagonals) % period].sum(axis=1)).sum())
        if kept == target:
            by_class = [frozenset(np.flatnonzero(row).tolist()) for row in class_union]
            placed, shift = normal_form((kh, kw), by_class)
            return Placement(placed, shift, 1.0)
    return None


def normal_form(kernel_size: Sequence[int], by_class: Sequence[frozenset[int]]) -> tuple[PatternSet, int]:
    """(pattern, shift) such that kernels with (o + i) mod P == r use ``by_class[r]``, in normal form."""
    period = len(by_class)
    keys = [tuple(sorted(s)) for s in by_class]
    # With shift s the sequence is t_k = by_class[(k - s) mod P]: pick the smallest such rotation.
    shift = min(range(period), key=lambda s: ([keys[(k - s) % period] for k in range(period)], s))
    supports = tuple(by_class[(k - shift) % period] for k in range(period))
    return PatternSet((int(kernel_size[0]), int(kernel_size[1])), supports), shift


def _check_shape(weight: np.ndarray, pattern: PatternSet) -> None:
    if weight.ndim != 4 or tuple(weight.shape[2:]) != tuple(pattern.kernel_size):
        raise UserError(f"weight of shape {tuple(weight.shape)} does not fit a {pattern.kernel_size} pattern")
