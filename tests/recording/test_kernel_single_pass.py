"""The C kernel's single speculative pass on automatic grids (issue #17), on every code path.

With a guessed grid (the row's own once set, else the hint: the grid the layer's row ended with at
its previous step) the kernel (on one thread or split over several) bins in one pass and checks the guess after. Whatever the guess, the
result must be the two-pass one bit for bit (counts, grid, sums, peaks) and numpy's
(``twinpeaks.grids.observe``, the oracle). ``_cbin.single_pass_counts()`` says which case ran, so
each test also checks that the case it is about was taken (else it would pass on the two-pass path).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from twinpeaks import binning, grids

BINS = 100
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
KEPT, MAPPED, AGAIN, REDONE = range(4)
c = binning._cbin
pytestmark = pytest.mark.skipif(c is None, reason="the C kernel is not built")


@contextlib.contextmanager
def single_pass(on: bool) -> Iterator[None]:
    was = c.single_pass(on)
    try:
        yield
    finally:
        c.single_pass(was)


def run(steps: list[list[torch.Tensor]], on: bool, hint: bool = True, bins: int = BINS, **kw) -> tuple[list, list]:
    """Bin each step's calls into a fresh row (one hint kept over the steps): the rows, and each call's case."""
    out, cases = [], []
    h = binning.new_grids(1)[0]
    with single_pass(on):
        for calls in steps:
            counts = torch.zeros(bins + 3, dtype=torch.float64)
            sums = torch.zeros(5, dtype=torch.float64)
            peaks = torch.full((2,), -math.inf, dtype=torch.float64)
            g = binning.new_grids(1)[0]
            for x in calls:
                before = c.single_pass_counts()
                binning.kernel_observe(x, g, counts, sums, peaks, hint=h if hint else None, **kw)
                d = [a - b for a, b in zip(c.single_pass_counts(), before)]
                assert sum(d) <= 1
                cases.append(d.index(1) if sum(d) else None)
            out.append((counts, sums, peaks, g, h.clone()))
    return out, cases


def check(steps: list[list[torch.Tensor]], bins: int = BINS, **kw) -> list:
    """Single pass == two passes, bit for bit, == numpy; returns the cases the single pass took."""
    one, cases = run(steps, True, bins=bins, **kw)
    two, none = run(steps, False, bins=bins, **kw)
    assert none == [None] * len(none)  # off: never a single pass
    for (c1, s1, p1, g1, h1), (c2, s2, p2, g2, h2), calls in zip(one, two, steps):
        for a, b in ((c1, c2), (s1, s2), (p1, p2), (g1, g2), (h1, h2)):  # bit for bit (NaN where NaN)
            np.testing.assert_array_equal(a.numpy(), b.numpy())
        want = np.zeros(bins + 3, np.int64)
        wg = None
        for x in calls:
            v = x.double().numpy().ravel()
            if kw.get("blocks"):
                v = np.concatenate([v[kw["offset"] + i * kw["stride"]:][:kw["block"]] for i in range(kw["blocks"])])
            wg = grids.observe(want, wg, v)
        np.testing.assert_array_equal(c1.numpy(), want)
        if wg is None:
            assert g1[0].isnan()
        else:
            assert (int(g1[0]), int(g1[1])) == wg
    return cases


def normal(n: int, scale: float, shift: float = 0.0, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=g, dtype=torch.float64) * scale + shift).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_hint_right(c_path, dtype):
    """The same tensor at successive steps: the first with no hint (two passes), then the guess is kept."""
    x = normal(5000, 3.0, dtype=dtype)
    assert check([[x], [x], [x]]) == [None, KEPT, KEPT]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hint_coarser_and_shifted(c_path, dtype):
    """Values inside the hint whose own grid is coarser (a constant: centred, 2**-7 of its magnitude wide) or
    as wide and shifted: the guessed bins mapped onto the row's grid."""
    for lo, shift in ((200.0, 0), (1000.0, 3)):  # hint (0, lo): the constant's grid 2**shift wider
        x = torch.arange(lo, lo + 100, 0.5, dtype=dtype)  # every bin of the hint's grid, twice
        const = torch.full((3000,), lo + 50, dtype=dtype)
        narrow = x[(x >= lo + 10) & (x < lo + 90)]  # the same width, offset lo + 10
        assert tuple(map(int, c.grid(float(x.min()), float(x.max()), BINS))) == (0, int(lo))
        assert int(c.grid(lo + 50, lo + 50, BINS)[0]) == shift
        cases = check([[x], [const], [x], [narrow], [x], [narrow[::3].contiguous()]])
        assert cases[1] == (MAPPED if shift else KEPT)
        assert cases[3] == MAPPED and cases[5] == MAPPED


@pytest.mark.parametrize("dtype", DTYPES)
def test_hint_finer_or_off_range(c_path, dtype):
    """A narrower range (a finer grid) or values outside the hint: binned again on the row's grid."""
    x = normal(5000, 3.0, dtype=dtype)
    assert check([[x], [x * 0.01], [x * 0.01], [x * 100], [x * 100 + 1000]])[1:] == [AGAIN, KEPT, AGAIN, AGAIN]


@pytest.mark.parametrize("dtype", DTYPES)
def test_nonfinite_values_redo_both_passes(c_path, dtype):
    """NaN or +-inf in a call: the span's min/max are not the finite ones: both passes again."""
    x = normal(5000, 3.0, dtype=dtype)
    steps = []
    for bad in (math.nan, math.inf, -math.inf):
        y = x.clone()
        y[[7, 4000]] = bad
        steps.append([y])
    only = torch.full((100,), math.nan, dtype=dtype)  # nothing finite: the row stays unset
    cases = check([[x]] + steps + [[only], [x]])
    assert cases == [None, REDONE, REDONE, REDONE, REDONE, KEPT]


@pytest.mark.parametrize("dtype", DTYPES)
def test_second_call_of_a_step(c_path, dtype):
    """The row's own grid is the guess for a later call in the step (no hint needed): kept, mapped, or again."""
    x = normal(5000, 3.0, dtype=dtype, seed=1)
    inside = x[(x > -1) & (x < 1)]  # inside the row's grid: kept
    wider = normal(4000, 30.0, dtype=dtype, seed=2)  # outside: the row coarsened, its counts regridded
    steps = [[x, inside, wider, x]]
    one, cases = run(steps, True, hint=False)
    assert cases == [None, KEPT, AGAIN, KEPT]
    check(steps)


@pytest.mark.parametrize("dtype", DTYPES)
def test_random_drifting_sequences(c_path, dtype):
    """Random steps of 1-3 calls with drifting scale and shift, zeros, constants, a few NaN: bit for bit."""
    g = torch.Generator().manual_seed(17)
    steps = []
    scale, shift = 1.0, 0.0
    for _ in range(40):
        scale *= float(torch.exp(torch.randn(1, generator=g) * 0.4))
        shift += float(torch.randn(1, generator=g)) * scale * 0.3
        calls = []
        for _k in range(1 + int(torch.randint(0, 3, (1,), generator=g))):
            n = int(torch.randint(1, 3000, (1,), generator=g))
            x = torch.randn(n, generator=g, dtype=torch.float64) * scale + shift
            r = float(torch.rand(1, generator=g))
            if r < 0.2:
                x = x.clamp(min=0)  # a ReLU's
            elif r < 0.25:
                x[:] = shift
            elif r < 0.3:
                x[int(torch.randint(0, n, (1,), generator=g))] = math.nan
            calls.append(x.to(dtype))
        steps.append(calls)
    cases = check(steps)
    assert {KEPT, MAPPED, AGAIN} <= set(cases)


def test_sampled_plans_and_small_bins(c_path):
    """Sampled blocks and a 2-bin row: the same single pass."""
    x = normal(20000, 2.0)
    plan = dict(stride=100, blocks=150, block=16, offset=3)
    assert KEPT in check([[x], [x], [x * 0.5]], **plan)
    assert KEPT in check([[x], [x], [x.abs()], [x.abs() + 0.5]], bins=2)


@pytest.mark.parametrize("pool", ["gomp", "pthreads"])
def test_threads_take_the_single_pass_too(pool, c_path):
    """A call split over threads (torch's OpenMP workers or pthreads) bins in one pass on the guess too: the
    two-pass result bit for bit, kept, mapped to a coarser grid, binned again or redone."""
    try:
        was = c.parallel(pool)
    except ValueError:
        pytest.skip(f"no {pool} here")
    try:
        x = torch.arange(200.0, 300.0, 0.5).repeat(1400)  # 280,000 values: split on either pool
        narrow = x[(x >= 210) & (x < 290)].contiguous()  # as wide a grid, shifted: mapped
        y = x.clone()
        y[12345] = math.inf
        steps = [[x], [x], [narrow], [x * 0.001], [y]]
        assert check(steps, threads=2) == [None, KEPT, MAPPED, AGAIN, REDONE]
    finally:
        c.parallel(was)


def test_hint_is_written_and_a_bad_one_is_only_a_guess():
    """observe writes the row's grid into the hint; a hint far off (or out of the grid limits) changes nothing."""
    x = normal(3000, 2.0)
    counts = torch.zeros(BINS + 3, dtype=torch.float64)
    sums, peaks = torch.zeros(5, dtype=torch.float64), torch.full((2,), -math.inf, dtype=torch.float64)
    g = binning.new_grids(1)[0]
    want = np.zeros(BINS + 3, np.int64)
    wg = grids.observe(want, None, x.double().numpy())
    for hint in ([math.nan, 0.0], [-5000.0, 0.0], [5000.0, 0.0], [-3.0, 2.0**60], [-1022.0, 0.0], [1000.0, -3.0]):
        h = torch.tensor(hint, dtype=torch.float64)
        counts.zero_(), g.fill_(math.nan)
        binning.kernel_observe(x, g, counts, sums, peaks, hint=h)
        np.testing.assert_array_equal(counts.numpy(), want)
        assert (int(g[0]), int(g[1])) == wg and h.tolist() == list(map(float, wg))
    with pytest.raises(ValueError, match="hint"):
        binning.kernel_observe(x, g, counts, sums, peaks, hint=torch.zeros(3, dtype=torch.float64))


def test_recorder_hints_a_training_model(tmp_path):
    """A tiny real model trained for steps, exact mode: the recorder's hint makes single passes, and every per-step
    column (counts, grids, stats) is the two-pass one."""
    import twinpeaks as tp

    runs = []
    cases = []
    for on in (True, False):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                                    torch.nn.Tanh(), torch.nn.Linear(256, 4))
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        xb, yb = torch.randn(64, 16), torch.randint(0, 4, (64,))
        p = tmp_path / f"r{on}.tp"
        before = c.single_pass_counts()
        with single_pass(on), tp.ActivationsHistogram(model, p, sample=1.0, bins=40) as hist:
            for _ in range(12):
                loss = torch.nn.functional.cross_entropy(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
            hist.end_epoch()
        cases.append([a - b for a, b in zip(c.single_pass_counts(), before)])
        runs.append(tp.open_run(p))
    # from each layer's second step on: one pass, mostly on the right guess
    assert cases[1] == [0, 0, 0, 0] and sum(cases[0]) == 5 * 11 and cases[0][KEPT] + cases[0][MAPPED] >= 20, cases
    a, b = runs
    assert len(a.layers) == len(b.layers) == 5
    for i in range(5):
        ca, cb = a.columns(i), b.columns(i)
        assert len(ca.counts) == 12
        np.testing.assert_array_equal(ca.counts, cb.counts)
        np.testing.assert_array_equal(ca.grids, cb.grids)
        np.testing.assert_array_equal(ca.stats, cb.stats)
