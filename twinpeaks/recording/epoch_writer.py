"""The epoch writer: host column stores, the flush of a window's rows and the epoch summaries.

Design constraints: memory stays bounded (per-step columns merge into even buckets past
``max_columns``, see :mod:`twinpeaks.columns`); every commit leaves a readable
file; the run's step columns live in the file (read back only to merge them past
``max_columns``), the open epoch's in a small store; the writer keeps what it needs to
add a final evaluation pass into the last epoch itself. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np

from .. import grids
from ..columns import ColumnStore
from ..format import combine_stats, n_slots
from ..runfile import RunWriter


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
#: The writer commits (mid-flush) once this many bytes are queued: a rewrite of every layer's columns is
#: committed layer by layer, not held in memory whole (each commit leaves every layer's columns whole)
COMMIT_BYTES = 8 << 20
_COLUMN_KINDS = ("col_steps", "col_counts", "col_stats", "col_grid")


class FileColumns:
    """The run's step columns of one record in one phase: in the run file, not in memory.

    They follow :class:`~twinpeaks.columns.ColumnStore` exactly (aligned buckets, merged past ``cap``);
    only its bucket state and the steps of its columns stay here. New rows are written as new columns;
    when they would pass ``cap``, the columns are read back from the file (the writer's view, with what
    it has not committed yet: :meth:`~twinpeaks.runfile.RunWriter.read_columns`), merged and rewritten.
    """

    def __init__(self, cap: int, shape: tuple[int, ...], gridded: bool):
        self.cap, self.shape, self.gridded = cap, shape, gridded
        self.width = 1
        self.origin: int | None = None
        self.steps = np.zeros((0, 2), np.int64)

    def __len__(self) -> int:
        return len(self.steps)

    def append(self, w: RunWriter, rid: int, phase: str, start: int, counts: np.ndarray, stats: np.ndarray,
               grid: np.ndarray | None) -> None:
        """Append consecutive rows from step ``start`` and queue their columns in ``w`` (see ``ColumnStore``)."""
        n = len(counts)
        if n == 0:
            return
        origin = start if self.origin is None else self.origin
        new = ColumnStore.restore(self.cap + n, self.shape, self.gridded, self.width, origin)  # never merges
        new.append(start, counts, stats, grid)
        first = len(self.steps)
        if first + len(new) <= self.cap:  # new columns: one more segment (part = its first column)
            columns = [new.steps, new.counts, new.stats, new.grid]
            self.steps = np.concatenate([self.steps, new.steps])
        else:  # past the cap: merge every column (read back from the file), rewrite them all
            got = w.read_columns(rid, phase, _COLUMN_KINDS)
            if first and len(got.get("col_steps", ())) != first:
                raise RuntimeError(f"run file lost the step columns of layer {rid} in {phase!r}")
            store = ColumnStore.restore(self.cap, self.shape, self.gridded, self.width, origin, (
                self.steps, got["col_counts"], got["col_stats"], got.get("col_grid")) if first else None)
            store.append(start, counts, stats, grid)
            w.drop_columns(rid, phase)
            columns = [store.steps, store.counts, store.stats, store.grid]
            self.steps, self.width, first = store.steps.copy(), store.width, 0
        for kind, arr in zip(_COLUMN_KINDS, columns):
            if arr is not None:
                w.put_array(rid, phase, kind, -1, first, arr)
        self.origin = origin


class _HostColumns:
    """Stores of one record in one phase: the run's columns (in the file) and the open epoch's (in memory)."""

    def __init__(self, max_columns: int, slots: int, extra: dict[str, tuple[int, ...]], gridded: bool):
        self.gridded = gridded
        self.store = FileColumns(max_columns, (slots,), gridded)
        self.epoch = ColumnStore(EPOCH_COLUMNS, (slots,), gridded)
        self.epoch_extra = {k: ColumnStore(EPOCH_COLUMNS, (*shape, slots), gridded) for k, shape in extra.items()}


class EpochWriter:
    """Writes a recorder's columns, layers and epochs through one :class:`~twinpeaks.runfile.RunWriter`.

    Not thread-safe: one thread at a time (the recorder's writer thread, see
    :mod:`twinpeaks.recording.writer_thread`) calls it.
    """

    def __init__(self, writer: RunWriter, bins: int, max_columns: int):
        self.writer = writer
        self.bins = bins
        self.max_columns = max_columns
        self.hosts: dict[tuple[int, str], _HostColumns] = {}
        self._last_epoch: dict[tuple[int, str], dict[str, np.ndarray]] = {}  # summaries of the last epoch written
        self._last_steps: dict[str, list[int]] = {}

    def columns(self, rid: int, phase: str) -> _HostColumns | None:
        return self.hosts.get((rid, phase))

    def add_window(self, rid: int, phase: str, start: int, counts: np.ndarray, stats: np.ndarray,
                   extra: dict[str, np.ndarray], grid: np.ndarray | None = None) -> None:
        """Append a window's rows (first step ``start``; ``grid``: their grids, automatic ranges) to the stores and
        write the new columns."""
        host = self.hosts.get((rid, phase))
        if host is None:
            host = self.hosts[rid, phase] = _HostColumns(
                self.max_columns, n_slots(self.bins), {k: v.shape[1:-1] for k, v in extra.items()}, grid is not None)
        host.store.append(self.writer, rid, phase, start, counts, stats, grid)
        if self.writer.queued_bytes > COMMIT_BYTES and self.writer.failed is None:
            self.writer.commit()
        host.epoch.append(start, counts, stats, grid)
        for k, arr in extra.items():
            host.epoch_extra[k].append(start, arr, stats, grid)

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
        rids = list(rids)
        if not merge:
            self._last_epoch = {}
        for phase, (first, end) in phases.items():
            lq_first = end - max(1, math.ceil((end - first) / 4))
            steps[phase] = [first, end, lq_first]
            for rid in rids:
                host = self.hosts.get((rid, phase))
                if host is None or not len(host.epoch):
                    continue
                self._write_summary(rid, phase, epoch, host, lq_first, merge)
                for store in (host.epoch, *host.epoch_extra.values()):
                    store.clear()
        if merge:
            old = self._last_steps
            # a phase already in that epoch (valid, then another evaluate()) keeps its first step
            steps = {**{p: list(v) for p, v in old.items()},
                     **{p: [old[p][0], *v[1:]] if p in old else v for p, v in steps.items()}}
        self.writer.put_epoch(epoch, steps)
        self._last_steps = steps

    def _write_summary(self, rid: int, phase: str, epoch: int, host: _HostColumns, lq_first: int, add: bool) -> None:
        counts, stats, n, grid = host.epoch.total()
        lq_counts, lq_stats, lq_n, lq_grid = host.epoch.total(lq_first)
        arrays = {"counts": counts, "stats": stats, "lq_counts": lq_counts, "lq_stats": lq_stats,
                  "summary": np.array([n, lq_n], np.int64)}
        for k, store in host.epoch_extra.items():  # per-class and truth rows on their summary's grid
            name = "class" if k == "classes" else k
            arrays[f"{name}_counts"] = store.total(None, onto=grid)[0]
            arrays[f"{name}_lq"] = store.total(lq_first, onto=lq_grid)[0]
        if host.gridded:
            arrays["grid"] = np.array(grid if grid is not None else (0, 0), np.int64)
            arrays["lq_grid"] = np.array(lq_grid if lq_grid is not None else (0, 0), np.int64)
        prev = self._last_epoch.get((rid, phase)) if add else None
        if prev is not None and host.gridded:
            _add_on_grids(prev, arrays)
        elif prev is not None:
            for kind, arr in list(arrays.items()):
                if kind not in prev:
                    continue
                if kind.endswith("stats"):
                    arrays[kind] = combine_stats(np.vstack([prev[kind], arr]))
                else:
                    arrays[kind] = prev[kind] + arr
        self._last_epoch[rid, phase] = arrays
        for kind, arr in arrays.items():
            self.writer.put_array(rid, phase, kind, epoch, 0, arr)

    def commit(self) -> None:
        self.writer.commit()

    def close(self) -> None:
        self.writer.close()

    @property
    def conn(self) -> Any:
        return self.writer.conn


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
