"""Every code path of the C kernel (portable, SSE2, AVX2, AVX-512) and its threads against numpy.

Each path vectorises the slots, the stats and the min/max pass in its own way (8 or 16 elements at a
time, a scalar tail, fewer lane histograms for small calls, one add when a vector's slots are equal),
so each one runs on every dtype, grid kind, special value, length and alignment here.
"""

import math
import sys

import numpy as np
import pytest
import torch
from kernel_paths import PATHS, c_paths, using_path

from twinpeaks import binning, grids

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
BINS = 100
#: elements from which a call may be split over pthreads (twice _cbin.c's THREAD_MIN)
SPLIT = 2 << 17


def rows(bins=BINS):
    return (torch.zeros(bins + 3, dtype=torch.float64), torch.zeros(5, dtype=torch.float64),
            torch.full((2,), -math.inf, dtype=torch.float64))


def values(dtype, n, seed=0):
    """n values of dtype: normal at several scales, ReLU zeros in runs, -0.0, subnormals, huge, NaN, +-inf."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g, dtype=torch.float64) * 10.0 ** torch.randint(-3, 4, (n,), generator=g)
    x[torch.rand(n, generator=g) < 0.3] = 0.0
    if n > 200:
        x[37:150] = 0.0  # a run of zeros across vectors
        x[150:181] = -0.0
    tiny = {torch.float32: 1e-40, torch.float16: 3e-7, torch.bfloat16: 1e-40, torch.float64: 1e-310}[dtype]
    big = {torch.float32: 3e38, torch.float16: 6e4, torch.bfloat16: 3e38, torch.float64: 1e300}[dtype]
    special = torch.tensor([math.nan, math.inf, -math.inf, -0.0, tiny, -tiny, big, -big], dtype=torch.float64)
    idx = torch.randint(0, max(n, 1), (min(n // 4, 24),), generator=g)
    x[idx] = special[torch.arange(len(idx)) % len(special)]
    return x.to(dtype)


def numpy_fixed(x, lo, hi, bins):
    v = x.double().numpy().ravel()
    ok = np.isfinite(v)
    f = v[ok]
    return np.concatenate([[(f < lo).sum()], np.histogram(f, bins, range=(lo, hi))[0], [(f > hi).sum(), (~ok).sum()]])


def numpy_counts(x, grid):
    """numpy's counts of ``x`` on ``grid``: the fixed range -3..3, or a fresh automatic row (grids.observe)."""
    if isinstance(grid, binning.Fixed):
        return numpy_fixed(x, -3, 3, BINS)
    want = np.zeros(BINS + 3, np.int64)
    grids.observe(want, None, x.double().numpy())
    return want


def check_stats(x, sums, peaks, seen=None):
    v = x.double().numpy().ravel()
    assert sums[2] == np.count_nonzero(v) and sums[3] == v.size and sums[4] == (seen or v.size)
    if not v.size:
        assert (peaks.numpy() == -np.inf).all()
    elif np.isnan(v).any():
        assert np.isnan(peaks.numpy()).all()
    else:
        np.testing.assert_array_equal(peaks.numpy(), [-v.min(), v.max()])
    with np.errstate(all="ignore"):
        want = np.array([v.sum(), (v * v).sum()])
    got = sums[:2].numpy()
    if np.isfinite(want).all():
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * np.abs(v).sum())  # sums cancel: atol by sum |x|
    else:  # NaN or an infinite sum: the same kind
        assert (np.isnan(got) == np.isnan(want)).all() and (got[~np.isnan(got)] == want[~np.isnan(want)]).all()


def check_fixed(x, lo, hi, bins=BINS, **kw):
    counts, sums, peaks = rows(bins)
    binning.kernel_observe(x, binning.fixed_grid(lo, hi, bins), counts, sums, peaks, **kw)
    np.testing.assert_array_equal(counts.numpy(), numpy_fixed(x, lo, hi, bins))
    check_stats(x, sums, peaks)


def check_auto(x, bins=BINS, **kw):
    counts, sums, peaks = rows(bins)
    g = binning.new_grids(1)[0]
    binning.kernel_observe(x, g, counts, sums, peaks, **kw)
    want = np.zeros(bins + 3, np.int64)
    wg = grids.observe(want, None, x.double().numpy().ravel())
    assert (None if math.isnan(g[0]) else (int(g[0]), int(g[1]))) == wg
    np.testing.assert_array_equal(counts.numpy(), want)
    check_stats(x, sums, peaks)
    return counts, g


def test_paths_are_every_one_the_cpu_has():
    """PATHS lists each path this CPU can run (the kernel tests run on each), widest first; simd() switches them."""
    c = binning._cbin
    assert PATHS[-1] == "portable" and list(c.PATHS) == PATHS
    if sys.platform == "linux" and "x86_64" in __import__("platform").machine():
        flags = set()
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":")[1].split())
                break
        assert "sse2" in PATHS
        assert ("avx2" in PATHS) == ({"avx2", "fma", "f16c"} <= flags)
        assert ("avx512" in PATHS) == ({"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags)
    was = c.simd()
    assert was == PATHS[0]  # the widest by default
    try:
        for p in PATHS:
            c.simd(p)
            assert c.simd() == p
        assert c.simd(True) == PATHS[-1] and c.simd() == PATHS[0]
        assert c.simd(False) == PATHS[0] and c.simd() == "portable"
        with pytest.raises(ValueError, match="code path"):
            c.simd("avx1024")
        with pytest.raises(ValueError, match="code path"):
            c.simd(3)
        assert c.simd() == "portable"
    finally:
        c.simd(was)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_path_every_dtype_specials_and_lengths(dtype, c_path):
    """Fixed and auto grids on every length 0..70 (vector bodies and scalar tails, 1, 2 or 8 lanes) and longer."""
    for n in [*range(0, 71), 127, 255, 256, 257, 511, 1023, 1024, 4097, 20_011]:
        x = values(dtype, n, seed=n)
        check_fixed(x, -3, 3)
        check_fixed(x, -1e-3, 5e-3, 37)
        if n:
            check_auto(x)
            check_auto(x, 7)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_auto_grids_past_float32_slots(dtype, c_path):
    """Grids where float32 slots would not be exact (|o| + bins > 2**24, 2**-e not a normal float32): float64 slots."""
    g = torch.Generator().manual_seed(6)
    far = 1e6 if dtype != torch.float16 else 6e4  # a narrow spread far from 0: a large offset o
    for x in [far + torch.randn(3001, generator=g, dtype=torch.float64) * (far * 1e-3),
              torch.randn(3001, generator=g, dtype=torch.float64) * 1e-39,  # float32 subnormals: e < -127
              torch.randn(3001, generator=g, dtype=torch.float64) * 1e37]:
        check_auto(x.to(dtype))
        check_auto(x.to(dtype), 7)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fixed_values_on_every_edge(dtype, c_path):
    """Vectors of values on the edges (and zeros among them): the guess is checked against numpy's edges."""
    for lo, hi, bins in [(-3, 3, 100), (-1, 1, 2), (0, 1e-3, 37), (-1e4, 3e4, 999), (0.1, 0.7, 3)]:
        e = torch.from_numpy(np.histogram_bin_edges([0.0], bins, range=(lo, hi)))
        x = torch.stack([e, torch.zeros_like(e), torch.nextafter(e, torch.full_like(e, -math.inf))], 1).reshape(-1)
        check_fixed(x.to(dtype), lo, hi, bins)
        check_fixed(e.to(dtype), lo, hi, bins)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_unaligned_views(dtype, c_path):
    """A view one element in (and a few more): the vector loads are unaligned, the result is the same."""
    x = values(dtype, 5000, seed=3)
    for k in (1, 2, 3, 5, 7):
        check_fixed(x[k:], -2, 2)
        check_auto(x[k:])
        check_auto(x[k:-k])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sampled_blocks(dtype, c_path):
    x = values(dtype, 50_000, seed=4)
    for stride, blocks, block, offset in [(100, 499, 16, 7), (37, 1000, 16, 0), (16, 3000, 16, 1), (500, 90, 33, 9)]:
        picked = torch.cat([x[offset + stride * i: offset + stride * i + block] for i in range(blocks)])
        for grid in (binning.fixed_grid(-3, 3, BINS), binning.new_grids(1)[0]):
            counts, sums, peaks = rows()
            binning.kernel_observe(x, grid, counts, sums, peaks, stride=stride, blocks=blocks, block=block,
                                   offset=offset)
            want = numpy_counts(picked, grid)
            np.testing.assert_array_equal(counts.numpy(), want)
            check_stats(picked, sums, peaks, seen=x.numel())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_every_half_bit_pattern(dtype, c_path):
    """float16 (F16C on the AVX paths, a table elsewhere) and bfloat16: every bit pattern, fixed and auto."""
    x = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    check_fixed(x, -1, 1)
    check_fixed(x, 0, 1e-6, 13)
    finite = x[torch.isfinite(x)]
    check_auto(finite[(finite.float().abs() < 1e-3)])  # the subnormals and the smallest normals
    check_auto(x)


def test_runs_of_equal_values(c_path):
    """Vectors whose slots are all equal take one add: runs of all lengths and offsets, then mixed."""
    for n in (15, 16, 17, 31, 32, 33, 64, 1000):
        for start in (0, 1, 8, 13):
            x = torch.randn(2000, generator=torch.Generator().manual_seed(n + start))
            x[start:start + n] = 0.0
            x[start + n + 5: start + 2 * n + 5] = 1.25
            check_fixed(x, -3, 3)
            check_auto(x)
    check_auto(torch.zeros(4096))
    check_auto(torch.full((4099,), -2.5))
    check_fixed(torch.full((4099,), 3.0), -3, 3)  # the closed last edge


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_threads_give_the_same_counts(dtype, c_path):
    """threads=2 (and 3) split a large call: counts, grid, sums and peaks equal threads=1 (bits), counts numpy."""
    n = SPLIT + 12_345  # odd: the last part has a tail
    x = values(dtype, n, seed=5)
    for grid_of in (lambda: binning.fixed_grid(-3, 3, BINS), lambda: binning.new_grids(1)[0]):
        for plan in ({}, {"stride": 19, "blocks": n // 19 - 1, "block": 16, "offset": 2}):
            got = []
            for threads in (1, 2, 3):
                counts, sums, peaks = rows()
                grid = grid_of()
                binning.kernel_observe(x, grid, counts, sums, peaks, threads=threads, **plan)
                got.append((counts, sums, peaks, grid))
            counts, sums, peaks, grid = got[0]
            if plan:
                picked = x[2:2 + 19 * plan["blocks"]].view(-1, 19)[:, :16].reshape(-1)
            else:
                picked = x
            want = numpy_counts(picked, grid)
            np.testing.assert_array_equal(counts.numpy(), want)
            check_stats(picked, sums, peaks, seen=n)
            for c2, s2, p2, g2 in got[1:]:
                assert torch.equal(c2, counts)
                for a, b in ((s2, sums), (p2, peaks)):  # the sums are added chunk by chunk in order: same bits
                    np.testing.assert_array_equal(a.numpy().view(np.int64), b.numpy().view(np.int64))
                if not isinstance(grid, binning.Fixed):
                    assert torch.equal(g2, grid)


def test_threads_coarsen_a_row_with_counts(c_path):
    """The second call of a step on a wider range: the row's grid is coarsened once from every part's min/max."""
    x = torch.randn(SPLIT + 99) * 0.01
    y = torch.randn(SPLIT + 7) * 1000
    out = []
    for threads in (1, 2):
        counts, sums, peaks = rows()
        g = binning.new_grids(1)[0]
        binning.kernel_observe(x, g, counts, sums, peaks, threads=threads)
        binning.kernel_observe(y, g, counts, sums, peaks, threads=threads)
        out.append((counts.clone(), g.clone()))
    want = np.zeros(BINS + 3, np.int64)
    wg = grids.observe(want, None, x.double().numpy())
    wg = grids.observe(want, wg, y.double().numpy())
    for counts, g in out:
        np.testing.assert_array_equal(counts.numpy(), want)
        assert (int(g[0]), int(g[1])) == wg


def test_row_index_addresses_one_row():
    """observe(..., threads, row) adds into row `row` of [rows, ...] buffers from their base addresses only."""
    c = binning._cbin
    nrows = 5
    counts = torch.zeros(nrows, BINS + 3, dtype=torch.float64)
    sums = torch.zeros(nrows, 5, dtype=torch.float64)
    peaks = torch.full((nrows, 2), -math.inf, dtype=torch.float64)
    g = binning.new_grids(nrows)
    x = torch.randn(3000)
    for path in c_paths():
        for fixed in (True, False):
            counts.zero_(), sums.zero_(), peaks.fill_(-math.inf), g.fill_(math.nan)
            edges = binning.fixed_grid(-3, 3, BINS).edges_ptr if fixed else 0
            c.observe(x.data_ptr(), 0, x.numel(), 0, 0, 0, edges, 0 if fixed else g.data_ptr(), BINS,
                      counts.data_ptr(), sums.data_ptr(), peaks.data_ptr(), 1, 3)
            c1, s1, p1 = rows()
            g1 = binning.new_grids(1)[0]
            binning.kernel_observe(x, binning.fixed_grid(-3, 3, BINS) if fixed else g1, c1, s1, p1)
            others = [0, 1, 2, 4]
            assert torch.equal(counts[3], c1) and torch.equal(sums[3], s1) and torch.equal(peaks[3], p1), path
            assert not counts[others].any() and not sums[others].any() and (peaks[others] == -math.inf).all()
            if not fixed:
                assert torch.equal(g[3], g1) and g[others].isnan().all()
    with pytest.raises(ValueError, match="row"):
        c.observe(x.data_ptr(), 0, 10, 0, 0, 0, 0, g.data_ptr(), BINS, counts.data_ptr(), sums.data_ptr(),
                  peaks.data_ptr(), 1, -1)
    with pytest.raises(TypeError, match="14 or 15 arguments"):
        c.observe(x.data_ptr(), 0, 10, 0, 0, 0, 0, g.data_ptr(), BINS, counts.data_ptr(), sums.data_ptr(),
                  peaks.data_ptr())


def test_paths_agree_on_a_recorded_model(tmp_path, monkeypatch):
    """A real model recorded on each path, its kernel on 1 and 2 threads: the same counts in the run file."""
    import twinpeaks as tp

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
    xb = torch.randn(600, 64)
    runs = []
    threads = torch.get_num_threads()
    try:
        for i, path in enumerate(PATHS):
            for t in (1, 2):
                torch.set_num_threads(t)
                monkeypatch.setenv("TWINPEAKS_KERNEL_THREADS", "torch")  # the 512-wide layer: 307,200 elements
                with using_path(path):
                    p = tmp_path / f"r{i}{t}.tp"
                    with tp.ActivationsHistogram(model, p, sample=1.0, bins=50) as hist:
                        for _ in range(3):
                            model(xb).sum().backward()
                        hist.end_epoch()
                    runs.append(p)
    finally:
        torch.set_num_threads(threads)
    ref = tp.open_run(runs[0])
    assert len(ref.layers) == 3
    for p in runs[1:]:
        r = tp.open_run(p)
        for i in range(len(ref.layers)):
            a, b = ref.histogram(i), r.histogram(i)
            assert a.total == b.total == a.seen and a.grid == b.grid
            np.testing.assert_array_equal(a.counts, b.counts)
            assert (a.underflow, a.overflow, a.nonfinite) == (b.underflow, b.overflow, b.nonfinite)


def test_kernel_threads_setting(monkeypatch, tmp_path):
    """TWINPEAKS_KERNEL_THREADS: unset torch's count where the kernel uses torch's OpenMP workers (else 1), a
    number, 'torch' (torch's count); anything else warns once and is 1. The recorder's plans pass it to the
    kernel (the last of kernel_args)."""
    monkeypatch.delenv("TWINPEAKS_KERNEL_THREADS", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    was = torch.get_num_threads()
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            assert binning.kernel_threads() == (t if binning._cbin.parallel() == "gomp" else 1)
            with pytest.MonkeyPatch.context() as m:
                m.setattr(binning, "_cbin", None)  # no kernel: nothing to split
                assert binning.kernel_threads() == 1
            with pytest.MonkeyPatch.context() as m:
                m.setenv("OMP_WAIT_POLICY", "PASSIVE")  # torch's workers asleep: not worth waking
                assert binning.kernel_threads() == 1
            was_pool = binning._cbin.parallel("pthreads")  # our own threads: never by default
            try:
                assert binning.kernel_threads() == 1
            finally:
                binning._cbin.parallel(was_pool)
    finally:
        torch.set_num_threads(was)
    monkeypatch.setenv("TWINPEAKS_KERNEL_THREADS", "3")
    assert binning.kernel_threads() == 3
    monkeypatch.setenv("TWINPEAKS_KERNEL_THREADS", "torch")
    assert binning.kernel_threads() == torch.get_num_threads()
    monkeypatch.setattr(binning, "_BAD_THREADS", set())
    for bad in ("0", "many", "-2"):
        monkeypatch.setenv("TWINPEAKS_KERNEL_THREADS", bad)
        with pytest.warns(UserWarning, match="TWINPEAKS_KERNEL_THREADS"):
            assert binning.kernel_threads() == 1
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert binning.kernel_threads() == 1  # once per value

    import twinpeaks as tp

    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    default = torch.get_num_threads() if binning._cbin.parallel() == "gomp" else 1
    for setting, want in (("2", 2), ("1", 1), (None, default)):
        if setting is None:
            monkeypatch.delenv("TWINPEAKS_KERNEL_THREADS")
        else:
            monkeypatch.setenv("TWINPEAKS_KERNEL_THREADS", setting)
        with tp.ActivationsHistogram(model, tmp_path / f"t{setting}.tp") as hist:
            model(torch.randn(4, 8))
            plans = [p for rec in hist._records for pd in rec.phases.values() for p in pd.plans.values()]
        assert plans and all(p.kernel and p.kernel_args[-2] == want for p in plans)


def test_lane_buffer_is_clean_between_calls(c_path):
    """The per-thread lane buffer is reused (and grown, or allocated per call past 512 KiB): calls of every size and
    bin count in turn, each alone equal to numpy (a count left behind would show in the next call)."""
    g = torch.Generator().manual_seed(7)
    for bins, n, scale in [(7, 5000, 1.0), (9000, 20_000, 3.0), (100, 300, 0.01), (300, 70_000, 1e4), (7, 64, 1.0),
                           (2, 1000, 1.0), (9000, 100, 1.0), (100, 4097, 1.0)]:
        x = torch.randn(n, generator=g) * scale
        x[::97] = math.nan
        check_auto(x, bins)
        check_fixed(x, -2 * scale, 2 * scale, bins)
