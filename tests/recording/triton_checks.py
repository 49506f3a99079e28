"""The Triton kernel's checks against numpy, run by tests/recording/test_triton_kernel.py in a subprocess.

``TRITON_INTERPRET=1`` must be set before triton is first imported (triton's own library functions are
defined for the interpreter or for compilation at that moment), so the checks run in a fresh process
that sets it first thing, on CPU tensors. Importing this module does not import triton (the test
module reads :data:`CHECKS` from it). Prints one JSON object: check name -> "ok" or the failure.

Run by hand: ``python tests/recording/triton_checks.py [names...]``; ``--compile`` compiles the kernels for sm_90
instead (no GPU needed; triton's nvidia backend brings its own ptxas).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grid_reference as ref  # noqa: E402

from twinpeaks import binning  # noqa: E402

CHECKS: dict[str, Callable[[], None]] = {}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}
_INT = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float64: torch.int64}


def check(fn: Callable[[], None]) -> Callable[[], None]:
    CHECKS[fn.__name__] = fn
    return fn


def tp():
    from twinpeaks import _triton

    return _triton


def row(bins: int, count_dtype: torch.dtype = torch.float64):
    return (torch.zeros(bins + 3, dtype=count_dtype), torch.zeros(5, dtype=torch.float64),
            torch.full((2,), -math.inf, dtype=torch.float64))


def near(t: torch.Tensor) -> torch.Tensor:
    """``t`` and its neighbours one ulp down and up in its own dtype (through its bits)."""
    bits = t.view(_INT[t.dtype])
    return torch.cat([t, (bits - 1).view(t.dtype), (bits + 1).view(t.dtype)])


def specials(dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor([math.nan, math.inf, -math.inf, 0.0, -0.0, 0.0], dtype=dtype)


def same(name: str, got: torch.Tensor | np.ndarray, want: np.ndarray) -> None:
    got = np.asarray(got.cpu() if isinstance(got, torch.Tensor) else got)
    if got.shape != want.shape or not np.array_equal(got.astype(np.int64), want.astype(np.int64)):
        raise AssertionError(f"{name}:\n got  {got.astype(np.int64).tolist()}\n want {want.tolist()}")


def stats_equal(sums: torch.Tensor, peaks: torch.Tensor, want_sums: np.ndarray, want_peaks: np.ndarray) -> None:
    s = sums.numpy()
    np.testing.assert_allclose(s[:2], want_sums[:2], rtol=1e-12, atol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(s[2:], want_sums[2:])
    np.testing.assert_array_equal(peaks.numpy(), want_peaks)


def values_for_edges(edges: np.ndarray, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lo, hi = float(edges[0]), float(edges[-1])
    inside = (torch.rand(300, generator=g, dtype=torch.float64) * (hi - lo) * 1.4 + lo - 0.2 * (hi - lo))
    return torch.cat([near(torch.tensor(edges).to(dtype)), specials(dtype), inside.to(dtype)])


# -- fixed ranges -------------------------------------------------------------------------------

def _fixed(dtype: torch.dtype, lo: float, hi: float, bins: int, seed: int) -> None:
    edges = np.linspace(lo, hi, bins + 1)
    x = values_for_edges(edges, dtype, seed)
    counts, sums, peaks = row(bins)
    launches = tp().observe(x, counts, sums, peaks, edges=torch.tensor(edges), range=(lo, hi))
    assert launches == 1, launches
    v = x.double().numpy()
    same("counts", counts, ref.fixed_row(v, lo, hi, bins))
    ws, wp = np.zeros(5), np.array([-math.inf, -math.inf])
    ref.add_stats(ws, wp, v)
    stats_equal(sums, peaks, ws, wp)
    # a second call adds into the same row
    y = x[::3].flip(0)
    tp().observe(y, counts, sums, peaks, edges=torch.tensor(edges), range=(lo, hi))
    same("counts after a second call", counts, ref.fixed_row(np.concatenate([v, y.double().numpy()]), lo, hi, bins))


for _name, _dt in DTYPES.items():
    CHECKS[f"fixed_edges_{_name}"] = (lambda dt: lambda: (_fixed(dt, -1.0, 1.0, 8, 1), _fixed(dt, -0.3, 0.7, 7, 2),
                                                          _fixed(dt, 0.0, 10.0, 100, 3)))(_dt)


@check
def fixed_search_fp64() -> None:
    """Where the linear guess is unusable (hi - lo overflows) the kernel searches the edges: checked on usual ranges."""
    assert not tp()._guess_safe(-1.5e308, 1.5e308, 5)
    safe = tp()._guess_safe
    tp()._guess_safe = lambda lo, hi, bins: False  # the search, on ranges numpy can bin
    try:
        for dtype in DTYPES.values():
            _fixed(dtype, -1.0, 1.0, 8, 1)
            _fixed(dtype, -0.3, 0.7, 7, 2)
    finally:
        tp()._guess_safe = safe


@check
def fixed_int64_counts_dense_permuted() -> None:
    edges = np.linspace(-2.0, 2.0, 11)
    x = torch.randn(6, 5, 7, generator=torch.Generator().manual_seed(5)).permute(2, 0, 1)  # dense, not contiguous
    counts, sums, peaks = row(10, torch.int64)
    assert tp().observe(x, counts, sums, peaks, edges=torch.tensor(edges), range=(-2.0, 2.0)) == 1
    same("counts", counts, ref.fixed_row(x.double().numpy(), -2.0, 2.0, 10))
    xs = x[:, :, :3]  # not dense: copied first
    assert tp().observe(xs, counts, sums, peaks, edges=torch.tensor(edges), range=(-2.0, 2.0)) == 2
    same("counts + sliced", counts, ref.fixed_row(np.concatenate([x.double().numpy().ravel(),
                                                                  xs.double().numpy().ravel()]), -2.0, 2.0, 10))


# -- auto grids ---------------------------------------------------------------------------------

def _auto_calls(calls: list[torch.Tensor], bins: int, count_dtype: torch.dtype = torch.float64) -> None:
    counts, sums, peaks = row(bins, count_dtype)
    grid = binning.new_grids(1)[0]
    want = ref.AutoRow(bins)
    for i, x in enumerate(calls):
        assert tp().observe(x, counts, sums, peaks, grid=grid) == 1
        want.observe(x.double().numpy())
        g = grid.tolist()
        if want.grid is None:
            assert math.isnan(g[0]), f"call {i}: grid set with no finite value: {g}"
        else:
            assert (int(g[0]), int(g[1])) == want.grid, f"call {i}: grid {g} != {want.grid}"
        same(f"call {i} counts", counts, want.counts)
        stats_equal(sums, peaks, want.sums, want.peaks)


def _auto(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(7)
    relu = torch.relu(torch.randn(500, generator=g)).to(dtype)
    wide = (torch.randn(400, generator=g) * 40 - 3).to(dtype)
    _auto_calls([relu, torch.cat([relu[:50], specials(dtype)]), wide, relu * 0.01], 20)
    # values on and next to every edge of the row's grid: the grid after a first call, then its edges
    counts, sums, peaks = row(16)
    grid = binning.new_grids(1)[0]
    first = (torch.randn(300, generator=g) * 3 + 1).to(dtype)
    tp().observe(first, counts, sums, peaks, grid=grid)
    want = ref.AutoRow(16)
    want.observe(first.double().numpy())
    x = torch.cat([near(torch.tensor(want.edges()).to(dtype)), specials(dtype)])
    tp().observe(x, counts, sums, peaks, grid=grid)
    want.observe(x.double().numpy())
    assert (int(grid[0]), int(grid[1])) == want.grid, (grid.tolist(), want.grid)
    same("edge values", counts, want.counts)


for _name, _dt in DTYPES.items():
    CHECKS[f"auto_{_name}"] = (lambda dt: lambda: _auto(dt))(_dt)


@check
def auto_one_value_zeros_nonfinite() -> None:
    """mn == mx (centred grid), all zeros (e = -6), nothing finite (the grid stays unset), one element."""
    nan = torch.tensor([math.nan, math.inf, -math.inf])
    _auto_calls([nan, torch.full((9,), 2.5), torch.full((4,), 2.5), torch.full((3,), -7.0)], 10)
    _auto_calls([torch.zeros(50), torch.zeros(5), torch.tensor([1e-3])], 100, torch.int64)
    _auto_calls([torch.tensor([3.0]), torch.tensor([-1e-30, 1e30])], 64)
    _auto_calls([torch.tensor([1e-40, -1e-40, 0.0]), torch.tensor([1e-45])], 8)  # fp32 subnormals


@check
def auto_bins_2_and_odd() -> None:
    g = torch.Generator().manual_seed(8)
    for bins in (2, 3, 7, 100):
        _auto_calls([torch.randn(200, generator=g), torch.randn(50, generator=g) * 9 + 30], bins)


@check
def auto_fp64_extremes() -> None:
    """fp64 values across the whole exponent range: exact floors far from 1 (underflow to -0 fixed)."""
    x = torch.tensor([-1e300, -5e-324, 0.0, 5e-324, 1e-300, 3.0, 1e300], dtype=torch.float64)
    _auto_calls([x[3:5], x, x * 0.5], 10)
    _auto_calls([torch.tensor([1e-310, 2e-310], dtype=torch.float64)], 4)
    # a span far below the values' size: the resolution limit (e >= floor(log2 max|x|) - 40) decides
    _auto_calls([torch.tensor([1.0, 1.0 + 2**-50, 1.0 + 2**-45], dtype=torch.float64)], 100)


@check
def auto_coarsen_rules() -> None:
    """The branches of coarsen: a call inside the grid, the call's own exponent deciding (one value far from a
    narrow row), a shift of o alone (and the YES/NO rows following it later)."""
    _auto_calls([torch.tensor([0.0, 1.0]), torch.tensor([0.5, 1.5]), torch.tensor([1.6])], 100)
    _auto_calls([torch.tensor([1000.0, 1000.25]), torch.full((3,), 1001.0)], 100)
    bins, cols = 100, 2
    s = bins + 3
    counts, sums, peaks = row(bins)
    grid, xgrid = binning.new_grids(1)[0], binning.new_grids(1)[0]
    truth = torch.zeros(2, s, dtype=torch.int64)
    want = ref.AutoRow(bins, cols)
    first = torch.tensor([[0.0, 1.0], [0.25, 0.5]])
    y = torch.tensor([0, 1])
    tp().observe(first, counts, sums, peaks, grid=grid, truth=truth, extra_grid=xgrid, targets=y)
    want.observe(first.double().numpy())
    want.observe_extras(first.double().numpy(), _yes(first, y), classes=False)
    shifted = torch.tensor([[-0.1, 0.0]])
    tp().observe(shifted, counts, sums, peaks, grid=grid, truth=truth, extra_grid=xgrid)
    want.observe(shifted.double().numpy())
    assert want.grid[0] == want.xgrid[0] and want.grid[1] != want.xgrid[1], (want.grid, want.xgrid)  # o alone
    same("counts shifted", counts, want.counts)
    tp().observe(shifted, counts, sums, peaks, grid=grid, truth=truth, extra_grid=xgrid, targets=y[:1], main=False)
    want.observe_extras(shifted.double().numpy(), _yes(shifted, y[:1]), classes=False)
    same("truth shifted", truth, want.truth)
    assert (int(xgrid[0]), int(xgrid[1])) == want.grid


# -- sampled plans -----------------------------------------------------------------------------

@check
def sampled_plans() -> None:
    g = torch.Generator().manual_seed(9)
    sb = tp().SAMPLE_BLOCK
    for dtype in (torch.float32, torch.bfloat16):
        x = (torch.randn(8, 203, generator=g) * 2).to(dtype)
        n = x.numel()
        blocks, stride = 50, 31
        for offset in (0, 5, n - (blocks - 1) * stride - sb):
            idx = (offset + np.arange(blocks)[:, None] * stride + np.arange(sb)[None, :]).ravel()
            sample = x.reshape(-1).double().numpy()[idx]
            counts, sums, peaks = row(12)
            grid = binning.new_grids(1)[0]
            assert tp().observe(x, counts, sums, peaks, grid=grid, blocks=blocks, stride=stride, offset=offset) == 1
            want = ref.AutoRow(12)
            want.observe(sample, n_seen=n)
            same(f"sampled auto {dtype} offset {offset}", counts, want.counts)
            stats_equal(sums, peaks, want.sums, want.peaks)
            edges = np.linspace(-3.0, 3.0, 13)
            counts, sums, peaks = row(12)
            tp().observe(x, counts, sums, peaks, edges=torch.tensor(edges), range=(-3.0, 3.0),
                         blocks=blocks, stride=stride, offset=offset)
            same(f"sampled fixed {dtype} offset {offset}", counts, ref.fixed_row(sample, -3.0, 3.0, 12))
            assert sums[3] == blocks * sb and sums[4] == n


# -- per-class and YES/NO -------------------------------------------------------------------------

def _yes(out: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    b, c = out.shape
    if y.numel() == b * c:
        return (y.reshape(b, c).double() > 0.5).numpy()
    return torch.nn.functional.one_hot(y.long().clamp(0, c - 1), c).bool().numpy()


@check
def classes_and_truth_auto() -> None:
    g = torch.Generator().manual_seed(10)
    bins, cols = 10, 5
    s = bins + 3
    counts, sums, peaks = row(bins)
    grid = binning.new_grids(1)[0]
    truth = torch.zeros(2, s, dtype=torch.int64)
    classes = torch.zeros(cols, s, dtype=torch.int64)
    xgrid = binning.new_grids(1)[0]
    want = ref.AutoRow(bins, cols)
    calls = [
        ((torch.randn(37, cols, generator=g)).half(), torch.randint(-1, cols + 1, (37,), generator=g)),  # clamped
        ((torch.randn(20, cols, generator=g) * 30).float(), torch.rand(20, cols, generator=g) > 0.7),  # regrid
        ((torch.randn(9, cols, generator=g)).bfloat16(), (torch.rand(9, cols, generator=g) > 0.5).float()),
    ]
    for i, (out, y) in enumerate(calls):
        out[0, 0] = math.nan
        assert tp().observe(out, counts, sums, peaks, grid=grid, truth=truth, classes=classes, extra_grid=xgrid,
                            targets=y) == 1
        v = out.double().numpy()
        want.observe(v)
        want.observe_extras(v, _yes(out, y), classes=True)
        same(f"call {i} counts", counts, want.counts)
        same(f"call {i} truth", truth, want.truth)
        same(f"call {i} classes", classes, want.classes)
        stats_equal(sums, peaks, want.sums, want.peaks)
    # a main call alone (no targets, no classes) coarsens the row: the YES/NO and class rows wait on their grid
    wide = torch.randn(5, cols, generator=g) * 4000
    assert tp().observe(wide, counts, sums, peaks, grid=grid, truth=truth, classes=classes, extra_grid=xgrid,
                        bin_classes=False) == 1
    want.observe(wide.double().numpy())
    assert (int(grid[0]), int(grid[1])) == want.grid and (int(xgrid[0]), int(xgrid[1])) == want.xgrid
    same("counts, main alone", counts, want.counts)
    same("truth waits", truth, want.truth)
    same("classes wait", classes, want.classes)
    # targets given after the forward: the YES/NO (and class) rows move onto the row's grid, then count
    # (values outside the grid, which a main call would have widened it for, go to underflow / overflow)
    out = torch.randn(6, cols, generator=g) * 9000
    y = torch.randint(0, cols, (6,), generator=g)
    assert tp().observe(out, counts, sums, peaks, grid=grid, truth=truth, classes=classes, extra_grid=xgrid,
                        targets=y, bin_classes=False, main=False) == 1
    want.observe_extras(out.double().numpy(), _yes(out, y), classes=False)
    same("truth after", truth, want.truth)
    same("classes moved", classes, want.classes)
    same("counts untouched", counts, want.counts)
    assert (int(grid[0]), int(grid[1])) == want.grid == (int(xgrid[0]), int(xgrid[1]))
    # an output of another width: its class rows cannot be binned
    other = torch.randn(4, 3, generator=g)
    try:
        tp().observe(other, counts, sums, peaks, grid=grid, truth=truth, classes=classes, extra_grid=xgrid)
        raise AssertionError("classes of another width were binned")
    except ValueError:
        pass


@check
def classes_and_truth_fixed_and_sampled() -> None:
    g = torch.Generator().manual_seed(11)
    bins, cols = 8, 3
    s = bins + 3
    edges = np.linspace(-1.0, 1.0, bins + 1)
    out = torch.cat([torch.tensor(edges, dtype=torch.float32).repeat(3).reshape(-1, cols),
                     torch.randn(64, cols, generator=g)])
    y = torch.randint(0, cols, (out.shape[0],), generator=g)
    counts, sums, peaks = row(bins)
    truth = torch.zeros(2, s, dtype=torch.int64)
    classes = torch.zeros(cols, s, dtype=torch.float64)
    # a sampled main call: the class and truth rows still count every element (one more launch)
    n = out.numel()
    assert tp().observe(out, counts, sums, peaks, edges=torch.tensor(edges), range=(-1.0, 1.0), truth=truth,
                        classes=classes, targets=y, blocks=4, stride=40, offset=3) == 2
    v = out.double().numpy()
    idx = (3 + np.arange(4)[:, None] * 40 + np.arange(16)[None, :]).ravel()
    same("sampled counts", counts, ref.fixed_row(v.ravel()[idx], -1.0, 1.0, bins))
    assert sums[3] == 64 and sums[4] == n
    yes = _yes(out, y)
    same("truth", truth, np.stack([ref.fixed_row(v[yes], -1, 1, bins), ref.fixed_row(v[~yes], -1, 1, bins)]))
    same("classes", classes, np.stack([ref.fixed_row(v[:, c], -1, 1, bins) for c in range(cols)]))


# -- large calls: two launches -------------------------------------------------------------------

@check
def multi_program_auto() -> None:
    g = torch.Generator().manual_seed(12)
    bins, cols = 16, 7
    s = bins + 3
    counts, sums, peaks = row(bins)
    grid = binning.new_grids(1)[0]
    truth = torch.zeros(2, s, dtype=torch.int64)
    classes = torch.zeros(cols, s, dtype=torch.int64)
    xgrid = binning.new_grids(1)[0]
    want = ref.AutoRow(bins, cols)
    small = torch.randn(10, cols, generator=g) * 0.1
    y0 = torch.randint(0, cols, (10,), generator=g)
    assert tp().observe(small, counts, sums, peaks, grid=grid, truth=truth, classes=classes, extra_grid=xgrid,
                        targets=y0) == 1
    want.observe(small.double().numpy())
    want.observe_extras(small.double().numpy(), _yes(small, y0), True)
    for i, scale in enumerate((5.0, 1.0, 80.0)):
        big = torch.randn(700, cols, generator=g) * scale
        big[3, 2] = math.inf
        y = torch.randint(0, cols, (700,), generator=g)
        assert tp().observe(big, counts, sums, peaks, grid=grid, truth=truth, classes=classes, extra_grid=xgrid,
                            targets=y, single_max=1000) == 2
        want.observe(big.double().numpy())
        want.observe_extras(big.double().numpy(), _yes(big, y), True)
        assert (int(grid[0]), int(grid[1])) == want.grid, (i, grid.tolist(), want.grid)
        same(f"big call {i} counts", counts, want.counts)
        same(f"big call {i} truth", truth, want.truth)
        same(f"big call {i} classes", classes, want.classes)
        stats_equal(sums, peaks, want.sums, want.peaks)
    # a large sampled plan
    x = torch.randn(20000, generator=g).half()
    counts, sums, peaks = row(bins)
    grid = binning.new_grids(1)[0]
    assert tp().observe(x, counts, sums, peaks, grid=grid, blocks=300, stride=60, offset=11, single_max=1000) == 2
    idx = (11 + np.arange(300)[:, None] * 60 + np.arange(16)[None, :]).ravel()
    want = ref.AutoRow(bins)
    want.observe(x.double().numpy()[idx], n_seen=x.numel())
    same("big sampled", counts, want.counts)
    stats_equal(sums, peaks, want.sums, want.peaks)


@check
def multi_program_fixed() -> None:
    g = torch.Generator().manual_seed(13)
    edges = np.linspace(-2.0, 3.0, 51)
    x = torch.cat([near(torch.tensor(edges, dtype=torch.bfloat16)), specials(torch.bfloat16),
                   torch.randn(6000, generator=g).bfloat16()])
    counts, sums, peaks = row(50)
    assert tp().observe(x, counts, sums, peaks, edges=torch.tensor(edges), range=(-2.0, 3.0), single_max=500) == 2
    v = x.double().numpy()
    same("counts", counts, ref.fixed_row(v, -2.0, 3.0, 50))
    ws, wp = np.zeros(5), np.array([-math.inf, -math.inf])
    ref.add_stats(ws, wp, v)
    stats_equal(sums, peaks, ws, wp)


@check
def single_program_sizes() -> None:
    """One program at every size: a small block, one 8,192 block from registers, a loop read twice."""
    g = torch.Generator().manual_seed(14)
    bins, cols = 30, 4
    s = bins + 3
    for n in (900, 5000, 9000, 30000):
        counts, sums, peaks = row(bins)
        grid = binning.new_grids(1)[0]
        classes = torch.zeros(cols, s, dtype=torch.int64)
        xgrid = binning.new_grids(1)[0]
        want = ref.AutoRow(bins, cols)
        for scale in (1.0, 7.0):
            x = (torch.randn(n // cols, cols, generator=g) * scale).to(torch.float16)
            assert tp().observe(x, counts, sums, peaks, grid=grid, classes=classes, extra_grid=xgrid) == 1
            want.observe(x.double().numpy())
            want.observe_extras(x.double().numpy(), None, classes=True)
            same(f"{n} counts", counts, want.counts)
            same(f"{n} classes", classes, want.classes)
            stats_equal(sums, peaks, want.sums, want.peaks)
        edges = np.linspace(-2.0, 2.0, bins + 1)
        counts, sums, peaks = row(bins)
        x = torch.cat([near(torch.tensor(edges, dtype=torch.float32)), torch.randn(n, generator=g)])
        assert tp().observe(x, counts, sums, peaks, edges=torch.tensor(edges), range=(-2.0, 2.0)) == 1
        same(f"{n} fixed", counts, ref.fixed_row(x.double().numpy(), -2.0, 2.0, bins))


@check
def binner_rows() -> None:
    """A Binner over whole step buffers: each call lands in its row only (grids, YES/NO and class rows too),
    in one launch (and two for a large call)."""
    g = torch.Generator().manual_seed(15)
    rows, bins, cols = 6, 12, 3
    s = bins + 3
    counts = torch.zeros(rows, s, dtype=torch.float64)
    sums = torch.zeros(rows, 5, dtype=torch.float64)
    peaks = torch.full((rows, 2), -math.inf, dtype=torch.float64)
    grids = binning.new_grids(rows)
    truth = torch.zeros(rows, 2, s, dtype=torch.int64)
    classes = torch.zeros(rows, cols, s, dtype=torch.int64)
    xgrids = binning.new_grids(rows)
    like = torch.empty(40, cols, dtype=torch.bfloat16)
    binner = tp().Binner(like, counts, sums, peaks, grid=grids, truth=truth, classes=classes, extra_grid=xgrids)
    big = tp().Binner(torch.empty(800, cols), counts, sums, peaks, grid=grids, truth=truth, classes=classes,
                      extra_grid=xgrids, single_max=1000)
    want = {r: ref.AutoRow(bins, cols) for r in (1, 4)}
    for r, scale, fn in ((4, 1.0, binner), (1, 3.0, binner), (4, 50.0, binner), (1, 0.5, big), (4, 900.0, big)):
        x = (torch.randn(*(like.shape if fn is binner else (800, cols)), generator=g) * scale)
        if fn is binner:
            x = x.bfloat16()
        y = torch.randint(0, cols, (x.shape[0],), generator=g)
        assert fn(x, r, targets=y) == (1 if fn is binner else 2)
        want[r].observe(x.double().numpy())
        want[r].observe_extras(x.double().numpy(), _yes(x, y), classes=True)
    for r in range(rows):
        if r in want:
            assert (int(grids[r, 0]), int(grids[r, 1])) == want[r].grid, (r, grids[r].tolist(), want[r].grid)
            same(f"row {r} counts", counts[r], want[r].counts)
            same(f"row {r} truth", truth[r], want[r].truth)
            same(f"row {r} classes", classes[r], want[r].classes)
            stats_equal(sums[r], peaks[r], want[r].sums, want[r].peaks)
        else:
            assert not counts[r].any() and not sums[r].any() and not truth[r].any() and not classes[r].any(), r
            assert math.isnan(grids[r, 0]) and math.isnan(xgrids[r, 0]) and (peaks[r] == -math.inf).all(), r


def _record_model(after: bool, device: str = "cpu") -> dict[str, list]:
    """A real training run of a small model (sampled layers, per-class and YES/NO rows, growing ranges,
    a validation pass) recorded in memory: every layer's epoch histograms and per-class and YES/NO rows."""
    from torch import nn

    import twinpeaks as tp

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 5)).to(device)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(48, 20, generator=g) * 3, torch.randint(0, 5, (48,), generator=g)
    x, y = x.to(device), y.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    hist = tp.ActivationsHistogram(model, bins=20, per_class=True, sample=0.3)
    out: dict[str, list] = {}
    with hist:
        for epoch in range(2):
            for i in range(0, 48, 16):
                xb, yb = x[i:i + 16] * (1 + epoch * 5), y[i:i + 16]
                if not after:
                    hist.targets(yb)
                pred = model(xb)
                if after:
                    hist.targets(yb)
                loss = nn.functional.cross_entropy(pred, yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                model(x[:16] * 50)
                hist.targets(y[:16])
            model.train()
            hist.end_epoch()
        run = hist.run
        for layer in run.layers:
            for phase in ("train", "valid"):
                for epoch in range(2):
                    h = run.histogram(layer, phase=phase, epoch=epoch)
                    out[f"{layer.name}/{phase}/{epoch}"] = [np.asarray(h.counts).tolist(), np.asarray(h.edges).tolist()]
                    for kind in ("class_counts", "truth_counts"):
                        a = run._array(layer.id, phase, kind, epoch)
                        if a is not None:
                            out[f"{layer.name}/{phase}/{epoch}/{kind}"] = np.asarray(a).tolist()
    return out


@check
def recorder_on_kernel() -> None:
    """The recorder with the Triton kernel (on CPU tensors through the interpreter) records exactly what it
    records with the C kernel: counts, edges, per-class and YES/NO rows, targets before and after."""
    from twinpeaks import _triton, binning

    calls = [0]
    real = _triton.Binner.__call__

    def counted(self, *a, **kw):  # type: ignore[no-untyped-def]
        calls[0] += 1
        return real(self, *a, **kw)

    for after in (False, True):
        binning.TRITON_ON_CPU = False
        want = _record_model(after)
        binning.TRITON_ON_CPU = True
        _triton.Binner.__call__ = counted  # type: ignore[method-assign]
        try:
            calls[0] = 0
            got = _record_model(after)
        finally:
            _triton.Binner.__call__ = real  # type: ignore[method-assign]
            binning.TRITON_ON_CPU = False
        assert calls[0] >= 40, f"the recorder called the kernel {calls[0]} times"
        assert sorted(got) == sorted(want), (sorted(got), sorted(want))
        bad = [k for k in want if got[k] != want[k]]
        assert not bad, f"targets {'after' if after else 'before'} the forward: {bad[:5]} differ"


def recorder_kernel_vs_torch(device: str) -> None:
    """On a GPU: the recorder with the Triton kernel records exactly what it records with the torch device path."""
    from twinpeaks import binning

    old = binning.DEVICE_KERNEL
    try:
        for after in (False, True):
            binning.DEVICE_KERNEL = False
            want = _record_model(after, device)
            binning.DEVICE_KERNEL = True
            got = _record_model(after, device)
            bad = [k for k in want if got.get(k) != want[k]]
            assert sorted(got) == sorted(want) and not bad, f"targets after: {after}: {bad[:5]} differ"
    finally:
        binning.DEVICE_KERNEL = old


@check
def import_is_lazy() -> None:
    import subprocess

    code = "import sys, twinpeaks, twinpeaks._triton; assert 'triton' not in sys.modules, 'triton imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def compile_variants(arch: int = 90) -> dict[str, str]:
    """Compile the kernels for a CUDA target with no GPU (triton's own ptxas): what the interpreter cannot
    check (types, layouts, lowering of histogram/gather/cumsum/atomics in float64 and int64)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    k = tp().kernels()
    assert not k.INTERPRETED
    xs = dict(x_ptr="*fp32", n_bin="i32", n_seen="i32", offset="i32", stride="i32", counts_ptr="*fp64",
              sums_ptr="*fp64", peaks_ptr="*fp64", grid_ptr="*fp64", xgrid_ptr="*fp64", edges_ptr="*fp64",
              truth_ptr="*i64",
              cls_ptr="*i64", n_truth="i32", n_cls="i32", y_ptr="*i64", cols="i32", part_ptr="*fp64", n_parts="i32",
              per_prog="i32", snap_ptr="*fp64", row="i32")
    base = dict(B=100, SP=103, BP=128, BP2=256, LOG2B=7, AUTO=True, SEARCH=False, SAMPLED=False, SB=16, BF16=False,
                MAIN=True, BIN_TRUTH=False, BIN_CLS=False, YMODE=0, MULTI=False, ONE=True, BLOCK=8192, PBLOCK=1)
    variants = {
        "auto": ({}, {}),
        "auto_small_block": ({}, dict(BLOCK=1024)),
        "auto_loop": ({}, dict(ONE=False, BLOCK=2048)),
        "fixed_loop_classes": ({}, dict(AUTO=False, ONE=False, BLOCK=2048, BIN_CLS=True)),
        "fixed": ({}, dict(AUTO=False)),
        "fixed_search_int64_counts": (dict(counts_ptr="*i64"), dict(AUTO=False, SEARCH=True)),
        "sampled_bf16": (dict(x_ptr="*i16"), dict(SAMPLED=True, BF16=True)),
        "fp16_classes_truth": (dict(x_ptr="*fp16"), dict(BIN_TRUTH=True, BIN_CLS=True, YMODE=1)),
        "truth_only_dense_u8": (dict(y_ptr="*u8"), dict(MAIN=False, BIN_TRUTH=True, YMODE=2)),
        "multi_auto_extras": ({}, dict(MULTI=True, ONE=False, BLOCK=2048, PBLOCK=1024, BIN_TRUTH=True, BIN_CLS=True,
                                       YMODE=1)),
    }
    out = {}
    target = GPUTarget("cuda", arch, 32)
    for name, (types, consts) in variants.items():
        c = {**base, **consts}
        t = {**xs, **types}
        sig = {a: "constexpr" if a in c else t[a] for a in k.observe_kernel.arg_names}
        try:
            triton.compile(ASTSource(k.observe_kernel, sig, c), target=target, options=dict(num_warps=8))
            out[f"observe_{name}"] = "ok"
        except Exception:
            out[f"observe_{name}"] = traceback.format_exc(limit=3)
    rs = dict(x_ptr="*fp32", n_bin="i32", offset="i32", stride="i32", per_prog="i32", part_ptr="*fp64",
              counts_ptr="*fp64", grid_ptr="*fp64", xgrid_ptr="*fp64", truth_ptr="*i64", cls_ptr="*i64",
              snap_ptr="*fp64", n_truth="i32", n_cls="i32", row="i32")
    for auto in (True, False):
        c = dict(SP=103, BP=128, AUTO=auto, SAMPLED=not auto, SB=16, BF16=False, MAIN=True, XTRA=auto, BLOCK=2048)
        sig = {a: "constexpr" if a in c else rs[a] for a in k.reduce_kernel.arg_names}
        try:
            triton.compile(ASTSource(k.reduce_kernel, sig, c), target=target, options=dict(num_warps=8))
            out[f"reduce_{'auto' if auto else 'fixed'}"] = "ok"
        except Exception:
            out[f"reduce_{'auto' if auto else 'fixed'}"] = traceback.format_exc(limit=3)
    return out


def main(names: list[str]) -> None:
    if names == ["--compile"]:
        os.environ["TRITON_INTERPRET"] = "0"
        os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
        print(json.dumps(compile_variants()))
        return
    assert "triton" not in sys.modules, "triton was imported before TRITON_INTERPRET was set"
    os.environ["TRITON_INTERPRET"] = "1"
    results = {}
    for name in names or list(CHECKS):
        t = time.perf_counter()
        try:
            CHECKS[name]()
            results[name] = "ok"
        except Exception:
            results[name] = traceback.format_exc(limit=6)
        print(f"{name}: {'ok' if results[name] == 'ok' else 'FAILED'} ({time.perf_counter() - t:.1f} s)",
              file=sys.stderr)
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
