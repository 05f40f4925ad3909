"""The pattern library: families, periods, explicit lists, and the periodic rule of the masks."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pscompress.core.errors import UserError
from pscompress.core.patterns import PatternSet, parse_pattern

FAMILIES = [f"{k}of9" for k in range(1, 10)]


@pytest.mark.parametrize("spec", FAMILIES)
def test_every_family_covers_the_kernel_with_k_positions(spec):
    pattern = parse_pattern(spec)
    keep = int(spec.split("of")[0])
    assert pattern.kernel_size == (3, 3)
    assert all(len(s) == keep for s in pattern.supports)
    assert set().union(*pattern.supports) == set(range(9))
    assert len(set(pattern.supports)) == pattern.period  # no support listed twice
    assert Fraction(pattern.density()).limit_denominator(100) == Fraction(keep, 9)


def test_4of9_is_the_papers_four_squares_with_exact_density():
    pattern = parse_pattern("4of9")
    squares = {frozenset({0, 1, 3, 4}), frozenset({1, 2, 4, 5}), frozenset({3, 4, 6, 7}), frozenset({4, 5, 7, 8})}
    assert set(pattern.supports) == squares and pattern.period == 4
    assert pattern.density() == 4 / 9
    mask = pattern.mask(64, 36, shift=3)
    assert Fraction(int(mask.sum()), mask.size) == Fraction(4, 9)


def test_period_and_dense_kernel_options():
    base = parse_pattern("4of9")
    eight = parse_pattern("4of9", period=8)
    assert eight.supports == base.supports * 2
    dense = parse_pattern("4of9", period=8, dense_kernel=True)  # the reference's "with 3x3" variant
    assert dense.supports[:7] == (base.supports * 2)[:7] and dense.supports[7] == frozenset(range(9))
    assert parse_pattern("2of9", dense_kernel=True).period == 9
    assert parse_pattern("0,1,3,4/4,5,7,8/2,4,6").describe() == "0,1,3,4/4,5,7,8/2,4,6"
    assert parse_pattern(" 0, 1,3,4 / 4,5,7,8/2,4,6 ").supports[0] == frozenset({0, 1, 3, 4})


@pytest.mark.parametrize(
    "spec, period, dense_kernel, message",
    [
        ("4of10", None, False, "3x3"),
        ("0of9", None, False, "not a pattern family"),
        ("10of9", None, False, "not a pattern family"),
        ("", None, False, "bad pattern"),
        ("four", None, False, "bad pattern"),
        ("0,1,9", None, False, "outside a 3x3 kernel"),
        ("0,1,3,4//4,5,7,8", None, False, "empty support"),
        ("0,1,,4", None, False, "empty support"),
        ("0,0,1", None, False, "repeated"),
        ("0 1,3,4/4,5,7,8/2,6", None, False, "separated by commas"),
        ("0,1,3,4/4,5,7,8", None, False, "2, 6"),  # corners 2 and 6 in no support
        ("4of9", 0, False, "period 0"),
        ("4of9", 300, False, "period 300"),
        ("4of9", 2, False, "period 2"),  # two squares cannot cover all nine positions
        ("4of9", 1, True, "at least 2"),
    ],
)
def test_bad_patterns_are_user_errors(spec, period, dense_kernel, message):
    with pytest.raises(UserError, match=message):
        parse_pattern(spec, period, dense_kernel)


def test_bitmasks_round_trip_and_validation():
    pattern = parse_pattern("3of9", period=6, dense_kernel=True)
    assert PatternSet.from_bitmasks((3, 3), pattern.bitmasks) == pattern
    assert pattern.bitmasks[0] == (1 << 3) | (1 << 4) | (1 << 5)
    for bad in ([0], [512], [-1]):
        with pytest.raises(UserError):
            PatternSet.from_bitmasks((3, 3), bad)
    with pytest.raises(UserError, match="shift"):
        pattern.mask(4, 4, shift=pattern.period)


@st.composite
def _layouts(draw):
    spec = draw(st.sampled_from(FAMILIES))
    dense_kernel = draw(st.booleans())
    base = parse_pattern(spec).period
    period = draw(st.one_of(st.none(), st.integers(max(base, 2), base + 6)))
    pattern = parse_pattern(spec, period, dense_kernel)
    groups = draw(st.integers(1, 4))
    out_channels = groups * draw(st.integers(1, 6))
    in_per_group = draw(st.integers(1, 7))
    shift = draw(st.integers(0, pattern.period - 1))
    return pattern, out_channels, in_per_group, shift


@settings(max_examples=200, deadline=None)
@given(_layouts())
def test_mask_follows_the_periodic_rule(layout):
    pattern, out_channels, in_per_group, shift = layout
    mask = pattern.mask(out_channels, in_per_group, shift)
    assert mask.shape == (out_channels, in_per_group, 3, 3)
    for o in range(out_channels):
        for i in range(in_per_group):
            support = pattern.supports[(o + i + shift) % pattern.period]
            expected = np.zeros(9, dtype=bool)
            expected[list(support)] = True
            np.testing.assert_array_equal(mask[o, i].ravel(), expected)
