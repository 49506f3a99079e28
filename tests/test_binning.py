"""Binning is exact against numpy.histogram with the same edges, for every dtype and edge case."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from twinpeaks import binning

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
KERNELS = ["cpu", "generic"]  # torch.histogram on CPU; bucketize + index_put (the CUDA path)


def bounds_for(lo, hi, bins, kernel):
    b = binning.fixed_bounds(lo, hi, bins, torch.device("cpu"))
    return b if kernel == "cpu" else dataclasses.replace(b, cpu_range=None)


def oracle(values: torch.Tensor, edges: np.ndarray) -> np.ndarray:
    """numpy's histogram plus the three extra slots, as twinpeaks lays them out."""
    v = values.float().numpy().astype(np.float64).ravel()
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
    """The recorder's hot path: finite counts (NaN and +-inf are "binned minus counted") and stats parts."""
    x = x.float()
    want = oracle(x, b.edges.double().numpy())
    got = binning.bin_finite(x, b).numpy()
    np.testing.assert_array_equal(got, want[:-1])  # NaN and +-inf left to "binned minus counted"
    assert x.numel() - got.sum() == want[-1]
    add, peak = (t.double().numpy() for t in binning.stats_parts(x))
    v = x.double().numpy()
    assert add[2] == np.count_nonzero(v)
    if np.isfinite(v).all():
        np.testing.assert_array_equal(peak, [-v.min(), v.max()])
    if (np.abs(v) < 1e15).all():  # float32 sums of squares overflow past ~1e19
        np.testing.assert_allclose(add[:2], [v.sum(), (v * v).sum()], rtol=1e-4, atol=1e-3)


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


def test_float32_edges_are_the_linspace():
    np.testing.assert_array_equal(binning.float32_edges(-1, 1, 4), [-1, -0.5, 0, 0.5, 1])
    assert binning.float32_edges(-0.3, 0.7, 7).dtype == np.float64


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_counts_do_not_saturate(kernel, dtype):
    # histc on bf16 returns 2,048 for 100k samples in one bin; counts must be exact int64
    x = torch.full((100_000,), 0.5, dtype=dtype)
    got = binning.bin_values(x, bounds_for(0, 1, 10, kernel))
    assert got.dtype == torch.int64 and int(got[1 + 5]) == 100_000


def test_cpu_kernel_chunks_past_float32_exact_counts(monkeypatch):
    monkeypatch.setattr(binning, "_HISTOGRAM_CHUNK", 1000)
    x = torch.rand(10_001)
    b = bounds_for(0, 1, 7, "cpu")
    np.testing.assert_array_equal(binning.bin_values(x, b).numpy(), oracle(x, b.edges.double().numpy()))


@pytest.mark.parametrize("values,lo_hi,output", [
    ([0.0, 1.0, 2.0], (0.0, 4.0), False),        # exact zeros (ReLU): 0 stays the low end
    ([0.5, 1.0, 2.0], (-1.0, 3.5), False),       # positive but no zero (a Linear): widened both ways
    ([-3.0, -1.0], (-5.0, 1.0), False),          # margin 1.0 = one span each side
    ([-3.0, 0.0], (-6.0, 0.0), False),           # exact zero on top stays the high end
    ([5.0, 5.0], (None, None), False),           # constant layers still get a usable range
    ([math.nan, math.inf], (-3.0, 3.0), False),  # no finite value: defaults to (-1, 1) widened
    ([-0.4, 0.3], (-10.0, 10.0), True),          # an untrained head: room for the logits to grow
    ([-7.0, 3.0], (-28.0, 28.0), True),          # a head already large: 4 x its largest magnitude
    ([0.1, 0.9], (0.0, 1.0), True),              # probabilities (sigmoid/softmax output)
])
def test_auto_bounds(values, lo_hi, output):
    b = binning.auto_bounds(torch.tensor(values), 10, margin=1.0, output=output)
    lo, hi = float(b.lo), float(b.hi)
    assert lo < hi
    finite = [v for v in values if math.isfinite(v)]
    if finite:
        assert lo <= min(finite) and max(finite) <= hi
    if lo_hi[0] is not None:
        assert lo == pytest.approx(lo_hi[0])
    if lo_hi[1] is not None:
        assert hi == pytest.approx(lo_hi[1])


def test_bad_range_fails_early():
    with pytest.raises(ValueError, match="range"):
        binning.fixed_bounds(1, 1, 10, torch.device("cpu"))
    with pytest.raises(ValueError, match="bins"):
        binning.fixed_bounds(0, 1, 0, torch.device("cpu"))
