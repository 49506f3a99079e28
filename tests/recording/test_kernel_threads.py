"""The C kernel's calls split over threads (issue #17): torch's OpenMP workers (libgomp) or pthreads.

A split call must give the one-thread result bit for bit: counts, grid, hint, the float sums (added
chunk by chunk in order whatever the split), non-zeros, min and max, NaN where NaN, on every code
path, dtype, grid kind (fixed, fresh automatic, hinted single pass, a row coarsened by a second call)
and plan (every element, sampled blocks), at sizes that do not divide evenly. numpy is the oracle
for the counts. ``_cbin.split_counts()`` shows each test's calls were really split, on the pool asked.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from test_kernel_paths import BINS, DTYPES, numpy_counts, values

from twinpeaks import binning

c = binning._cbin
pytestmark = pytest.mark.skipif(c is None, reason="the C kernel is not built")
#: torch runs its operations on OpenMP (then libgomp is in the process and the kernel finds it)
OPENMP = "parallel backend: OpenMP" in torch.__config__.parallel_info()
#: the pools a split call can run on here
POOLS = ["gomp", "pthreads"] if OPENMP else ["pthreads"]
#: calls from this many elements are cut into chunks (_cbin.c CHUNKED): every size below is past it
SIZES = [(1 << 15) + 1, 100_003, (1 << 18) + 12_345]
#: elements per part at least, by pool (_cbin.c GOMP_MIN, THREAD_MIN): smaller calls are not split
PART_MIN = {"gomp": 1 << 14, "pthreads": 1 << 17}


@contextlib.contextmanager
def using_pool(name: str) -> Iterator[str]:
    was = c.parallel(name)
    try:
        yield name
    finally:
        c.parallel(was)


@pytest.fixture(params=POOLS)
def pool(request):
    """Runs a test on each pool a call can be split over here."""
    with using_pool(request.param) as name:
        yield name


def bits(t: torch.Tensor) -> np.ndarray:
    """A float64 tensor's bits: equal bits, equal values (NaN, -0.0 included)."""
    return t.numpy().view(np.int64).copy()


def run(calls: list[torch.Tensor], grid_kind: str, threads: int, plan: dict) -> list[np.ndarray]:
    """Bin ``calls`` into one fresh row (a hint kept across two steps for 'hinted'): every output's bits."""
    steps = 2 if grid_kind == "hinted" else 1
    hint = binning.new_grids(1)[0] if grid_kind == "hinted" else None
    out = []
    for _ in range(steps):
        counts = torch.zeros(BINS + 3, dtype=torch.float64)
        sums = torch.zeros(5, dtype=torch.float64)
        peaks = torch.full((2,), -math.inf, dtype=torch.float64)
        grid = binning.fixed_grid(-3, 3, BINS) if grid_kind == "fixed" else binning.new_grids(1)[0]
        for x in calls:
            binning.kernel_observe(x, grid, counts, sums, peaks, threads=threads, hint=hint, **plan)
        out += [bits(counts), bits(sums), bits(peaks)]
        if not isinstance(grid, binning.Fixed):
            out.append(bits(grid))
    if hint is not None:
        out.append(bits(hint))
    return out


def same_as_one_thread(calls: list[torch.Tensor], grid_kind: str, plan: dict, pool: str,
                       threads: tuple[int, ...] = (2, 3, 5)) -> list[np.ndarray]:
    one = run(calls, grid_kind, 1, plan)
    largest = max(plan["blocks"] * plan["block"] if plan else x.numel() for x in calls)
    for t in threads:
        before = c.split_counts()
        got = run(calls, grid_kind, t, plan)
        split = [a - b for a, b in zip(c.split_counts(), before)][["gomp", "pthreads"].index(pool)]
        assert (split > 0) == (largest >= 2 * PART_MIN[pool]), split
        for a, b in zip(got, one):
            np.testing.assert_array_equal(a, b)
    return one


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("grid_kind", ["fixed", "auto", "hinted"])
def test_split_equals_one_thread_bit_for_bit(dtype, grid_kind, pool, c_path):
    """Every path, dtype and grid kind, odd sizes, NaN/inf/subnormals/zero runs: threads 2, 3, 5 == 1, bits."""
    for n in SIZES:
        x = values(dtype, n, seed=n)
        one = same_as_one_thread([x], grid_kind, {}, pool)
        grid = binning.fixed_grid(-3, 3, BINS) if grid_kind == "fixed" else None
        np.testing.assert_array_equal(one[0].view(np.float64), numpy_counts(x, grid or binning.new_grids(1)[0]))


@pytest.mark.parametrize("grid_kind", ["fixed", "auto", "hinted"])
def test_sampled_plans_split_the_same(grid_kind, pool, c_path):
    """Sampled blocks (whole runs per part): threads == 1, bits; counts == numpy on the picked elements."""
    n = (1 << 19) + 777
    x = values(torch.float32, n, seed=3)
    plan = {"stride": 19, "blocks": n // 19 - 1, "block": 16, "offset": 2}
    one = same_as_one_thread([x], grid_kind, plan, pool)
    picked = x[2:2 + 19 * plan["blocks"]].view(-1, 19)[:, :16].reshape(-1)
    grid = binning.fixed_grid(-3, 3, BINS) if grid_kind == "fixed" else binning.new_grids(1)[0]
    np.testing.assert_array_equal(one[0].view(np.float64), numpy_counts(picked, grid))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_a_row_coarsened_by_a_wider_call(dtype, pool, c_path):
    """A second call on a wider range regrids the row (and the single pass maps or bins again): the same bits."""
    g = torch.Generator().manual_seed(1)
    small = (torch.randn(SIZES[1], generator=g) * 0.01).to(dtype)
    wide = (torch.randn(SIZES[2], generator=g) * 1000).to(dtype)
    shifted = (torch.randn(SIZES[0], generator=g) * 0.01 + 5).to(dtype)
    for calls in ([small, wide], [wide, small], [small, shifted, wide]):
        for kind in ("auto", "hinted"):
            same_as_one_thread(calls, kind, {}, pool, threads=(2, 4))


def test_all_nonfinite_and_all_zero(pool):
    """Calls with nothing finite, or only zeros (a single-value grid): the same bits split or not."""
    n = SIZES[2]
    for x in (torch.full((n,), math.nan), torch.full((n,), -math.inf), torch.zeros(n), torch.full((n,), -2.5)):
        for kind in ("fixed", "auto", "hinted"):
            same_as_one_thread([x], kind, {}, pool, threads=(2,))


def test_gomp_is_found_where_torch_runs_on_openmp():
    """torch on OpenMP has its libgomp loaded: the kernel finds GOMP_parallel there and uses it by default."""
    if not OPENMP:
        pytest.skip("torch's parallel backend here is not OpenMP: no libgomp to share")
    assert c.parallel() == "gomp"
    with using_pool("pthreads"):
        assert c.parallel() == "pthreads"
    assert c.parallel() == "gomp"
    with pytest.raises(ValueError, match="parallel"):
        c.parallel("tbb")


def test_one_thread_and_small_calls_never_split(pool):
    """threads=1, and calls below two parts' worth, run on the calling thread alone."""
    before = c.split_counts()
    counts, sums = torch.zeros(BINS + 3, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
    peaks = torch.full((2,), -math.inf, dtype=torch.float64)
    binning.kernel_observe(torch.randn(1 << 20), binning.new_grids(1)[0], counts, sums, peaks, threads=1)
    binning.kernel_observe(torch.randn(1 << 14), binning.new_grids(1)[0], counts, sums, peaks, threads=8)
    assert c.split_counts() == before


def test_concurrent_callers_do_not_deadlock(pool):
    """Split calls from several Python threads at once (each its own OpenMP team): every result right."""
    x = values(torch.float32, SIZES[2], seed=9)
    want = run([x], "hinted", 1, {})
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                for a, b in zip(run([x], "hinted", 2, {}), want):
                    np.testing.assert_array_equal(a, b)
        except BaseException as e:  # noqa: BLE001 - reported in the main thread
            errors.append(e)

    workers = [threading.Thread(target=work) for _ in range(3)]
    for w in workers:
        w.start()
    work()
    for w in workers:
        w.join(timeout=120)
        assert not w.is_alive(), "a split call did not return"
    assert not errors, errors[0]


def test_inside_torch_threads(pool):
    """A split call from inside torch's intra-op work (a torch parallel op on another thread meanwhile)."""
    x = values(torch.float32, SIZES[2], seed=11)
    want = run([x], "auto", 1, {})
    stop = threading.Event()

    def busy() -> None:
        a = torch.randn(256, 256)
        while not stop.is_set():
            a @ a

    t = threading.Thread(target=busy)
    t.start()
    try:
        for _ in range(10):
            for a, b in zip(run([x], "auto", 2, {}), want):
                np.testing.assert_array_equal(a, b)
    finally:
        stop.set()
        t.join()


def test_none_pool_runs_the_parts_on_the_calling_thread():
    """parallel('none'): the parts one after the other, the same bits (the fallback without threads)."""
    x = values(torch.float16, SIZES[1], seed=4)
    want = run([x], "hinted", 1, {})
    with using_pool("none"):
        for a, b in zip(run([x], "hinted", 3, {}), want):
            np.testing.assert_array_equal(a, b)
