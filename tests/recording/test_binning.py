"""Fixed ranges bin exactly like numpy.histogram on numpy's float64 edges, for every dtype and edge case.

(Automatic grids and more fixed-range cases: tests/test_kernel_grids.py and tests/test_grids.py.)"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_paths import c_paths

from twinpeaks import binning

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
KERNELS = ["generic"]  # the torch path (bucketize on float64 edges, index_put: the device path); the C kernel below


def bounds_for(lo, hi, bins, kernel):
    return binning.fixed_grid(lo, hi, bins)


def oracle(values: torch.Tensor, edges: np.ndarray) -> np.ndarray:
    """numpy's histogram plus the three extra slots, as twinpeaks lays them out."""
    with np.errstate(invalid="ignore"):  # NaN payloads
        v = values.double().numpy().ravel()
    finite = np.isfinite(v)
    counts, _ = np.histogram(v[finite], bins=edges)
    under = int((v[finite] < edges[0]).sum())
    over = int((v[finite] > edges[-1]).sum())
    return np.concatenate([[under], counts, [over, int((~finite).sum())]])


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=1, max_size=300),
    lo=st.floats(-100, 100),
    width=st.floats(1e-2, 100),
    bins=st.integers(1, 257),
)
def test_matches_numpy_random(kernel, dtype, data, lo, width, bins):
    hi = lo + width
    b = bounds_for(lo, hi, bins, kernel)
    edges = b.edges.double().numpy()
    x = torch.tensor(data, dtype=torch.float32).to(dtype)
    got = binning.bin_values(x, b).numpy()
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, oracle(x, edges))
    assert got.sum() == x.numel()
    check_hot_path(x, b)



def check_hot_path(x, b):
    """The recorder's hot paths: the C kernel, and the stats parts of the torch path."""
    check_c_kernel(x, b)
    x = x.float()
    add, peak = (t.double().numpy() for t in binning.stats_parts(x))
    v = x.double().numpy()
    assert add[2] == np.count_nonzero(v)
    if np.isfinite(v).all():
        np.testing.assert_array_equal(peak, [-v.min(), v.max()])
    if (np.abs(v) < 1e15).all():  # float32 sums of squares overflow past ~1e19
        np.testing.assert_allclose(add[:2], [v.sum(), (v * v).sum()], rtol=1e-4, atol=1e-3)


def kernel_rows(b):
    return (torch.zeros(binning.n_slots(b.bins), dtype=torch.float64), torch.zeros(5, dtype=torch.float64),
            torch.full((2,), -math.inf, dtype=torch.float64))






def check_c_kernel(x, b):
    """The C kernel on ``x`` in its own dtype: slots = numpy, stats = numpy in float64, peaks like torch.aminmax."""
    for _ in c_paths():
        check_c_kernel_once(x, b)


def check_c_kernel_once(x, b):
    counts, sums, peaks = kernel_rows(b)
    binning.kernel_observe(x, b, counts, sums, peaks)
    want = oracle(x, b.edges.double().numpy())
    np.testing.assert_array_equal(counts.numpy(), want)
    v = x.double().numpy().ravel()
    assert sums[2] == np.count_nonzero(v) and sums[3] == sums[4] == v.size
    if np.isnan(v).any():
        assert np.isnan(peaks.numpy()).all()
    else:
        np.testing.assert_array_equal(peaks.numpy(), [-v.min(), v.max()])
    with np.errstate(all="ignore"):
        want_sums = [v.sum(), (v * v).sum()]
    np.testing.assert_allclose(sums[:2].numpy(), want_sums, rtol=1e-9, atol=1e-9)


def test_c_kernel_is_built():
    """`make test` must exercise the C kernel, not fall back to torch silently."""
    assert binning._cbin is not None and binning.KERNEL


@pytest.mark.parametrize("dtype", [*DTYPES, torch.float64], ids=str)
def test_c_kernel_every_dtype_value(dtype):
    """Every float16/bfloat16 bit pattern (subnormals, inf, NaN) converts like torch; float64 is binned as it is."""
    if dtype in (torch.float16, torch.bfloat16):
        x = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    else:
        x = torch.randn(10_000, dtype=dtype) * 3
        x[:3] = torch.tensor([math.nan, math.inf, 1e-40])
    for lo, hi, bins in [(-1, 1, 100), (-70000, 70000, 7), (0, 1e-6, 13)]:
        check_c_kernel(x, binning.fixed_grid(lo, hi, bins))


@pytest.mark.parametrize("lo,hi,bins", [(1e6, 1e6 + 1, 100), (-1e-30, 1e-30, 1000), (3.0, 3.0000005, 50)])
def test_c_kernel_narrow_ranges(lo, hi, bins):
    """Bins narrower than float32 resolves still match numpy on the float64 edges."""
    b = binning.fixed_grid(lo, hi, bins)
    e = b.edges
    x = torch.cat([e, torch.nextafter(e, torch.full_like(e, math.inf)), torch.nextafter(e, torch.full_like(e, -math.inf)),
                   torch.linspace(lo, hi, 997)])
    check_c_kernel(x, b)


@settings(max_examples=300, deadline=None)
@given(lo=st.floats(-1e5, 1e5), width=st.floats(1e-4, 1e5), bins=st.integers(1, 3000), seed=st.integers(0, 2**32 - 1))
def test_c_kernel_edges_of_any_range(lo, width, bins, seed):
    """The scaled guess plus one-bin fix (or the edge search) is exact on every edge and its float32 neighbours."""
    hi = lo + width
    b = binning.fixed_grid(lo, hi, bins)
    e = b.edges
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([e, torch.nextafter(e, torch.full_like(e, math.inf)), torch.nextafter(e, torch.full_like(e, -math.inf)),
                   lo + torch.rand(1000, generator=g) * width])
    for _ in c_paths():
        counts, sums, peaks = kernel_rows(b)
        binning.kernel_observe(x, b, counts, sums, peaks)
        np.testing.assert_array_equal(counts.numpy(), oracle(x, b.edges.double().numpy()))



def test_c_kernel_reads_only_the_planned_blocks(c_path):
    """Sampling: `blocks` runs of `block` elements, `stride` apart from `offset`; everything else is untouched."""
    b = binning.fixed_grid(0, 100, 100)
    x = torch.arange(1000, dtype=torch.float32) % 100 + 0.5
    counts, sums, peaks = kernel_rows(b)
    binning.kernel_observe(x, b, counts, sums, peaks, stride=100, blocks=10, block=16, offset=7)
    picked = torch.cat([x[7 + 100 * i: 7 + 100 * i + 16] for i in range(10)])
    np.testing.assert_array_equal(counts.numpy(), oracle(picked, b.edges.double().numpy()))
    assert sums.tolist() == [float(picked.double().sum()), float((picked.double() ** 2).sum()), 160.0, 160.0, 1000.0]
    with pytest.raises(ValueError, match="sampling plan"):
        binning.kernel_observe(x, b, counts, sums, peaks, stride=100, blocks=10, block=16, offset=90)
    with pytest.raises(ValueError, match="contiguous"):
        binning.kernel_observe(x.view(10, 100)[:, :50], b, counts, sums, peaks)
    # a dense permutation is read in storage order: same histogram as the contiguous copy
    y = torch.randn(30, 40)
    c1, c2 = kernel_rows(b), kernel_rows(b)
    binning.kernel_observe(y.t(), b, *c1)
    binning.kernel_observe(y.t().contiguous(), b, *c2)
    for r1, r2 in zip(c1, c2):
        np.testing.assert_allclose(r1.numpy(), r2.numpy(), rtol=1e-12)


def test_c_kernel_adds_into_rows(c_path):
    """Rows accumulate over calls: counts and sums add up, peaks keep the maximum, a NaN stays."""
    b = binning.fixed_grid(-1, 1, 4)
    counts, sums, peaks = kernel_rows(b)
    binning.kernel_observe(torch.tensor([0.5, -0.5]), b, counts, sums, peaks)
    binning.kernel_observe(torch.tensor([3.0]), b, counts, sums, peaks)
    assert counts.tolist() == [0, 0, 1, 0, 1, 1, 0] and sums.tolist() == [3.0, 9.5, 3.0, 3.0, 3.0]
    assert peaks.tolist() == [0.5, 3.0]
    binning.kernel_observe(torch.tensor([math.nan]), b, counts, sums, peaks)
    binning.kernel_observe(torch.tensor([5.0]), b, counts, sums, peaks)
    assert math.isnan(peaks[0]) and math.isnan(peaks[1]) and counts[-1] == 1


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lo,hi,bins", [(-1, 1, 100), (-0.3, 0.7, 37), (0, 1e-3, 10), (-10, 10, 200), (2, 3, 1)])
def test_values_on_edges_and_neighbours(kernel, dtype, lo, hi, bins):
    b = bounds_for(lo, hi, bins, kernel)
    e = b.edges
    up = torch.nextafter(e, torch.full_like(e, math.inf))
    down = torch.nextafter(e, torch.full_like(e, -math.inf))
    x = torch.cat([e, up, down, torch.tensor([math.nan, math.inf, -math.inf, 1e30, -1e30])]).to(dtype)
    np.testing.assert_array_equal(binning.bin_values(x, b).numpy(), oracle(x, b.edges.double().numpy()))
    check_hot_path(x, b)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_counts_do_not_saturate(kernel, dtype):
    # histc on bf16 returns 2,048 for 100k samples in one bin; counts must be exact int64
    x = torch.full((100_000,), 0.5, dtype=dtype)
    got = binning.bin_values(x, bounds_for(0, 1, 10, kernel))
    assert got.dtype == torch.int64 and int(got[1 + 5]) == 100_000


def test_bad_range_fails_early():
    with pytest.raises(ValueError, match="range"):
        binning.fixed_grid(1, 1, 10)
    with pytest.raises(ValueError, match="narrow"):
        binning.fixed_grid(1.0, 1.0 + 2e-16, 10)
    with pytest.raises(ValueError, match="bins"):
        binning.fixed_grid(0, 1, 0)
