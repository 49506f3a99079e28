"""twinpeaks.format: the one place of the slot layout, the stats columns and mean/std; numpy is the oracle."""

from __future__ import annotations

import numpy as np
import pytest

from twinpeaks import format as fmt


def _stats(values: np.ndarray) -> np.ndarray:
    s = fmt.empty_stats(1)[0]
    finite = values[np.isfinite(values)]
    s[fmt.BINNED] = s[fmt.SEEN] = len(values)
    s[fmt.SUM], s[fmt.SUMSQ] = values.sum(), (values * values).sum()
    s[fmt.ZEROS] = (values == 0).sum()
    if len(finite):
        s[fmt.MIN], s[fmt.MAX] = finite.min(), finite.max()
    return s


def test_stats_names_and_columns_agree():
    assert [fmt.STATS[i] for i in (fmt.BINNED, fmt.SEEN, fmt.SUM, fmt.SUMSQ, fmt.ZEROS, fmt.MIN, fmt.MAX)] == list(
        fmt.STATS)
    assert len(fmt.STATS_REDUCE) == len(fmt.STATS)


@pytest.mark.parametrize("values", [np.array([0.0, 1.0, -2.0, 3.5]), np.linspace(-3, 7, 1001), np.array([2.0])],
                         ids=["small", "linspace", "one"])
def test_mean_std_and_zero_fraction_match_numpy(values):
    s = _stats(values)
    mean, std = fmt.mean_std(s)
    assert mean == pytest.approx(values.mean()) and std == pytest.approx(values.std(), abs=1e-9)
    assert fmt.zero_fraction(s) == pytest.approx((values == 0).mean())
    stack = np.stack([s, fmt.empty_stats(1)[0]])
    means, stds = fmt.mean_std(stack)
    assert means[0] == pytest.approx(values.mean()) and np.isnan(means[1]) and np.isnan(stds[1])


def test_combine_stats_equals_stats_of_the_concatenation():
    a, b = np.array([1.0, -4.0, 0.0]), np.array([9.0, 2.0])
    np.testing.assert_allclose(fmt.combine_stats(np.stack([_stats(a), _stats(b)])), _stats(np.concatenate([a, b])))


def test_slots_to_parts_splits_the_layout():
    row = np.arange(fmt.n_slots(4))
    counts, under, over, nonfinite = fmt.slots_to_parts(row)
    assert counts.tolist() == [1, 2, 3, 4] and (int(under), int(over), int(nonfinite)) == (0, 5, 6)


@pytest.mark.parametrize("arr", [np.array([[0, 255], [3, 4]]), np.array([70000, 1]), np.array([-1, 5]),
                                 np.array([1.5, -np.inf, np.nan]), np.zeros((0, 3), np.int64)],
                         ids=["u8", "u32", "signed", "float", "empty"])
def test_encode_decode_round_trip(arr):
    out = fmt.decode(*fmt.encode(arr))
    np.testing.assert_array_equal(out, arr)
    assert out.dtype == (np.int64 if arr.dtype.kind in "iu" else arr.dtype)
