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
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RunFileError
from .format import encode

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


class RunWriter:
    """Owns the write connection of a run file (or of an in-memory run)."""

    def __init__(self, path: str | os.PathLike | None, meta: dict[str, Any], *, overwrite: bool = False,
                 claimed: bool = False):
        """Create the run file at ``path`` (None: in memory).

        An existing ``path`` is refused unless ``overwrite``, which replaces it at
        once: the new, empty run is made beside it and renamed over it, so ``path``
        always holds a whole run file, the old or the new; the old run's WAL and
        shared-memory files go first, so nothing of the old run is replayed into
        the new one. Never overwrite a run that another process still writes.
        ``claimed``: the caller just created ``path`` empty and exclusively
        (:func:`twinpeaks.rundir.claim`) for this run.
        """
        self.path = None if path is None else Path(path)
        self._arrays: list[tuple] = []
        meta = {"schema": SCHEMA_VERSION, "created": time.time(), **meta}
        if self.path is None:
            self.conn = sqlite3.connect(":memory:", check_same_thread=False)
        else:
            if claimed and self.path.stat().st_size:
                raise FileExistsError(f"path {str(self.path)!r} was claimed empty for a new run but holds data")
            if not claimed and os.path.lexists(self.path):
                if not overwrite:
                    raise FileExistsError(
                        f"path {str(self.path)!r} already exists; twinpeaks never overwrites a run unless told: "
                        "pass overwrite=True to replace it, or a folder to get a new run name each time"
                    )
                _replace_with_empty_run(self.path, meta)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
        _initialise(self.conn, meta)

    def set_meta(self, key: str, value: Any) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def put_layer(self, layer: int, module_index: int, sub_index: int, name: str, type_: str,
                  out_shape: list[int] | None, bins: int, columns: int) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO layers VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (layer, module_index, sub_index, name, type_,
             None if out_shape is None else json.dumps(out_shape), bins, columns),
        )

    def drop_layer(self, layer: int) -> None:
        """Remove a layer row that turned out to hold nothing (its module's outputs went to sub-records)."""
        self.conn.execute("DELETE FROM layers WHERE layer=?", (layer,))

    def put_array(self, layer: int, phase: str, kind: str, epoch: int, part: int, arr: np.ndarray) -> None:
        """Queue an array for the next :meth:`commit` (written in one ``executemany``)."""
        self._arrays.append((layer, phase, kind, epoch, part, *encode(arr)))

    def _write_arrays(self) -> None:
        if self._arrays:
            self.conn.executemany("INSERT OR REPLACE INTO arrays VALUES (?, ?, ?, ?, ?, ?, ?, ?)", self._arrays)
            self._arrays = []

    def drop_columns(self, layer: int, phase: str) -> None:
        self._write_arrays()  # queued rows go first: the order of writes is the order of calls
        self.conn.execute("DELETE FROM arrays WHERE layer=? AND phase=? AND epoch=-1", (layer, phase))

    def put_epoch(self, epoch: int, steps: dict[str, list[int]]) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO epochs VALUES (?, ?, ?)", (epoch, time.time(), json.dumps(steps))
        )

    def commit(self) -> None:
        self._write_arrays()
        self.conn.commit()

    def close(self) -> None:
        """Commit, fold the WAL into the main file (so the .tp file alone holds everything) and close."""
        self.commit()
        if self.path is not None:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.conn.close()


def _initialise(conn: sqlite3.Connection, meta: dict[str, Any]) -> None:
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
    """Open a run file read-only, checking that it is one and that its schema is known."""
    p = Path(path)
    if not p.exists():
        raise RunFileError(f"no run file at {str(p)!r}")
    if p.is_dir():
        raise RunFileError(f"{str(p)!r} is a directory, not a run file")
    with open(p, "rb") as fh:
        if fh.read(16) != b"SQLite format 3\x00":
            raise RunFileError(f"{str(p)!r} is not a twinpeaks run file")
    try:
        conn = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
        check_schema(conn, str(p))
    except sqlite3.DatabaseError as exc:
        raise RunFileError(f"{str(p)!r} is not a readable twinpeaks run file ({exc})") from None
    return conn


def check_schema(conn: sqlite3.Connection, where: str) -> None:
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
    except sqlite3.OperationalError:
        row = None
    if row is None:
        raise RunFileError(f"{where!r} is an SQLite file but not a twinpeaks run file")
    schema = json.loads(row[0])
    if schema not in READABLE_SCHEMAS:
        raise RunFileError(
            f"{where!r} has run-file schema {schema}; this twinpeaks reads schema {SCHEMA_VERSION}: "
            "upgrade twinpeaks (pip install -U twinpeaks) to open it"
        )
