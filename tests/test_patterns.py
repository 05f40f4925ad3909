"""The pattern library: families, periods, explicit lists, and the periodic rule of the masks."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pscompress.core.errors import UserError
from pscompress.core.patterns import PatternSet, choose_patterns, family_supports, parse_pattern, pattern_name

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
        ("4of10", None, False, "no square kernel"),
        ("3x3:4of10", None, False, "does not fit a 3x3 kernel"),
        ("2of3", None, False, "1x3:2of3"),  # 1x3 or 3x1: the shape must be named
        ("0,1/2,3", None, False, "2x2:0,1/2,3"),  # issue 14: an unprefixed list is 3x3, the error says so
        ("2x2:0,1/2,4", None, False, "outside a 2x2 kernel"),
        ("8x8:4of64", None, False, "8x8 is not supported"),
        ("5x5:0of25", None, False, "between 1 and 25"),
        ("1x3:2of3", 1, False, "period 1"),
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


# The 3x3 families exactly as they were before any other kernel size existed (docs/patterns.md):
# nothing converted with them may change.
_3X3 = {
    1: "0/1/2/3/4/5/6/7/8",
    2: "0,4/1,4/2,4/3,4/4,5/4,6/4,7/4,8",
    3: "3,4,5/1,4,7/0,4,8/2,4,6",
    4: "0,1,3,4/1,2,4,5/3,4,6,7/4,5,7,8",
    5: "1,3,4,5,7/0,2,4,6,8",
    6: "0,1,2,3,4,5/3,4,5,6,7,8/0,1,3,4,6,7/1,2,4,5,7,8",
    7: "1,2,3,4,5,6,7/0,1,3,4,5,7,8",
    8: "1,2,3,4,5,6,7,8/0,1,3,4,5,6,7,8/0,1,2,3,4,5,7,8/0,1,2,3,4,5,6,7",
    9: "0,1,2,3,4,5,6,7,8",
}


@pytest.mark.parametrize("keep", range(1, 10))
def test_3x3_families_are_unchanged(keep):
    assert parse_pattern(f"{keep}of9").describe() == _3X3[keep]
    assert parse_pattern(f"3x3:{keep}of9") == parse_pattern(f"{keep}of9", kernel_size=(3, 3)) == parse_pattern(f"{keep}of9")


SHAPES = [(1, 1), (1, 2), (2, 2), (1, 3), (3, 1), (2, 3), (5, 5), (1, 7), (7, 1), (7, 7), (7, 9), (9, 7), (1, 63)]


@pytest.mark.parametrize("shape", SHAPES)
def test_every_family_of_every_kernel_covers_it_with_k_positions(shape):
    n = shape[0] * shape[1]
    for keep in range(1, n + 1):
        pattern = parse_pattern(f"{keep}of{n}", kernel_size=shape)
        assert pattern.kernel_size == shape
        assert all(len(s) == keep for s in pattern.supports)
        assert set().union(*pattern.supports) == set(range(n))
        assert len(set(pattern.supports)) == pattern.period <= n
        assert pattern.density() == pytest.approx(keep / n)
        assert pattern_name(shape, list(reversed(pattern.bitmasks))) == f"{keep}of{n}"


def _disc(shape, corner, radius2):
    """Positions within squared distance ``radius2`` of ``corner``: an oracle independent of the rule's code."""
    kh, kw = shape
    return frozenset(r * kw + c for r in range(kh) for c in range(kw)
                     if (r - corner[0]) ** 2 + (c - corner[1]) ** 2 <= radius2)


def test_kernels_other_than_3x3_keep_the_positions_nearest_each_corner():
    # 13of25: the 13 positions within squared distance 10 of each corner of the 5x5 (no tie is cut).
    corners = [(0, 0), (0, 4), (4, 0), (4, 4)]
    assert parse_pattern("13of25").supports == tuple(_disc((5, 5), c, 10) for c in corners)
    # 2of4: 2x2 kernels, where ties (both neighbours of a corner) go row-major: the two rows.
    assert parse_pattern("2of4").describe() == "0,1/2,3"
    assert parse_pattern("1x3:2of3").describe() == parse_pattern("3x1:2of3").describe() == "0,1/1,2"
    assert parse_pattern("7x7:25of49").period == 4  # four corner supports, each with the centre
    assert all(24 in s for s in parse_pattern("7x7:25of49").supports)


def test_small_families_fall_back_to_the_positions_nearest_each_position():
    # Eight positions nearest a corner miss the 5x5's centre: one support per anchor position instead.
    pattern = parse_pattern("8of25")
    assert pattern.period == len(set(pattern.supports)) and 4 < pattern.period <= 25
    for support in pattern.supports:
        rows, cols = zip(*(divmod(p, 5) for p in support))
        assert max(rows) - min(rows) <= 3 and max(cols) - min(cols) <= 3  # compact windows
    assert parse_pattern("1x3:1of3").describe() == "0/1/2"
    assert parse_pattern("1x7:3of7").describe() == "0,1,2/1,2,3/2,3,4/3,4,5/4,5,6"


def test_a_choice_of_patterns_gives_each_kernel_size_its_own():
    choice = choose_patterns(["4of9", "2of3", "5x5:13of25", "2x2:0,3/1,2"], period=None)
    assert choice.for_kernel((3, 3)) == parse_pattern("4of9")
    assert choice.for_kernel((1, 9)) == parse_pattern("1x9:4of9")  # a family is for every kernel of N positions
    assert choice.for_kernel((1, 3)).kernel_size == (1, 3) and choice.for_kernel((3, 1)).kernel_size == (3, 1)
    assert choice.for_kernel((5, 5)) == parse_pattern("13of25")
    assert choice.for_kernel((2, 2)).describe() == "0,3/1,2"
    assert choice.for_kernel((1, 1)) is None and choice.for_kernel((7, 7)) is None
    # An exact shape wins over a family of its size.
    assert choose_patterns(["4of9", "3x3:2of9"]).for_kernel((3, 3)) == parse_pattern("2of9")
    assert choose_patterns(["4of9", "3x3:2of9"]).for_kernel((9, 1)) == parse_pattern("9x1:4of9")
    assert choose_patterns("13of25", period=8).for_kernel((5, 5)).period == 8


@pytest.mark.parametrize("specs, message", [
    (["4of9", "2of9"], "two patterns for kernels of 9 positions"),
    (["3x3:4of9", "0,1,3,4/4,5,7,8/2,6"], "two patterns for 3x3"),
    (["0of3"], "between 1 and 3"),
    (["4of64"], "not supported"),
    ([], "at least one pattern"),
])
def test_bad_pattern_choices_are_user_errors(specs, message):
    with pytest.raises(UserError, match=message):
        choose_patterns(specs)


def test_family_supports_checks_its_kernel():
    with pytest.raises(UserError, match="between 1 and 4"):
        family_supports(5, (2, 2))
    assert family_supports(4, (3, 3)) == tuple(tuple(sorted(s)) for s in parse_pattern("4of9").supports)
