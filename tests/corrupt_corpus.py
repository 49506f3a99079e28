"""The corrupt-run-file corpus of issue #14.6, and random mutations of a run file for fuzzing.

Every reader must answer a damaged or hostile run file with one clean
:class:`twinpeaks.TwinpeaksError` (the CLI: one line, exit 2) or read it correctly,
within a time and memory bound. This module makes the files:

* :data:`MUTATIONS`: named mutations (every one the issue lists, and more);
  :func:`make_corpus` applies each to a copy of a valid run.
* :func:`random_mutation`: one random byte-level or SQL-level mutation (the fuzzer).
* :func:`read_everything`: what every reader does (open, every table, every array,
  the dashboard payload, the diagnosis): the check a mutated file must pass.
* ``python tests/corrupt_corpus.py VALID.tp OUTDIR`` writes the corpus;
  ``python tests/corrupt_corpus.py --check FILE...`` reads files under a memory limit
  and prints one ``RESULT name outcome seconds detail`` line per file (the tests run it).
"""

from __future__ import annotations

import io
import json
import random
import shutil
import sqlite3
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _sql(*statements: str, params: tuple = ()) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        conn = sqlite3.connect(path)
        try:
            conn.execute("PRAGMA journal_mode=DELETE")
            for i, stmt in enumerate(statements):
                conn.execute(stmt, params if i == len(statements) - 1 else ())
            conn.commit()
        finally:
            conn.close()
    return mutate


def _bytes(fn: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        path.write_bytes(fn(path.read_bytes()))
    return mutate


def _flip(data: bytes, n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    b = bytearray(data)
    for _ in range(n):
        i = rng.randrange(100, len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def _nullable(table: str, column: str) -> Callable[[Path], None]:
    """Recreate ``table`` without its NOT NULL constraints, then set ``column`` to NULL."""
    def mutate(path: Path) -> None:
        conn = sqlite3.connect(path)
        try:
            conn.execute("PRAGMA journal_mode=DELETE")
            cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            conn.execute(f"CREATE TABLE t2 ({', '.join(cols)})")
            conn.execute(f"INSERT INTO t2 SELECT * FROM {table}")
            conn.execute(f"DROP TABLE {table}")
            conn.execute(f"ALTER TABLE t2 RENAME TO {table}")
            conn.execute(f"UPDATE {table} SET {column}=NULL")
            conn.commit()
        finally:
            conn.close()
    return mutate


DEEP = "[" * 100_000 + "]" * 100_000
_NAN = np.full(41, np.nan).astype("<f8").tobytes()

#: name -> mutation of a copy of a valid run (in place). Every case of the issue is here.
MUTATIONS: dict[str, Callable[[Path], None]] = {
    # byte level
    "empty": _bytes(lambda d: b""),
    "truncated_100": _bytes(lambda d: d[:100]),
    "truncated_half": _bytes(lambda d: d[: len(d) // 2]),
    "truncated_last_page": _bytes(lambda d: d[:-4096]),
    "random": _bytes(lambda d: random.Random(1).randbytes(len(d))),
    "header_then_random": _bytes(lambda d: d[:100] + random.Random(2).randbytes(len(d) - 100)),
    "bitflip_1": _bytes(lambda d: _flip(d, 1, 3)),
    "bitflip_20": _bytes(lambda d: _flip(d, 20, 4)),
    "bitflip_500": _bytes(lambda d: _flip(d, 500, 5)),
    # meta
    "future_schema": _sql("UPDATE meta SET value='99' WHERE key='schema'"),
    "schema_text": _sql("""UPDATE meta SET value='"2"' WHERE key='schema'"""),
    "schema_not_json": _sql("UPDATE meta SET value='{' WHERE key='schema'"),
    "no_schema": _sql("DELETE FROM meta WHERE key='schema'"),
    "deep_json_meta": _sql("UPDATE meta SET value=? WHERE key='options'", params=(DEEP,)),
    "classes_not_list": _sql("UPDATE meta SET value='5' WHERE key='classes'"),
    "classes_of_numbers": _sql("UPDATE meta SET value='[1, 2, 3]' WHERE key='classes'"),
    "created_inf": _sql("UPDATE meta SET value='1e999' WHERE key='created'"),
    "meta_blob": _sql("UPDATE meta SET value=x'00ff00' WHERE key='model'"),
    # epochs
    "steps_empty_list": _sql("UPDATE epochs SET steps='[]'"),
    "steps_phase_int": _sql("""UPDATE epochs SET steps='{"train":5}'"""),
    "steps_floats": _sql("""UPDATE epochs SET steps='{"train":[0.5, 6, 4]}'"""),
    "steps_reversed": _sql("""UPDATE epochs SET steps='{"train":[6, 0, 4]}'"""),
    "steps_huge": _sql("""UPDATE epochs SET steps='{"train":[0, 1e300, 4]}'"""),
    "steps_deep_json": _sql("UPDATE epochs SET steps=?", params=(DEEP,)),
    "closed_at_huge": _sql("UPDATE epochs SET closed_at=1e300"),
    "closed_at_text": _sql("UPDATE epochs SET closed_at='yesterday'"),
    "epoch_gap": _sql("UPDATE epochs SET epoch=epoch+5 WHERE epoch>0"),
    # layers
    "columns_huge": _sql("UPDATE layers SET columns=100000000"),
    "columns_negative": _sql("UPDATE layers SET columns=-1"),
    "bins_huge": _sql("UPDATE layers SET bins=1000000000"),
    "bins_zero": _sql("UPDATE layers SET bins=0"),
    "bins_text": _sql("UPDATE layers SET bins='forty'"),
    "out_shape_not_json": _sql("UPDATE layers SET out_shape='[16,' WHERE out_shape IS NOT NULL"),
    "out_shape_negative": _sql("UPDATE layers SET out_shape='[-1]' WHERE out_shape IS NOT NULL"),
    "out_shape_dict": _sql("""UPDATE layers SET out_shape='{"a":1}' WHERE out_shape IS NOT NULL"""),
    "name_blob": _sql("UPDATE layers SET name=x'41ff' WHERE layer=(SELECT min(layer) FROM layers)"),
    "name_null": _nullable("layers", "name"),
    "name_not_utf8": _sql("UPDATE layers SET name=CAST(x'41ccff' AS TEXT) WHERE layer=(SELECT min(layer) FROM layers)"),
    "meta_not_utf8": _sql("UPDATE meta SET value=CAST(x'22ccff22' AS TEXT) WHERE key='model'"),
    # arrays
    "shape_float": _sql("UPDATE arrays SET shape='[1.5, 43]' WHERE kind='col_counts'"),
    "shape_huge": _sql("UPDATE arrays SET shape='[100000000000, 43]' WHERE kind='col_counts'"),
    "shape_deep_json": _sql("UPDATE arrays SET shape=? WHERE kind='counts'", params=(DEEP,)),
    "shape_mismatch": _sql("UPDATE arrays SET shape='[1, 2]' WHERE kind='col_counts'"),
    "dtype_garbage": _sql("UPDATE arrays SET dtype='garbage'"),
    "dtype_object": _sql("UPDATE arrays SET dtype='|O'"),
    "dtype_unicode": _sql("UPDATE arrays SET dtype='<U4' WHERE kind='counts'"),
    "dtype_big_endian": _sql("UPDATE arrays SET dtype='>i8' WHERE kind='counts'"),
    "dtype_float_as_int": _sql("UPDATE arrays SET dtype='<f8' WHERE kind='col_counts' AND dtype='<i8'"),
    "data_null": _nullable("arrays", "data"),
    "data_short": _sql("UPDATE arrays SET data=substr(data, 1, 3)"),
    "data_text": _sql("UPDATE arrays SET data='hello' WHERE kind='edges'"),
    "edges_nan": _sql("UPDATE arrays SET data=? WHERE kind='edges'", params=(_NAN,)),
    "edges_missing": _sql("DELETE FROM arrays WHERE kind='edges'"),
    "col_steps_missing": _sql("DELETE FROM arrays WHERE kind='col_steps'"),
    "col_steps_reversed": _sql("UPDATE arrays SET data=? , dtype='<i8', shape='[1, 2]' WHERE kind='col_steps'",
                               params=(np.array([[9, 2]], "<i8").tobytes(),)),
    "unknown_kind": _sql("UPDATE arrays SET kind='bogus' WHERE kind='counts'"),
    "layer_of_no_layer": _sql("UPDATE arrays SET layer=layer+1000 WHERE kind='counts'"),
    # grids (runs with automatic ranges, schema 3)
    "grid_exponent_huge": _sql("UPDATE arrays SET data=?, dtype='<i8', shape='[2]' WHERE kind IN ('grid', 'lq_grid')",
                               params=(np.array([10**6, 0], "<i8").tobytes(),)),
    "col_grid_offset_huge": _sql("UPDATE arrays SET data=?, dtype='<i8', shape='[1, 2]' WHERE kind='col_grid'",
                                 params=(np.array([[0, 2**62]], "<i8").tobytes(),)),
    "col_grid_missing": _sql("DELETE FROM arrays WHERE kind='col_grid'"),
    "col_grid_as_float": _sql("UPDATE arrays SET dtype='<f8' WHERE kind='col_grid' AND dtype='<i8'"),
    # structure
    "wrong_columns": _sql("DROP TABLE layers", "CREATE TABLE layers (x, y)"),
    "missing_table": _sql("DROP TABLE epochs"),
    "view_meta_recursive_cte": _sql(
        "ALTER TABLE meta RENAME TO meta_real",
        "CREATE VIEW meta AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
        "SELECT 'schema' AS key, '2' AS value FROM c WHERE x < 0 "
        "UNION ALL SELECT key, value FROM meta_real"),
    "view_layers_recursive_cte": _sql(
        "ALTER TABLE layers RENAME TO layers_real",
        "CREATE VIEW layers AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
        "SELECT l.* FROM layers_real l, c WHERE c.x = 0"),
    "trigger": _sql("CREATE TRIGGER t AFTER UPDATE ON meta BEGIN DELETE FROM layers; END"),
    "extra_view": _sql("CREATE VIEW v AS SELECT 1"),
}


def make_corpus(valid: str | Path, out: str | Path) -> dict[str, Path]:
    """Write one mutated copy of ``valid`` per :data:`MUTATIONS` entry into ``out``; return name -> path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    made = {}
    for name, mutate in MUTATIONS.items():
        path = out / f"{name}.tp"
        shutil.copyfile(valid, path)
        mutate(path)
        made[name] = path
    return made


_HOSTILE = [None, -1, 0, 1, 2**63 - 1, -(2**63), 1e300, float("nan"), 1.5, "", "garbage", "[]", "{}", "[1.5]",
            "[-1, 2]", '{"train": 5}', '{"train": [0, 1e300, 4]}', "[1000000000, 1000000000]", "null", "1e999",
            DEEP[:5000] + DEEP[-5000:], b"", b"\x00" * 7, b"\xff" * 64, "x" * 100_000, '"2"', "<i8", "|O", "[2, 43]"]
_COLUMNS = {"meta": ["key", "value"], "layers": ["layer", "module_index", "sub_index", "name", "type", "out_shape",
                                                 "bins", "columns"],
            "epochs": ["epoch", "closed_at", "steps"],
            "arrays": ["layer", "phase", "kind", "epoch", "part", "dtype", "shape", "data"]}


def random_mutation(path: Path, rng: random.Random) -> str:
    """Mutate the run file at ``path`` in place at random; return what was done (for the failure message)."""
    choice = rng.random()
    if choice < 0.35:
        data = bytearray(path.read_bytes())
        how = rng.choice(["flip", "overwrite", "truncate", "zero_page"])
        if how == "flip":
            k = rng.choice([1, 2, 8, 64])
            for _ in range(k):
                i = rng.randrange(len(data))
                data[i] ^= 1 << rng.randrange(8)
            desc = f"flip {k} bits"
        elif how == "overwrite":
            i, n = rng.randrange(len(data)), rng.choice([1, 4, 16, 256])
            data[i:i + n] = rng.randbytes(n)
            desc = f"overwrite {n} bytes at {i}"
        elif how == "truncate":
            n = rng.randrange(len(data))
            data = data[:n]
            desc = f"truncate to {n}"
        else:
            page = rng.randrange(max(1, len(data) // 4096))
            data[page * 4096:(page + 1) * 4096] = bytes(min(4096, len(data) - page * 4096))
            desc = f"zero page {page}"
        path.write_bytes(bytes(data))
        return desc
    try:
        return _sql_mutation(path, rng)
    except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:  # an earlier mutation broke the file for SQLite
        return f"no SQL mutation ({exc})"


def _sql_mutation(path: Path, rng: random.Random) -> str:
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
        table = rng.choice(list(_COLUMNS))
        rowids = [r[0] for r in conn.execute(f"SELECT rowid FROM {table}")]
        if not rowids:
            return f"nothing in {table}"
        rowid = rng.choice(rowids)
        if rng.random() < 0.1:
            conn.execute(f"DELETE FROM {table} WHERE rowid=?", (rowid,))
            desc = f"delete {table} row {rowid}"
        else:
            column = rng.choice(_COLUMNS[table])
            value = rng.choice(_HOSTILE)
            if isinstance(value, float) and value != value:
                value = None if column in ("name", "value") else value
            try:
                conn.execute(f"UPDATE OR IGNORE {table} SET {column}=? WHERE rowid=?", (value, rowid))
            except sqlite3.IntegrityError:
                return f"{table}.{column} refused {value!r:.40}"
            desc = f"{table}.{column} of row {rowid} = {value!r:.40}"
        conn.commit()
        return desc
    finally:
        conn.close()


def read_everything(path: str | Path, charts: bool = False) -> None:
    """Read a run the way every reader does: open, every table and array, the dashboard payload, diagnosis."""
    import twinpeaks as tp
    from twinpeaks.web.payload import report_payload

    with tp.open_run(path) as run:
        _ = run.meta, run.classes, repr(run)
        phases = run.phases
        for p in phases:
            run.n_steps(p)
        for e in range(run.epochs):
            run.epoch_info(e)
        for info in run.layers:
            run.edges(info)
            for p in phases:
                run.columns(info, p)
                run.histogram(info, p)
                for e in range(run.epochs):
                    h = run.histogram(info, p, e)
                    _ = h.mean, h.std, h.total, h.zero_fraction, h.centers
                    run.histogram(info, p, e, last_quarter=True)
                    if info.columns:
                        run.histogram(info, p, e, column=info.columns - 1)
                        run.histogram(info, p, e, truth="yes")
        json.dumps(report_payload([run], ["run"]), allow_nan=False)
        d = tp.diagnose(run)
        _ = str(d), d.to_json()
        if charts:
            import matplotlib.pyplot as plt

            for fig in (tp.plot_colorful_dimension(run, show_layer_info=True),
                        tp.plot_twin_peaks(run, per_class=bool(run.layers and run.layers[-1].columns)),
                        tp.plot_twin_peaks_history(run)):
                fig.savefig(io.BytesIO(), format="png", dpi=30)
                plt.close(fig)


def check_files(paths: list[str], memory_mb: int = 1500, charts: bool = False) -> int:
    """Read each file with :func:`read_everything` under an address-space limit; print a RESULT line per file.

    Outcomes: ``ok`` (read), ``clean`` (a TwinpeaksError with a one-line message, or a chart's or
    the diagnosis' one-line ValueError that the run lacks what it needs, e.g. no closed epoch),
    ``FAIL`` (anything else: another exception, a MemoryError, a multi-line message).
    """
    import resource

    import twinpeaks as tp
    import twinpeaks.diagnosis  # noqa: F401
    import twinpeaks.web.payload  # noqa: F401 - imported before the limit is set

    if charts:
        import matplotlib

        matplotlib.use("Agg")
        import twinpeaks.charts  # noqa: F401

    with open("/proc/self/statm") as fh:
        vm = int(fh.read().split()[0]) * resource.getpagesize()
    limit = vm + memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for path in paths:
        print(f"START {path}", flush=True)
        t0 = time.monotonic()
        try:
            read_everything(path, charts)
            outcome, detail = "ok", ""
        except tp.TwinpeaksError as exc:
            msg = str(exc)
            outcome, detail = ("clean", msg) if "\n" not in msg and msg else ("FAIL", f"multi-line: {msg!r}")
        except ValueError as exc:  # a chart's or the diagnosis' refusal of a run without the data it needs (exit 2)
            msg, tb = str(exc), traceback.extract_tb(exc.__traceback__)
            refusal = any(f"/twinpeaks/{part}/" in f.filename for f in tb[-1:] for part in ("charts", "diagnosis"))
            outcome, detail = ("clean", msg) if refusal and "\n" not in msg else ("FAIL", f"ValueError: {msg}")
        except BaseException as exc:  # noqa: BLE001 - every other failure is the finding
            tb = traceback.format_exc().strip().splitlines()
            outcome, detail = "FAIL", f"{type(exc).__name__}: {exc!s:.200} at {tb[-3].strip() if len(tb) > 2 else ''}"
        secs = time.monotonic() - t0
        print(f"RESULT {Path(path).name} {outcome} {secs:.2f} {detail!r:.400}", flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--check"]:
        charts = sys.argv[2:3] == ["--charts"]
        sys.exit(check_files(sys.argv[3 if charts else 2:], charts=charts))
    if len(sys.argv) != 3:
        sys.exit("usage: python tests/corrupt_corpus.py VALID.tp OUTDIR | --check FILE...")
    for name, p in make_corpus(sys.argv[1], sys.argv[2]).items():
        print(name, p)
