"""The epoch writer: host column stores, the flush of a window's rows and the epoch summaries.

Design constraints: memory stays bounded (per-step columns merge into even buckets past
``max_columns``, see :mod:`twinpeaks.columns`); every commit leaves a readable
file; the run's step columns live in the file (read back only to merge them past
``max_columns``), the open epoch's in a small store; the writer keeps what it needs to
add a final evaluation pass into the last epoch itself. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np

from .. import grids
from ..columns import ColumnStack, merge_lanes
from ..format import ADDITIVE, MAX, MIN, STATS, combine_stats, empty_stats
from ..runfile import RunWriter
from .writer_thread import pause


class LayerRecord(Protocol):
    """What the writer reads of a recorded layer (see :class:`twinpeaks.recording.engine.Record`)."""

    id: int
    module_index: int
    sub_index: int
    name: str
    type: str
    out_shape: list[int] | None
    classes: int
    dirty: bool
    edges_written: bool

    def host_edges(self) -> np.ndarray | None: ...


#: Columns of the open epoch kept per record and phase (in memory, for the epoch's summaries: the whole epoch is
#: exact at any size, its last quarter starts at a column boundary, so this sets its resolution).
EPOCH_COLUMNS = 64
#: Records per cohort (written together, one stack of columns): the writer holds the GIL for one cohort's work
#: at a time (a few ms), and its temporaries stay small, however many layers a model has
LANES = 64
#: The writer commits (mid-flush) once this many bytes are queued: a rewrite of every layer's columns is
#: committed layer by layer, not held in memory whole (each commit leaves every layer's columns whole)
COMMIT_BYTES = 8 << 20
#: Bytes of int64 columns read back and merged at once (a few layers' columns; the merge's temporaries are a few
#: times this): the run's columns are never held in memory whole
MERGE_BYTES = 2 << 20
#: Records per :class:`FileStack` of a cohort: a merge past ``max_columns`` deferred (see :class:`FileStack`) is done a
#: stack at a time, so that the writer can take the next window between two
MERGE_LANES = 16
_COLUMN_KINDS = ("col_steps", "col_counts", "col_stats", "col_grid")


class FileStack:
    """The run's step columns of a stack of records (lanes) in one phase: in the run file, not in memory.

    They follow :class:`~twinpeaks.columns.ColumnStack` exactly (aligned buckets, merged past ``cap``); the
    lanes record the same steps, so they share the bucket state and the steps of their columns, the only
    things kept here. New rows are written as new columns; when they pass ``cap``, the columns are read
    back from the file (the writer's view, with what it has not committed yet:
    :meth:`~twinpeaks.runfile.RunWriter.read_columns_of`), merged and rewritten, a few lanes at a time
    (``commit``, called between them, commits once :data:`COMMIT_BYTES` are queued: memory stays bounded).

    ``defer``: the merge past ``cap`` waits for :meth:`settle` (the writer's thread calls it when no window
    waits, so that a merge never holds up a window: the training thread never waits for one). Until then the
    windows' columns are written as they come, past ``cap`` (at most ``2 * cap``: beyond that it merges at
    once); :meth:`settle` replays them window by window (:meth:`ColumnStack.append_columns`), so the columns
    are those of a merge made at once.
    """

    def __init__(self, cap: int, shape: tuple[int, ...], gridded: bool, defer: bool = False):
        self.cap, self.shape, self.gridded, self.defer = cap, shape, gridded, defer
        self.width = 1
        self.origin: int | None = None
        self.steps = np.zeros((0, 2), np.int64)
        self.pending: list[int] = []  #: first column of each window written past ``cap``, not merged yet

    def __len__(self) -> int:
        return len(self.steps)

    def copy(self) -> FileStack:
        out = FileStack(self.cap, self.shape, self.gridded, self.defer)
        out.width, out.origin, out.steps, out.pending = self.width, self.origin, self.steps.copy(), list(self.pending)
        return out

    def append(self, w: RunWriter, rids: list[int], phase: str, start: int, counts: np.ndarray, stats: np.ndarray,
               grid: np.ndarray | None, commit: Callable[[], None] | None = None) -> None:
        """Append every lane's consecutive rows (``[lanes, n, ...]``) from step ``start`` and queue their columns;
        past ``cap``, merge them now or (``defer``) at :meth:`settle`."""
        n = counts.shape[1]
        if n == 0:
            return
        origin = start if self.origin is None else self.origin
        first = len(self.steps)
        # the window's columns: one per bucket its rows touch (as ColumnStack.append makes them)
        bucket = (np.arange(start, start + n, dtype=np.int64) - origin) // self.width
        groups = np.flatnonzero(np.diff(bucket, prepend=bucket[0] - 1))
        if len(groups) < n:
            counts, stats, grid = merge_lanes(counts, stats, grid, groups)
        steps = np.stack([start + groups, start + np.append(groups[1:], n)], axis=1)
        self._put(w, rids, phase, first, steps, counts, stats, grid)
        self.steps = np.concatenate([self.steps, steps])
        self.origin = origin
        if self.pending or first + len(groups) > self.cap:  # past the cap: this window is merged with the others
            self.pending.append(first)
            if not self.defer or len(self.steps) > 2 * self.cap:
                self.settle(w, rids, phase, commit)

    def settle(self, w: RunWriter, rids: list[int], phase: str, commit: Callable[[], None] | None = None,
               stop: Callable[[], bool] | None = None) -> tuple[int, FileStack]:
        """Merge the columns written past ``cap`` (read back from the file), rewrite them all, a few lanes at a time.

        ``stop`` is asked between two chunks of lanes: when it says so, the merge stops there. Returns the lanes
        done and their stack: this one, merged, when all are done; else a new, merged stack for the first ones
        (this one stays as it was, for the others: the caller splits them, see :meth:`_Cohort.settle`).
        """
        if not self.pending:
            return len(rids), self
        n = len(self.steps)
        bounds = [*self.pending, n]
        per_lane = n * (int(np.prod(self.shape)) + len(STATS) + 4) * 8
        chunk = max(1, MERGE_BYTES // max(1, per_lane))
        store = None
        done = 0
        while done < len(rids):
            ids = rids[done:done + chunk]
            got = w.read_columns_of(ids, phase, _COLUMN_KINDS)
            bad = next((r for r, g in zip(ids, got) if len(g.get("col_steps", ())) != n), None)
            if bad is not None:
                raise RuntimeError(f"run file lost the step columns of layer {bad} in {phase!r}")
            counts = np.stack([g["col_counts"] for g in got])
            stats = np.stack([g["col_stats"] for g in got])
            grid = np.stack([g["col_grid"] for g in got]) if self.gridded else None
            cut = bounds[0]
            store = ColumnStack.restore(len(ids), self.cap, self.shape, self.gridded, self.width, self.origin or 0,
                                        (self.steps[:cut], counts[:, :cut], stats[:, :cut],
                                         None if grid is None else grid[:, :cut]))
            for s, e in zip(bounds, bounds[1:]):  # the windows written since, as they came
                store.append_columns(self.steps[s:e], counts[:, s:e], stats[:, s:e],
                                     None if grid is None else grid[:, s:e])
            for rid in ids:
                w.drop_columns(rid, phase)
            self._put(w, ids, phase, 0, store.steps, store.counts, store.stats, store.grid)
            done += len(ids)
            if commit is not None:
                commit()
            if done < len(rids) and stop is not None and stop():
                break
            pause(spread=self.defer)  # a merge at once is due now: not spread (the next window may wait for it)
        assert store is not None
        merged = self if done == len(rids) else self.copy()
        merged.steps, merged.width, merged.pending = store.steps.copy(), store.width, []
        return done, merged

    @staticmethod
    def _put(w: RunWriter, rids: list[int], phase: str, part: int, steps: np.ndarray, counts: np.ndarray,
             stats: np.ndarray, grid: np.ndarray | None) -> None:
        w.put_lanes(rids, phase, "col_steps", -1, part, steps, shared=True)
        w.put_lanes(rids, phase, "col_counts", -1, part, counts)
        w.put_lanes(rids, phase, "col_stats", -1, part, stats)
        if grid is not None:
            w.put_lanes(rids, phase, "col_grid", -1, part, grid)


class FileColumns:
    """The run's step columns of one record in one phase (a :class:`FileStack` of one lane)."""

    def __init__(self, cap: int, shape: tuple[int, ...], gridded: bool, defer: bool = False):
        self.stack = FileStack(cap, shape, gridded, defer)

    def __len__(self) -> int:
        return len(self.stack)

    @property
    def steps(self) -> np.ndarray:
        return self.stack.steps

    def append(self, w: RunWriter, rid: int, phase: str, start: int, counts: np.ndarray, stats: np.ndarray,
               grid: np.ndarray | None) -> None:
        """Append consecutive rows from step ``start`` and queue their columns in ``w``."""
        self.stack.append(w, [rid], phase, start, counts[None], stats[None], None if grid is None else grid[None])

    def settle(self, w: RunWriter, rid: int, phase: str) -> None:
        """Merge what was written past ``cap`` (see :meth:`FileStack.settle`)."""
        self.stack.settle(w, [rid], phase)


class _Cohort:
    """Records of one phase that record the same steps: one epoch :class:`ColumnStack`, and their file columns in
    :class:`FileStack` s of consecutive records (:data:`MERGE_LANES` at first): a deferred merge is done a stack at
    a time, and a stack whose merge stops midway (a window came) is split where it stopped."""

    def __init__(self, rids: list[int], files: list[tuple[int, FileStack]], epoch: ColumnStack,
                 extra: dict[str, ColumnStack]):
        self.rids, self.files, self.epoch, self.extra = rids, files, epoch, extra

    @classmethod
    def new(cls, rids: list[int], max_columns: int, slots: int, extra: dict[str, tuple[int, ...]],
            gridded: bool, defer: bool = False) -> _Cohort:
        lanes = len(rids)
        return cls(rids, _stacks(lanes, FileStack(max_columns, (slots,), gridded, defer)),
                   ColumnStack(lanes, EPOCH_COLUMNS, (slots,), gridded),
                   {k: ColumnStack(lanes, EPOCH_COLUMNS, (*shape, slots), gridded) for k, shape in extra.items()})

    def file_lanes(self) -> list[tuple[slice, FileStack]]:
        """Each file stack with the lanes it holds."""
        ends = [a for a, _ in self.files[1:]] + [len(self.rids)]
        return [(slice(a, b), f) for (a, f), b in zip(self.files, ends)]

    def settle(self, w: RunWriter, phase: str, commit: Callable[[], None], stop: Callable[[], bool] | None = None
               ) -> bool:
        """Merge the first file stack with a merge pending (up to where ``stop`` stops it); whether one had one."""
        for i, (lanes, f) in enumerate(self.file_lanes()):
            if f.pending:
                done, merged = f.settle(w, self.rids[lanes], phase, commit, stop)
                if merged is not f:  # stopped midway: the lanes done go on apart
                    self.files[i:i + 1] = [(lanes.start, merged), (lanes.start + done, f)]
                self._join()
                return True
        return False

    def _join(self) -> None:
        """Join neighbouring file stacks in the same state (merged alike), up to :data:`MERGE_LANES` records."""
        out = self.files[:1]
        for (a, f), (b, _) in zip(self.files[1:], [*self.files[2:], (len(self.rids), None)]):
            start, prev = out[-1]
            if (not f.pending and not prev.pending and f.width == prev.width and f.origin == prev.origin
                    and np.array_equal(f.steps, prev.steps) and b - start <= MERGE_LANES):
                continue
            out.append((a, f))
        self.files = out

    def split(self, keep: set[int]) -> tuple[_Cohort, _Cohort]:
        """Two cohorts: the lanes in ``keep`` and the others (a window came for some of the records only).

        The file stacks record the same steps and have no merge pending (:meth:`EpochWriter._split` settles them
        first), so they are in the same state: the new ones start as copies of the first."""
        assert not any(f.pending for _, f in self.files), "settle a cohort's merges before splitting it"
        parts = []
        for inside in (True, False):
            lanes = [i for i, r in enumerate(self.rids) if (r in keep) is inside]
            parts.append(_Cohort([self.rids[i] for i in lanes], _stacks(len(lanes), self.files[0][1]),
                                 self.epoch.select(lanes), {k: s.select(lanes) for k, s in self.extra.items()}))
        return parts[0], parts[1]

    @property
    def nbytes(self) -> int:
        return sum(f.steps.nbytes for _, f in self.files) + sum(s.nbytes for s in (self.epoch, *self.extra.values()))


def _stacks(lanes: int, like: FileStack) -> list[tuple[int, FileStack]]:
    """File stacks of :data:`MERGE_LANES` consecutive records each, in the state of ``like`` (copies)."""
    return [(a, like.copy()) for a in range(0, lanes, MERGE_LANES)]


class EpochWriter:
    """Writes a recorder's columns, layers and epochs through one :class:`~twinpeaks.runfile.RunWriter`.

    The records of a phase that record the same windows are kept together (a cohort: one stack of columns
    for all of them, see :class:`~twinpeaks.columns.ColumnStack`), so that a window's and an epoch's host work
    is a few numpy operations for all layers at once, whatever their number.

    Not thread-safe: one thread at a time (the recorder's writer thread, see
    :mod:`twinpeaks.recording.writer_thread`) calls it.
    """

    def __init__(self, writer: RunWriter, bins: int, max_columns: int, defer: bool = False):
        self.writer = writer
        self.bins = bins
        self.max_columns = max_columns
        self.defer = defer  #: merges past ``max_columns`` wait for :meth:`settle_one` (see :class:`FileStack`)
        self._cohorts: dict[str, list[_Cohort]] = {}  # phase -> its cohorts
        self._of: dict[tuple[int, str], _Cohort] = {}  # (record, phase) -> its cohort
        self._last_epoch: dict[tuple[int, str], dict[str, np.ndarray]] = {}  # summaries of the last epoch written
        self._last_steps: dict[str, list[int]] = {}

    def cohort(self, rid: int, phase: str) -> _Cohort | None:
        """The stores of record ``rid`` in ``phase`` (shared with the records that record the same steps)."""
        return self._of.get((rid, phase))

    def held_bytes(self) -> int:
        """Bytes of the column stores and summaries held in memory (what must not grow with the run)."""
        return (sum(c.nbytes for cs in self._cohorts.values() for c in cs)
                + sum(a.nbytes for row in self._last_epoch.values() for a in row.values()))

    def add_window(self, rid: int | list[int], phase: str, start: int, counts: np.ndarray, stats: np.ndarray,
                   extra: dict[str, np.ndarray], grid: np.ndarray | None = None) -> None:
        """Append a window's rows (first step ``start``; ``grid``: their grids, automatic ranges) to the stores and
        write the new columns.

        ``rid``: one record's id (rows ``[n, ...]``), or a list of ids whose rows are stacked on a first axis
        (``[len(rid), n, ...]``): the records of a phase that record the same steps, written at once.
        """
        if not isinstance(rid, list):
            self._add([rid], phase, start, counts[None], stats[None], {k: v[None] for k, v in extra.items()},
                      None if grid is None else grid[None])
        else:
            self._add(rid, phase, start, counts, stats, extra, grid)

    def _add(self, rids: list[int], phase: str, start: int, counts: np.ndarray, stats: np.ndarray,
             extra: dict[str, np.ndarray], grid: np.ndarray | None) -> None:
        pos = {r: i for i, r in enumerate(rids)}
        cohorts = self._cohorts.setdefault(phase, [])
        todo: list[_Cohort] = []
        for c in list(cohorts):
            inside = sum(r in pos for r in c.rids)
            if not inside:
                continue
            if inside < len(c.rids):  # some of its records got no window: they go on apart
                c = self._split(c, phase, set(pos))
            todo.append(c)
        new = [r for r in rids if (r, phase) not in self._of]
        for a in range(0, len(new), LANES):
            c = _Cohort.new(new[a:a + LANES], self.max_columns, counts.shape[-1],
                            {k: v.shape[2:-1] for k, v in extra.items()}, grid is not None, self.defer)
            cohorts.append(c)
            for r in c.rids:
                self._of[r, phase] = c
            todo.append(c)
        for c in todo:
            if c.rids == rids:
                cc, cs, cx, cg = counts, stats, extra, grid
            else:
                idx = np.array([pos[r] for r in c.rids])
                cc, cs, cg = counts[idx], stats[idx], None if grid is None else grid[idx]
                cx = {k: v[idx] for k, v in extra.items()}
            for lanes, f in c.file_lanes():
                f.append(self.writer, c.rids[lanes], phase, start, cc[lanes], cs[lanes],
                         None if cg is None else cg[lanes], commit=self._commit_queued)
            self._commit_queued()
            c.epoch.append(start, cc, cs, cg)
            for k, arr in cx.items():
                c.extra[k].append(start, arr, cs, cg)
            pause()  # training goes on meanwhile: leave it the GIL between cohorts

    def settle_one(self, stop: Callable[[], bool] | None = None) -> bool:
        """Do one deferred merge (one :class:`FileStack`, :data:`MERGE_LANES` records at most; ``stop``: asked
        between chunks of a few records, it ends the merge there) and commit it; whether one was there to do.
        The writer's thread calls it while no window waits, with ``stop`` saying whether one came since. Not while
        the file cannot be written (a full disk): a merge would only add its rewrite to what waits in memory."""
        if self.writer.failed is not None:
            return False
        for phase, cohorts in self._cohorts.items():
            for c in cohorts:
                if c.settle(self.writer, phase, self._commit_queued, stop):
                    self.writer.commit()
                    return True
        return False

    def settle(self) -> None:
        """Do every deferred merge (before the file is closed: it then holds at most ``max_columns`` columns per
        layer and phase)."""
        while self.settle_one():
            pass

    def _commit_queued(self) -> None:
        if self.writer.queued_bytes > COMMIT_BYTES and self.writer.failed is None:
            self.writer.commit()

    def layer_changes(self, records: Iterable[LayerRecord]) -> list[tuple]:
        """The layer rows that changed and the edges not yet written, taken now (the records' flags are cleared):
        the recorder's thread takes them, the writer's thread applies them (:meth:`apply_layers`)."""
        changes: list[tuple] = []
        for rec in records:
            if rec.dirty:
                shape = None if rec.out_shape is None else list(rec.out_shape)
                changes.append(("layer", rec.id, rec.module_index, rec.sub_index, rec.name, rec.type, shape,
                                self.bins, rec.classes))
                rec.dirty = False
            if not rec.edges_written:
                edges = rec.host_edges()
                if edges is not None:
                    changes.append(("edges", rec.id, edges))
                    rec.edges_written = True
        return changes

    def apply_layers(self, changes: Iterable[tuple]) -> None:
        """Queue layer changes: ``("drop", id)``, ``("layer", put_layer's arguments...)``, ``("edges", id, edges)``."""
        w = self.writer
        for what, *args in changes:
            if what == "drop":
                w.drop_layer(*args)
            elif what == "layer":
                w.put_layer(*args)
            else:
                w.put_array(args[0], "", "edges", -1, 0, args[1])

    def write_epoch(self, rids: Iterable[int], epoch: int, phases: dict[str, tuple[int, int]],
                    merge: bool) -> None:
        """Write the summaries of ``epoch`` (``phases``: first and end step of each) and its step ranges.

        With ``merge``, the rows join ``epoch``, already written (a final evaluation pass):
        its summaries are added to, its phases keep their first step.
        """
        steps: dict[str, list[int]] = {}
        wanted = set(rids)
        if not merge:
            self._last_epoch = {}
        for phase, (first, end) in phases.items():
            lq_first = end - max(1, math.ceil((end - first) / 4))
            steps[phase] = [first, end, lq_first]
            for c in list(self._cohorts.get(phase, ())):
                if not len(c.epoch):
                    continue
                lanes = [i for i, r in enumerate(c.rids) if r in wanted]
                if not lanes:
                    continue
                self._write_summaries(c, lanes, phase, epoch, lq_first, merge)
                if len(lanes) < len(c.rids):  # (a recorder writes every record) the others' rows stay
                    c = self._split(c, phase, {c.rids[i] for i in lanes})
                for store in (c.epoch, *c.extra.values()):
                    store.clear()
                pause(spread=False)
        if merge:
            old = self._last_steps
            # a phase already in that epoch (valid, then another evaluate()) keeps its first step
            steps = {**{p: list(v) for p, v in old.items()},
                     **{p: [old[p][0], *v[1:]] if p in old else v for p, v in steps.items()}}
        self.writer.put_epoch(epoch, steps)
        self._last_steps = steps

    def _split(self, c: _Cohort, phase: str, keep: set[int]) -> _Cohort:
        """Split the records ``keep`` off ``c`` (a cohort of ``phase``) into a cohort of their own; return it."""
        while c.settle(self.writer, phase, self._commit_queued):  # its file stacks in one state first
            pass
        inside, rest = c.split(keep)
        cohorts = self._cohorts[phase]
        cohorts[cohorts.index(c)] = inside
        cohorts.append(rest)
        for part in (inside, rest):
            for r in part.rids:
                self._of[r, phase] = part
        return inside

    def _write_summaries(self, c: _Cohort, lanes: list[int], phase: str, epoch: int, lq_first: int,
                         add: bool) -> None:
        """The epoch's summaries of the records ``lanes`` of ``c``, computed for all of them at once."""
        ep = c.epoch
        rids = [c.rids[i] for i in lanes]
        sel = slice(None) if len(lanes) == len(c.rids) else np.array(lanes)
        col = ep.steps
        lq = col[:, 0] >= lq_first
        n_all = int((col[:, 1] - col[:, 0]).sum()) if len(col) else 0
        n_lq = int((col[lq, 1] - col[lq, 0]).sum()) if lq.any() else 0
        counts, stats = ep.counts[sel], ep.stats[sel]
        grid = None if ep.grid is None else ep.grid[sel]
        lq_counts, lq_stats = counts[:, lq], stats[:, lq]
        arrays = {"stats": _combine_stats_lanes(stats), "lq_stats": _combine_stats_lanes(lq_stats),
                  "summary": np.broadcast_to(np.array([n_all, n_lq], np.int64), (len(lanes), 2))}
        if grid is None:
            arrays["counts"], arrays["lq_counts"] = counts.sum(axis=1), lq_counts.sum(axis=1)
            gs: list[tuple[int, int] | None] = [None] * len(lanes)
            lq_gs = gs
        else:
            arrays["counts"], gs = _combine_lanes(counts, grid)
            arrays["lq_counts"], lq_gs = _combine_lanes(lq_counts, grid[:, lq])
        for k, store in c.extra.items():  # per-class and truth rows on their summary's grid
            name = "class" if k == "classes" else k
            xc = store.counts[sel]
            xg = None if store.grid is None else store.grid[sel]
            arrays[f"{name}_counts"] = np.stack([_sum_onto(xc[i], None if xg is None else xg[i], gs[i])
                                                 for i in range(len(lanes))])
            arrays[f"{name}_lq"] = np.stack([_sum_onto(xc[i][lq], None if xg is None else xg[i][lq], lq_gs[i])
                                             for i in range(len(lanes))])
        if ep.gridded:
            arrays["grid"] = np.array([g if g is not None else (0, 0) for g in gs], np.int64)
            arrays["lq_grid"] = np.array([g if g is not None else (0, 0) for g in lq_gs], np.int64)
        arrays = {k: np.array(v) for k, v in arrays.items()}  # owned, writable (a final pass adds to them)
        for i, rid in enumerate(rids):
            prev = self._last_epoch.get((rid, phase)) if add else None
            row = {k: v[i] for k, v in arrays.items()}
            if prev is not None:
                row = {k: v.copy() for k, v in row.items()}
                if ep.gridded:
                    _add_on_grids(prev, row)
                else:
                    for kind, arr in list(row.items()):
                        if kind not in prev:
                            continue
                        if kind.endswith("stats"):
                            row[kind] = combine_stats(np.vstack([prev[kind], arr]))
                        else:
                            row[kind] = prev[kind] + arr
                for kind, arr in row.items():
                    arrays[kind][i] = arr
            self._last_epoch[rid, phase] = row
        for kind, arr in arrays.items():
            self.writer.put_lanes(rids, phase, kind, epoch, 0, arr)

    def commit(self) -> None:
        self.writer.commit()

    def close(self) -> None:
        self.settle()
        self.writer.close()

    @property
    def conn(self) -> Any:
        return self.writer.conn


def _combine_stats_lanes(stats: np.ndarray) -> np.ndarray:
    """:func:`~twinpeaks.format.combine_stats` of every lane of ``[lanes, n, 7]`` (the same sums, in the same order)."""
    out = np.tile(empty_stats(1), (len(stats), 1))
    if stats.shape[1]:
        out[:, ADDITIVE] = stats[:, :, ADDITIVE].sum(axis=1)
        out[:, MIN] = stats[:, :, MIN].min(axis=1)
        out[:, MAX] = stats[:, :, MAX].max(axis=1)
    return out


def _combine_lanes(counts: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int] | None]]:
    """:func:`twinpeaks.grids.combine` of every lane (``[lanes, n, B + 3]`` on grids ``[lanes, n, 2]``): a plain sum
    for the lanes whose columns with finite values share one grid (the common case), ``combine`` for the others."""
    out = counts.sum(axis=1)
    gs: list[tuple[int, int] | None] = [None] * len(counts)
    if not counts.shape[1]:
        return out, gs
    live: np.ndarray = np.asarray(counts[..., 1:-2].any(axis=-1))  # [lanes, n]
    has = live.any(axis=1)
    first = live.argmax(axis=1)
    ref = grid[np.arange(len(grid)), first]  # [lanes, 2]: the grid of the first column with finite values
    same = ((grid == ref[:, None, :]).all(axis=-1) | ~live).all(axis=1)
    for i in np.flatnonzero(has & same):
        gs[i] = (int(ref[i, 0]), int(ref[i, 1]))
    for i in np.flatnonzero(has & ~same):
        out[i], gs[i] = grids.combine(counts[i], grid[i])
    return out, gs


def _sum_onto(counts: np.ndarray, grid: np.ndarray | None, onto: tuple[int, int] | None) -> np.ndarray:
    """Per-class or truth columns of one record summed onto its summary's grid (as ``ColumnStack`` sums a lane)."""
    if grid is None or not len(counts):
        return counts.sum(axis=0)
    if onto is None:
        return grids.combine(counts, grid)[0]
    return grids.sum_onto(counts, grid, onto)


def _add_on_grids(prev: dict[str, np.ndarray], arrays: dict[str, np.ndarray]) -> None:
    """Automatic ranges: add an epoch's new summaries to its written ones, on their common grid (exact), in place."""
    for prefix, kinds in (("", ("counts", "class_counts", "truth_counts")), ("lq_", ("lq_counts", "class_lq",
                                                                                   "truth_lq"))):
        gs: list[tuple[int, int] | None] = []
        for d in (prev, arrays):
            stored = d[prefix + "grid"]
            gs.append((int(stored[0]), int(stored[1])) if d[kinds[0]][1:-2].any() else None)
        row, common = grids.combine([prev[kinds[0]], arrays[kinds[0]]], gs)
        arrays[kinds[0]] = row
        arrays[prefix + "grid"] = np.array(common if common is not None else (0, 0), np.int64)
        for kind in kinds[1:]:
            if kind not in arrays:
                continue
            parts = [(arrays[kind], gs[1])] + ([(prev[kind], gs[0])] if kind in prev else [])
            total: np.ndarray = np.sum([p for p, _ in parts], axis=0)
            total[..., 1:-2] = 0
            for part, pg in parts:
                if pg is not None and common is not None:
                    total[..., 1:-2] += grids.regrid(part[..., 1:-2], pg, common)
            arrays[kind] = total
    for kind in ("stats", "lq_stats"):
        arrays[kind] = combine_stats(np.vstack([prev[kind], arrays[kind]]))
    arrays["summary"] = prev["summary"] + arrays["summary"]
