"""Pure binning functions: the one place where activation values become counts.

Design constraints:

* Exact against numpy. A layer's bin edges are ``B + 1`` float32 numbers
  (``torch.linspace(lo, hi, B + 1)`` in float32). Values are upcast to float32
  (fp16 and bf16 convert exactly), so every comparison with an edge is exact and
  ``numpy.histogram(values, edges)`` gives the same counts: half-open bins, the
  last one closed.
* Nothing is dropped. Every binned element lands in exactly one *slot* of a row
  laid out as ``[underflow, bin_0 .. bin_{B-1}, overflow, nonfinite]``
  (``B + 3`` slots): values below the first edge, above the last edge, and
  NaN / +-inf are counted, not lost as ``histc`` loses them.
* Counts are int64. fp16/bf16 and float32 counts saturate (2**11, 2**24).
* No host synchronisation. The functions only launch tensor operations on the
  tensor's own device and return tensors on it; nothing here reads a value back.
  On CPU the fast kernel is ``torch.histogram`` (linear interpolation with a
  local search against its float32 edges, exact); elsewhere ``torch.bucketize``
  against the same edges and an int64 ``index_put_``.
* One pass on CPU. The C kernel ``twinpeaks._cbin`` (built by ``setup.py``; no
  torch headers) reads a tensor's memory once, or evenly spaced blocks of it,
  and adds bins, sum, sum of squares, non-zeros, min and max into a step row:
  about 1.7 ns per element (SSE2; 2.2 portable) and 1-2 us per call, against 12 ns and 70 us for
  the torch operations below. Without a C compiler at install time, or with
  ``TWINPEAKS_KERNEL=torch``, the torch operations are used; tests check both.
* Few operations. On CPU a hook's cost is mostly per-operation dispatch (a few
  microseconds each), so the hot path (:func:`bin_finite`, :func:`stats_parts`)
  launches as few as it can: the range kernel of ``torch.histogram`` for the
  bins, and one more ``torch.histogram`` against ``[-max_f32, lo, hi, max_f32]``
  for the finite underflow and overflow; NaN and +-inf fall out of both, and the
  caller recovers them as "binned minus counted". (A single histogram against
  all edges padded with the float32 extremes is one operation, but its binary
  search mispredicts branches on fresh data: 4x slower per element.)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from .format import EXTRA_SLOTS as EXTRA_SLOTS  # the slot layout lives in twinpeaks.format
from .format import n_slots as n_slots
from .format import slots_to_parts as slots_to_parts

#: Largest chunk binned by one ``torch.histogram`` call: its float32 counts are
#: exact below 2**24.
_HISTOGRAM_CHUNK = 1 << 23
_F32_MAX = float(np.finfo(np.float32).max)

try:
    from . import _cbin
except ImportError:  # pragma: no cover - installed without a C compiler: torch operations bin instead
    _cbin = None

#: dtype codes of the C kernel.
KERNEL_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
#: Whether CPU tensors are binned by the C kernel (``TWINPEAKS_KERNEL=torch`` turns it off).
KERNEL = _cbin is not None and os.environ.get("TWINPEAKS_KERNEL", "c") != "torch"


def float32_edges(lo: float, hi: float, bins: int) -> np.ndarray:
    """The edges twinpeaks uses for a range: float32 linspace, returned as float64.

    Example:
        >>> float32_edges(-1.0, 1.0, 4).tolist()
        [-1.0, -0.5, 0.0, 0.5, 1.0]
    """
    check_range(lo, hi, bins)
    return torch.linspace(lo, hi, bins + 1, dtype=torch.float32).double().numpy()


def check_range(lo: float, hi: float, bins: int) -> None:
    """Raise ``ValueError`` naming the argument when a range or bin count is unusable."""
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}; e.g. bins=100")
    if not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi:
        raise ValueError(f"range must be two finite numbers lo < hi, got {(lo, hi)!r}; e.g. range=(-10, 10)")
    if not (np.float32(lo) < np.float32(hi)):
        raise ValueError(f"range {(lo, hi)!r} collapses in float32; widen it")


@dataclass(frozen=True)
class Bounds:
    """Where a layer's values are binned, held on the activations' device.

    ``lo``/``hi`` are 0-d float32 tensors (they may come from an automatic range
    computed on the device, so no host read is needed to use them);
    ``boundaries`` are the ``B + 1`` float32 edges with the last one nudged up
    by one ulp so that ``bucketize`` closes the last bin like numpy does.
    ``cpu_range`` holds the two Python floats for ``torch.histogram`` on CPU;
    ``outer`` (CPU only) is ``[-max_f32, lo, boundaries[-1], max_f32]``: its three
    bins count the finite values below, inside and above the range.
    """

    bins: int
    lo: torch.Tensor
    hi: torch.Tensor
    edges: torch.Tensor
    boundaries: torch.Tensor
    cpu_range: tuple[float, float] | None
    outer: torch.Tensor | None = field(default=None, compare=False)
    edges_ptr: int = field(default=0, compare=False)  # address of the float32 edges on CPU, for the C kernel

    def __post_init__(self) -> None:
        if self.edges.device.type == "cpu":
            object.__setattr__(self, "edges", self.edges.contiguous())
            object.__setattr__(self, "edges_ptr", self.edges.data_ptr())
        if self.outer is None and self.cpu_range is not None and self.boundaries.device.type == "cpu":
            lo, hi = float(self.boundaries[0]), float(self.boundaries[-1])
            if -_F32_MAX < lo and hi < _F32_MAX:
                outer = torch.tensor([-_F32_MAX, lo, hi, _F32_MAX], dtype=torch.float32)
                object.__setattr__(self, "outer", outer)


def fixed_bounds(lo: float, hi: float, bins: int, device: torch.device) -> Bounds:
    """Bounds for a user-given range (no tensor values are read)."""
    check_range(lo, hi, bins)
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float32, device=device)
    cpu = (float(np.float32(lo)), float(np.float32(hi))) if device.type == "cpu" else None
    return _make_bounds(edges, bins, cpu)


#: Smallest half-width of an automatic range for the model's last layer (the original's -10..10).
OUTPUT_HALF_WIDTH = 10.0


def auto_bounds(values: torch.Tensor, bins: int, margin: float, output: bool = False) -> Bounds:
    """Bounds from a first batch, computed from its finite min and max only.

    Hidden layers: ``[min - margin * span, max + margin * span]``; a side whose
    first-batch extreme is exactly 0 (ReLU, max-pool after ReLU) stays at 0, so no
    bins are spent on values the layer cannot produce.

    The model's last layer (``output=True``): outputs in ``[0, 1]`` (sigmoid or
    softmax) get ``[0, 1]``; anything else gets ``[-R, R]`` with
    ``R = max(10, 4 * max|x|)``, because logits grow far past their first-batch size
    as a model learns (an untrained head spans about +-0.5, a trained one +-5..10).

    All computed on the device; on CPU the two floats are read (no device to sync).

    Example:
        >>> b = auto_bounds(torch.tensor([0.0, 2.0]), 10, margin=1.0)
        >>> float(b.lo), float(b.hi)
        (0.0, 4.0)
        >>> b = auto_bounds(torch.tensor([-0.4, 0.3]), 10, margin=1.0, output=True)
        >>> float(b.lo), float(b.hi)
        (-10.0, 10.0)
    """
    v = values.reshape(-1).float()
    finite = torch.isfinite(v)
    inf = torch.tensor(math.inf, device=v.device)
    mn = torch.where(finite, v, inf).amin() if v.numel() else inf
    mx = torch.where(finite, v, -inf).amax() if v.numel() else -inf
    ok = mn <= mx
    mn = torch.where(ok, mn, torch.tensor(-1.0, device=v.device))
    mx = torch.where(ok, mx, torch.tensor(1.0, device=v.device))
    span = mx - mn
    scale = torch.maximum(mn.abs(), mx.abs())
    span = torch.where(span > 0, span, torch.where(scale > 0, scale, torch.ones_like(scale)))
    if output:
        half = torch.clamp(4 * scale, min=OUTPUT_HALF_WIDTH)
        prob = (mn >= 0) & (mx <= 1)
        lo = torch.where(prob, torch.zeros_like(half), -half)
        hi = torch.where(prob, torch.ones_like(half), half)
    else:
        lo = torch.where(mn == 0, torch.zeros_like(mn), mn - margin * span)
        hi = torch.where(mx == 0, torch.zeros_like(mx), mx + margin * span)
    # keep a usable float32 width even for huge or tiny values
    hi = torch.maximum(hi, lo + span.clamp(min=1e-30) * 1e-3)
    if v.device.type == "cpu":
        lo_f, hi_f = float(lo), float(hi)
        edges = torch.linspace(lo_f, hi_f, bins + 1, dtype=torch.float32)
        return _make_bounds(edges, bins, (lo_f, hi_f))
    steps = torch.arange(bins + 1, device=v.device, dtype=torch.float32) / bins
    edges = lo + (hi - lo) * steps
    edges[-1] = hi
    return _make_bounds(edges, bins, None)


def _make_bounds(edges: torch.Tensor, bins: int, cpu_range: tuple[float, float] | None) -> Bounds:
    edges = edges.float()
    boundaries = edges.clone()
    boundaries[-1] = torch.nextafter(edges[-1], torch.tensor(math.inf, device=edges.device))
    return Bounds(bins, edges[0], edges[-1], edges, boundaries, cpu_range)


def slot_index(values: torch.Tensor, bounds: Bounds) -> torch.Tensor:
    """Slot of every element (int64, same shape): 0 under, 1..B bins, B+1 over, B+2 nonfinite."""
    v = values.float()
    slot = torch.bucketize(v, bounds.boundaries, right=True)
    return slot.masked_fill_(~torch.isfinite(v), bounds.bins + 2)


def count_slots(slots: torch.Tensor, n: int) -> torch.Tensor:
    """int64 counts of ``slots`` (values in ``[0, n)``) without reading anything back.

    ``bincount`` on CUDA reads the maximum to size its output (a sync), so other
    devices use an int64 ``index_put_`` with accumulation, which also has a
    deterministic implementation.
    """
    flat = slots.reshape(-1)
    if flat.device.type == "cpu":
        return torch.bincount(flat, minlength=n)
    out = torch.zeros(n, dtype=torch.int64, device=flat.device)
    return out.index_put_((flat,), torch.ones_like(flat), accumulate=True)


def bin_values(values: torch.Tensor, bounds: Bounds) -> torch.Tensor:
    """Slot row (int64, ``B + 3``) of all elements of ``values``, on their device.

    Example:
        >>> b = fixed_bounds(-1.0, 1.0, 4, torch.device("cpu"))
        >>> bin_values(torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0, float("nan")]), b).tolist()
        [1, 1, 0, 1, 1, 1, 1]
    """
    v = values.reshape(-1).float()
    n = n_slots(bounds.bins)
    if v.device.type != "cpu" or bounds.cpu_range is None:
        return count_slots(slot_index(v, bounds), n)
    return _bin_cpu(v, bounds)


def bin_finite(values: torch.Tensor, bounds: Bounds) -> torch.Tensor:
    """Counts of the finite values of a flat float32 tensor: ``[underflow, bins..., overflow]`` (``B + 2``).

    The hot-path variant of :func:`bin_values`: NaN and +-inf are left out, and
    the caller counts them as the number of elements binned minus the sum of
    the row. The dtype is float32 or int64 (exact: float32 only up to
    ``2**23`` elements per call); add it into a float64 or int64 accumulator.

    Example:
        >>> b = fixed_bounds(-1.0, 1.0, 4, torch.device("cpu"))
        >>> bin_finite(torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0, float("nan")]), b).tolist()
        [1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    """
    if values.device.type != "cpu" or bounds.cpu_range is None:
        return count_slots(slot_index(values, bounds), n_slots(bounds.bins))[:-1]
    if bounds.outer is not None and values.numel() <= _HISTOGRAM_CHUNK:
        inside = torch.histogram(values, bounds.bins, range=bounds.cpu_range)[0]
        outer = torch.histogram(values, bounds.outer)[0]
        return torch.cat([outer[:1], inside, outer[2:]])
    return _bin_cpu(values, bounds, nonfinite=False)


def is_dense(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements fill a block of its storage exactly once (any dimension order).

    Example:
        >>> is_dense(torch.zeros(2, 3).t()), is_dense(torch.zeros(2, 3)[:, :2])
        (True, False)
    """
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda d: d[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


def kernel_observe(values: torch.Tensor, bounds: Bounds, counts: torch.Tensor, sums: torch.Tensor,
                   peaks: torch.Tensor, stride: int = 1, blocks: int = 0, block: int = 1, offset: int = 0) -> None:
    """Add a CPU tensor's slot counts, sums and ``[-min, max]`` into float64 rows, in place (C kernel).

    ``sums`` is ``[sum, sum of squares, non-zeros, elements binned, elements in values]``.
    ``counts`` (``B + 3``), ``sums`` (5) and ``peaks`` (2) are contiguous float64
    CPU rows: counts add up, and so do sums; peaks take the maximum (NaN wins, as
    with ``torch.maximum``). ``values`` is read in memory order, so it must be
    contiguous or a dense permutation of its storage. With ``blocks > 0`` only
    ``blocks`` runs of ``block`` elements are read, the ``i``-th starting at element
    ``offset + i * stride``. Needs :data:`KERNEL_DTYPES` and :data:`KERNEL`.

    Example:
        >>> b = fixed_bounds(-1.0, 1.0, 4, torch.device("cpu"))
        >>> c, s, p = (torch.zeros(k, dtype=torch.float64) for k in (7, 5, 2))
        >>> kernel_observe(torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0, float("inf")]), b, c, s, p)
        >>> c.tolist()
        [1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    """
    if _cbin is None:
        raise RuntimeError("the C kernel twinpeaks._cbin is not built (no C compiler at install?): reinstall twinpeaks")
    for row, size in ((counts, n_slots(bounds.bins)), (sums, 5), (peaks, 2)):
        if row.dtype != torch.float64 or row.device.type != "cpu" or not row.is_contiguous() or row.numel() != size:
            raise ValueError(f"kernel_observe needs contiguous float64 CPU rows of {size}, got {tuple(row.shape)}")
    if values.device.type != "cpu" or values.dtype not in KERNEL_DTYPES or not bounds.edges_ptr:
        raise ValueError("kernel_observe bins float32/float16/bfloat16/float64 CPU tensors against CPU bounds")
    if not is_dense(values):
        raise ValueError("kernel_observe reads memory in order: pass values.contiguous()")
    n = values.numel()
    if blocks and (offset < 0 or offset + (blocks - 1) * stride + block > n or stride < block):
        raise ValueError(f"sampling plan out of the tensor: {blocks} blocks of {block}, stride {stride}, "
                         f"offset {offset}, {n} elements")
    _cbin.observe(values.data_ptr() + offset * values.element_size(), KERNEL_DTYPES[values.dtype], n, stride,
                  blocks, block, bounds.edges_ptr, bounds.bins, counts.data_ptr(), sums.data_ptr(), peaks.data_ptr())


def stats_parts(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``([sum, sum of squares, non-zeros], [-min, max])`` of a flat float32 tensor, in few operations.

    Both parts combine by adding and by taking the maximum respectively, so a
    caller keeps one float64 row of each and never branches.

    Example:
        >>> [t.tolist() for t in stats_parts(torch.tensor([0.0, 1.0, -2.0]))]
        [[-1.0, 5.0, 2.0], [2.0, 1.0]]
    """
    mn, mx = torch.aminmax(values)
    # float64 sum: the stack promotes to it, so the non-zero count stays exact past 2**24 elements
    add = torch.stack([values.sum(dtype=torch.float64), torch.dot(values, values), torch.count_nonzero(values)])
    return add, torch.stack([-mn, mx])


def _bin_cpu(v: torch.Tensor, bounds: Bounds, nonfinite: bool = True) -> torch.Tensor:
    lo, hi = bounds.cpu_range  # type: ignore[misc]
    total = v.numel()
    inside = torch.zeros(bounds.bins, dtype=torch.int64)
    for start in range(0, total, _HISTOGRAM_CHUNK):
        chunk = v[start : start + _HISTOGRAM_CHUNK]
        inside += torch.histogram(chunk, bounds.bins, range=(lo, hi))[0].to(torch.int64)
    # below/above include -inf/+inf; NaN is in none of the four counts
    marks = torch.stack([
        torch.count_nonzero(v < lo),
        torch.count_nonzero(v > hi),
        torch.count_nonzero(v == -math.inf),
        torch.count_nonzero(v == math.inf),
    ])
    finite_marks = marks[:2] - marks[2:]
    row = torch.cat([finite_marks[:1], inside, finite_marks[1:]])
    if not nonfinite:
        return row
    return torch.cat([row, (total - row.sum()).view(1)])
