"""Alignment against brute force, and recognition of periodic layouts (round trip)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pscompress.core.patterns import PatternSet, parse_pattern
from pscompress.workstation.align import align, default_placement, recognise, recognised_density_limit


def _kept_energy(weight: np.ndarray, pattern: PatternSet, shift: int) -> float:
    mask = pattern.mask(weight.shape[0], weight.shape[1], shift)
    return float((weight.astype(np.float64) ** 2 * mask).sum())


def _brute_force_best(weight: np.ndarray, pattern: PatternSet) -> float:
    """Every order of the supports with every shift."""
    best = 0.0
    for order in itertools.permutations(pattern.supports):
        candidate = PatternSet(pattern.kernel_size, order)
        for shift in range(pattern.period):
            best = max(best, _kept_energy(weight, candidate, shift))
    return best


@pytest.mark.parametrize(
    "spec, period, dense_kernel, shape",
    [
        ("4of9", None, False, (6, 5)),
        ("4of9", None, True, (7, 3)),
        ("3of9", None, False, (4, 4)),
        ("2of9", 4, True, (3, 8)),
        ("0,1,3,4/4,5,7,8/2,4,6", None, False, (5, 2)),
        ("6of9", None, False, (1, 9)),
        ("5of9", None, True, (8, 1)),
    ],
)
def test_align_matches_brute_force(spec, period, dense_kernel, shape):
    rng = np.random.default_rng(abs(hash((spec, shape))) % 2**32)
    pattern = parse_pattern(spec, period, dense_kernel)
    for _ in range(5):
        # heavy-tailed weights make the optimum unique and far from the default placement
        weight = rng.standard_t(2, size=(*shape, 3, 3)).astype(np.float32)
        placement = align(weight, pattern)
        best = _brute_force_best(weight, pattern)
        kept = _kept_energy(weight, placement.pattern, placement.shift)
        assert kept == pytest.approx(best, rel=1e-9)
        assert placement.retained_energy == pytest.approx(best / float((weight.astype(np.float64) ** 2).sum()), rel=1e-9)
        assert sorted(map(sorted, placement.pattern.supports)) == sorted(map(sorted, pattern.supports))
        assert placement.retained_energy >= default_placement(weight, pattern).retained_energy - 1e-12


def test_align_is_in_normal_form():
    """Layers whose kernels are permuted versions of each other give one canonical answer."""
    rng = np.random.default_rng(1)
    pattern = parse_pattern("4of9")
    weight = rng.normal(size=(8, 8, 3, 3))
    first = align(weight, pattern)
    # rolling output channels by one is the same layer with the classes renamed
    rolled = align(np.roll(weight, 1, axis=0), pattern)
    assert first.pattern == rolled.pattern
    assert rolled.shift == (first.shift - 1) % pattern.period
    keys = [tuple(sorted(s)) for s in first.pattern.supports]
    assert keys == min(keys[k:] + keys[:k] for k in range(len(keys)))


def test_align_finds_planted_pattern():
    """Weights that are already 4of9 in some order are aligned back with all their energy."""
    rng = np.random.default_rng(2)
    planted = PatternSet((3, 3), tuple(reversed(parse_pattern("4of9").supports)))
    mask = planted.mask(16, 12, 3)
    weight = rng.normal(size=mask.shape) * mask
    placement = align(weight, parse_pattern("4of9"))
    assert placement.retained_energy == pytest.approx(1.0)
    np.testing.assert_array_equal(placement.pattern.mask(16, 12, placement.shift), mask)


@st.composite
def _periodic_layers(draw):
    kh, kw = draw(st.sampled_from([(3, 3), (1, 3), (5, 5), (2, 2)]))
    n = kh * kw
    period = draw(st.integers(1, 9))
    bitmasks = draw(st.lists(st.integers(1, (1 << n) - 1), min_size=period, max_size=period))
    pattern = PatternSet.from_bitmasks((kh, kw), bitmasks)
    shift = draw(st.integers(0, period - 1))
    out_channels, in_per_group = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**32 - 1))
    return pattern, shift, out_channels, in_per_group, seed


@settings(max_examples=150, deadline=None)
@given(_periodic_layers())
def test_recognise_round_trip(layer):
    pattern, shift, out_channels, in_per_group, seed = layer
    rng = np.random.default_rng(seed)
    mask = pattern.mask(out_channels, in_per_group, shift)
    magnitude = rng.uniform(0.1, 1.0, size=mask.shape) * rng.choice([-1.0, 1.0], size=mask.shape)
    weight = (magnitude * mask).astype(np.float32)
    found = recognise(weight)
    if mask.all():
        assert found is None  # dense: nothing to recognise
        return
    assert found is not None
    np.testing.assert_array_equal(found.pattern.mask(out_channels, in_per_group, found.shift), mask)
    assert found.pattern.period <= pattern.period
    assert found.retained_energy == 1.0


def test_recognise_finds_smallest_period():
    """A period-8 layout that repeats four supports twice is recognised with period 4."""
    pattern = parse_pattern("4of9", period=8)
    mask = pattern.mask(10, 6, 5)
    found = recognise(np.where(mask, 1.0, 0.0))
    assert found is not None and found.pattern.period == 4
    np.testing.assert_array_equal(found.pattern.mask(10, 6, found.shift), mask)


def test_dense_and_unstructured_layers_are_not_psconv():
    rng = np.random.default_rng(3)
    dense = rng.normal(size=(8, 8, 3, 3))
    assert recognise(dense) is None
    one_zero = dense.copy()
    one_zero[3, 3, 1, 1] = 0.0  # its anti-diagonal has other kernels that keep the centre
    assert recognise(one_zero) is None
    assert recognise(np.zeros((4, 4, 3, 3))) is None
    unstructured = dense * (rng.random(dense.shape) < 0.5)
    assert recognise(unstructured) is None


@pytest.mark.parametrize("spec, shape", [("5x5:13of25", (12, 1)), ("5x5:8of25", (16, 9)), ("2x2:2of4", (6, 5)),
                                         ("1x3:2of3", (7, 6)), ("3x1:2of3", (5, 8)), ("1x7:3of7", (10, 4))])
def test_align_keeps_the_most_energy_on_a_planted_pattern_of_each_kernel_size(spec, shape):
    """Weights that are a family in another order, plus small noise off the mask: alignment finds the
    planted order back (the largest energy of all orders and shifts, checked by brute force for short periods)."""
    rng = np.random.default_rng(7)
    family = parse_pattern(spec)
    planted = PatternSet(family.kernel_size, tuple(rng.permutation(np.array(family.supports, dtype=object))))
    mask = planted.mask(*shape, shift=1 % planted.period)
    weight = rng.normal(size=mask.shape) * np.where(mask, 1.0, 0.01)
    placement = align(weight, family)
    np.testing.assert_array_equal(placement.pattern.mask(*shape, placement.shift), mask)
    assert placement.retained_energy > 0.99
    if family.period <= 4:
        assert _kept_energy(weight, placement.pattern, placement.shift) == pytest.approx(_brute_force_best(weight, family))


def test_a_planted_5x5_periodic_layout_is_recognised_exactly():
    rng = np.random.default_rng(8)
    layout = parse_pattern("5x5:13of25", period=8, dense_kernel=True)  # seven families' supports + one dense
    mask = layout.mask(24, 1, 5)  # a depthwise 5x5 layer: one input channel per group
    weight = rng.uniform(0.1, 1.0, size=mask.shape) * rng.choice([-1.0, 1.0], size=mask.shape) * mask
    found = recognise(weight.astype(np.float32))
    assert found is not None and found.pattern.kernel_size == (5, 5) and found.pattern.period == 8
    np.testing.assert_array_equal(found.pattern.mask(24, 1, found.shift), mask)
    assert found.pattern.density() <= recognised_density_limit((5, 5))


def test_the_recognised_density_limit_is_below_one_for_every_kernel():
    assert recognised_density_limit((3, 3)) == recognised_density_limit((5, 5)) == 8 / 9
    assert recognised_density_limit((2, 2)) == 3 / 4 and recognised_density_limit((1, 3)) == 2 / 3
    assert recognised_density_limit((1, 1)) == 0.0  # a 1x1 layout is never sparse pSConv
