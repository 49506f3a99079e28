"""The run file: one SQLite database per run, data only.

Design constraints:

* Crash-safe. WAL journal, one transaction per flush: a ``kill -9`` at any
  moment leaves a file that opens and holds every committed flush intact.
* Readable while written. Readers open the file read-only and see the last
  committed flush; they never block the writer.
* Data only. Arrays are raw little-endian bytes with their dtype and shape in
  the same row; nothing is pickled, so opening a run never runs code.
* Versioned. ``meta`` holds the schema version and the twinpeaks version that
  wrote the file; a reader refuses a schema it does not know, with a message.
* Compact. Integer arrays are stored in the narrowest of uint8/16/32 that holds
  them when they are non-negative (schema 2; schema 1 stored int64), and read
  back as int64: most per-step counts fit in 16 bits, a quarter of the bytes.

Tables (schema 3; schema 1 and 2 files read the same, with one float32-edged range per layer and no grids):

``meta(key, value)``
    JSON values: ``schema``, ``twinpeaks_version``, ``created``, ``options``,
    ``classes``, ``model``, ...
``layers(layer, module_index, sub_index, name, type, out_shape, bins, columns)``
    One row per record; ``out_shape`` JSON or NULL (never called);
    ``columns`` is the number of per-class columns (0 without per-class data);
    rows are listed by ``(module_index, sub_index)``: the module's position in the model.
``epochs(epoch, closed_at, steps)``
    ``steps`` is JSON ``{phase: [first_step, end_step, last_quarter_first_step]}``.
``arrays(layer, phase, kind, epoch, part, dtype, shape, data)``
    Every array. ``kind`` is ``edges`` (float64 ``[B+1]``, phase ``""``: numpy's
    edges of a layer with a fixed range; a layer without it has automatic grids,
    see docs/grids.md), step columns (``epoch = -1``, ``part`` = first column
    index of a segment): ``col_steps`` int64 ``[n, 2]``, ``col_counts`` int64
    ``[n, B+3]``, ``col_stats`` float64 ``[n, 7]``, ``col_grid`` int64 ``[n, 2]``
    (each column's grid ``(e, o)``; auto layers only; ``0, 0`` for a column with
    no finite value); epoch summaries (``part = 0``): ``counts``/``stats``/``grid``
    for the whole epoch, ``lq_counts``/``lq_stats``/``lq_grid`` for its last
    quarter, ``class_counts``/``class_lq`` ``[C, B+3]`` and ``truth_counts``/``truth_lq``
    ``[2, B+3]`` (yes, no), counted on their summary's grid.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RunFileError, warn
from .format import _NARROW, decode, encode

log = logging.getLogger("twinpeaks")

SCHEMA_VERSION = 3
#: Schemas this version reads.
READABLE_SCHEMAS = (1, 2, 3)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS layers (
    layer INTEGER PRIMARY KEY,
    module_index INTEGER NOT NULL,
    sub_index INTEGER NOT NULL,
    name TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    out_shape TEXT,
    bins INTEGER NOT NULL,
    columns INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS epochs (
    epoch INTEGER PRIMARY KEY,
    closed_at REAL NOT NULL,
    steps TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS arrays (
    layer INTEGER NOT NULL,
    phase TEXT NOT NULL,
    kind TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    part INTEGER NOT NULL,
    dtype TEXT NOT NULL,
    shape TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (layer, phase, kind, epoch, part)
);
"""


_EXISTS = ("path {path!r} already exists; twinpeaks never overwrites a run unless told: "
           "pass overwrite=True to replace it, or a folder to get a new run name each time")


class RunWriter:
    """Owns the write connection of a run file (or of an in-memory run).

    Writes are queued and applied in one transaction at :meth:`commit`. A
    commit that fails (``database or disk is full``, ``disk I/O error``, a file
    size limit) is rolled back, so the file keeps exactly what it held; the
    queue is kept (keyed by row identity, so it stays as small as the data it
    stands for: a later array of the same row replaces an earlier one, dropped
    columns leave it) and written by the next commit that succeeds. ``warn`` is
    called once, at the first failure; training is never interrupted.
    """

    def __init__(self, path: str | os.PathLike | None, meta: dict[str, Any],
                 warn: Callable[[str], None] | None = None, *, overwrite: bool = False, claimed: bool = False):
        """Create the run file at ``path`` (None: in memory).

        A new ``path`` is created atomically (:func:`create_exclusive`): of two
        writers started together, one gets it and the other ``FileExistsError``.
        An existing ``path`` is refused unless ``overwrite``, which replaces it at
        once: the new, empty run is made beside it and renamed over it, so ``path``
        always holds a whole run file, the old or the new; the old run's WAL and
        shared-memory files go first, so nothing of the old run is replayed into
        the new one. Never overwrite a run that another process still writes.
        ``claimed``: the caller just created ``path`` empty and exclusively
        (:func:`twinpeaks.rundir.claim`) for this run.
        """
        self.path = None if path is None else Path(path)
        self._warn = warn or _warn
        self._meta: dict[str, str] = {}
        self._layers: dict[int, tuple] = {}
        self._layer_drops: set[int] = set()
        self._drops: set[tuple[int, str]] = set()
        # The queue of arrays holds no new object the garbage collector tracks per array (thousands per window of a
        # large model: each would count towards its runs, and be promoted by them; its full runs pause the process
        # 150 ms on a 500-layer model): keys are strings (_array_key), data bytes, (dtype, shape) pairs shared
        # (_formats), the parts queued per layer, phase and kind a string.
        self._arrays: dict[str, bytes] = {}  # _array_key(layer, phase, kind, epoch, part) -> data
        self._format_of: dict[str, tuple[str, str]] = {}  # the same key -> (dtype, shape)
        self._formats: dict[tuple[str, str], tuple[str, str]] = {}  # one pair object per distinct pair
        self._queued_columns: dict[str, dict[str, str]] = {}  # _array_key(layer, phase): kind -> "part,part,..."
        self.queued_bytes = 0  #: bytes of the arrays queued for the next commit
        self._epochs: dict[int, tuple] = {}
        self.failed: str | None = None  #: why the last commit failed (None: it succeeded)
        self._warned = False
        meta = {"schema": SCHEMA_VERSION, "created": time.time(), **meta}
        if self.path is None:
            self.conn = sqlite3.connect(":memory:", check_same_thread=False)
        else:
            if claimed:
                if self.path.stat().st_size:
                    raise FileExistsError(f"path {str(self.path)!r} was claimed empty for a new run but holds data")
                _drop_stale_journals(self.path)
            elif os.path.lexists(self.path):
                if not overwrite:
                    raise FileExistsError(_EXISTS.format(path=str(self.path)))
                _replace_with_empty_run(self.path, meta)
            else:
                create_exclusive(self.path)
            self.conn = sqlite3.connect(self.path, check_same_thread=False)
            self.conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # an empty file: pages freed can be given back
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
        _initialise(self.conn, meta)

    def set_meta(self, key: str, value: Any) -> None:
        self._meta[key] = json.dumps(value)

    def put_layer(self, layer: int, module_index: int, sub_index: int, name: str, type_: str,
                  out_shape: list[int] | None, bins: int, columns: int) -> None:
        self._layer_drops.discard(layer)
        self._layers[layer] = (layer, module_index, sub_index, name, type_,
                               None if out_shape is None else json.dumps(out_shape), bins, columns)

    def drop_layer(self, layer: int) -> None:
        """Remove a layer row that turned out to hold nothing (its module's outputs went to sub-records)."""
        self._layers.pop(layer, None)
        self._layer_drops.add(layer)

    def put_array(self, layer: int, phase: str, kind: str, epoch: int, part: int, arr: np.ndarray) -> None:
        """Queue an array for the next :meth:`commit`."""
        self._put(layer, phase, kind, epoch, part, *encode(arr))

    def put_lanes(self, layers: list[int], phase: str, kind: str, epoch: int, part: int, arr: np.ndarray,
                  shared: bool = False) -> None:
        """Queue ``arr[i]`` as the array of ``layers[i]`` (``shared``: ``arr`` itself for every layer), encoded
        as :meth:`put_array` encodes each (:func:`encode_lanes`: a few numpy operations for all layers)."""
        if shared:
            enc = encode(arr)
            for layer in layers:
                self._put(layer, phase, kind, epoch, part, *enc)
        else:
            for layer, enc in zip(layers, encode_lanes(arr)):
                self._put(layer, phase, kind, epoch, part, *enc)

    def _put(self, layer: int, phase: str, kind: str, epoch: int, part: int, dtype: str, shape: str,
             data: bytes) -> None:
        key = _array_key(layer, phase, kind, epoch, part)
        old = self._arrays.get(key)
        self.queued_bytes += len(data) - (len(old) if old is not None else 0)
        self._arrays[key] = data
        fmt = (dtype, shape)
        if len(self._formats) > 4096:  # bounded: shapes come from window and column counts
            self._formats = {}
        self._format_of[key] = self._formats.setdefault(fmt, fmt)
        if epoch == -1:
            pair = _array_key(layer, phase)
            kinds = self._queued_columns.get(pair)
            if kinds is None:
                kinds = self._queued_columns[pair] = {}
            parts = kinds.get(kind)
            if parts is None:
                kinds[kind] = str(part)
            elif str(part) not in parts.split(","):
                kinds[kind] = f"{parts},{part}"

    def _queued(self, layer: int, phase: str, kinds: tuple[str, ...]) -> Iterator[tuple[str, int, np.ndarray]]:
        """``(kind, part, array)`` of the step columns of ``kinds`` queued for a layer in a phase."""
        queued = self._queued_columns.get(_array_key(layer, phase), {})
        for kind, part, key in _column_keys(layer, phase, queued):
            if kind in kinds:
                yield kind, part, decode(*self._format_of[key], self._arrays[key])

    def drop_columns(self, layer: int, phase: str) -> None:
        """Delete the step columns of a layer in a phase (at the next commit, before the arrays queued after)."""
        self._drops.add((layer, phase))
        for _, _, key in _column_keys(layer, phase, self._queued_columns.pop(_array_key(layer, phase), {})):
            self.queued_bytes -= len(self._arrays.pop(key))
            del self._format_of[key]

    def read_columns(self, layer: int, phase: str, kinds: tuple[str, ...]) -> dict[str, np.ndarray]:
        """The step columns of a layer in a phase as written so far: the file's, with what is queued on top.

        ``{kind: the segments of that kind joined in part order}`` (kinds with no segment are left out). The
        writer's own view: committed rows, less those a queued :meth:`drop_columns` deletes, with queued
        arrays replacing or adding segments (a commit that failed keeps them queued). The writer's thread only.
        """
        parts: dict[str, dict[int, np.ndarray]] = {k: {} for k in kinds}
        if (layer, phase) not in self._drops:
            marks = ", ".join("?" * len(kinds))
            for kind, part, dtype, shape, data in self.conn.execute(
                    f"SELECT kind, part, dtype, shape, data FROM arrays WHERE layer=? AND phase=? AND epoch=-1 "
                    f"AND kind IN ({marks})", (layer, phase, *kinds)):
                parts[kind][part] = decode(dtype, shape, data)
        for kind, part, arr in self._queued(layer, phase, kinds):
            parts[kind][part] = arr
        return {k: np.concatenate([got[p] for p in sorted(got)]) for k, got in parts.items() if got}

    def read_columns_of(self, layers: list[int], phase: str, kinds: tuple[str, ...]) -> list[dict[str, np.ndarray]]:
        """:meth:`read_columns` of several layers in one phase, in one query."""
        parts: dict[int, dict[str, dict[int, np.ndarray]]] = {
            layer: {k: {} for k in kinds} for layer in layers if (layer, phase) not in self._drops}
        marks = ", ".join("?" * len(kinds))
        if parts:
            for layer, kind, part, dtype, shape, data in self.conn.execute(
                    f"SELECT layer, kind, part, dtype, shape, data FROM arrays WHERE phase=? AND epoch=-1 "
                    f"AND kind IN ({marks}) AND layer BETWEEN ? AND ?", (phase, *kinds, min(parts), max(parts))):
                got = parts.get(layer)
                if got is not None:
                    got[kind][part] = decode(dtype, shape, data)
        out = []
        for layer in layers:
            have = parts.get(layer) or {k: {} for k in kinds}
            for kind, part, arr in self._queued(layer, phase, kinds):
                have[kind][part] = arr
            out.append({k: np.concatenate([got[p] for p in sorted(got)]) for k, got in have.items() if got})
        return out

    def _array_rows(self) -> Iterator[tuple]:
        """The queued arrays as rows of the ``arrays`` table, made one at a time (for ``executemany``)."""
        for key, data in self._arrays.items():
            yield (*_split_key(key), *self._format_of[key], data)

    def put_epoch(self, epoch: int, steps: dict[str, list[int]]) -> None:
        self._epochs[epoch] = (epoch, time.time(), json.dumps(steps))

    def commit(self) -> bool:
        """Write everything queued in one transaction; False (and the queue kept) when the file cannot take it."""
        c = self.conn
        try:
            if self._meta:
                c.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(self._meta.items()))
            if self._layer_drops:
                c.executemany("DELETE FROM layers WHERE layer=?", [(i,) for i in self._layer_drops])
            if self._layers:  # a layer's own row only: never replaces another layer's (names are UNIQUE)
                c.executemany(
                    "INSERT INTO layers VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(layer) DO UPDATE SET "
                    "module_index=excluded.module_index, sub_index=excluded.sub_index, name=excluded.name, "
                    "type=excluded.type, out_shape=excluded.out_shape, bins=excluded.bins, columns=excluded.columns",
                    list(self._layers.values()))
            if self._drops:
                c.executemany("DELETE FROM arrays WHERE layer=? AND phase=? AND epoch=-1", list(self._drops))
            if self._arrays:
                c.executemany("INSERT OR REPLACE INTO arrays VALUES (?, ?, ?, ?, ?, ?, ?, ?)", self._array_rows())
            if self._epochs:
                c.executemany("INSERT OR REPLACE INTO epochs VALUES (?, ?, ?)", list(self._epochs.values()))
            c.commit()
        except (sqlite3.Error, OSError) as exc:
            try:
                c.rollback()
                if self.path is not None:  # fold the WAL into the file and truncate it: frees what it can
                    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            if not self._warned:
                self._warned = True
                self._warn(f"could not write to the run file {self.where!r} ({exc}); training goes on, the "
                           "file keeps what it held, and what was recorded since stays in memory and is "
                           "written when the file can take it again")
            elif self.failed is None:
                log.warning("could not write to the run file %r again (%s)", self.where, exc)
            self.failed = str(exc)
            return False
        self._meta, self._layers, self._drops, self._arrays, self._epochs = {}, {}, set(), {}, {}
        self._format_of, self._queued_columns = {}, {}
        self.queued_bytes = 0
        self._layer_drops = set()
        if self.failed is not None:
            log.warning("the run file %r can be written again: recording resumed", self.where)
            self.failed = None
        return True

    @property
    def where(self) -> str:
        return str(self.path) if self.path is not None else "<memory>"

    def close(self) -> None:
        """Commit, fold the WAL into the main file (so the .tp file alone holds everything) and close.

        The closed file goes back to a rollback journal, so that readers (which then
        open it read-only, see :func:`connect_reader`) never need a ``-shm`` beside
        it; when a reader still holds the file the mode stays WAL, which reads the same.
        Never raises: a file that cannot be written keeps what it held.
        """
        if not self.commit():
            log.warning("run file %r closed without its last writes (%s): it holds every epoch it lists",
                        self.where, self.failed)
        if self.path is not None:
            try:
                self.conn.executescript("PRAGMA incremental_vacuum;")  # give back the pages merges freed (to the end)
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self.conn.execute("PRAGMA journal_mode=DELETE").fetchall()
            except sqlite3.Error:  # a reader holds the file (it stays a WAL file), or the disk is full
                pass
        try:
            self.conn.close()
        except sqlite3.Error:
            pass


def _array_key(layer: int, phase: str, kind: str = "", epoch: int = 0, part: int = 0) -> str:
    """A queued array's key, a string (no container object): any ``phase`` and ``kind`` (the phase's length is
    in the key, so that no character of it can be taken for a separator); :func:`_split_key` reads it back.

    Example:
        >>> _split_key(_array_key(3, "va:l", "col_steps", -1, 7))
        (3, 'va:l', 'col_steps', -1, 7)
    """
    return f"{layer}:{epoch}:{part}:{len(phase)}:{phase}{kind}"


def _column_keys(layer: int, phase: str, queued: dict[str, str]) -> Iterator[tuple[str, int, str]]:
    """``(kind, part, key)`` of a layer's step columns queued in a phase (``queued``: kind -> "part,part,...")."""
    for kind, parts in queued.items():
        for part in map(int, parts.split(",")):
            yield kind, part, _array_key(layer, phase, kind, -1, part)


def _split_key(key: str) -> tuple[int, str, str, int, int]:
    layer, epoch, part, n, rest = key.split(":", 4)
    return int(layer), rest[:int(n)], rest[int(n):], int(epoch), int(part)


def encode_lanes(arr: np.ndarray) -> list[tuple[str, str, bytes]]:
    """:func:`~twinpeaks.format.encode` of every ``arr[i]``, the same bytes, with one reduction for all of them.

    Example:
        >>> [e[0] for e in encode_lanes(np.array([[1, 2], [1, 300], [-1, 0]]))]
        ['|u1', '<u2', '<i8']
    """
    arr = np.ascontiguousarray(arr)
    lanes = len(arr)
    shape = "[" + ", ".join(map(str, arr.shape[1:])) + "]"
    choice = np.full(lanes, -1)  # the narrow type of each lane (index into _NARROW), -1: as it is
    if arr.dtype.kind in "iu" and arr[0].size:
        flat = arr.reshape(lanes, -1)
        lo, hi = flat.min(axis=1), flat.max(axis=1)
        for j in range(len(_NARROW) - 1, -1, -1):
            choice[(lo >= 0) & (hi < _NARROW[j][1])] = j
    out: list[tuple[str, str, bytes]] = [("", "", b"")] * lanes
    for j in np.unique(choice):
        idx = np.flatnonzero(choice == j)
        part = arr if len(idx) == lanes else arr[idx]
        if j >= 0 and arr.dtype.itemsize > np.dtype(_NARROW[j][0]).itemsize:
            part = part.astype(_NARROW[j][0])
        le = part.astype(part.dtype.newbyteorder("<"), copy=False)
        dt = le.dtype.str
        for m, i in enumerate(idx):
            out[i] = (dt, shape, le[m].tobytes())
    return out


def _warn(msg: str) -> None:
    warn(f"twinpeaks: {msg}")


def create_exclusive(path: Path) -> None:
    """Create ``path`` empty, atomically: exactly one of many writers started together gets it.

    Raises :class:`FileExistsError` when the path exists (twinpeaks never
    overwrites or joins a run) and :class:`RunFileError` naming the path when its
    folder cannot hold a new file. Stale ``-wal``/``-shm``/``-journal`` files of an
    earlier file at that path are removed once the path is ours: SQLite would
    otherwise replay an old run's journal into the new one.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file where a folder should be, a read-only place, ...
        raise RunFileError(
            f"cannot create the run file {str(path)!r}: its folder cannot be made ({exc.strerror or exc}); "
            "pick a path in a folder you can write to"
        ) from None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise FileExistsError(_EXISTS.format(path=str(path))) from None
    except OSError as exc:
        raise RunFileError(
            f"cannot create the run file {str(path)!r}: {exc.strerror or exc}; "
            "pick a path in a folder you can write to"
        ) from None
    os.close(fd)
    _drop_stale_journals(path)


def _drop_stale_journals(path: Path) -> None:
    """Remove ``-wal``/``-shm``/``-journal`` files of an earlier file at ``path`` (now ours, empty)."""
    for suffix in ("-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


#: The most bins a run may declare (the recorder's own maximum, see ``ActivationsHistogram``).
MAX_BINS = 10_000
#: Steps, step counts and epoch times must be exact in float64 (charts and JSON use floats).
MAX_STEP = 2**53
#: A statement of a reader that runs longer than this is aborted (no valid run file needs it).
READ_TIMEOUT_S = 10.0
#: dtypes :func:`encode` writes (schema 1: ``<i8`` and ``<f8`` only).
DTYPES = {"|u1": np.uint8, "<u2": np.uint16, "<u4": np.uint32, "<i8": np.int64, "<f8": np.float64}
#: Columns a reader needs in each table.
TABLE_COLUMNS = {
    "meta": ("key", "value"),
    "layers": ("layer", "module_index", "sub_index", "name", "type", "out_shape", "bins", "columns"),
    "epochs": ("epoch", "closed_at", "steps"),
    "arrays": ("layer", "phase", "kind", "epoch", "part", "dtype", "shape", "data"),
}
#: Every array kind: ``(family, shape)``. Families: ``count`` (integers >= 0), ``int`` (any
#: integers), ``float``. In a shape, ``n`` is any length (the columns of a segment), ``S`` the
#: slots of a row (bins + 3), ``E`` the edges (bins + 1), ``C`` the layer's per-class columns;
#: numbers are fixed lengths. A new kind is one line here (e.g. ``"grid": ("int", (2,))``).
ARRAY_KINDS: dict[str, tuple[str, tuple[int | str, ...]]] = {
    "edges": ("float", ("E",)),
    "col_steps": ("count", ("n", 2)),
    "col_counts": ("count", ("n", "S")),
    "col_stats": ("float", ("n", 7)),
    "counts": ("count", ("S",)),
    "lq_counts": ("count", ("S",)),
    "stats": ("float", (7,)),
    "lq_stats": ("float", (7,)),
    "summary": ("count", (2,)),
    "class_counts": ("count", ("C", "S")),
    "class_lq": ("count", ("C", "S")),
    "truth_counts": ("count", (2, "S")),
    "truth_lq": ("count", (2, "S")),
    "col_grid": ("int", ("n", 2)),
    "grid": ("int", (2,)),
    "lq_grid": ("int", (2,)),
}
#: Kinds holding aligned binary grids ``(e, o)`` (docs/grids.md): ``e`` a float64 exponent, ``|o|`` bounded.
GRID_KINDS = ("col_grid", "grid", "lq_grid")
_GRID_E = (-1100, 1100)
_GRID_O = 1 << 50
_MAX_JSON_DEPTH = 32


class RunConnection(sqlite3.Connection):
    """A read-only connection to a run file that knows the file's size (the bound of every size read)."""

    path: Path | None = None
    statement_started = 0.0

    def bytes_held(self) -> int:
        """Bytes of the file and its WAL: no array, string or count read from it may be larger."""
        if self.path is None:
            return 1 << 62
        total = 0
        for p in (self.path, Path(f"{self.path}-wal")):
            try:
                total += p.stat().st_size
            except OSError:
                pass
        return total

    def where(self) -> str:
        return str(self.path) if self.path is not None else "<memory>"


def one_line(text: object) -> str:
    """``text`` on one line (SQLite's messages may quote a schema's SQL, newlines included)."""
    return " ".join(str(text).split())


def damaged(conn: sqlite3.Connection | str, detail: str) -> RunFileError:
    """The one error of a run file whose content does not follow the schema (one line)."""
    where = conn if isinstance(conn, str) else (conn.where() if isinstance(conn, RunConnection) else "<memory>")
    return RunFileError(f"run file {where!r} is damaged or not written by twinpeaks: {one_line(detail)}")


def _guard(conn: RunConnection) -> None:
    """Abort any statement of ``conn`` that runs longer than :data:`READ_TIMEOUT_S`."""
    def started(_sql: str) -> None:
        conn.statement_started = time.monotonic()

    conn.set_trace_callback(started)
    conn.set_progress_handler(lambda: int(time.monotonic() - conn.statement_started > READ_TIMEOUT_S), 20_000)


def _initialise(conn: sqlite3.Connection, meta: dict[str, Any]) -> None:
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # no effect on a file that holds tables already
    conn.executescript(_SCHEMA)
    conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
    conn.commit()


def _replace_with_empty_run(path: Path, meta: dict[str, Any]) -> None:
    """Put an empty run file at ``path`` in one rename, dropping the old run's WAL first (see RunWriter)."""
    if path.is_symlink() or not path.is_file():
        raise FileExistsError(f"path {str(path)!r} exists and is not a regular file: overwrite=True replaces run files only")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")  # hidden: listings of runs skip it
    for p in (tmp, Path(f"{tmp}-journal")):
        p.unlink(missing_ok=True)
    try:
        conn = sqlite3.connect(tmp)
        try:
            _initialise(conn, meta)
        finally:
            conn.close()
        for suffix in ("-wal", "-shm", "-journal"):  # the old run's: never replayed into the new file
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def connect_reader(path: str | os.PathLike) -> sqlite3.Connection:
    """Open a run file read-only, checking that it is one and that its schema is known.

    A closed run (a rollback-journal file, as a writer leaves it at close, or a
    WAL file with no ``-wal`` beside it) is opened ``immutable``: nothing is
    created beside it (no ``-shm``/``-wal``), so closed runs open on read-only
    mounts and serving many runs leaves no litter. A run being written (a
    ``-wal`` beside it) is opened through the WAL and sees every committed flush.
    """
    p = Path(path)
    if not p.exists():
        raise RunFileError(f"no run file at {str(p)!r}")
    if p.is_dir():
        raise RunFileError(f"{str(p)!r} is a directory, not a run file")
    with open(p, "rb") as fh:
        header = fh.read(100)
    if header[:16] != b"SQLite format 3\x00":
        raise RunFileError(f"{str(p)!r} is not a twinpeaks run file")
    wal = Path(f"{p}-wal")
    try:
        wal_bytes: int | None = wal.stat().st_size
    except OSError:
        wal_bytes = None
    # closed: a rollback-journal file (a writer switches back at close), or a WAL file with no WAL beside it
    closed = (len(header) > 18 and header[18] == 1) or wal_bytes is None
    conn: RunConnection | None = None
    try:
        try:
            conn = _open_reader(p, immutable=closed)
        except sqlite3.OperationalError:
            if wal_bytes != 0:
                raise
            conn = _open_reader(p, immutable=True)  # an empty WAL left beside a closed run, in a read-only folder
    except UnicodeDecodeError:
        raise RunFileError(f"{str(p)!r} is not a readable twinpeaks run file (text that is not UTF-8)") from None
    except sqlite3.DatabaseError as exc:
        if conn is not None:
            conn.close()
        if wal_bytes and not os.access(p.parent, os.W_OK):
            raise RunFileError(f"{str(p)!r} has a write-ahead log beside it (a run being written, or one that "
                               "was killed) and its folder is read-only: copy the .tp file with its -wal "
                               "file to a writable folder and open it there") from None
        raise RunFileError(f"{str(p)!r} is not a readable twinpeaks run file ({one_line(exc)})") from None
    except RunFileError:
        if conn is not None:
            conn.close()
        raise
    return conn


def _open_reader(p: Path, immutable: bool) -> RunConnection:
    uri = p.resolve().as_uri() + ("?mode=ro&immutable=1" if immutable else "?mode=ro")
    conn = sqlite3.connect(uri, uri=True, check_same_thread=False, factory=RunConnection)
    try:
        conn.path = p
        _guard(conn)
        check_schema(conn, str(p))
    except BaseException:
        conn.close()
        raise
    return conn


def check_schema(conn: sqlite3.Connection, where: str) -> None:
    """Check that ``conn`` holds the run-file tables (no views, no triggers) and a schema this version reads."""
    conn.execute("PRAGMA trusted_schema=OFF")
    for typ, name, sql in conn.execute("SELECT type, name, sql FROM sqlite_master"):
        if typ not in ("table", "index"):
            raise damaged(where, f"it holds a {typ} {str(name)!r}; run files hold tables only")
        if typ == "table" and str(sql or "").lstrip().upper().startswith("CREATE VIRTUAL"):
            raise damaged(where, f"table {str(name)!r} is a virtual table; run files hold plain tables only")
    for table, needed in TABLE_COLUMNS.items():
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if not have:
            raise RunFileError(f"{where!r} is an SQLite file but not a twinpeaks run file")
        missing = [c for c in needed if c not in have]
        if missing:
            raise damaged(where, f"table {table} lacks column(s) {', '.join(missing)}")
    row = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
    if row is None:
        raise RunFileError(f"{where!r} is an SQLite file but not a twinpeaks run file")
    schema = load_json(where, row[0], 64, "meta schema")
    if isinstance(schema, bool) or not isinstance(schema, int):
        raise damaged(where, f"meta schema is {schema!r}, not a schema number")
    if schema not in READABLE_SCHEMAS:
        raise RunFileError(
            f"{where!r} has run-file schema {schema}; this twinpeaks reads schema {SCHEMA_VERSION}: "
            "upgrade twinpeaks (pip install -U twinpeaks) to open it"
        )


# -- validation of what a reader reads: every value a file holds is checked before it is used --------------
def _depth(value: Any) -> int:
    depth, level = 0, [value]
    while level:
        depth += 1
        if depth > _MAX_JSON_DEPTH:
            return depth
        nxt: list[Any] = []
        for v in level:
            if isinstance(v, dict):
                nxt.extend(v.values())
            elif isinstance(v, list):
                nxt.extend(v)
        level = nxt
    return depth


def load_json(conn: sqlite3.Connection | str, text: Any, limit: int, what: str) -> Any:
    """JSON ``text`` read from the file: a string of at most ``limit`` characters, nested at most 32 deep."""
    if not isinstance(text, str):
        raise damaged(conn, f"{what} is {type(text).__name__}, not JSON text")
    if len(text) > limit:
        raise damaged(conn, f"{what} is {len(text)} characters long, more than the file can hold")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise damaged(conn, f"{what} is not valid JSON") from None
    if _depth(value) > _MAX_JSON_DEPTH:
        raise damaged(conn, f"{what} is nested more than {_MAX_JSON_DEPTH} deep")
    return value


def check_int(conn: sqlite3.Connection | str, value: Any, what: str, lo: int = 0, hi: int = MAX_STEP) -> int:
    """An integer read from the file, in ``lo..hi``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise damaged(conn, f"{what} is {value!r}, not an integer in {lo}..{hi}")
    return int(value)


def check_str(conn: sqlite3.Connection | str, value: Any, what: str, limit: int = 1 << 16) -> str:
    """A string read from the file, at most ``limit`` characters."""
    if not isinstance(value, str):
        raise damaged(conn, f"{what} is {type(value).__name__}, not text")
    if len(value) > limit:
        raise damaged(conn, f"{what} is {len(value)} characters long, more than {limit}")
    return value


def decode_checked(conn: sqlite3.Connection, kind: str, dtype: Any, shape: Any, data: Any,
                   bins: int, columns: int) -> np.ndarray:
    """Decode an array row after checking it against :data:`ARRAY_KINDS`: dtype, shape, size and values."""
    what = f"array {kind!r}"
    if kind not in ARRAY_KINDS:
        raise damaged(conn, f"{what} is not an array kind of this schema")
    family, rule = ARRAY_KINDS[kind]
    if dtype not in DTYPES:
        raise damaged(conn, f"{what} has dtype {dtype!r}; run files hold {', '.join(DTYPES)}")
    dt = np.dtype(DTYPES[dtype])
    if (dt.kind == "f") != (family == "float"):
        raise damaged(conn, f"{what} has dtype {dtype!r}, not {'float' if family == 'float' else 'integer'}")
    if not isinstance(data, bytes):
        raise damaged(conn, f"{what} holds {type(data).__name__}, not bytes")
    dims = load_json(conn, shape, 128, f"shape of {what}")
    if not isinstance(dims, list) or len(dims) != len(rule):
        raise damaged(conn, f"{what} has shape {shape!r}; expected {len(rule)} dimensions")
    sizes: dict[int | str, int | str] = {"S": bins + 3, "E": bins + 1, "C": columns}
    for d, r in zip(dims, rule):
        check_int(conn, d, f"a dimension of {what}", 0, len(data))
        want = sizes.get(r, r)
        if want != "n" and d != want:
            raise damaged(conn, f"{what} has shape {dims}; expected {[sizes.get(x, x) for x in rule]}")
    if int(np.prod(dims, dtype=np.int64)) * dt.itemsize != len(data):
        raise damaged(conn, f"{what} holds {len(data)} bytes, not the {dims} {dtype} its row declares")
    arr = np.frombuffer(data, dtype=dt).reshape(dims)
    arr = arr.astype(np.int64) if dt.kind in "iu" else arr.astype(np.float64)
    if family == "count" and arr.size and arr.min() < 0:
        raise damaged(conn, f"{what} holds negative counts")
    if kind == "edges" and (not np.isfinite(arr).all() or (len(arr) > 1 and not (np.diff(arr) > 0).all())):
        raise damaged(conn, "bin edges are not finite and increasing")
    if kind in GRID_KINDS and arr.size:
        e, o = arr[..., 0], arr[..., 1]
        if e.min() < _GRID_E[0] or e.max() > _GRID_E[1] or np.abs(o).max() > _GRID_O:
            raise damaged(conn, f"{what} holds grids outside any float64 range")
    if kind == "col_steps" and len(arr):
        if arr.max() > MAX_STEP or not (arr[:, 0] < arr[:, 1]).all() or not (arr[1:, 0] >= arr[:-1, 1]).all():
            raise damaged(conn, "step columns are not increasing ranges of steps")
    return arr
