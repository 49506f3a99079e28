"""The numpy reference of docs/grids.md (twinpeaks.grids) against numpy's own histogram on the raw values."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twinpeaks import grids

finite = st.floats(allow_nan=False, allow_infinity=False)
moderate = st.floats(-1e6, 1e6, allow_nan=False)


def hist_on(values, edges):
    """numpy's histogram plus the three extra slots, as twinpeaks lays them out (the oracle)."""
    v = np.asarray(values, np.float64).ravel()
    ok = np.isfinite(v)
    f = v[ok]
    return np.concatenate([[(f < edges[0]).sum()], np.histogram(f, edges)[0], [(f > edges[-1]).sum(), (~ok).sum()]])


@settings(max_examples=400, deadline=None)
@given(a=finite, b=finite, bins=st.integers(2, 300))
def test_choose_is_the_smallest_fitting_grid(a, b, bins):
    mn, mx = min(a, b), max(a, b)
    e, o = grids.choose(mn, mx, bins)
    edges = grids.edges_of((e, o), bins)
    assert edges[0] <= mn and mx < edges[-1] or np.isinf(edges[-1])
    assert grids.E_MIN <= e
    assert abs(o) < 2 ** (grids.RESOLUTION + 2) + bins
    if mn < mx:
        big = max(abs(mn), abs(mx))
        floor_e = max(grids.E_MIN, math.frexp(big)[1] - 1 - grids.RESOLUTION)
        assert e == floor_e or not grids.fits(mn, mx, e - 1, bins)  # smallest
        assert o == grids.bin_of(mn, e)
    else:
        assert grids.bin_of(mn, e) - o == bins // 2  # one value: in the middle


@pytest.mark.parametrize("mn,mx,bins,want", [
    (0.0, 1.0, 100, (-6, 0)), (-3.0, 5.0, 100, (-3, -24)), (0.0, 0.0, 100, (-6, -50)), (2.0, 2.0, 100, (-6, 78)),
    (-1.0, 1.0, 2, (1, -1)), (5e-324, 5e-324, 100, (-1022, -50)), (-1e-300, 1e-300, 10, (-998, -3)),
])
def test_choose_cases(mn, mx, bins, want):
    assert grids.choose(mn, mx, bins) == want


def test_zero_is_an_edge_and_relu_zeros_land_above_it():
    """The issue's zero edge: exact zeros in [0, w), like np.histogram and torch.histc."""
    x = np.maximum(np.random.default_rng(0).normal(size=1000), 0)
    row = np.zeros(103, np.int64)
    g = grids.observe(row, None, x)
    edges = grids.edges_of(g, 100)
    assert 0.0 in edges
    np.testing.assert_array_equal(row, hist_on(x, edges))
    assert row[1 + int(np.flatnonzero(edges == 0)[0])] >= (x == 0).sum()


values = st.lists(st.one_of(moderate, st.sampled_from([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-300, -1e-300])),
                  min_size=0, max_size=60)


@settings(max_examples=300, deadline=None)
@given(calls=st.lists(values, min_size=1, max_size=5), bins=st.integers(2, 130))
def test_observe_rows_with_several_calls_equal_numpy_on_the_reported_edges(calls, bins):
    """A row called several times (a shared ReLU) equals numpy on the concatenated values over its final edges."""
    row = np.zeros(bins + 3, np.int64)
    g = None
    for c in calls:
        g = grids.observe(row, g, np.array(c, np.float64))
    allv = np.array([x for c in calls for x in c], np.float64)
    if g is None:
        assert row[:-1].sum() == 0 and row[-1] == len(allv)
        return
    np.testing.assert_array_equal(row, hist_on(allv, grids.edges_of(g, bins)))
    assert row[0] == row[-2] == 0  # auto grids never under/overflow


def test_growing_shrinking_and_sign_shifting_rows():
    rng = np.random.default_rng(1)
    for scale_of in (lambda s: 1.06**s, lambda s: 10.0 ** (4 * s / 160), lambda s: 0.95**s, lambda s: 1.0):
        for s in range(0, 160, 7):
            shift = (s - 80) * 0.5 if scale_of(s) == 1.0 else 0.0
            x = rng.normal(size=500) * scale_of(s) + shift
            row = np.zeros(103, np.int64)
            g = grids.observe(row, None, x)
            np.testing.assert_array_equal(row, hist_on(x, grids.edges_of(g, 100)))
            # resolution: the occupied bins span more than a quarter of the grid (no wasted range)
            nz = np.flatnonzero(row[1:-2])
            assert nz[-1] - nz[0] >= 100 // 4


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(st.tuples(st.floats(-1e4, 1e4), st.floats(1e-6, 1e4), st.integers(1, 50)), min_size=1,
                      max_size=6), bins=st.integers(2, 200), seed=st.integers(0, 1000))
def test_combine_is_exact_against_numpy_on_the_raw_values(parts, bins, seed):
    """Histograms on different grids combine with TV 0 against numpy of all the raw values on the reported edges."""
    rng = np.random.default_rng(seed)
    rows, gs, raw = [], [], []
    for centre, scale, n in parts:
        x = centre + scale * rng.normal(size=n)
        row = np.zeros(bins + 3, np.int64)
        gs.append(grids.observe(row, None, x))
        rows.append(row)
        raw.append(x)
    row, g = grids.combine(rows, gs)
    np.testing.assert_array_equal(row, hist_on(np.concatenate(raw), grids.edges_of(g, bins)))


def test_combine_keeps_a_shared_grid_and_handles_empty_members():
    row = np.array([0, 1, 2, 0, 0, 0, 0])
    same, g = grids.combine([row, row], [(0, 5), (0, 5)])
    assert g == (0, 5) and same.tolist() == [0, 2, 4, 0, 0, 0, 0]
    nan_only = np.array([0, 0, 0, 0, 0, 0, 3])
    out, g = grids.combine([nan_only, row], [None, (0, 5)])
    assert g == (0, 5) and out.tolist() == [0, 1, 2, 0, 0, 0, 3]
    out, g = grids.combine([nan_only], [None])
    assert g is None and out.tolist() == nan_only.tolist()
    per_class = np.stack([row, row * 2])  # stacks (per-class rows) combine along their bins
    out, g = grids.combine([per_class, per_class], [(0, 5), (1, 2)])
    assert out.shape == (2, 7) and out.sum() == 2 * 9 and out[1].sum() == 2 * out[0].sum()


def test_regrid_refuses_finer_grids_and_lost_bins():
    with pytest.raises(ValueError, match="coarser"):
        grids.regrid(np.ones(4), (1, 0), (0, 0))
    with pytest.raises(ValueError, match="outside"):
        grids.regrid(np.array([0, 0, 0, 5]), (0, 0), (0, -8))


ISSUE_RANGES = [(-0.5, 0.5), (-1, 1), (-2, 2), (-3, 3), (-4, 4), (-6, 6), (-8, 8)]


@pytest.mark.parametrize("bins", [50, 100, 200])
@pytest.mark.parametrize("lo,hi", ISSUE_RANGES, ids=str)
def test_fixed_edges_are_numpys_and_zero_is_exact(lo, hi, bins):
    e = grids.fixed_edges(lo, hi, bins)
    x = np.concatenate([e, np.nextafter(e, np.inf), np.nextafter(e, -np.inf), [0.0, -0.0]])
    np.testing.assert_array_equal(grids.slots_fixed(x, e)[1:-2], np.histogram(x, bins, range=(lo, hi))[0])
    np.testing.assert_array_equal(e, np.histogram_bin_edges(x, bins, range=(lo, hi)))
    assert e[bins // 2] == 0.0
