"""Pure binning functions: the one place where activation values become counts.

Design constraints (the grids themselves: docs/grids.md; the numpy reference: :mod:`twinpeaks.grids`):

* Exact against numpy. Values are upcast to float64 (exactly). A **fixed** range
  bins against numpy's float64 ``linspace`` edges, as ``np.histogram(values, B,
  range=(lo, hi))`` does (:class:`Fixed`); an **auto** grid ``(e, o)`` (bin width
  ``2**e``, first edge ``o * 2**e``) follows each step's values and puts ``x`` in
  bin ``floor(x / 2**e) - o``, exact by construction.
* Nothing is dropped. Every binned element lands in exactly one *slot* of a row
  laid out as ``[underflow, bin_0 .. bin_{B-1}, overflow, nonfinite]``
  (``B + 3`` slots). An auto grid holds every finite value: no under/overflow.
* Counts are int64 (or float64 rows, exact to 2**53).
* No host synchronisation. The torch functions only launch tensor operations on
  the values' device and update rows in place; a row's auto grid is a float64
  tensor ``[e, o]`` (``e`` NaN: unset) on that device, coarsened and regridded by
  tensor operations (:func:`observe_auto`), never read back. These are the
  device path (and the path of builds without the C kernel); a device kernel
  (Triton, issue #18) can stand in for :func:`observe_auto` / :func:`observe_fixed`
  with the same arguments.
* One kernel on CPU. The C kernel ``twinpeaks._cbin`` (built by ``setup.py``; no
  torch headers) reads a tensor's memory (or evenly spaced blocks of it) and adds
  bins, sum, sum of squares, non-zeros, min and max into a step row; for an auto
  grid, a first SIMD pass finds the finite min and max. It runs the widest code
  path the CPU has (AVX-512, AVX2, SSE2 or portable C, chosen at import;
  ``_cbin.simd(name)`` switches, tests run each) and splits a large call over
  torch's own OpenMP workers where torch runs on OpenMP (else pthreads, on request;
  ``_cbin.parallel(name)`` switches; :func:`kernel_threads`), with the one-thread
  result bit for bit. Without a C compiler at install time,
  or with ``TWINPEAKS_KERNEL=torch``, the torch operations are used; tests check
  both.
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from . import grids
from .format import EXTRA_SLOTS as EXTRA_SLOTS  # the slot layout lives in twinpeaks.format
from .format import n_slots as n_slots
from .format import slots_to_parts as slots_to_parts

try:
    from . import _cbin
except ImportError:  # pragma: no cover - installed without a C compiler: torch operations bin instead
    _cbin = None

#: dtype codes of the C kernel.
KERNEL_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
#: Whether CPU tensors are binned by the C kernel (``TWINPEAKS_KERNEL=torch`` turns it off).
KERNEL = _cbin is not None and os.environ.get("TWINPEAKS_KERNEL", "c") != "torch"
#: Whether CUDA tensors are binned by the fused Triton kernel (:mod:`twinpeaks._triton`): triton is
#: installed (imported at the first CUDA plan, never by ``import twinpeaks``) and ``TWINPEAKS_KERNEL``
#: is not ``"torch"``. Otherwise, and for tensor subclasses, the torch device path bins them.
DEVICE_KERNEL = os.environ.get("TWINPEAKS_KERNEL", "") != "torch" and importlib.util.find_spec("triton") is not None


def kernel_threads() -> int:
    """Threads the C kernel may split one large call over: torch's, where it can use torch's own workers.

    Unset ``TWINPEAKS_KERNEL_THREADS``: :func:`torch.get_num_threads` when the kernel
    runs its parts on torch's OpenMP workers (``_cbin.parallel() == "gomp"``: torch
    built with OpenMP, as the PyPI wheels on Linux are), else 1. Those workers keep
    spinning between torch's operations, so they bin our parts at once; threads of our
    own (pthreads) competed with them for the cores and ran slower (bench/README.md,
    "The kernel alone"). One torch thread, or ``OMP_WAIT_POLICY=passive`` (the workers
    sleep; waking them cost more than they saved): 1, never split. The variable overrides: a
    number, or ``torch``. Read when a layer's plan is made, not per call; a bad value
    warns once and counts as 1. A split call gives the one-thread result bit for bit.

    Example:
        >>> kernel_threads() == (torch.get_num_threads() if _cbin.parallel() == "gomp" else 1)  # doctest: +SKIP
        True
    """
    raw = os.environ.get("TWINPEAKS_KERNEL_THREADS", "").strip()
    if not raw:  # OMP_WAIT_POLICY=passive: torch's workers sleep between operations, and waking them cost more
        if os.environ.get("OMP_WAIT_POLICY", "").strip().lower() == "passive":
            return 1
        return torch.get_num_threads() if _cbin is not None and _cbin.parallel() == "gomp" else 1
    if raw == "torch":
        return torch.get_num_threads()
    if raw.isdigit() and 1 <= int(raw) <= 1024:
        return int(raw)
    if raw not in _BAD_THREADS:
        _BAD_THREADS.add(raw)
        from .errors import warn

        warn(f"TWINPEAKS_KERNEL_THREADS={raw!r} is not a thread count (1-1024) or 'torch': using 1 thread")
    return 1


_BAD_THREADS: set[str] = set()
#: ``TWINPEAKS_KERNEL=triton``: CPU tensors through the Triton kernel too (in Triton's interpreter, with
#: ``TRITON_INTERPRET=1`` set before triton is imported): how the tests check the wiring without a GPU.
TRITON_ON_CPU = DEVICE_KERNEL and os.environ.get("TWINPEAKS_KERNEL", "") == "triton"




def check_range(lo: float, hi: float, bins: int) -> None:
    """Raise ``ValueError`` naming the argument when a range or bin count is unusable."""
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}; e.g. bins=100")
    if not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi:
        raise ValueError(f"range must be two finite numbers lo < hi, got {(lo, hi)!r}; e.g. range=(-10, 10)")
    if not np.all(np.diff(grids.fixed_edges(lo, hi, bins)) > 0):
        raise ValueError(f"range {(lo, hi)!r} is too narrow for {bins} distinct float64 edges; widen it")


@dataclass(frozen=True)
class Fixed:
    """A fixed range's grid on a device: numpy's float64 edges (see :func:`fixed_grid`).

    ``boundaries`` are the edges with the last one nudged up by one ulp, so that
    ``bucketize`` closes the last bin like numpy does; ``edges_ptr`` is the CPU
    edges' address, for the C kernel (0 elsewhere).
    """

    bins: int
    lo: float
    hi: float
    edges: torch.Tensor
    boundaries: torch.Tensor
    edges_ptr: int = field(default=0, compare=False)


def fixed_grid(lo: float, hi: float, bins: int, device: torch.device | str = "cpu") -> Fixed:
    """The grid of a fixed range ``(lo, hi)``: ``np.linspace(lo, hi, bins + 1)`` in float64, on ``device``.

    Example:
        >>> fixed_grid(-1, 1, 100).edges[50].item()  # numpy's zero edge is exactly 0
        0.0
    """
    check_range(lo, hi, bins)
    edges = torch.from_numpy(grids.fixed_edges(lo, hi, bins)).to(device)
    boundaries = edges.clone()
    boundaries[-1] = torch.nextafter(edges[-1], torch.tensor(math.inf, dtype=torch.float64, device=edges.device))
    ptr = edges.data_ptr() if edges.device.type == "cpu" else 0
    return Fixed(bins, float(lo), float(hi), edges, boundaries, ptr)


def new_grids(rows: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``rows`` unset auto grids: a float64 ``[rows, 2]`` tensor of ``(e, o)``, ``e`` NaN (unset)."""
    g = torch.zeros(rows, 2, dtype=torch.float64, device=device)
    g[:, 0] = math.nan
    return g


def slot_index(values: torch.Tensor, grid: Fixed | torch.Tensor) -> torch.Tensor:
    """Slot of every element (int64, same shape): 0 under, 1..B bins, B+1 over, B+2 nonfinite.

    ``grid`` is a :class:`Fixed` or a row's auto grid (float64 ``[2]`` tensor; with
    ``e`` unset every finite value counts as overflow, which :func:`observe_auto`
    never lets happen). For an auto grid pass ``bins`` through :func:`auto_slots`.
    """
    if isinstance(grid, Fixed):
        v = values.double()
        slot = torch.bucketize(v, grid.boundaries, right=True)
        return slot.masked_fill_(~torch.isfinite(v), grid.bins + 2)
    raise TypeError("slot_index takes a Fixed grid; use auto_slots(values, grid, bins) for an auto grid")


def observe_fixed(values: torch.Tensor, grid: Fixed, counts: torch.Tensor) -> None:
    """Add the slot counts of ``values`` on a fixed grid into a ``B + 3`` row (int64 or float64), in place.

    Example:
        >>> row = torch.zeros(7, dtype=torch.int64)
        >>> observe_fixed(torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0, float("nan")]), fixed_grid(-1, 1, 4), row)
        >>> row.tolist()
        [1, 1, 0, 1, 1, 1, 1]
    """
    counts.add_(count_slots(slot_index(values, grid), grid.bins + EXTRA_SLOTS).to(counts.dtype))


def bin_values(values: torch.Tensor, grid: Fixed) -> torch.Tensor:
    """Slot row (int64, ``B + 3``) of all elements of ``values`` on a fixed grid, on their device.

    Example:
        >>> bin_values(torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0, float("nan")]), fixed_grid(-1, 1, 4)).tolist()
        [1, 1, 0, 1, 1, 1, 1]
    """
    row = torch.zeros(grid.bins + EXTRA_SLOTS, dtype=torch.int64, device=values.device)
    observe_fixed(values.reshape(-1), grid, row)
    return row

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


def kernel_observe(values: torch.Tensor, grid: Fixed | torch.Tensor, counts: torch.Tensor, sums: torch.Tensor,
                   peaks: torch.Tensor, stride: int = 1, blocks: int = 0, block: int = 1, offset: int = 0,
                   threads: int = 1, hint: torch.Tensor | None = None) -> None:
    """Add a CPU tensor's slot counts, sums and ``[-min, max]`` into float64 rows, in place (C kernel).

    ``grid`` is a :class:`Fixed` or the row's auto grid (a contiguous float64 CPU
    ``[2]`` tensor ``(e, o)``, ``e`` NaN when unset), coarsened in place (and the
    counts regridded) as docs/grids.md says.
    ``sums`` is ``[sum, sum of squares, non-zeros, elements binned, elements in values]``.
    ``counts`` (``B + 3``), ``sums`` (5) and ``peaks`` (2) are contiguous float64
    CPU rows: counts add up, and so do sums; peaks take the maximum (NaN wins, as
    with ``torch.maximum``). ``values`` is read in memory order, so it must be
    contiguous or a dense permutation of its storage. With ``blocks > 0`` only
    ``blocks`` runs of ``block`` elements are read, the ``i``-th starting at element
    ``offset + i * stride``. ``threads > 1`` lets a large call (from 32K elements
    read on torch's OpenMP workers, 256K on pthreads) run on that many threads at
    most: the same result bit for bit. ``hint`` (auto grids; a contiguous float64 CPU ``[2]`` tensor, ``e``
    NaN: none) is the grid to guess when the row's is unset: the kernel then bins in one
    pass and checks the guess after (the same result as without a hint, in every case),
    and writes the row's grid into it after the call (the recorder keeps one per layer:
    the next step's guess). Needs :data:`KERNEL_DTYPES` and :data:`KERNEL`.

    Example:
        >>> c, s, p = (torch.zeros(k, dtype=torch.float64) for k in (7, 5, 2))
        >>> kernel_observe(torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0, float("inf")]), fixed_grid(-1, 1, 4), c, s, p)
        >>> c.tolist()
        [1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]
        >>> g, c = new_grids(1)[0], torch.zeros(7, dtype=torch.float64)
        >>> kernel_observe(torch.tensor([0.0, 1.0, 3.0]), g, c, s, p)
        >>> g.tolist(), c.tolist()
        ([0.0, 0.0], [0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    """
    if _cbin is None:
        raise RuntimeError("the C kernel twinpeaks._cbin is not built (no C compiler at install?): reinstall twinpeaks")
    bins = counts.numel() - EXTRA_SLOTS
    for row, size in ((counts, bins + EXTRA_SLOTS), (sums, 5), (peaks, 2)):
        if row.dtype != torch.float64 or row.device.type != "cpu" or not row.is_contiguous() or row.numel() != size:
            raise ValueError(f"kernel_observe needs contiguous float64 CPU rows of {size}, got {tuple(row.shape)}")
    if isinstance(grid, Fixed):
        if grid.bins != bins or not grid.edges_ptr:
            raise ValueError("kernel_observe: the fixed grid must be on the CPU and have as many bins as counts")
        edges, gptr = grid.edges_ptr, 0
    else:
        if grid.dtype != torch.float64 or grid.device.type != "cpu" or not grid.is_contiguous() or grid.numel() != 2:
            raise ValueError("kernel_observe: an auto grid is a contiguous float64 CPU tensor [e, o]")
        if bins < 2:
            raise ValueError("automatic grids need bins >= 2")
        edges, gptr = 0, grid.data_ptr()
    hptr = 0
    if hint is not None:
        if hint.dtype != torch.float64 or hint.device.type != "cpu" or not hint.is_contiguous() or hint.numel() != 2:
            raise ValueError("kernel_observe: hint is a contiguous float64 CPU tensor [e, o]")
        hptr = hint.data_ptr()
    if values.device.type != "cpu" or values.dtype not in KERNEL_DTYPES:
        raise ValueError("kernel_observe bins float32/float16/bfloat16/float64 CPU tensors")
    if not is_dense(values):
        raise ValueError("kernel_observe reads memory in order: pass values.contiguous()")
    n = values.numel()
    if blocks and (offset < 0 or offset + (blocks - 1) * stride + block > n or stride < block):
        raise ValueError(f"sampling plan out of the tensor: {blocks} blocks of {block}, stride {stride}, "
                         f"offset {offset}, {n} elements")
    _cbin.observe(values.data_ptr() + offset * values.element_size(), KERNEL_DTYPES[values.dtype], n, stride,
                  blocks, block, edges, gptr, bins, counts.data_ptr(), sums.data_ptr(), peaks.data_ptr(), threads,
                  hptr, 0)


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

# -- auto grids with tensor operations (the device path): the functions of twinpeaks.grids, vectorised ----------
#: Candidate exponents tried around the span's estimate (see :func:`observe_auto`).
_CANDIDATES = (-3, 2)
#: The smallest float64: a span of 0 per bin gets candidates below every limit.
_TINY = 5e-324


def _pow2(e: torch.Tensor) -> torch.Tensor:
    """``2.0**e`` (float64, exact) of an int64 tensor, ``e`` in ``[-1022, 1024]`` (1024: inf), by its bits.

    Floor division by ``2**1024 = inf`` still gives ``floor(x / 2**1024)`` (0 or -1) for finite ``x``.
    """
    return ((e + 1023) << 52).view(torch.float64)


def observe_auto(values: torch.Tensor, grid: torch.Tensor, counts: torch.Tensor) -> None:
    """Add ``values`` into an auto-grid slot row, in place, on their device, with no host sync.

    ``grid`` is the row's float64 ``[2]`` tensor ``(e, o)`` (``e`` NaN: unset),
    ``counts`` its ``B + 3`` row (float64 or int64). As docs/grids.md says: the
    finite min and max of ``values`` coarsen the row's grid, the counts move to
    the new grid (exact), then every finite value goes to ``floor(x / 2**e) - o``.
    Equal to :func:`twinpeaks.grids.observe` count for count.

    About 115 small aten operations per call whatever the size, 70 of them besides
    views (a device kernel can replace it), none of which reads a value back. The row's occupied bins
    take part as values: the lower edge of old bin ``i``, ``(o + i) * 2**e``, goes
    on any coarser aligned grid where every value of that bin goes, so regridding
    the row and binning the call are one floor division and one scatter. The
    exponent is the smallest that fits among a few candidates around
    ``ceil(log2(span / (B - 1)))``, tested at once with the row's own.

    Example:
        >>> g, row = new_grids(1)[0], torch.zeros(7, dtype=torch.int64)
        >>> observe_auto(torch.tensor([0.0, 1.0, 3.0]), g, row)
        >>> observe_auto(torch.tensor([-4.0, float("nan")]), g, row)
        >>> g.tolist(), row.tolist()
        ([1.0, -2.0], [0, 1, 0, 2, 1, 0, 1])
    """
    bins = counts.numel() - EXTRA_SLOTS
    x = values.reshape(-1)
    n = x.numel()
    if not n:
        return
    clog = grids._ceil_log2(bins)
    body = counts[1:-2]
    gz = torch.nan_to_num(grid)  # the row's (e, o); unset: (0, 0), and then its bins are empty
    e_r = gz[:1].long()
    w_r = _pow2(e_r)
    # the call's values, then the lower edges of the row's bins (made finite: +-inf and inf * 0 happen only at
    # e >= 1023, where a grid holds every finite value and never changes); finite values and occupied bins count
    xs = torch.cat([x, torch.nan_to_num((torch.arange(bins, dtype=torch.float64, device=x.device) + gz[1]) * w_r)])
    skip = torch.cat([(x - x) != 0, body == 0])  # x - x: NaN for NaN and +-inf
    lo_v, hi_v = xs.masked_fill(skip, math.inf), xs.masked_fill(skip, -math.inf)
    # [A, Z, mn, mx, a]: min and max of the call and the row's occupied bins, of the call, the row's lowest (inf: none)
    v = torch.stack([lo_v.amin(), hi_v.amax(), lo_v[:n].amin(), hi_v[:n].amax(), lo_v[n:].amin()])
    mn = v[2]
    # exponents of max(|A|, |Z|) (the resolution limit), of the span per bin (+ the smallest float64: a span
    # that halves to 0 gets candidates below every limit), of mn (0: a stand-in that gives choose()'s ZERO_E)
    a_z = v[:2]
    half = a_z * 0.5
    ex = torch.frexp(torch.stack([a_z.abs().amax(), (half[1] - half[0]) / (bins - 1) + _TINY,
                                  mn.masked_fill(mn == 0, 2.0 ** (grids.ZERO_E + clog))]))[1].long()
    # candidates around ceil(log2(span / (B - 1))) (the answer is among them), then the row's own exponent (if A and
    # Z fit on it, the answer is at most it, and the row's exponent is one of the lower limits below)
    cand = torch.cat([ex[1] + torch.arange(*_CANDIDATES, device=x.device), e_r])
    q = torch.div(a_z[:, None], _pow2(cand), rounding_mode="floor")  # A and Z on each candidate grid
    fit = torch.where(q[1] - q[0] <= bins - 1, cand, cand[-2]).amin()
    d = q[:, -1] - gz[1]  # A and Z as bins of the row's grid: inside it iff the call is (the row's bins are)
    fresh = v[4] == math.inf  # the row holds no finite count (its grid may be unset)
    differ = mn != v[3]
    # the largest of: the fit, the resolution limit, the row's exponent (E_MIN for a fresh row), choose()'s
    # exponent for one value (which is the answer for a fresh row: it is >= the other three then)
    e_new = torch.stack([fit, ex[0] - (1 + grids.RESOLUTION), e_r[0].masked_fill(fresh, grids.E_MIN),
                         (ex[2] - (1 + clog)).masked_fill(differ, grids.E_MIN)]).amax()
    w_new = _pow2(e_new[None])
    o_new = torch.div(a_z[:1], w_new, rounding_mode="floor") - (fresh > differ) * float(bins // 2)  # centred: one value
    # the grid changes when the row is fresh and the call has a finite value, or the row does not hold the call
    change = (a_z[0] < math.inf) & (fresh | (d.clamp(0, bins - 1) != d).any())
    torch.where(change, torch.cat([e_new[None].double(), o_new]), grid, out=grid)
    # every finite value and occupied old bin onto the row's grid (NaN when nothing finite was ever binned: then
    # every element is skipped), skipped ones to the nonfinite slot (old bins skipped are empty: they add 0); the
    # row's bins are replaced by what lands there
    slot = (torch.div(xs, _pow2(grid[:1].long()), rounding_mode="floor") - (grid[1] - 1)).clamp(0, bins + 1)
    slot = slot.masked_fill_(skip, bins + 2).long()
    weights = torch.nn.functional.pad(body, (n, 0), value=1)
    body.zero_()
    counts.index_put_((slot,), weights, accumulate=True)


def _auto_slot(v: torch.Tensor, fin: torch.Tensor, e: torch.Tensor, o: torch.Tensor, bins: int) -> torch.Tensor:
    q = torch.div(torch.where(fin, v, 0.0), _pow2(e), rounding_mode="floor") - o
    slot = (q.clamp(-1, bins) + 1).long()
    return slot.masked_fill_(~fin, bins + 2)


def auto_slots(values: torch.Tensor, grid: torch.Tensor, bins: int) -> torch.Tensor:
    """Slot of every element (int64, same shape) on a row's auto grid ``(e, o)`` as it is now.

    For rows that share a step row's grid (per-class and truth rows of the last
    layer); values must already be inside the grid (binned by
    :func:`observe_auto` first). An unset grid puts finite values in overflow.
    """
    v = values.double()
    unset = torch.isnan(grid[0])
    e = torch.where(unset, torch.zeros_like(grid[0]), grid[0]).long()
    o = torch.where(unset, torch.full_like(grid[1], -float(2 * bins + 4)), grid[1])
    return _auto_slot(v, torch.isfinite(v), e, o, bins)


def regrid_rows(counts: torch.Tensor, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Rows ``[..., B + 3]`` counted on auto grid ``old`` moved onto ``new`` (coarser or equal), tensor ops.

    An unset ``old`` grid (no finite count) leaves the rows as they are.
    """
    bins = counts.shape[-1] - EXTRA_SLOTS
    unset = torch.isnan(old[0]) | torch.isnan(new[0])
    e, o = torch.where(unset, 0.0, old[0]).long(), torch.where(unset, 0.0, old[1]).long()
    e2, o2 = torch.where(unset, 0.0, new[0]).long(), torch.where(unset, 0.0, new[1]).long()
    src = o + torch.arange(bins, device=counts.device)
    dst = (torch.bitwise_right_shift(src, (e2 - e).clamp(0, 62)) - o2).clamp(0, bins - 1)
    out = counts.clone()
    out[..., 1:-2] = torch.zeros_like(counts[..., 1:-2]).index_add_(counts.dim() - 1, dst, counts[..., 1:-2])
    return out
