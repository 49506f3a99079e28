"""Issue #14.3 and #14.5: two writers on one path, and closed runs on read-only places without leftovers."""

from __future__ import annotations

import multiprocessing as mp
import shutil
import sqlite3
import subprocess
import threading
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from corrupt_corpus import read_everything

import twinpeaks as tp
from twinpeaks import cli
from twinpeaks.runfile import RunWriter


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(("-wal", "-shm", "-journal")))


# -- 3. two writers ----------------------------------------------------------------------------------
def _race(path: str, barrier, results) -> None:
    barrier.wait()
    try:
        w = RunWriter(path, {"writer": mp.current_process().name})
        results.put("ok")
        w.close()
    except FileExistsError:
        results.put("exists")
    except Exception as exc:  # noqa: BLE001 - any other outcome is the failure
        results.put(repr(exc))


@pytest.mark.parametrize("trial", range(12))
def test_one_of_many_processes_started_together_gets_the_path(tmp_path, trial):
    ctx = mp.get_context("fork")
    n = 8
    barrier, results = ctx.Barrier(n), ctx.Queue()
    path = str(tmp_path / "run.tp")
    procs = [ctx.Process(target=_race, args=(path, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    got = sorted(results.get(timeout=5) for _ in range(n))
    assert got == ["exists"] * (n - 1) + ["ok"], got
    assert tp.open_run(path).meta["writer"]  # one writer's file, whole


def _go(path, barrier, out):
    barrier.wait()
    try:
        RunWriter(path, {}).close()
        out.append("ok")
    except FileExistsError:
        out.append("exists")


def test_one_of_many_threads_gets_the_path(tmp_path):
    for trial in range(20):
        path = tmp_path / f"run{trial}.tp"
        barrier, out = threading.Barrier(12), []
        threads = [threading.Thread(target=_go, args=(path, barrier, out)) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(out) == ["exists"] * 11 + ["ok"]


def test_two_trainings_on_one_path_the_second_fails(tmp_run):
    barrier, out = threading.Barrier(2), []

    def train():
        model = torch.nn.Linear(3, 2)
        hist = tp.ActivationsHistogram(model, tmp_run)
        barrier.wait()
        try:
            with hist:
                model(torch.randn(2, 3))
                hist.end_epoch()
            out.append("ok")
        except FileExistsError as exc:
            assert "already exists" in str(exc)
            out.append("exists")

    threads = [threading.Thread(target=train) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(out) == ["exists", "ok"]
    assert tp.open_run(tmp_run).epochs == 1


def test_a_stale_journal_at_a_new_path_never_joins_the_new_run(tmp_path):
    """A -wal left by a killed run at the same path must not be replayed into a new run there."""
    old = RunWriter(tmp_path / "old.tp", {"secret": "old run"})
    shutil.copyfile(tmp_path / "old.tp-wal", tmp_path / "new.tp-wal")
    old.conn.close()
    RunWriter(tmp_path / "new.tp", {"mine": 1}).close()
    meta = tp.open_run(tmp_path / "new.tp").meta
    assert "secret" not in meta and meta["mine"] == 1


def test_unwritable_place_is_one_clear_error_naming_the_path(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(tp.RunFileError, match="cannot create the run file .*file/run.tp"):
        RunWriter(tmp_path / "file" / "run.tp", {})


# -- 5. read-only places and leftovers -------------------------------------------------------------------
@pytest.fixture(scope="module")
def closed_run(tmp_path_factory, record_run):
    path = tmp_path_factory.mktemp("closed") / "run.tp"
    record_run(path, epochs=2, steps=3, valid=1)
    return path


def wal_mode_copy(src: Path, dst: Path) -> Path:
    """A closed run whose header still says WAL (closed while a reader held it, or by an older version)."""
    shutil.copyfile(src, dst)
    with sqlite3.connect(dst) as conn:
        assert conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    conn.close()
    assert not leftovers(dst.parent)
    return dst


def test_a_closed_run_opens_without_writing_beside_it(closed_run, tmp_path):
    for path in (closed_run, wal_mode_copy(closed_run, tmp_path / "wal.tp")):
        before = sorted(p.name for p in path.parent.iterdir())
        read_everything(path)
        assert cli.main(["info", str(path)]) == 0
        assert sorted(p.name for p in path.parent.iterdir()) == before


def test_writer_closed_while_a_reader_holds_the_file_still_reads(tmp_path):
    model = torch.nn.Linear(2, 2)
    path = tmp_path / "run.tp"
    with tp.ActivationsHistogram(model, path) as hist:
        model(torch.randn(3, 2))
        hist.end_epoch()
        reader = tp.open_run(path)
        assert reader.epochs == 1
    reader.close()
    assert tp.open_run(path).histogram(-1, epoch=0).total == 6


@contextmanager
def read_only_mount(src_files: list[Path], tmp_path: Path):
    """A tmpfs holding copies of ``src_files``, remounted read-only (needs root); skip where mounting fails."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        for f in src_files:
            shutil.copyfile(f, mnt / f.name)
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True, capture_output=True)
        with pytest.raises(OSError):
            (mnt / "probe").write_text("x")
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_closed_run_opens_on_a_read_only_mount(closed_run, tmp_path):
    wal = wal_mode_copy(closed_run, tmp_path / "walmode.tp")
    with read_only_mount([closed_run, wal], tmp_path) as mnt:
        for name in ("run.tp", "walmode.tp"):
            read_everything(mnt / name, charts=True)
            assert cli.main(["info", str(mnt / name)]) == 0
            assert cli.main(["diagnose", str(mnt / name)]) == 0


def test_serving_500_runs_leaves_nothing_beside_them(closed_run, tmp_path):
    from twinpeaks.web.server import make_server

    root = tmp_path / "runs"
    root.mkdir()
    for i in range(500):
        shutil.copyfile(closed_run, root / f"r{i:03d}.tp")
    for i in range(10):
        wal_mode_copy(closed_run, root / f"w{i}.tp")
    srv = make_server(root, port=0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{srv.server_address[1]}"
        with urllib.request.urlopen(f"{base}/api/runs", timeout=60) as r:
            assert r.status == 200
        for name in ("r000.tp", "w3.tp"):
            with urllib.request.urlopen(f"{base}/api/run?path={name}", timeout=60) as r:
                assert r.status == 200
    finally:
        srv.shutdown()
        srv.server_close()
    assert leftovers(root) == []
