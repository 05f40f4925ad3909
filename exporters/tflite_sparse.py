"""TFLite sparse tensor encoding: pick the traversal order and per-dimension formats that make
the stored constant smallest, then encode it.

TFLite stores a sparse constant as a tree over its dimensions in some traversal order; each
level is DENSE (all children of every present parent) or SPARSE_CSR (segments + indices of the
children whose sub-tree holds a non-zero). Only the leaves are stored as values. A pSConv filter
has the same zeros in every period, so which order wins depends on the layer shape and pattern:
every candidate is costed exactly from a handful of reductions and the smallest is kept.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

DENSE, SPARSE_CSR = 0, 1

# A flatbuffer vector costs its 4-byte length; a DimensionMetadata table about this much more.
_VECTOR_HEADER = 4
_LEVEL_OVERHEAD = 24


@dataclass(frozen=True)
class SparseLevel:
    """One traversal level: DENSE (dense_size) or SPARSE_CSR (segments, indices)."""

    format: int
    dense_size: int = 0
    segments: np.ndarray | None = None
    indices: np.ndarray | None = None


@dataclass(frozen=True)
class SparseTensor:
    """A constant in TFLite's sparse format: the stored values plus the tree that places them."""

    shape: tuple[int, ...]
    values: np.ndarray
    traversal_order: tuple[int, ...]
    levels: tuple[SparseLevel, ...]

    @property
    def nbytes(self) -> int:
        index_bytes = sum(a.nbytes + _VECTOR_HEADER for lv in self.levels for a in (lv.segments, lv.indices) if a is not None)
        return self.values.nbytes + index_bytes + _LEVEL_OVERHEAD * len(self.levels)


def smallest_encoding(array: np.ndarray) -> SparseTensor | None:
    """The smallest sparse encoding of ``array``, or None when storing it dense is as small."""
    nonzero = array != 0
    rank = array.ndim
    # Present prefixes at a level depend only on the set of dims traversed so far.
    present = {dims: int(np.count_nonzero(nonzero.any(axis=tuple(d for d in range(rank) if d not in dims)) if len(dims) < rank else nonzero))
               for n in range(1, rank + 1) for dims in itertools.combinations(range(rank), n)}
    best, best_cost = None, array.nbytes
    for order in itertools.permutations(range(rank)):
        for formats in itertools.product((DENSE, SPARSE_CSR), repeat=rank):
            if SPARSE_CSR not in formats:
                continue
            cost = _cost(array, order, formats, present)
            if cost < best_cost:
                best, best_cost = (order, formats), cost
    return None if best is None else encode(array, *best)


def encode(array: np.ndarray, order: tuple[int, ...], formats: tuple[int, ...]) -> SparseTensor:
    """Encode ``array`` with the given traversal order and one format per traversed dimension."""
    permuted = np.transpose(array, order)
    nonzero = permuted != 0
    rank = array.ndim
    keep = np.ones((), dtype=bool)  # which prefixes exist at the current level, row-major
    levels = []
    for level, fmt in enumerate(formats):
        size = permuted.shape[level]
        if fmt == DENSE:
            keep = np.broadcast_to(keep[..., None], keep.shape + (size,))
            levels.append(SparseLevel(DENSE, dense_size=size))
            continue
        has_nonzero = nonzero.any(axis=tuple(range(level + 1, rank))) if level + 1 < rank else nonzero
        child = keep[..., None] & has_nonzero
        counts = child[keep].sum(axis=-1)  # children per existing parent, in parent order
        segments = np.concatenate([[0], np.cumsum(counts)])
        indices = np.nonzero(child)[-1]
        levels.append(SparseLevel(SPARSE_CSR, segments=_narrow(segments), indices=_narrow(indices)))
        keep = child
    return SparseTensor(tuple(array.shape), permuted[keep], tuple(order), tuple(levels))


def _cost(array: np.ndarray, order, formats, present: dict) -> int:
    count, last_sparse_dims, total = 1, None, 0
    for level, fmt in enumerate(formats):
        size = array.shape[order[level]]
        parents = count
        if fmt == SPARSE_CSR:
            last_sparse_dims = tuple(sorted(order[: level + 1]))
            count = present[last_sparse_dims]
            total += 2 * _VECTOR_HEADER + (parents + 1) * _width(count) + count * _width(size - 1)
        else:
            count *= size
        total += _LEVEL_OVERHEAD
    return total + count * array.itemsize


def _width(max_value: int) -> int:
    return 1 if max_value < 1 << 8 else 2 if max_value < 1 << 16 else 4


def _narrow(values: np.ndarray) -> np.ndarray:
    """The smallest index type TFLite accepts (uint8, uint16, int32) that holds every value."""
    width = _width(int(values.max()) if values.size else 0)
    return values.astype({1: np.uint8, 2: np.uint16, 4: np.int32}[width])
