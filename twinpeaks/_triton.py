"""The fused device binning kernel (Triton): one hooked call into a step row, on the device, no host sync.

Design constraints:

* Triton is optional. Nothing here imports it at module level (``import twinpeaks`` never imports
  it); :func:`available` says whether it imports, and the kernels (:mod:`twinpeaks._triton_kernels`)
  are loaded on first use. CUDA tensors run compiled kernels; with ``TRITON_INTERPRET=1`` set before
  triton is first imported, CPU tensors run the same kernels in Triton's interpreter: that is how the
  tests check them against numpy without a GPU (tests/recording/test_triton_kernel.py, in a subprocess).
* No host sync. Every decision the launcher makes comes from shapes, dtypes and Python numbers; the
  grid of an automatic range is computed, coarsened and applied on the device.
* Exact, per docs/grids.md, count for count with ``twinpeaks.grids`` (the numpy reference) and the
  torch path. Values are upcast to float64. An **auto** grid ``(e, o)`` bins ``x`` into
  ``floor(x / 2**e) - o``; before binning a call the row's grid is coarsened (``grids.coarsen``: an
  unset or empty row takes the call's ``choose``; a call inside the grid leaves it; otherwise the
  smallest fitting ``e'`` over the row's occupied bins and the call's min and max, at least the row's
  and the call's own) and the main row regridded exactly. The YES/NO and per-class rows keep the grid
  they were last counted on (``extra_grid``) and move onto the row's grid when a call bins into them
  (the recorder moves the others at its flush). A **fixed** range bins against numpy's float64
  ``linspace`` edges as ``np.histogram`` does (``edges[i] <= x < edges[i+1]``, the last bin closed).
* Checked once, launched per call. :class:`Binner` checks an output layout, its buffers and its
  sampling plan once (the recorder keeps one per plan); a call then costs a few microseconds of Python
  and the launches below. :func:`observe` is the one-off form.

Launches per call:

* at most :data:`SINGLE_MAX` values binned (every sampled call: 7,888 at 100 bins, up to 32,768 with more bins; exact outputs up to 64K):
  **one** launch, one program. Up to :data:`ONE_MAX` values it loads them once into registers
  (statistics and grid, then counts); above, it loops over them twice.
* more values (exact binning of large outputs): **two** launches over many programs: partial
  statistics (and, for an auto grid, a snapshot of the slot rows the call regrids, zeroed), then the binning, each
  program adding its counts atomically while program 0 adds the regridded snapshot back.
* a sampled main call with per-class or YES/NO rows: **one more** for those rows (they count every
  element; the main row only the sample). A non-dense input (sliced, overlapping) costs a copy first.

The buffers a call adds into, one row per step, all on the values' device:

* ``counts``: ``[rows, B + 3]`` float64 or int64: ``[underflow, bin_0 .. bin_{B-1}, overflow, nonfinite]``;
* ``sums``: float64 ``[rows, 5]``: sum, sum of squares, non-zeros, elements binned, elements seen;
* ``peaks``: float64 ``[rows, 2]``: ``-min, max`` over every binned value (NaN if any is NaN: it wins,
  as in ``torch.maximum``);
* auto grids: ``grid``, float64 ``[rows, 2]``: ``e, o``, ``e`` NaN while unset (nothing finite
  binned yet; see :func:`twinpeaks.binning.new_grids`); with YES/NO or class rows, ``extra_grid``
  likewise: the grid those rows were last counted on;
* fixed ranges: ``edges``, the ``B + 1`` float64 edges ``np.linspace(lo, hi, B + 1)`` on the device,
  and ``range`` = ``(lo, hi)`` as Python floats;
* optionally ``truth`` ``[rows, 2, B + 3]`` (YES, NO) and ``classes`` ``[rows, C, B + 3]`` (int64 or
  float64) for a ``[batch, C]`` output.
"""

from __future__ import annotations

import functools
import types

import numpy as np
import torch

#: Sampled plans read blocks of this many contiguous elements (the recorder's ``SAMPLE_BLOCK``).
SAMPLE_BLOCK = 16
#: Calls binning at most this many values run as one program (one launch).
SINGLE_MAX = 1 << 16
#: Elements per loop step of a program.
BLOCK = 2048
#: Calls of at most this many values (a sampled plan: 7,888 at 100 bins) are loaded once and binned from registers;
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


def _truth_mode(y: torch.Tensor, rows: int, cols: int) -> int:
    """1: class indices ``[rows]``; 2: 0/1 per output ``[rows, cols]`` (the recorder's rule); 0: no match."""
    if y.numel() == rows * cols and (cols == 1 or y.dim() >= 2 or y.is_floating_point() or y.dtype == torch.bool):
        return 2
    if y.numel() == rows and cols > 1 and not y.is_floating_point():
        return 1
    return 0


class Binner:
    """Bins the calls of one output layout into the step rows of a record's buffers, on their device.

    Everything that depends only on the layout, the buffers and the plan is checked and worked out once,
    here; a call then only launches (see the module docstring for how many). The recorder keeps one per
    plan, as it keeps its C kernel's arguments.

    Args:
        like: an output of the layout to bin (shape, strides, dtype; its values are not read).
        counts, sums, peaks: the step buffers ``[rows, B + 3]`` (float64 or int64), ``[rows, 5]``,
            ``[rows, 2]`` (float64), contiguous, on ``like``'s device (a single row: 1-D tensors).
        grid: auto grids ``[rows, 2]`` (see :func:`twinpeaks.binning.new_grids`); or
        edges, range: a fixed range's float64 edges on the device and ``(lo, hi)``.
        blocks, stride: a sampled plan (``blocks`` runs of :data:`SAMPLE_BLOCK` elements, ``stride``
            apart, from an offset given per call); ``blocks=0`` bins every element.
        truth: YES/NO rows ``[rows, 2, B + 3]``; binned when a call gives targets (class indices are
            clamped into ``[0, C)``, the recorder's rule before issue #16; the recorder now splits YES/NO
            with torch operations, which leave out ``ignore_index`` and indices outside ``[0, C)``).
        classes: per-class rows ``[rows, C, B + 3]``; binned when ``bin_classes`` (default: when given;
            then ``C`` is the last dimension of the output).
        extra_grid: auto grids ``[rows, 2]`` that ``truth`` and ``classes`` were last counted on; a call
            that bins into them first moves them (all of them) onto the row's grid.
        single_max: values up to which one program does a call (default :data:`SINGLE_MAX`).
    """

    def __init__(self, like: torch.Tensor, counts: torch.Tensor, sums: torch.Tensor, peaks: torch.Tensor, *,
                 grid: torch.Tensor | None = None, edges: torch.Tensor | None = None,
                 range: tuple[float, float] | None = None,  # noqa: A002 - the recorder's name for it
                 blocks: int = 0, stride: int = 0, truth: torch.Tensor | None = None,
                 classes: torch.Tensor | None = None, extra_grid: torch.Tensor | None = None,
                 bin_classes: bool | None = None, single_max: int | None = None):
        if (grid is None) == (edges is None):
            raise ValueError("the kernel needs exactly one of grid= (auto) or edges= with range= (fixed)")
        if edges is not None and range is None:
            raise ValueError("a fixed range needs range=(lo, hi) beside its edges")
        dev = like.device
        slots = counts.shape[-1]
        bins = slots - 3
        if bins < 1:
            raise ValueError(f"counts must have bins + 3 slots, got {slots}")
        rows = counts.shape[0] if counts.dim() == 2 else 1
        auto = grid is not None
        if auto and bins < 2:
            raise ValueError("automatic grids need bins >= 2")
        if auto and (truth is not None or classes is not None) and extra_grid is None:
            raise ValueError("YES/NO and class rows on an auto grid need extra_grid= (the grid they were counted on)")
        for name, t, size in (("counts", counts, slots), ("sums", sums, 5), ("peaks", peaks, 2),
                              ("grid", grid, 2), ("extra_grid", extra_grid, 2), ("edges", edges, None),
                              ("truth", truth, 2 * slots), ("classes", classes, None)):
            if t is None:
                continue
            if t.device != dev or not t.is_contiguous():
                raise ValueError(f"{name} must be contiguous on {dev}, got {tuple(t.shape)} on {t.device}")
            if name == "edges":
                if t.numel() != bins + 1:
                    raise ValueError(f"edges must hold bins + 1 = {bins + 1} values, got {t.numel()}")
            elif name == "classes":
                if t.numel() % (rows * slots) or t.shape[-1] != slots:
                    raise ValueError(f"classes must be [rows, C, {slots}] with {rows} rows, got {tuple(t.shape)}")
            elif t.numel() != rows * size:  # type: ignore[operator]
                raise ValueError(f"{name} must hold {rows} rows of {size}, got {tuple(t.shape)}")
            if name in ("counts", "truth", "classes"):
                if t.dtype not in (torch.float64, torch.int64):
                    raise ValueError(f"{name} must be float64 or int64, got {t.dtype}")
            elif t.dtype != torch.float64:
                raise ValueError(f"{name} must be float64, got {t.dtype}")
        if not like.is_floating_point() or like.is_complex():
            raise ValueError(f"the kernel bins float tensors, got {like.dtype}")
        n = like.numel()
        if blocks and (stride < SAMPLE_BLOCK or (blocks - 1) * stride + SAMPLE_BLOCK > n):
            raise ValueError(f"sampling plan out of the tensor: {blocks} blocks of {SAMPLE_BLOCK}, "
                             f"stride {stride}, {n} elements")
        k = kernels()
        if (dev.type == "cuda") == k.INTERPRETED:
            raise ValueError(f"tensors on {dev.type} need "
                             + ("TRITON_INTERPRET unset (or 0)" if dev.type == "cuda" else "TRITON_INTERPRET=1")
                             + " when triton is first imported")
        self.k, self.dev, self.n, self.blocks, self.stride = k, dev, n, blocks, stride
        self.cols = like.shape[-1] if like.dim() >= 2 else 1
        self.n_cls = classes.numel() // (rows * slots) if classes is not None else 0
        self.bin_cls = classes is not None and (bin_classes if bin_classes is not None else True)
        if self.bin_cls and self.n_cls != self.cols:
            raise ValueError(f"classes has {self.n_cls} rows for outputs of {self.cols} columns; "
                             "pass bin_classes=False")
        self.has_truth = truth is not None
        from .binning import is_dense

        self.dense = is_dense(like) and all(s >= 0 for s in like.stride())  # read in storage order, no copy
        self.contiguous = like.is_contiguous()
        self.bf16 = like.dtype == torch.bfloat16
        self.limit = SINGLE_MAX if single_max is None else single_max
        search = bool(not auto and not _guess_safe(float(range[0]), float(range[1]), bins))  # type: ignore[index]
        dummy = sums
        self.bufs = (counts, sums, peaks, grid if grid is not None else dummy,
                     extra_grid if extra_grid is not None else dummy, edges if edges is not None else dummy,
                     truth if truth is not None else dummy, classes if classes is not None else dummy,
                     2 if truth is not None else 0, self.n_cls)
        self.const = dict(B=bins, SP=slots, BP=_pow2_at_least(slots + 1), BP2=_pow2_at_least(2 * slots + 1),
                          LOG2B=max(0, (bins - 1).bit_length()), AUTO=auto, SEARCH=search, SB=SAMPLE_BLOCK,
                          BF16=self.bf16)
        self.scratch: dict[int, tuple[torch.Tensor, torch.Tensor, int, int]] = {}

    def __call__(self, values: torch.Tensor, row: int = 0, offset: int = 0, targets: torch.Tensor | None = None,
                 main: bool = True, bin_classes: bool | None = None) -> int:
        """Bin ``values`` (the layout of ``like``) into step row ``row``; returns the kernel launches made.

        ``offset``: where a sampled plan starts (elements, storage order). ``targets``: class indices
        ``[batch]`` or 0/1 per output ``[batch, C]``, for the YES/NO rows. ``main=False``: only the YES/NO
        and class rows (targets given after the forward). ``bin_classes``: this call only (None: as built).
        """
        bin_cls = self.bin_cls if bin_classes is None else bool(bin_classes) and self.n_cls == self.cols
        ymode, y = 0, None
        if targets is not None and self.has_truth:
            ymode = _truth_mode(targets, self.n // self.cols, self.cols)
            if ymode == 0:
                raise ValueError(f"targets of shape {tuple(targets.shape)} do not match outputs "
                                 f"{(self.n // self.cols, self.cols)}: pass class indices [batch] or 0/1 per output")
            y = targets.detach().to(self.dev, non_blocking=True).reshape(-1)  # from the host: no stream sync
            if y.dtype == torch.bool:
                y = y.view(torch.uint8)
            y = y.contiguous()
        extras = ymode != 0 or bin_cls
        extras_apart = bool(self.blocks) and extras  # extras count every element: their own launch
        launches = 0
        logical = None  # the elements in logical order, for the class and YES/NO rows
        if main:
            if extras and not extras_apart:
                logical = x = values if self.contiguous else values.reshape(-1).contiguous()
            else:
                x = values if self.dense else values.reshape(-1)
            launches += int(x is not values)  # a copy
            b = self.blocks
            launches += self._launch(x, b * SAMPLE_BLOCK if b else self.n, offset if b else 0, self.stride, row,
                                     y, 0 if extras_apart else ymode, bool(b), True,
                                     bin_cls and not extras_apart)
        if (not main or extras_apart) and extras:
            if logical is None:
                logical = values if self.contiguous else values.reshape(-1).contiguous()
                launches += int(logical is not values)
            launches += self._launch(logical, self.n, 0, 0, row, y, ymode, False, False, bin_cls)
        return launches

    def _launch(self, x: torch.Tensor, n_bin: int, offset: int, stride: int, row: int, y: torch.Tensor | None,
                ymode: int, sampled: bool, main: bool, bin_cls: bool) -> int:
        counts, sums, peaks, grid, xgrid, edges, truth, classes, n_truth, n_cls = self.bufs
        if self.bf16:
            x = x.view(torch.int16)  # widened from its bits in the kernel: exact, subnormals included
        y_t = y if y is not None else sums
        k, cuda = self.k, self.dev.type == "cuda"
        flags = dict(SAMPLED=sampled, MAIN=main, BIN_TRUTH=ymode != 0, BIN_CLS=bin_cls, YMODE=ymode)
        if n_bin <= self.limit:
            # up to ONE_MAX values: loaded once into registers (a small or a sampled call); more: a loop, read twice
            one = n_bin <= ONE_MAX
            block = (SMALL_BLOCK if n_bin <= SMALL_BLOCK else ONE_MAX) if one else BLOCK
            k.observe_kernel[(1,)](x, n_bin, self.n, offset, stride, counts, sums, peaks, grid, xgrid, edges,
                                   truth, classes, n_truth, n_cls, y_t, self.cols, sums, 1, n_bin, sums, row,
                                   MULTI=False, ONE=one, BLOCK=block, PBLOCK=1,
                                   num_warps=max(4, min(16, block // 512)) if cuda else 4, **flags, **self.const)
            return 1
        part, snap, progs, per = self._scratch(n_bin)
        c = self.const
        k.reduce_kernel[(progs,)](x, n_bin, offset, stride, per, part, counts, grid, xgrid, truth, classes, snap,
                                  n_truth, n_cls, row, SP=c["SP"], BP=c["BP"], AUTO=c["AUTO"], SAMPLED=sampled,
                                  SB=SAMPLE_BLOCK, BF16=self.bf16, MAIN=main, XTRA=ymode != 0 or bin_cls,
                                  BLOCK=BLOCK, num_warps=8 if cuda else 4)
        k.observe_kernel[(progs,)](x, n_bin, self.n, offset, stride, counts, sums, peaks, grid, xgrid, edges,
                                   truth, classes, n_truth, n_cls, y_t, self.cols, part, progs, per, snap, row,
                                   MULTI=True, ONE=False, BLOCK=BLOCK, PBLOCK=_pow2_at_least(progs),
                                   num_warps=8 if cuda else 4, **flags, **self.const)
        return 2

    def _scratch(self, n_bin: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """Partials and snapshot of a two-launch call (kept: calls on one stream run in order)."""
        got = self.scratch.get(n_bin)
        if got is None:
            per = -(-n_bin // _programs(self.dev))
            per = max(-(-per // BLOCK) * BLOCK, BLOCK)
            progs = -(-n_bin // per)
            slots, n_truth, n_cls = self.const["SP"], self.bufs[8], self.bufs[9]
            part = torch.empty(progs * 8, dtype=torch.float64, device=self.dev)
            snap = torch.empty(4 + slots * (1 + n_truth + n_cls) if self.const["AUTO"] else 1, dtype=torch.float64,
                               device=self.dev)
            got = self.scratch[n_bin] = (part, snap, progs, per)
        return got


def observe(values: torch.Tensor, counts: torch.Tensor, sums: torch.Tensor, peaks: torch.Tensor, *,
            grid: torch.Tensor | None = None, edges: torch.Tensor | None = None,
            range: tuple[float, float] | None = None,  # noqa: A002 - the recorder's name for it
            blocks: int = 0, stride: int = 0, offset: int = 0,
            truth: torch.Tensor | None = None, classes: torch.Tensor | None = None,
            extra_grid: torch.Tensor | None = None, targets: torch.Tensor | None = None,
            bin_classes: bool | None = None, main: bool = True, single_max: int | None = None) -> int:
    """Bin one call of ``values`` into one step row on their device; returns the number of kernel launches.

    The one-off form of :class:`Binner` (which a hot path keeps, to check and plan once): ``counts``,
    ``sums``, ``peaks``, ``grid``, ``extra_grid`` are single rows (``[B + 3]``, ``[5]``, ``[2]``, ``[2]``),
    ``truth`` ``[2, B + 3]``, ``classes`` ``[C, B + 3]``; ``offset`` is where the sampled plan starts.

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
    if values.numel() == 0:
        return 0
    if blocks and offset < 0:
        raise ValueError(f"sampling offset must be >= 0, got {offset}")
    if blocks and offset + (blocks - 1) * stride + SAMPLE_BLOCK > values.numel():
        raise ValueError(f"sampling plan out of the tensor: {blocks} blocks of {SAMPLE_BLOCK}, stride {stride}, "
                         f"offset {offset}, {values.numel()} elements")
    binner = Binner(values, counts, sums, peaks, grid=grid, edges=edges, range=range, blocks=blocks, stride=stride,
                    truth=truth, classes=classes, extra_grid=extra_grid, bin_classes=bin_classes,
                    single_max=single_max)
    return binner(values, 0, offset, targets, main)
