"""The C kernel and the torch (device) path against the numpy reference (twinpeaks.grids) and np.histogram."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_paths import PATHS, using_path

from twinpeaks import binning, grids

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
ISSUE_RANGES = [(-0.5, 0.5), (-1, 1), (-2, 2), (-3, 3), (-4, 4), (-6, 6), (-8, 8)]




def numpy_fixed(x: torch.Tensor, lo, hi, bins) -> np.ndarray:
    """The oracle: np.histogram(values, bins, range=(lo, hi)) on the float64 values, plus the extra slots."""
    v = x.double().numpy().ravel()
    ok = np.isfinite(v)
    f = v[ok]
    inside = np.histogram(f, bins, range=(lo, hi))[0]
    return np.concatenate([[(f < lo).sum()], inside, [(f > hi).sum(), (~ok).sum()]])


def rows(bins):
    return (torch.zeros(bins + 3, dtype=torch.float64), torch.zeros(5, dtype=torch.float64),
            torch.full((2,), -math.inf, dtype=torch.float64))


def near_every_edge(edges: np.ndarray, dtype) -> torch.Tensor:
    """Every edge and its neighbours, as values of ``dtype`` (the representable values next to each edge)."""
    e = torch.from_numpy(edges)
    if dtype == torch.float64:
        return torch.cat([e, torch.nextafter(e, torch.full_like(e, math.inf)),
                          torch.nextafter(e, torch.full_like(e, -math.inf))])
    t = e.to(dtype)  # the dtype's nearest values, then one and two steps either way
    steps = [t]
    for direction in (math.inf, -math.inf):
        u = t
        for _ in range(2):
            u = torch.nextafter(u.float(), torch.full_like(u.float(), direction)).to(dtype) if dtype == torch.float32 \
                else _next_small(u, direction)
            steps.append(u)
    return torch.cat(steps)


def _next_small(u: torch.Tensor, direction: float) -> torch.Tensor:
    """nextafter for float16/bfloat16 through their bit patterns (finite, non-zero-crossing steps suffice here)."""
    bits = u.view(torch.int16).to(torch.int32)
    up = (direction > 0) == (u.float() >= 0)
    bits = torch.where(u.float() == 0, torch.where(torch.tensor(direction > 0), 1, 0x8001), bits + torch.where(up, 1, -1))
    return bits.to(torch.int16).view(u.dtype)


# -- fixed ranges: counts equal np.histogram(values, bins, range=(lo, hi)) -------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bins", [50, 100, 200])
@pytest.mark.parametrize("lo,hi", ISSUE_RANGES, ids=str)
def test_fixed_issue_ranges_every_edge_every_dtype(lo, hi, bins, dtype, c_path):
    g = binning.fixed_grid(lo, hi, bins)
    np.testing.assert_array_equal(g.edges.numpy(), np.histogram_bin_edges([0.0], bins, range=(lo, hi)))
    x = torch.cat([near_every_edge(g.edges.numpy(), dtype), torch.zeros(7, dtype=dtype),
                   torch.tensor([math.nan, math.inf, -math.inf, 100.0, -100.0], dtype=torch.float32).to(dtype),
                   (torch.randn(3000) * hi).to(dtype)])
    want = numpy_fixed(x, lo, hi, bins)
    counts, sums, peaks = rows(bins)
    binning.kernel_observe(x, g, counts, sums, peaks)
    np.testing.assert_array_equal(counts.numpy(), want)
    np.testing.assert_array_equal(binning.bin_values(x, g).numpy(), want)  # the torch path
    zero_bin = 1 + bins // 2
    assert counts[zero_bin] >= 7  # the ReLU zeros sit in [0, w)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_fixed_every_half_value(dtype, c_path):
    """Every float16/bfloat16 bit pattern (subnormals, inf, NaN) on several ranges."""
    x = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    for lo, hi, bins in [(-1, 1, 100), (-70000, 70000, 7), (0, 1e-6, 13), (-3, 3, 200)]:
        counts, sums, peaks = rows(bins)
        binning.kernel_observe(x, binning.fixed_grid(lo, hi, bins), counts, sums, peaks)
        np.testing.assert_array_equal(counts.numpy(), numpy_fixed(x, lo, hi, bins))


@settings(max_examples=150, deadline=None)
@given(lo=st.floats(-1e5, 1e5), width=st.floats(1e-9, 1e5), bins=st.integers(1, 1000), seed=st.integers(0, 2**31),
       dtype=st.sampled_from(DTYPES))
def test_fixed_random_ranges(lo, width, bins, seed, dtype):
    hi = lo + width
    try:
        g = binning.fixed_grid(lo, hi, bins)
    except ValueError:
        return  # too narrow for distinct float64 edges: refused up front
    gen = torch.Generator().manual_seed(seed)
    x = torch.cat([near_every_edge(g.edges.numpy(), dtype),
                   (lo + torch.rand(500, generator=gen, dtype=torch.float64) * width).to(dtype)])
    want = numpy_fixed(x, lo, hi, bins)
    for path in PATHS:
        with using_path(path):
            counts, sums, peaks = rows(bins)
            binning.kernel_observe(x, g, counts, sums, peaks)
            np.testing.assert_array_equal(counts.numpy(), want)
    np.testing.assert_array_equal(binning.bin_values(x, g).numpy(), want)


@pytest.mark.parametrize("lo,hi,bins", [(1e6, 1e6 + 1e-6, 100), (-1e-30, 1e-30, 1000), (1e15, 1e15 + 64, 50)])
def test_fixed_narrow_ranges_search_the_edges(lo, hi, bins, c_path):
    g = binning.fixed_grid(lo, hi, bins)
    x = torch.cat([near_every_edge(g.edges.numpy(), torch.float64), torch.linspace(lo, hi, 997, dtype=torch.float64)])
    counts, sums, peaks = rows(bins)
    binning.kernel_observe(x, g, counts, sums, peaks)
    np.testing.assert_array_equal(counts.numpy(), numpy_fixed(x, lo, hi, bins))


def test_fixed_stats_and_sampling(c_path):
    g = binning.fixed_grid(0, 100, 100)
    x = torch.arange(1000, dtype=torch.float32) % 100 + 0.5
    counts, sums, peaks = rows(100)
    binning.kernel_observe(x, g, counts, sums, peaks, stride=100, blocks=10, block=16, offset=7)
    picked = torch.cat([x[7 + 100 * i: 7 + 100 * i + 16] for i in range(10)])
    np.testing.assert_array_equal(counts.numpy(), numpy_fixed(picked, 0, 100, 100))
    assert sums.tolist() == [float(picked.double().sum()), float((picked.double() ** 2).sum()), 160.0, 160.0, 1000.0]
    assert peaks.tolist() == [-float(picked.min()), float(picked.max())]


# -- auto grids: the kernel and the torch path equal the numpy reference, which equals np.histogram --------------------
def reference(calls, bins, dtype):
    row = np.zeros(bins + 3, np.int64)
    g = None
    for x in calls:
        g = grids.observe(row, g, x.double().numpy())
    return row, g


def kernel_auto(calls, bins, **plan):
    counts, sums, peaks = rows(bins)
    g = binning.new_grids(1)[0]
    for x in calls:
        binning.kernel_observe(x, g, counts, sums, peaks, **plan)
    return counts.numpy().astype(np.int64), g, sums, peaks


def torch_auto(calls, bins):
    counts = torch.zeros(bins + 3, dtype=torch.float64)
    g = binning.new_grids(1)[0]
    for x in calls:
        binning.observe_auto(x, g, counts)
    return counts.numpy().astype(np.int64), g


def as_grid(g: torch.Tensor):
    return None if math.isnan(g[0]) else (int(g[0]), int(g[1]))


def check_auto(calls, bins, dtype):
    want, wg = reference(calls, bins, dtype)
    if wg is not None:  # the reference equals numpy on all the values over its edges
        allv = torch.cat([c.reshape(-1) for c in calls]).double().numpy()
        ok = np.isfinite(allv)
        e = grids.edges_of(wg, bins)
        np.testing.assert_array_equal(want[1:-2], np.histogram(allv[ok], e)[0])
        assert want[0] == want[-2] == 0 and want[-1] == (~ok).sum()
    for path in PATHS:
        with using_path(path):
            got, g, sums, peaks = kernel_auto(calls, bins)
            assert as_grid(g) == wg, f"C kernel grid, path={path}"
            np.testing.assert_array_equal(got, want)
    got, g = torch_auto(calls, bins)
    assert as_grid(g) == wg, "torch path grid"
    np.testing.assert_array_equal(got, want)


specials = st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, 1e-30, -1e-30, 3e38, -3e38])
call = st.lists(st.one_of(st.floats(-1e4, 1e4, width=32), specials, st.floats(width=32)), min_size=0, max_size=80)


@settings(max_examples=250, deadline=None)
@given(calls=st.lists(call, min_size=1, max_size=4), bins=st.integers(2, 260), dtype=st.sampled_from(DTYPES))
def test_auto_random_calls(calls, bins, dtype):
    check_auto([torch.tensor(c, dtype=torch.float32).to(dtype) for c in calls], bins, dtype)


@settings(max_examples=60, deadline=None)
@given(calls=st.lists(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=40), min_size=1, max_size=3),
       bins=st.integers(2, 130))
def test_auto_float64_whole_range(calls, bins):
    """float64 values anywhere (subnormals, near the top of the range) go where numpy puts them."""
    check_auto([torch.tensor(c, dtype=torch.float64) for c in calls], bins, torch.float64)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_auto_shared_relu_three_calls_per_step(dtype):
    """A shared ReLU called 3 times in a step with different ranges: one row, numpy on all values over its edges."""
    torch.manual_seed(0)
    calls = [torch.relu(torch.randn(4000) * s + m).to(dtype) for s, m in ((0.1, 0.0), (3.0, 1.0), (50.0, -20.0))]
    check_auto(calls, 100, dtype)


@pytest.mark.parametrize("kind", ["grow_1.06", "grow_10000x", "shrink", "shift_sign"])
def test_auto_growing_shrinking_shifting_rows(kind):
    torch.manual_seed(1)
    for step in range(0, 160, 9):
        scale = {"grow_1.06": 1.06**step, "grow_10000x": 10 ** (4 * step / 159), "shrink": 0.93**step,
                 "shift_sign": 1.0}[kind]
        shift = (step - 80) / 4 if kind == "shift_sign" else 0.0
        x = torch.randn(5000) * scale + shift
        check_auto([x], 100, torch.float32)


def test_auto_sampled_blocks_equal_the_reference_on_the_blocks(c_path):
    x = torch.randn(100_000) * torch.linspace(0.1, 100, 100_000)
    got, g, sums, peaks = kernel_auto([x], 100, stride=1000, blocks=100, block=16, offset=3)
    picked = torch.cat([x[3 + 1000 * i: 3 + 1000 * i + 16] for i in range(100)])
    want, wg = reference([picked], 100, torch.float32)
    assert as_grid(g) == wg
    np.testing.assert_array_equal(got, want)
    assert sums[3] == 1600 and sums[4] == 100_000


def test_auto_only_nonfinite_keeps_the_grid_unset(c_path):
    got, g, sums, peaks = kernel_auto([torch.tensor([math.nan, math.inf])], 10)
    assert math.isnan(g[0]) and got[-1] == 2 and got[:-1].sum() == 0
    got, g = torch_auto([torch.tensor([math.nan, -math.inf]), torch.tensor([], dtype=torch.float32)], 10)
    assert math.isnan(g[0]) and got[-1] == 2


def test_c_grid_equals_reference_choose():
    rng = np.random.default_rng(0)
    for _ in range(3000):
        a, b = np.sort(rng.normal(size=2) * 10.0 ** rng.integers(-300, 300, size=2))
        bins = int(rng.integers(2, 500))
        assert binning._cbin.grid(float(a), float(b), bins) == grids.choose(float(a), float(b), bins)


def test_torch_regrid_rows_equals_reference():
    rng = np.random.default_rng(2)
    for _ in range(50):
        x = rng.normal(size=300) * 10
        y = rng.normal(size=300) * 1000
        row = np.zeros(53, np.int64)
        g1 = grids.observe(row, None, x)
        g2 = grids.coarsen(g1, grids.occupied(row, g1), float(y.min()), float(y.max()), 50)
        want = row.copy()
        want[1:-2] = grids.regrid(row[1:-2], g1, g2)
        stack = torch.from_numpy(np.stack([row, 2 * row]))
        got = binning.regrid_rows(stack, torch.tensor(g1, dtype=torch.float64), torch.tensor(g2, dtype=torch.float64))
        np.testing.assert_array_equal(got.numpy(), np.stack([want, 2 * want]))


def test_auto_slots_share_the_step_grid():
    g, row = binning.new_grids(1)[0], torch.zeros(13, dtype=torch.int64)
    x = torch.randn(64, 10) * 5
    binning.observe_auto(x, g, row)
    slots = binning.auto_slots(x, g, 10)
    np.testing.assert_array_equal(binning.count_slots(slots, 13).numpy(), row.numpy())
