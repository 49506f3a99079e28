"""The binning engine: plans, device buffers, and the C-kernel and torch paths of the hot path.

Design constraints (the hot path is every forward of every hooked layer):

* Bin inside the hook, no host sync: counts and stats go into float64 device
  rows, one row per step of the window (:class:`PhaseBuffers`); they reach the
  host only in :meth:`PhaseBuffers.take`, at a flush.
* Declared state. Every buffer is declared once with how ranks combine it
  (``"sum"``, ``"max"``, ``"min"``, as torchmetrics' ``add_state``): a flush takes
  them as named host arrays, and :mod:`twinpeaks.distributed` reduces them by
  their declaration without knowing what they hold.
* A :class:`Plan` per output layout and phase, made once and read by name: the
  kernel's arguments, the row addresses of the buffers, the sampling stride.
  Per-row grids (``docs/grids.md``, issue 13) are declared state too (reduction
  ``"grid"``; the slot rows counted on them reduce as ``"sum@grid"``: ranks agree
  a common grid and regrid before summing); the hot path stays one lookup and one call.
* Never crash training: anything unbinnable is skipped with one warning per layer.
"""

from __future__ import annotations

import math
import random
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from .. import binning, grids
from ..format import BINNED, MAX, MIN, SEEN, STATS, SUM, ZEROS, empty_stats

#: Outputs with at most this many elements per call are always binned exactly.
EXACT_BELOW = 1 << 14
#: Sampled elements come in contiguous blocks of this many.
SAMPLE_BLOCK = 16
#: ``sample="auto"`` sizes its per-call sample so that the expected total variation between a sampled
#: and the exact histogram is at most ``SAMPLE_TV`` once ``SAMPLE_TV_STEPS`` steps have accumulated
#: (and ``SAMPLE_TV * sqrt(SAMPLE_TV_STEPS)`` for one step: the chart's column); see :func:`auto_sample`.
SAMPLE_TV = 0.01
SAMPLE_TV_STEPS = 20
#: The per-call sample of ``sample="auto"`` stays within these (block efficiency below, cost above).
SAMPLE_MIN, SAMPLE_MAX = 1 << 12, 1 << 15


def tv_bound(occupied: int, binned: float) -> float:
    """Upper bound on the expected total variation of a histogram of ``binned`` sampled values.

    Counts of ``k`` values drawn from bin probabilities ``p_i`` are multinomial: each
    fraction's error is about normal with standard deviation ``sqrt(p_i (1 - p_i) / k)``,
    so ``E|error_i| = sqrt(2 p_i (1 - p_i) / (pi k))`` and the expected total variation is
    ``0.5 * sum_i sqrt(2 p_i (1 - p_i) / (pi k))``. By Cauchy-Schwarz,
    ``sum_i sqrt(p_i (1 - p_i)) <= sqrt(m (1 - sum_i p_i**2)) <= sqrt(m - 1)`` over ``m``
    occupied bins, whatever the shape. Steps add up: ``N`` steps of ``k`` values each are
    ``N k`` values, so the bound falls as ``1 / sqrt(N k)``. Sampling without replacement
    (``k`` of ``n``) only lowers it (by ``sqrt(1 - k/n)``). Blocks of ``SAMPLE_BLOCK``
    neighbours are correlated, so the effective sample lies between ``k / 16`` and ``k``;
    measured on 23 real layers (``bench/sampling.py``): 0.6-1.3 ``k`` at 7,888 per call, down to 0.22 ``k`` at 4,096.

    Example:
        >>> round(tv_bound(100, 20 * auto_sample(100)), 4)
        0.01
    """
    return 0.5 * math.sqrt(2 * max(occupied - 1, 0) / (math.pi * binned))


def auto_sample(bins: int) -> int:
    """Elements binned per call for a sampled output with ``sample="auto"`` and ``bins`` bins.

    The smallest multiple of ``SAMPLE_BLOCK`` whose :func:`tv_bound` over ``bins`` occupied bins
    is ``SAMPLE_TV`` after ``SAMPLE_TV_STEPS`` steps: ``k = 2 (bins - 1) / (pi (2 tv)**2 steps)``,
    7,888 for 100 bins (a step's column: expected TV <= 0.045), within
    ``[SAMPLE_MIN, SAMPLE_MAX]`` (above about 420 bins the bound grows as ``sqrt(bins / 416)``).

    Example:
        >>> auto_sample(100), auto_sample(20), auto_sample(1000)
        (7888, 4096, 32768)
    """
    k = 2 * (bins - 1) / (math.pi * (2 * SAMPLE_TV) ** 2 * SAMPLE_TV_STEPS)
    return min(SAMPLE_MAX, max(SAMPLE_MIN, SAMPLE_BLOCK * math.ceil(k / SAMPLE_BLOCK)))


#: With ``sample="auto"`` and the default 100 bins, larger outputs are binned on a sample of this many elements.
AUTO_SAMPLE = auto_sample(100)
#: bytes of per-step per-class/truth rows kept on the device
EXTRA_BUDGET = 64 << 20
#: bytes of per-step rows kept on the device in one phase, all layers together: a model of many layers gets a
#: shorter window (``flush_every`` at most, :data:`MIN_ROWS` at least; see :func:`window_rows`)
WINDOW_BUDGET = 16 << 20
#: the shortest window a large model gets (unless ``flush_every`` is shorter)
MIN_ROWS = 16
#: columns of the ``sums`` buffer: sum, sum of squares, non-zeros, elements binned, elements seen
SUMS = ("sum", "sumsq", "nonzero", "binned", "seen")
#: columns of the ``peaks`` buffer: -min, max (both combine by maximum)
PEAKS = ("neg_min", "max")
_F64 = 8  # bytes per float64

Reduce = Literal["sum", "max", "min", "grid", "sum@grid"]
#: Host rows of one record and phase: declared state name -> array with one row per step.
Rows = dict[str, np.ndarray]


def _no_kernel(*args: Any) -> None:
    raise RuntimeError("twinpeaks._cbin is not built")  # never called: plans use the kernel only when it is built


_cbin_observe: Callable[..., None] = binning._cbin.observe if binning._cbin is not None else _no_kernel


def window_rows(flush_every: int, layers: int, bins: int) -> int:
    """Steps per window (device rows per record and phase): ``flush_every``, fewer when ``layers`` would pass
    :data:`WINDOW_BUDGET` (never fewer than :data:`MIN_ROWS`).

    Example:
        >>> window_rows(256, 10, 100), window_rows(256, 501, 100)
        (256, 37)
    """
    row = (binning.n_slots(bins) + len(SUMS) + len(PEAKS) + 2) * _F64  # counts, sums, peaks, grid
    return max(min(flush_every, WINDOW_BUDGET // (max(1, layers) * row)), min(MIN_ROWS, flush_every))


_NUMPY_DTYPES = {torch.float64: np.dtype(np.float64), torch.float32: np.dtype(np.float32),
                 torch.int64: np.dtype(np.int64), torch.int32: np.dtype(np.int32)}


def _reset_value(op: str) -> float:
    """What a buffer of reduction ``op`` holds before its first value: the identity of the reduction (a grid: unset)."""
    return -math.inf if op == "max" else math.inf if op == "min" else math.nan if op == "grid" else 0.0


@dataclass
class TakeLayout:
    """The buffers of a :class:`PhaseBuffers` as :meth:`PhaseBuffers.take_raw_many` copies them: ``table`` rows
    ``(address, bytes per row, bytes per element, reset value's bits)``, ``views`` ``(name, dtype, row shape)``."""

    key: tuple
    table: np.ndarray
    views: list[tuple[str, np.dtype, tuple[int, ...]]]


class Carved:
    """One buffer set's rows in the block a flush's hand-over copied (:meth:`PhaseBuffers.take_raw_many`)."""

    __slots__ = ("block", "views", "n", "offsets")

    def __init__(self, block: np.ndarray, views: list, n: int, offsets: np.ndarray):
        self.block, self.views, self.n, self.offsets = block, views, n, offsets

    def rows(self) -> Rows:
        """The rows as :meth:`PhaseBuffers.take_raw` returns them (views of the block)."""
        out: Rows = {}
        for (name, dtype, shape), off in zip(self.views, self.offsets.tolist()):
            size = self.n * int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            out[name] = self.block[off:off + size].view(dtype).reshape((self.n, *shape))
        return out


class HandOver:
    """A flush's rows of many buffer sets (:meth:`PhaseBuffers.hand_over`): one host block and a few arrays,
    not an object per layer (a window's hand-over lives until the writer wrote it; objects per layer, thousands a
    window on large models, would make the garbage collector run and promote, and its full runs pause the process).
    ``raw(i)``: the ``i``-th pair's rows as :meth:`PhaseBuffers.take_raw` gives them (a :class:`Carved` of the block,
    made on demand), ``rows(i)`` their views."""

    __slots__ = ("block", "offsets", "first", "layouts", "ns", "others")

    def __init__(self, block: np.ndarray | None, offsets: np.ndarray, first: np.ndarray, layouts: list,
                 ns: np.ndarray, others: dict[int, Rows]):
        self.block, self.offsets, self.first, self.layouts, self.ns, self.others = (
            block, offsets, first, layouts, ns, others)

    def raw(self, i: int) -> Rows | Carved:
        if i in self.others:
            return self.others[i]
        lay = self.layouts[i]
        at = int(self.first[i])
        assert self.block is not None
        return Carved(self.block, lay.views, int(self.ns[i]), self.offsets[at:at + len(lay.table)])

    def rows(self, i: int) -> Rows:
        raw = self.raw(i)
        return raw.rows() if isinstance(raw, Carved) else raw

    def stacked(self, members: list[int]) -> Rows | None:
        """The rows of ``members`` (of one layout and row count) stacked on a first axis, as strided views of the
        block (no copy, no per-record view): the hand-over lays a record's buffers out one after another, so records
        of one layout taken one after another lie a constant stride apart. None: they do not (take :meth:`rows` of
        each and stack them)."""
        if self.block is None or any(i in self.others for i in members):
            return None
        lay = self.layouts[members[0]]
        n = int(self.ns[members[0]])
        k = len(lay.table)
        for j in members[1:]:
            other = self.layouts[j]
            if other is not lay and (len(other.table) != k or other.views != lay.views) or int(self.ns[j]) != n:
                return None
        offs = self.offsets[self.first[members][:, None] + np.arange(k)]  # [lanes, buffers]
        stride = int(offs[1, 0] - offs[0, 0]) if len(members) > 1 else 0
        if len(members) > 1 and not (offs[1:] - offs[:-1] == stride).all():
            return None
        out: Rows = {}
        for (name, dtype, shape), off in zip(lay.views, offs[0].tolist()):
            inner = [dtype.itemsize]
            for size in reversed(shape):
                inner.insert(0, inner[0] * size)
            out[name] = np.ndarray((len(members), n, *shape), dtype, self.block, off, (stride, *inner))
        return out

    @property
    def nbytes(self) -> int:
        """Bytes of the host block (0: none, every buffer set was taken apart)."""
        return 0 if self.block is None else int(self.block.nbytes)


class Taken:
    """A window's hand-over for a recorder: record ids, phases, first steps and buffers of its rows (one list of
    each) and their :class:`HandOver`. Iterated like ``{(id, phase): (first step, buffers, raw rows)}``.

    Example:
        >>> t = Taken([], [], [], [], HandOver(None, np.zeros(0, np.int64), np.zeros(0, np.int64), [], np.zeros(0), {}))
        >>> list(t.items())
        []
    """

    __slots__ = ("rids", "phases", "starts", "pds", "hand")

    def __init__(self, rids: list[int], phases: list[str], starts: list[int], pds: list[PhaseBuffers],
                 hand: HandOver):
        self.rids, self.phases, self.starts, self.pds, self.hand = rids, phases, starts, pds, hand

    def items(self) -> Iterator[tuple[tuple[int, str], tuple[int, PhaseBuffers, Rows | Carved]]]:
        for i, rid in enumerate(self.rids):
            yield (rid, self.phases[i]), (self.starts[i], self.pds[i], self.hand.raw(i))


class BlockPool:
    """The host blocks of a recorder's hand-overs (:meth:`PhaseBuffers.take_raw_many`), kept and reused.

    A new block's pages are first touched by the copy that fills it, inside the step: for 500 layers (16 MiB) that
    took 34 ms on the hand-over of a fresh block against 3 ms on a reused one. So at most ``keep`` blocks are kept,
    a block is reused once nothing refers to it any more (the writer dropped every view of it: no reference is
    tracked by hand, none can be missed), and :meth:`reserve`, called off the training thread, makes a block ready
    (touched) before the hand-over that needs it. Thread-safe.

    Example:
        >>> pool = BlockPool()
        >>> a = pool.take(1000); a.ctypes.data % 64, len(a)
        (0, 1000)
        >>> del a; pool.take(900).nbytes  # the same block again: nothing refers to it
        900
    """

    def __init__(self, keep: int = 3):
        self.keep = keep
        self._blocks: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> np.ndarray:
        """A 64-byte aligned ``uint8`` block of ``nbytes``: a free kept one, else a new one (kept if room)."""
        with self._lock:
            space = self._free(nbytes)
            if space is None:
                space = self._new(nbytes)
        return space[-space.ctypes.data % 64:][:nbytes]

    def reserve(self, nbytes: int) -> None:
        """Make sure a free block of ``nbytes`` is kept, its pages touched (off the training thread)."""
        with self._lock:
            if self._free(nbytes) is not None:
                return
            space = self._new(nbytes)
        space.fill(0)  # the pages: here, not in the step that takes it

    @property
    def nbytes(self) -> int:
        """Bytes of the blocks kept."""
        return sum(b.nbytes for b in self._blocks)

    def _unused(self, i: int) -> bool:
        """Whether nothing but the pool refers to block ``i`` (no view of it is alive): its only references are
        the pool's list and getrefcount's argument."""
        return sys.getrefcount(self._blocks[i]) <= 2

    def _free(self, nbytes: int) -> np.ndarray | None:
        for i in range(len(self._blocks)):
            if self._blocks[i].nbytes >= nbytes + 64 and self._unused(i):
                return self._blocks[i]
        return None

    def _new(self, nbytes: int) -> np.ndarray:
        space = np.empty(nbytes + 64, dtype=np.uint8)
        if len(self._blocks) >= self.keep:  # replace a smaller free block if any (a window grew), else not kept
            small = [i for i in range(len(self._blocks)) if self._blocks[i].nbytes < nbytes + 64 and self._unused(i)]
            if not small:
                return space
            del self._blocks[small[0]]
        self._blocks.append(space)
        return space


class PhaseBuffers:
    """Device buffers of one record in one phase (one row per step of the window) and its plans.

    Declared state (:meth:`add_state`): ``counts`` (float64, exact to 2**53) of the
    ``B + 3`` slots, ``sums`` (:data:`SUMS`), ``peaks`` (:data:`PEAKS`) and, for
    the last layer, ``classes`` and ``truth`` slot counts. With automatic ranges
    (``auto``), ``grid``: each row's aligned binary grid ``(e, o)`` (float64 on the
    device, ``e`` NaN while unset; int64 on the host, ``0, 0`` for a row with no
    finite value), on which the row's slot counts are counted (docs/grids.md).
    Per-class and truth rows keep the grid they were last counted on
    (``extra_grids``, local), and move onto their row's grid at :meth:`take`.
    """

    def __init__(self, rows: int, slots: int, device: torch.device, extra: dict[str, int], auto: bool = True):
        self.slots = slots
        self.auto = auto
        slot_op: Reduce = "sum@grid" if auto else "sum"
        self.states: dict[str, tuple[torch.Tensor, Reduce, str]] = {}
        self.counts = self.add_state("counts", torch.zeros(rows, slots, dtype=torch.float64, device=device), slot_op,
                                     host="int64")
        self.sums = self.add_state("sums", torch.zeros(rows, len(SUMS), dtype=torch.float64, device=device), "sum")
        self.peaks = self.add_state("peaks", torch.full((rows, len(PEAKS)), -math.inf, dtype=torch.float64,
                                                         device=device), "max")
        self.extra = {k: self.add_state(k, torch.zeros(rows, c, slots, dtype=torch.int64, device=device), slot_op)
                      for k, c in extra.items()}
        self.grids = self.add_state("grid", binning.new_grids(rows, device), "grid", host="int64") if auto else None
        self.extra_grids = binning.new_grids(rows, device) if auto and extra else None
        #: C kernel, auto grids: the grid the row ended with after the last call (``e`` NaN: none yet), the next
        #: step's guess for a single pass (``_cbin.c``, speculate)
        self.hint = binning.new_grids(1)[0] if auto and device.type == "cpu" else None
        self.plans: dict[tuple, Plan] = {}  # (shape, strides, dtype, type) -> plan
        self.cpu = device.type == "cpu"
        self._layout: TakeLayout | None = None
        self._take_layout()  # made with the buffers (the first step), not at the first flush

    def add_state(self, name: str, buffer: torch.Tensor, reduce: Reduce, host: str | None = None) -> torch.Tensor:
        """Declare a buffer (first axis: the window's rows), how ranks combine it, its dtype on the host; returns it."""
        self.states[name] = (buffer, reduce, host or str(buffer.dtype).removeprefix("torch."))
        return buffer

    def shapes(self) -> dict[str, list]:
        """Per-row shape, host dtype and reduction of every declared state (what ranks must agree on)."""
        return {name: [list(buf.shape[1:]), host, op] for name, (buf, op, host) in self.states.items()}

    def addresses(self) -> tuple[int, int, int, int, int]:
        """C kernel: the base addresses of grid (0: fixed range), the bins, counts, sums and peaks; the kernel finds
        row ``i`` from them (rows of 2, bins + 3, 5 and 2 float64)."""
        return (self.grids.data_ptr() if self.grids is not None else 0, self.slots - binning.EXTRA_SLOTS,
                self.counts.data_ptr(), self.sums.data_ptr(), self.peaks.data_ptr())

    def take(self, n: int) -> Rows:
        """Move the first ``n`` rows of every declared state to the host (the flush's only sync) and reset them."""
        return self.finish(self.take_raw(n))

    def _take_layout(self) -> TakeLayout | None:
        """What :meth:`take_raw_many` copies of these buffers (cached while they are the same), or None: not by
        the C hand-over (device buffers, no kernel, a layout numpy cannot view)."""
        bufs = self._buffers()
        key = tuple(id(b) for _, b, _ in bufs)
        cached = self._layout
        if cached is not None and cached.key == key:
            return cached
        if not self.cpu or binning._cbin is None or not all(b.is_contiguous() for _, b, _ in bufs):
            return None
        table, views = [], []
        for name, buf, op in bufs:
            if buf.dtype not in _NUMPY_DTYPES:
                return None
            dtype = _NUMPY_DTYPES[buf.dtype]
            fill = np.array(_reset_value(op), dtype=dtype)
            bits = int.from_bytes(fill.tobytes(), "little", signed=True) if fill.itemsize == 8 else int.from_bytes(
                fill.tobytes(), "little")
            row = buf[0].numel() * buf.element_size()
            table.append((buf.data_ptr(), row, buf.element_size(), bits))
            views.append((name, dtype, tuple(buf.shape[1:])))
        layout = TakeLayout(key, np.array(table, dtype=np.int64).reshape(-1, 4), views)
        self._layout = layout
        return layout

    @staticmethod
    def take_raw_many(pairs: list[tuple[PhaseBuffers, int]], pool: BlockPool | None = None) -> list[Rows | Carved]:
        """:meth:`take_raw` of many buffers at once: the first ``n`` rows of each (``pairs``: buffers, ``n``)
        copied into one host block and reset, in one C call (a flush's hand-over: thousands of small copies and
        fills for hundreds of layers otherwise). Buffers the C hand-over does not take get :meth:`take_raw`'s
        rows; the others a :class:`Carved` of the block (views made off the training thread, :meth:`Carved.rows`),
        taken from ``pool`` (reused blocks, see :class:`BlockPool`) or new. (:meth:`hand_over` without an object
        per pair.)"""
        hand = PhaseBuffers.hand_over(pairs, pool)
        return [hand.raw(i) for i in range(len(pairs))]

    @staticmethod
    def hand_over(pairs: list[tuple[PhaseBuffers, int]], pool: BlockPool | None = None) -> HandOver:
        """:meth:`take_raw_many`'s copies and resets, as one :class:`HandOver`."""
        layouts, used, table, nbytes, offsets, total = PhaseBuffers._plan(pairs)
        others = {i: pd.take_raw(n) for i, ((pd, n), lay) in enumerate(zip(pairs, layouts)) if lay is None}
        first = np.full(len(pairs), -1, dtype=np.int64)
        ns = np.array([n for _, n in pairs], dtype=np.int64)
        if not used:
            return HandOver(None, np.zeros(0, np.int64), first, layouts, ns, others)
        block = (pool or BlockPool(0)).take(total)  # 64-byte aligned
        full = np.stack([table[:, 0], nbytes, table[:, 2], table[:, 3], offsets], axis=1)
        binning._cbin.take_rows(full.ctypes.data, len(full), block.ctypes.data)  # type: ignore[attr-defined]
        sizes = np.array([len(lay.table) for _, lay in used], dtype=np.int64)
        first[[i for i, _ in used]] = np.cumsum(sizes) - sizes
        return HandOver(block, offsets, first, layouts, ns, others)

    @staticmethod
    def hand_over_bytes(pairs: list[tuple[PhaseBuffers, int]]) -> int:
        """Bytes of the block :meth:`take_raw_many` takes for ``pairs`` (for :meth:`BlockPool.reserve`)."""
        return PhaseBuffers._plan(pairs)[-1]

    @staticmethod
    def _plan(pairs: list[tuple[PhaseBuffers, int]]) -> tuple:
        """``(layouts, used, table, bytes, offsets, total)`` of a hand-over: every buffer's rows 64-byte aligned."""
        layouts = [pd._take_layout() for pd, _ in pairs]
        used = [(i, lay) for i, lay in enumerate(layouts) if lay is not None]
        if not used:
            return layouts, used, None, None, None, 0
        table = np.concatenate([lay.table for _, lay in used])
        ns = np.repeat(np.array([pairs[i][1] for i, _ in used], dtype=np.int64), [len(lay.table) for _, lay in used])
        nbytes = table[:, 1] * ns
        padded = (nbytes + 63) & ~63  # every view starts 64-byte aligned
        offsets = np.zeros(len(table), dtype=np.int64)
        np.cumsum(padded[:-1], out=offsets[1:])
        return layouts, used, table, nbytes, offsets, int(offsets[-1] + padded[-1])

    def take_raw(self, n: int) -> Rows:
        """The first ``n`` rows of every state copied to the host as they are, and reset: the part of :meth:`take`
        that must run before the next step (a flush hands the rest, :meth:`finish`, to the writer's thread)."""
        def take(buf: torch.Tensor, fill: float) -> np.ndarray:
            if self.cpu:  # a copy through a numpy view, then the reset: no torch operation
                view = buf.numpy()[:n]
                out = view.copy()
                view[:] = fill
                return out
            out = buf[:n].cpu().numpy()
            buf[:n] = fill
            return out

        return {name: take(buf, _reset_value(op)) for name, buf, op in self._buffers()}

    def _buffers(self) -> list[tuple[str, torch.Tensor, str]]:
        """``(name, buffer, reduction)`` of what a flush takes: the declared states, and the per-class/truth rows'
        own grids (``extra_grids``: rows counted on an earlier, finer grid of their row; reset like a grid)."""
        bufs = [(name, buf, str(op)) for name, (buf, op, _) in self.states.items()]
        if self.extra_grids is not None:
            bufs.append(("extra_grids", self.extra_grids, "grid"))
        return bufs

    def finish(self, raw: Rows | Carved) -> Rows:
        """Host rows of :meth:`take_raw`'s copies: host dtypes, unset grids ``0, 0``, per-class/truth rows on their
        row's grid, the nonfinite slot completed. Reads nothing of the buffers (any thread may run it)."""
        if isinstance(raw, Carved):
            raw = raw.rows()
        rows: Rows = {}
        for name, (_, _, host) in self.states.items():
            if name == "grid":
                rows[name] = np.nan_to_num(raw[name], nan=0.0).astype(np.int64)  # unset: no finite value, any grid
            else:
                rows[name] = raw[name].astype(host, copy=False)
        eg = raw.get("extra_grids")
        if eg is not None:
            grid = rows["grid"]
            for i in np.flatnonzero(~np.isnan(eg[:, 0]) & (eg != grid).any(axis=1)):
                old, new = (int(eg[i, 0]), int(eg[i, 1])), (int(grid[i, 0]), int(grid[i, 1]))
                for k in self.extra:
                    rows[k][i, ..., 1:-2] = grids.regrid(rows[k][i, ..., 1:-2], old, new)
        counts = rows["counts"]  # the nonfinite slot of the torch path: binned but not counted
        counts[..., -1] += rows["sums"][..., SUMS.index("binned")].astype(np.int64) - counts.sum(axis=-1)
        return rows

    def lane_key(self) -> tuple | None:
        """What the buffers of records whose rows finish together (stacked) share; None: they finish alone (the
        per-class and truth rows of the last layer move onto their rows' grids one row at a time)."""
        if self.extra_grids is not None:
            return None
        return tuple((name, tuple(buf.shape[1:]), host) for name, (buf, _, host) in self.states.items())

    @staticmethod
    def finish_windows(taken: Taken | dict[tuple[int, str], tuple[int, None, Rows]], lanes: int = 64
                       ) -> Iterator[tuple[str, int, list[int], Rows]]:
        """The windows ``taken`` (a :class:`Taken`, or ``{(id, phase): (first step, None, rows)}`` of rows already
        finished, reduced across ranks) finished and stacked: ``(phase, first step, ids, rows)`` with rows
        ``[len(ids), n, ...]``, stacks of at most ``lanes`` records of one phase and layout, in the order of
        ``taken`` (records that finish alone: a stack of one). A dict's windows leave it as they are stacked
        (their rows are let go once written); a :class:`Taken`'s views are made a stack at a time."""
        groups: dict[tuple, list[int]] = {}
        sig: tuple
        if isinstance(taken, Taken):
            hand = taken.hand
            for i, (phase, start, pd) in enumerate(zip(taken.phases, taken.starts, taken.pds)):
                lane = pd.lane_key()
                sig = (phase, start, int(hand.ns[i]), lane) if lane is not None else (i,)
                groups.setdefault(sig, []).append(i)
            for sig, group in groups.items():
                for a in range(0, len(group), lanes):
                    members = group[a:a + lanes]
                    i = members[0]
                    stacked = hand.stacked(members) if len(sig) > 1 else None  # views of the block, made here (the writer's thread)
                    yield taken.phases[i], taken.starts[i], [taken.rids[j] for j in members], (
                        taken.pds[i].finish(stacked) if stacked is not None
                        else PhaseBuffers._stack(taken.pds[i], [hand.rows(j) for j in members]))
            return
        keys = list(taken)
        for k, (key, (begin, _, rows)) in enumerate(taken.items()):
            groups.setdefault((key[1], begin, tuple((name, v.shape, v.dtype.str) for name, v in rows.items())),
                              []).append(k)
        for group in groups.values():
            for a in range(0, len(group), lanes):
                stack = [keys[k] for k in group[a:a + lanes]]
                begin = taken[stack[0]][0]
                got = [taken.pop(key)[2] for key in stack]
                yield stack[0][1], begin, [key[0] for key in stack], PhaseBuffers._stack(None, got)

    @staticmethod
    def _stack(pd: PhaseBuffers | None, parts: list[Rows]) -> Rows:
        """Rows of records stacked on a first axis, finished (``pd`` None: finished already)."""
        if pd is not None and len(parts) == 1:
            return {k: v[None] for k, v in pd.finish(parts[0]).items()}
        stacked = {name: np.stack([p[name] for p in parts]) for name in parts[0]}
        return stacked if pd is None else pd.finish(stacked)

    @staticmethod
    def columns(rows: Rows) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray | None]:
        """``(counts, stats, extra, grid)`` of taken (or rank-reduced) rows: stats in :data:`twinpeaks.format.STATS`
        order, ``grid`` the rows' int64 grids (automatic ranges) or None."""
        sums, peaks = rows["sums"], rows["peaks"]  # [n, k] (or stacked: [lanes, n, k])
        stats = empty_stats(len(sums)) if sums.ndim == 2 else np.empty((*sums.shape[:-1], len(STATS)))
        stats[..., BINNED] = sums[..., SUMS.index("binned")]
        stats[..., SEEN] = sums[..., SUMS.index("seen")]
        stats[..., SUM:SUM + 2] = sums[..., :2]  # sum, sumsq
        stats[..., ZEROS] = stats[..., BINNED] - sums[..., SUMS.index("nonzero")]
        stats[..., MIN], stats[..., MAX] = -peaks[..., 0], peaks[..., 1]
        extra = {k: v for k, v in rows.items() if k not in ("counts", "sums", "peaks", "grid")}
        return rows["counts"], stats, extra, rows.get("grid")


@dataclass(eq=False, slots=True)
class Plan:
    """How to bin one output layout of one record in one phase, made once (see :meth:`BinningEngine.plan`)."""

    key: tuple  # (shape, strides, dtype, type) of the outputs it is for
    phase: str
    buffers: PhaseBuffers
    kernel: bool  # the C kernel bins it; else torch operations
    #: C kernel: (dtype code, elements, block stride, blocks, block size, fixed edges address or 0, grids, bins,
    #: counts, sums, peaks base addresses, threads (binning.kernel_threads), grid hint address or 0):
    #: ``_cbin.observe(ptr, *kernel_args, row)``
    kernel_args: tuple
    dense: bool  # the elements fill their storage block: read in storage order
    stride: int  # sampling: block stride in elements
    blocks: int  # sampling: blocks per output; 0 = every element
    offsets: int  # sampling: number of possible random block offsets
    itemsize: int  # bytes per element
    last: bool  # the last layer with per-class or truth rows
    seen: torch.Tensor | None  # torch path: [binned, seen] to add per output
    binner: Any = None  # the fused Triton kernel over the buffers (twinpeaks._triton.Binner), or None

    @property
    def code(self) -> int:
        """The C kernel's dtype code, or -1: torch operations."""
        return self.kernel_args[0] if self.kernel else -1


class Record:
    """One recorded tensor: a module's output or one tensor inside it."""

    def __init__(self, rid: int, module_index: int, sub_index: int, name: str, type_: str, last: bool):
        self.id = rid
        self.module_index = module_index
        self.sub_index = sub_index
        self.name = name
        self.type = type_
        self.last = last  # belongs to the last hooked module: per-class and truth apply
        self.module_name = name  # the module's layer name (a sub-record's is its module's)
        self.out_shape: list[int] | None = None
        self.fixed: binning.Fixed | None = None  # a fixed range; None: automatic grids (docs/grids.md)
        self.range_known = False  # looked up (see BinningEngine.know_range)
        self.edges_written = False
        self.classes = 0  # per-class columns
        self.phases: dict[str, PhaseBuffers] = {}
        self.fast: Plan | None = None  # the plan of the last output binned
        self.dirty = True  # layer row needs (re)writing

    def host_edges(self) -> np.ndarray | None:
        """A fixed range's float64 numpy edges on the host (written once per layer); None: automatic grids."""
        return None if self.fixed is None else self.fixed.edges.cpu().numpy()


RangeFn = Callable[[Record], "tuple[float, float] | None"]


class BinningEngine:
    """Bins outputs into their record's buffers at the clock's current row.

    Args:
        clock: the step clock (its ``phase`` and ``row`` say where a value goes).
        bins, sample, per_class, rows: the recorder's options.
        warn: ``warn(layer, what)``: one warning per layer.
        range_of: ``range_of(record)``: the layer's fixed range ``(lo, hi)``, or None for
            automatic grids (the recorder resolves ``range=`` per layer); may raise
            ``ValueError`` (then: automatic, with one warning).
    """

    def __init__(self, clock: Any, *, bins: int, sample: float | str, per_class: bool, rows: int, seed: int,
                 warn: Callable[[str, str], None], range_of: RangeFn | None = None):
        self.clock = clock
        self.bins = bins
        self.range_of: RangeFn = range_of or (lambda rec: None)
        self.sample = sample
        self.auto_sample = auto_sample(bins)  #: elements per sampled call with ``sample="auto"``
        self.per_class = per_class
        self.rows = rows
        self.rng = random.Random(seed)
        self.warn = warn
        self.targets: torch.Tensor | None = None
        self.targets_after: bool | None = None
        self.ignore_index = -100
        #: layer -> (count of class indices outside [0, K) other than ignore_index, on the device; K): read at epoch end
        self.bad_targets: dict[str, tuple[torch.Tensor, int]] = {}
        self.pending: list[tuple[Record, str, int, torch.Tensor]] = []

    def know_range(self, rec: Record) -> None:
        """Look up a record's range once: fixed (numpy's float64 edges, on the CPU for now) or automatic."""
        if rec.range_known:
            return
        try:
            r = self.range_of(rec)
        except ValueError as exc:  # e.g. a range function that fails on a sub-record's name
            self.warn(rec.name, f"{exc}; its range is automatic")
            r = None
        rec.fixed = binning.fixed_grid(r[0], r[1], self.bins) if r is not None else None
        rec.range_known = True

    # -- the hot path -------------------------------------------------------------------------
    def bin(self, rec: Record, t: torch.Tensor) -> None:
        """Add ``t`` into ``rec``'s row of the current step. Runs for every layer, every step: kept short."""
        key = (t.shape, t.stride(), t.dtype, type(t))
        clock = self.clock
        f = rec.fast
        if f is None or f.key != key or f.phase != clock.phase:
            with torch.no_grad():
                f = self.plan(rec, t, key)
            if f is None:
                return
        if f.binner is not None:  # the Triton kernel: one launch, the per-class rows with it
            f.binner(t.detach(), clock.row, int(self.rng.random() * f.offsets) if f.blocks else 0)
            if f.last:  # the YES/NO rows (torch operations)
                with torch.no_grad():
                    self._bin_last(rec, f.buffers, t, classes_done=True)
            return
        if f.kernel:  # the C kernel: one pass over the memory, no torch operation
            src = t if f.dense else t.reshape(-1)  # a dense layout (even permuted): storage order; else a copy,
            ptr = src.data_ptr()  # kept alive in `src` until the kernel has read it
            if f.blocks:  # blocks of SAMPLE_BLOCK elements, stride apart, from a random offset: unbiased over steps
                ptr += int(self.rng.random() * f.offsets) * f.itemsize
            _cbin_observe(ptr, *f.kernel_args, clock.row)
        else:
            with torch.no_grad():
                self._bin_torch(rec, t, clock.row, f)
        if f.last:  # the last layer: per-class and truth (YES/NO) counts
            with torch.no_grad():
                self._bin_last(rec, f.buffers, t)

    def plan(self, rec: Record, t: torch.Tensor, key: tuple) -> Plan | None:
        """How to bin outputs of ``t``'s layout in this phase; cached on ``rec``. None: not binned.

        Creates the phase's buffers on first use (and looks up the layer's range).
        """
        if t.device.type == "meta":  # no values: binning it would fail at the flush, not here
            self.warn(rec.name, "returned a tensor on the meta device (it holds no values): not binned")
            return None
        n = t.numel()
        if n == 0:
            return None
        if t.is_complex():
            self.warn(rec.name, "has a complex output: not binned")
            return None
        phase = self.clock.phase
        pd = rec.phases.get(phase)
        plan = pd.plans.get(key) if pd is not None else None
        if plan is None:
            if rec.out_shape is None:
                rec.out_shape = list(t.shape)
                rec.dirty = True
            self.know_range(rec)
            if rec.fixed is not None and rec.fixed.edges.device != t.device:
                rec.fixed = binning.fixed_grid(rec.fixed.lo, rec.fixed.hi, self.bins, t.device)
            if pd is None:
                pd = self._new_buffers(rec, t)
            stride, blocks = self.sampling(n, t.shape, rec.last)
            k = blocks * SAMPLE_BLOCK if blocks else n
            plain = t.dtype in binning.KERNEL_DTYPES and type(t) in (torch.Tensor, nn.Parameter)  # a subclass
            # (DTensor, ...) may hold no memory
            binner = self._binner(rec, pd, t, stride, blocks) if plain and binning.DEVICE_KERNEL and (
                t.device.type == "cuda" or binning.TRITON_ON_CPU) else None
            kernel = bool(binner is None and pd.cpu and binning.KERNEL and plain)
            seen = None
            if not kernel and binner is None:
                with torch.inference_mode(False):  # the torch path adds [binned, seen] from this tensor
                    seen = torch.tensor([k, n], dtype=torch.float64, device=t.device)
            # the kernel may split a large call over threads (read here: plans are made once per layout)
            kernel_args = ((binning.KERNEL_DTYPES[t.dtype], n, stride, blocks, SAMPLE_BLOCK,
                            rec.fixed.edges_ptr if rec.fixed is not None else 0, *pd.addresses(),
                            binning.kernel_threads(), pd.hint.data_ptr() if pd.hint is not None else 0)
                           if kernel else ())
            plan = pd.plans[key] = Plan(
                key=key, phase=phase, buffers=pd, kernel=kernel, kernel_args=kernel_args,  # type: ignore[arg-type]
                dense=binning.is_dense(t), stride=stride, blocks=blocks,
                offsets=stride - SAMPLE_BLOCK + 1, itemsize=t.element_size(),
                last=rec.last and bool(rec.classes or "truth" in pd.extra), seen=seen, binner=binner)
        rec.fast = plan
        return plan

    def _binner(self, rec: Record, pd: PhaseBuffers, t: torch.Tensor, stride: int, blocks: int) -> Any:
        """The fused Triton kernel over ``pd``'s buffers for outputs of ``t``'s layout; None: the torch path.

        It bins the output and, for the last layer, its per-class rows; the YES/NO rows stay with
        :meth:`_count_truth` (torch operations: ``ignore_index``, indices outside ``[0, K)``).
        """
        try:
            from .. import _triton

            fixed = rec.fixed
            cols = t.shape[-1] if t.dim() >= 2 else 1
            classes = pd.extra.get("classes") if rec.last else None
            return _triton.Binner(
                t, pd.counts, pd.sums, pd.peaks, grid=pd.grids if fixed is None else None,
                edges=fixed.edges if fixed is not None else None,
                range=(fixed.lo, fixed.hi) if fixed is not None else None, blocks=blocks, stride=stride,
                classes=classes, extra_grid=pd.extra_grids if classes is not None and fixed is None else None,
                bin_classes=classes is not None and cols == rec.classes)
        except Exception as exc:  # triton unusable here, an odd layout: torch operations bin instead
            self.warn(rec.name, f"cannot use the Triton kernel ({exc!r}): binned with torch operations")
            return None

    def sampling(self, n: int, shape: tuple[int, ...], last: bool = False) -> tuple[int, int]:
        """Sampling plan for an output of ``n`` elements: ``(block stride, blocks)``; ``(1, 0)``: bin all.

        Samples are contiguous blocks (cache lines, not scattered elements: a
        strided gather of single floats costs a cache miss each). The stride is
        made coprime with the size of one batch item, so that the blocks of a
        step walk through every position of a feature map. With ``sample="auto"``
        about :func:`auto_sample` elements are binned per call (7,888 at 100 bins):
        a step's histogram is expected within total variation 0.045 of exact, ``N``
        steps within ``0.045 / sqrt(N)`` (0.01 after 20; :func:`tv_bound`).
        """
        if n <= EXACT_BELOW or self.sample == 1 or (last and self.sample == "auto"):
            return 1, 0  # small outputs, and the last layer that Twin Peaks and the diagnosis read: exact
        want = self.auto_sample if self.sample == "auto" else n * float(self.sample)
        blocks = max(1, int(want) // SAMPLE_BLOCK)
        stride = n // blocks
        if stride < 2 * SAMPLE_BLOCK:
            return 1, 0
        item = math.prod(shape[1:]) if len(shape) > 1 else 1
        while math.gcd(stride, item) != 1 and stride > SAMPLE_BLOCK:
            stride -= 1
        return stride, blocks

    def _bin_torch(self, rec: Record, t: torch.Tensor, row: int, plan: Plan) -> None:
        """The same as the C kernel with torch operations: other devices and dtypes, or no kernel."""
        stride, blocks, dense, pd = plan.stride, plan.blocks, plan.dense, plan.buffers
        flat = t.detach()
        if not dense:
            flat = flat.reshape(-1)
        if blocks:
            offset = flat.storage_offset() + int(self.rng.random() * plan.offsets)
            flat = flat.as_strided((blocks, SAMPLE_BLOCK), (stride, 1), offset).reshape(-1)
        elif dense:
            flat = flat.as_strided((t.numel(),), (1,), flat.storage_offset())
        # one contiguous float32 copy of a sample for the stats; bins from the values themselves (upcast to float64)
        v = flat.float() if flat.dtype != torch.float32 else flat.contiguous() if stride > 1 else flat
        values = flat if flat.dtype == torch.float64 else v
        if rec.fixed is not None:
            binning.observe_fixed(values, rec.fixed, pd.counts[row])
        else:
            binning.observe_auto(values, pd.grids[row], pd.counts[row])  # type: ignore[index]
        add, peak = binning.stats_parts(v)
        sums = pd.sums[row]
        sums[:3].add_(add)
        sums[3:].add_(plan.seen)  # type: ignore[arg-type]  # set for every torch-path plan
        peaks = pd.peaks[row]
        torch.maximum(peaks, peak, out=peaks)

    # -- buffers --------------------------------------------------------------------------------
    def _new_buffers(self, rec: Record, t: torch.Tensor) -> PhaseBuffers:
        extra: dict[str, int] = {}
        if rec.last:
            cols = t.shape[-1] if t.dim() >= 2 else 1
            if self.per_class:
                rec.classes = cols
                rec.dirty = True
                extra["classes"] = cols
            extra["truth"] = 2
            per_row = sum(extra.values()) * binning.n_slots(self.bins) * 8
            self.clock.rows = min(self.clock.rows, max(8, EXTRA_BUDGET // per_row))
        pd = self.new_buffers(t.device, extra, auto=rec.fixed is None)
        rec.phases[self.clock.phase] = pd
        return pd

    def new_buffers(self, device: torch.device, extra: dict[str, int], auto: bool = True) -> PhaseBuffers:
        """Empty buffers of one record in one phase (``extra``: per-class/truth columns; ``auto``: per-row grids)."""
        with torch.inference_mode(False):  # buffers must stay normal tensors, updatable outside inference mode
            return PhaseBuffers(self.rows, binning.n_slots(self.bins), device, extra, auto)

    # -- the last layer: per-class and truth counts ---------------------------------------------
    def set_targets(self, y: torch.Tensor, ignore_index: int = -100) -> None:
        """Targets of the current batch, before or after its forward (see ``ActivationsHistogram.targets``)."""
        self.ignore_index = ignore_index
        # The first call fixes the style: targets given after the forward apply to
        # that forward's pending outputs; given before, they wait for the next one.
        if self.targets_after is None:
            self.targets_after = bool(self.pending)
        if self.targets_after:
            for rec, phase, row, out in self.pending:
                self._count_truth(rec, phase, row, out, y)
            self.pending = []
        else:
            self.targets = y

    def _bin_last(self, rec: Record, pd: PhaseBuffers, t: torch.Tensor, classes_done: bool = False) -> None:
        """Per-class (unless the Triton kernel counted them: ``classes_done``) and YES/NO rows of the last layer."""
        cols = t.shape[-1] if t.dim() >= 2 else 1
        out = t.detach().reshape(-1, cols)
        slots = None
        s = binning.n_slots(self.bins)
        row, phase = self.clock.row, self.clock.phase
        if "classes" in pd.extra and cols == rec.classes and not classes_done:
            slots = self._slots(rec, pd, row, out)
            offs = torch.arange(cols, device=slots.device) * s
            pd.extra["classes"][row] += binning.count_slots(slots + offs, cols * s).view(cols, s)
        if self.targets is not None:
            self._count_truth(rec, phase, row, out, self.targets, slots)
            self.targets = None
        elif self.targets_after is not False:
            # binned when targets() comes after the forward: a copy, in case the output is changed in place
            self.pending.append((rec, phase, row, out.clone()))

    def _count_truth(self, rec: Record, phase: str, row: int, out: torch.Tensor, y: torch.Tensor,
                     slots: torch.Tensor | None = None) -> None:
        pd = rec.phases[phase]
        b, cols = out.shape
        y = y.to(out.device)
        ignore = self.ignore_index
        if y.numel() == b * cols and (cols == 1 or y.dim() >= 2 or y.is_floating_point() or y.dtype == torch.bool):
            per_output = y.reshape(b, cols)
            yes = per_output > 0.5
            keep = per_output != ignore  # an output whose target is ignore_index is left out
        elif y.numel() == b and cols > 1 and not y.is_floating_point():
            idx = y.reshape(b).long()
            inside = (idx >= 0) & (idx < cols)
            bad = (~inside & (idx != ignore)).sum()  # stays on the device: read at the epoch's end
            seen = self.bad_targets.get(rec.name)
            self.bad_targets[rec.name] = (bad if seen is None else seen[0] + bad, cols)
            # nothing clamped: a sample whose index is outside [0, K) is left out of YES and NO alike
            # not one_hot: it reads the labels' min back to check them (a sync) on every device but CUDA and MPS
            yes = (idx.reshape(b, 1) == torch.arange(cols, device=idx.device)) & inside[:, None]
            keep = inside[:, None].expand(b, cols)
        else:
            self.warn(rec.name, f"targets of shape {tuple(y.shape)} do not match outputs {tuple(out.shape)}: "
                                "truth split skipped (pass class indices [batch] or 0/1 per output)")
            return
        if slots is None:
            slots = self._slots(rec, pd, row, out)
        s = binning.n_slots(self.bins)
        code = torch.where(keep, slots + (~yes).long() * s, 2 * s)  # left-out outputs: one more slot, cut off
        pd.extra["truth"][row] += binning.count_slots(code, 2 * s + 1)[: 2 * s].view(2, s)

    def take_bad_targets(self) -> list[tuple[str, int, int]]:
        """``(layer, count, K)`` of the class indices outside ``[0, K)`` (not ``ignore_index``) since the last call.

        Reads the device counters: a host sync, so only at an epoch's end.
        """
        out = [(name, int(n), cols) for name, (n, cols) in self.bad_targets.items()]
        self.bad_targets = {}
        return [x for x in out if x[1]]

    def _slots(self, rec: Record, pd: PhaseBuffers, row: int, out: torch.Tensor) -> torch.Tensor:
        """Slots of the last layer's outputs on its step row's grid, for the per-class and truth rows.

        Automatic ranges: those rows first move onto the row's grid as it is now (it
        may have coarsened since they were last counted: a second call in the step).
        """
        if rec.fixed is not None:
            return binning.slot_index(out, rec.fixed)
        g, eg = pd.grids[row], pd.extra_grids[row]  # type: ignore[index]
        for buf in pd.extra.values():
            buf[row] = binning.regrid_rows(buf[row], eg, g)
        eg.copy_(g)
        return binning.auto_slots(out, g, self.bins)
