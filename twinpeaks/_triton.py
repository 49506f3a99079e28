"""The fused device binning kernel (Triton): one hooked call into a step row, on the device, no host sync.

Design constraints:

* Triton is optional. Nothing here imports it at module level; :func:`available` says whether it
  imports, and the kernels (:mod:`twinpeaks._triton_kernels`) are loaded on first use. CUDA tensors
  run compiled kernels; CPU tensors run the same kernels in Triton's interpreter (``TRITON_INTERPRET=1``
  is set only while that copy of the kernels is defined), which is how the tests check them against
  numpy without a GPU.
* No host sync. Every decision the launcher makes comes from shapes, dtypes and Python numbers; the
  grid of an automatic range is computed, coarsened and applied on the device.
* Exact, per docs/grids.md. Values are upcast to float64. An **auto** grid ``(e, o)`` bins ``x`` into
  ``floor(x / 2**e) - o``; before binning a call the row's grid is coarsened to fit the row's and the
  call's finite min/max and the row's slot rows are regridded exactly. A **fixed** range bins against
  numpy's float64 ``linspace`` edges as ``np.histogram`` does.
* Few launches. A call that bins at most :data:`SINGLE_MAX` values (a sampled plan: 8,192; exact
  outputs up to 64K) is **one launch** of one program that reads its values twice (statistics and grid,
  then counts). Larger calls take **two launches**: partial statistics over many programs (and, for an
  auto grid, a snapshot of the row), then the binning over as many programs, each adding its counts
  atomically while program 0 adds the regridded snapshot. A sampled main call with per-class or YES/NO
  rows takes one more launch for those rows (they count every element, the main row only the sample).
  A non-dense input (sliced, overlapping) costs a copy first.

The row a call adds into (one step of one layer in one phase), all on the values' device:

* ``counts``: ``[B + 3]`` float64 or int64: ``[underflow, bin_0 .. bin_{B-1}, overflow, nonfinite]``;
* ``sums``: float64 ``[sum, sum of squares, non-zeros, elements binned, elements seen]``;
* ``peaks``: float64 ``[-min, max]`` over every binned value (NaN if any is NaN: it wins, as in
  ``torch.maximum``);
* auto grids: ``grid``, float64 ``[e, o, min, max]``: the grid and the finite min and max of everything
  binned into the row; unset (nothing finite binned yet) while ``min > max`` (see :func:`new_grids`);
* fixed ranges: ``edges``, the ``B + 1`` float64 edges ``np.linspace(lo, hi, B + 1)`` on the device,
  and ``range`` = ``(lo, hi)`` as Python floats;
* optionally ``truth`` ``[2, B + 3]`` (YES, NO) and ``classes`` ``[C, B + 3]`` (int64 or float64), for a
  ``[batch, C]`` output: they share the row's grid, so any call into the row regrids them too.
"""

from __future__ import annotations

import functools
import math
import types
from typing import Any

import numpy as np
import torch

#: Sampled plans read blocks of this many contiguous elements (the recorder's ``SAMPLE_BLOCK``).
SAMPLE_BLOCK = 16
#: Calls binning at most this many values run as one program (one launch).
SINGLE_MAX = 1 << 16
#: Elements per loop step of a program.
BLOCK = 2048
#: Calls of at most this many values (a sampled plan: 8,192) are loaded once and binned from registers;
#: up to SMALL_BLOCK in a smaller program.
ONE_MAX = 8192
SMALL_BLOCK = 1024
#: Programs of a large call, per multiprocessor.
PROGRAMS_PER_SM = 4


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Whether triton imports here (the kernel can run on CUDA tensors; CPU tensors through its interpreter)."""
    try:
        import triton  # noqa: F401
    except Exception:  # ImportError, or a broken install
        return False
    return True


def kernels() -> types.ModuleType:
    """The kernels module (:mod:`twinpeaks._triton_kernels`), imported on first use.

    ``triton.jit`` reads ``TRITON_INTERPRET`` when a kernel is defined (and triton's own library functions
    when triton is imported): with ``TRITON_INTERPRET=1`` set before triton is first imported, the kernels
    run in Triton's interpreter on CPU tensors (the tests); otherwise they compile for CUDA tensors.
    """
    import importlib

    return importlib.import_module("twinpeaks._triton_kernels")


def interpreting() -> bool:
    """Whether the kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` when they were defined)."""
    return bool(getattr(kernels(), "INTERPRETED", False))


def new_grids(rows: int, device: torch.device | str) -> torch.Tensor:
    """Float64 ``[rows, 4]`` auto-grid rows, all unset: ``[e, o, min, max] = [0, 0, +inf, -inf]``.

    Example:
        >>> new_grids(1, "cpu").tolist()
        [[0.0, 0.0, inf, -inf]]
    """
    g = torch.zeros(rows, 4, dtype=torch.float64, device=device)
    g[:, 2] = math.inf
    g[:, 3] = -math.inf
    return g


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@functools.lru_cache(maxsize=256)
def _guess_safe(lo: float, hi: float, bins: int) -> bool:
    """Whether the linear guess ``floor((x - lo) * bins / (hi - lo))`` is within one bin of the float64
    linspace edges' answer everywhere (then two corrections are exact); else the kernel searches the edges."""
    edges = np.linspace(lo, hi, bins + 1)
    with np.errstate(all="ignore"):
        norm = bins / (hi - lo)
        pos = (edges - lo) * norm
    return bool(np.isfinite(norm) and norm > 0 and np.all(np.isfinite(pos))
                and np.max(np.abs(pos - np.arange(bins + 1))) < 0.25)


def _programs(device: torch.device) -> int:
    if device.type == "cuda":
        return PROGRAMS_PER_SM * _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return 4  # the interpreter: a few programs, enough to test the two-launch path


@functools.lru_cache(maxsize=16)
def _sm_count(index: int) -> int:
    return int(torch.cuda.get_device_properties(index).multi_processor_count)


def _flat_dense(t: torch.Tensor) -> torch.Tensor:
    """The elements of ``t`` in storage order, as a flat view when ``t`` is dense, else a contiguous copy."""
    from .binning import is_dense

    if is_dense(t) and all(s >= 0 for s in t.stride()):
        return t.as_strided((t.numel(),), (1,), t.storage_offset())
    return t.reshape(-1).contiguous()


def _truth_mode(y: torch.Tensor, rows: int, cols: int) -> int:
    """1: class indices ``[rows]``; 2: 0/1 per output ``[rows, cols]`` (the recorder's rule); 0: no match."""
    if y.numel() == rows * cols and (cols == 1 or y.dim() >= 2 or y.is_floating_point() or y.dtype == torch.bool):
        return 2
    if y.numel() == rows and cols > 1 and not y.is_floating_point():
        return 1
    return 0


def observe(values: torch.Tensor, counts: torch.Tensor, sums: torch.Tensor, peaks: torch.Tensor, *,
            grid: torch.Tensor | None = None, edges: torch.Tensor | None = None,
            range: tuple[float, float] | None = None,  # noqa: A002 - the recorder's name for it
            blocks: int = 0, stride: int = 0, offset: int = 0,
            truth: torch.Tensor | None = None, classes: torch.Tensor | None = None,
            targets: torch.Tensor | None = None, bin_classes: bool | None = None, main: bool = True,
            single_max: int | None = None) -> int:
    """Bin one call of ``values`` into a step row on their device; returns the number of kernel launches.

    Args:
        values: a float tensor (fp32, fp16, bf16, fp64), any shape.
        counts, sums, peaks: the row (see the module docstring), on ``values``' device.
        grid: the row's auto grid ``[e, o, min, max]`` (float64, see :func:`new_grids`); or
        edges, range: a fixed range's float64 edges on the device and ``(lo, hi)``.
        blocks, stride, offset: a sampled plan: ``blocks`` runs of :data:`SAMPLE_BLOCK` elements, the
            ``i``-th at element ``offset + i * stride`` of ``values`` in storage order; ``blocks=0``: all.
        truth: the row's ``[2, B + 3]`` YES/NO rows, binned when ``targets`` is given (class indices
            ``[batch]`` or 0/1 per output ``[batch, C]``), regridded with the row in any case.
        classes: the row's ``[C, B + 3]`` per-class rows; binned when ``bin_classes`` (default: when
            given; then ``C`` must be the last dimension of ``values``), regridded with the row in any case.
        main: add into ``counts``, ``sums`` and ``peaks`` (False: only the truth / class rows, e.g.
            targets given after the forward).
        single_max: values up to which one program does the call (default :data:`SINGLE_MAX`; tests
            lower it to run the two-launch path on small tensors).

    Example:
        >>> dev = torch.device("cuda")                                    # doctest: +SKIP
        >>> counts = torch.zeros(7, dtype=torch.float64, device=dev)     # doctest: +SKIP
        >>> sums = torch.zeros(5, dtype=torch.float64, device=dev)       # doctest: +SKIP
        >>> peaks = torch.full((2,), -math.inf, dtype=torch.float64, device=dev)  # doctest: +SKIP
        >>> edges = torch.tensor(np.linspace(-1.0, 1.0, 5), device=dev)  # doctest: +SKIP
        >>> x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0, math.inf], device=dev)  # doctest: +SKIP
        >>> observe(x, counts, sums, peaks, edges=edges, range=(-1.0, 1.0))  # doctest: +SKIP
        1
        >>> counts.tolist()                                               # doctest: +SKIP
        [1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    """
    if (grid is None) == (edges is None):
        raise ValueError("observe needs exactly one of grid= (auto) or edges= with range= (fixed)")
    if edges is not None and range is None:
        raise ValueError("observe: a fixed range needs range=(lo, hi) beside its edges")
    dev = values.device
    slots = counts.numel()
    bins = slots - 3
    if bins < 1:
        raise ValueError(f"observe: counts must have bins + 3 slots, got {slots}")
    auto = grid is not None
    for name, t, size in (("counts", counts, slots), ("sums", sums, 5), ("peaks", peaks, 2),
                          ("grid", grid, 4), ("edges", edges, bins + 1)):
        if t is None:
            continue
        if t.device != dev or not t.is_contiguous() or t.numel() != size:
            raise ValueError(f"observe: {name} must be a contiguous tensor of {size} on {dev}, "
                             f"got {tuple(t.shape)} on {t.device}")
        if name != "counts" and t.dtype != torch.float64:
            raise ValueError(f"observe: {name} must be float64, got {t.dtype}")
    if counts.dtype not in (torch.float64, torch.int64):
        raise ValueError(f"observe: counts must be float64 or int64, got {counts.dtype}")
    if not values.is_floating_point():
        raise ValueError(f"observe bins float tensors, got {values.dtype}")
    n = values.numel()
    if n == 0:
        return 0
    cols = values.shape[-1] if values.dim() >= 2 else 1
    rows = n // cols
    for name, t in (("truth", truth), ("classes", classes)):
        r = 2 if name == "truth" else "C"
        if t is not None and (t.device != dev or not t.is_contiguous() or t.dim() != 2 or t.shape[1] != slots
                              or (name == "truth" and t.shape[0] != 2) or t.dtype not in (torch.float64, torch.int64)):
            raise ValueError(f"observe: {name} must be a contiguous int64/float64 [{r}, {slots}] tensor on {dev}, "
                             f"got {t.dtype} {tuple(t.shape)} on {t.device}")
    ymode = 0
    y = None
    if targets is not None and truth is not None:
        ymode = _truth_mode(targets, rows, cols)
        if ymode == 0:
            raise ValueError(f"observe: targets of shape {tuple(targets.shape)} do not match outputs "
                             f"{(rows, cols)}: pass class indices [batch] or 0/1 per output")
        y = targets.detach().to(dev, non_blocking=True).reshape(-1)  # from the host: no stream sync
        if y.dtype == torch.bool:
            y = y.view(torch.uint8)
        y = y.contiguous()
    bin_truth = ymode != 0
    bin_cls = classes is not None and (bin_classes if bin_classes is not None else True)
    if bin_cls and classes.shape[0] != cols:  # type: ignore[union-attr]
        raise ValueError(f"observe: classes has {classes.shape[0]} rows for outputs of {cols} columns; "  # type: ignore[union-attr]
                         "pass bin_classes=False to only regrid them")
    if blocks and (offset < 0 or stride < SAMPLE_BLOCK or offset + (blocks - 1) * stride + SAMPLE_BLOCK > n):
        raise ValueError(f"observe: sampling plan out of the tensor: {blocks} blocks of {SAMPLE_BLOCK}, "
                         f"stride {stride}, offset {offset}, {n} elements")
    k = kernels()
    if (dev.type == "cuda") == k.INTERPRETED:
        raise ValueError(f"observe: tensors on {dev.type} need "
                         + ("TRITON_INTERPRET unset (or 0)" if dev.type == "cuda" else "TRITON_INTERPRET=1")
                         + " when triton is first imported")
    limit = SINGLE_MAX if single_max is None else single_max
    edges_t = edges if edges is not None else sums  # an unused pointer for auto grids
    search = bool(not auto and not _guess_safe(float(range[0]), float(range[1]), bins))  # type: ignore[index]
    dummy = sums
    rows_args = (truth if truth is not None else dummy, classes if classes is not None else dummy,
                 2 if truth is not None else 0, classes.shape[0] if classes is not None else 0)
    launches = 0
    extras_apart = bool(blocks) and (bin_truth or bin_cls)
    if main:
        flat = _flat_dense(values) if not (bin_truth or bin_cls) or extras_apart else values.reshape(-1).contiguous()
        if flat.data_ptr() != values.data_ptr() or flat.numel() != n:
            launches += 1  # the copy
        launches += _launch(k, flat, n, blocks * SAMPLE_BLOCK if blocks else n, offset if blocks else 0, stride,
                            counts, sums, peaks, grid, edges_t, rows_args, y, ymode if not extras_apart else 0,
                            cols, bins, auto, search, bool(blocks), True, bin_cls and not extras_apart, limit)
    if (not main or extras_apart) and (bin_truth or bin_cls):
        flat = values.reshape(-1).contiguous()
        launches += int(flat.data_ptr() != values.data_ptr())
        launches += _launch(k, flat, n, n, 0, 0, counts, sums, peaks, grid, edges_t, rows_args, y, ymode, cols,
                            bins, auto, search, False, False, bin_cls, limit)
    return launches


def _launch(k: Any, flat: torch.Tensor, n_seen: int, n_bin: int, offset: int, stride: int,
            counts: torch.Tensor, sums: torch.Tensor, peaks: torch.Tensor, grid: torch.Tensor | None,
            edges: torch.Tensor, rows_args: tuple, y: torch.Tensor | None, ymode: int, cols: int, bins: int,
            auto: bool, search: bool, sampled: bool, main: bool, bin_cls: bool, limit: int) -> int:
    truth, classes, n_truth, n_cls = rows_args
    slots = bins + 3
    bp = _pow2_at_least(slots + 1)
    log2b = max(0, (bins - 1).bit_length())  # ceil(log2(bins))
    grid_t = grid if grid is not None else sums
    y_t = y if y is not None else sums
    const = dict(B=bins, SP=slots, BP=bp, BP2=_pow2_at_least(2 * slots + 1), LOG2B=log2b, AUTO=auto,
                 SEARCH=search, SAMPLED=sampled, SB=SAMPLE_BLOCK, MAIN=main, BIN_TRUTH=ymode != 0,
                 BIN_CLS=bin_cls, YMODE=ymode, BLOCK=BLOCK)
    bf16 = flat.dtype == torch.bfloat16
    if bf16:
        flat = flat.view(torch.int16)  # widened from its bits in the kernel: exact, subnormals included
    const["BF16"] = bf16
    warps = 8 if flat.device.type == "cuda" else 4
    if n_bin <= limit:
        # up to ONE_MAX values: loaded once into registers (a small or a sampled call); more: a loop, read twice
        one = n_bin <= ONE_MAX
        block = (SMALL_BLOCK if n_bin <= SMALL_BLOCK else ONE_MAX) if one else BLOCK
        const["BLOCK"] = block
        w = max(4, min(16, block // 512)) if flat.device.type == "cuda" else 4
        k.observe_kernel[(1,)](flat, n_bin, n_seen, offset, stride, counts, sums, peaks, grid_t, edges,
                               truth, classes, n_truth, n_cls, y_t, cols, sums, 1, n_bin, sums,
                               MULTI=False, ONE=one, PBLOCK=1, num_warps=w, **const)
        return 1
    per = -(-n_bin // _programs(flat.device))
    per = max(-(-per // BLOCK) * BLOCK, BLOCK)
    progs = -(-n_bin // per)
    part = torch.empty(progs * 8, dtype=torch.float64, device=flat.device)
    snap = torch.empty(4 + slots * (1 + n_truth + n_cls) if auto else 1, dtype=torch.float64, device=flat.device)
    k.reduce_kernel[(progs,)](flat, n_bin, offset, stride, per, part, counts, grid_t, truth, classes, snap,
                              n_truth, n_cls, SP=slots, BP=bp, AUTO=auto, SAMPLED=sampled, SB=SAMPLE_BLOCK,
                              BF16=bf16, BLOCK=BLOCK, num_warps=warps)
    k.observe_kernel[(progs,)](flat, n_bin, n_seen, offset, stride, counts, sums, peaks, grid_t, edges,
                               truth, classes, n_truth, n_cls, y_t, cols, part, progs, per, snap,
                               MULTI=True, ONE=False, PBLOCK=_pow2_at_least(progs), num_warps=warps, **const)
    return 2
