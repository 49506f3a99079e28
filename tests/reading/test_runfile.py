"""The run file: crash safety, concurrent reading, versioning, data-only storage."""

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

import twinpeaks as tp
from twinpeaks import runfile
from twinpeaks.format import decode, encode

WRITER = textwrap.dedent("""
    import sys, time, torch, twinpeaks as tp
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    hist = tp.ActivationsHistogram(model, sys.argv[1], flush_every=16).attach()
    epoch = 0
    while True:
        for _ in range(50):
            model(torch.randn(8, 4)).sum().backward()
        hist.end_epoch()
        epoch += 1
        print(epoch, flush=True)
        if epoch >= int(sys.argv[2]):
            time.sleep(60)
""")


def start_writer(path, epochs):
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(epochs)],
                            stdout=subprocess.PIPE, text=True)


def test_kill_9_leaves_every_flushed_epoch(tmp_run):
    proc = start_writer(tmp_run, 3)
    try:
        for _ in range(3):
            assert proc.stdout.readline().strip()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    run = tp.open_run(tmp_run)
    assert run.epochs == 3
    assert run.histogram(-1, epoch=2).total == 50 * 8 * 2
    assert run.histogram(-1).total == 150 * 8 * 2


def test_kill_9_at_a_random_moment_opens(tmp_run):
    proc = start_writer(tmp_run, 1000)
    try:
        proc.stdout.readline()
        time.sleep(0.37)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    run = tp.open_run(tmp_run)
    assert run.epochs >= 1
    for e in range(run.epochs):
        assert run.histogram(-1, epoch=e).total == 50 * 8 * 2


def test_reader_follows_a_writer_in_progress(tmp_run):
    proc = start_writer(tmp_run, 1000)
    try:
        proc.stdout.readline()
        run = tp.open_run(tmp_run)
        first = run.epochs
        assert first >= 1
        deadline = time.time() + 30
        while run.refresh().epochs < first + 2 and time.time() < deadline:
            time.sleep(0.05)
        assert run.epochs >= first + 2
        assert run.histogram(-1, epoch=-1).total == 50 * 8 * 2
    finally:
        proc.kill()
        proc.wait()


def test_unknown_schema_and_non_run_files_give_clear_errors(tmp_path, tmp_run):
    model = torch.nn.Linear(2, 2)
    with tp.ActivationsHistogram(model, tmp_run) as hist:
        model(torch.randn(1, 2))
        hist.end_epoch()
    with sqlite3.connect(tmp_run) as conn:
        conn.execute("UPDATE meta SET value=? WHERE key='schema'", (json.dumps(max(runfile.READABLE_SCHEMAS) + 1),))
    with pytest.raises(tp.RunFileError, match=f"schema {max(runfile.READABLE_SCHEMAS) + 1}.*upgrade"):
        tp.open_run(tmp_run)
    junk = tmp_path / "junk.tp"
    junk.write_text("hello")
    with pytest.raises(tp.RunFileError, match="not a twinpeaks run file"):
        tp.open_run(junk)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(tp.RunFileError, match="not a twinpeaks run file"):
        tp.open_run(other)
    with pytest.raises(tp.RunFileError, match="no run file"):
        tp.open_run(tmp_path / "missing.tp")


def test_arrays_are_raw_little_endian_with_dtype_and_shape():
    a = np.arange(12, dtype=">f8").reshape(3, 4)
    dtype, shape, data = encode(a)
    assert dtype == "<f8" and json.loads(shape) == [3, 4] and data == a.astype("<f8").tobytes()
    np.testing.assert_array_equal(decode(dtype, shape, data), a)
    # counts: non-negative integers are stored in the narrowest unsigned type, read back as int64
    for values, stored in [([0, 255], "|u1"), ([0, 65535], "<u2"), ([1, 2**32 - 1], "<u4"), ([0, 2**40], "<i8"),
                           ([-1, 5], "<i8")]:
        arr = np.array(values, dtype=">i8")
        dtype, shape, data = encode(arr)
        assert dtype == stored
        back = decode(dtype, shape, data)
        assert back.dtype == np.int64 and back.tolist() == values
    with pytest.raises(tp.RunFileError, match="unsupported dtype"):
        decode("|O", "[1]", b"\0" * 8)


def test_schema_1_files_still_open(tmp_run):
    """Schema 1 (int64 arrays) reads like schema 2: rewrite a run's arrays as int64 and call it schema 1."""
    model = torch.nn.Linear(2, 3)
    with tp.ActivationsHistogram(model, tmp_run) as hist:
        for _ in range(4):
            model(torch.randn(5, 2))
        hist.end_epoch()
    want = tp.open_run(tmp_run).histogram(-1, "train", epoch=0)
    with sqlite3.connect(tmp_run) as conn:
        rows = conn.execute("SELECT rowid, dtype, shape, data FROM arrays").fetchall()
        assert any(dt in ("|u1", "<u2") for _, dt, _, _ in rows)
        for rowid, dt, _, data in rows:
            if np.dtype(dt).kind == "u":
                wide = np.frombuffer(data, np.dtype(dt)).astype("<i8")
                conn.execute("UPDATE arrays SET dtype='<i8', data=? WHERE rowid=?", (wide.tobytes(), rowid))
        conn.execute("UPDATE meta SET value='1' WHERE key='schema'")
    got = tp.open_run(tmp_run).histogram(-1, "train", epoch=0)
    assert got.counts.dtype == np.int64
    np.testing.assert_array_equal(got.counts, want.counts)
    assert got.total == want.total == 60


def test_run_file_holds_no_pickle(tmp_run):
    model = torch.nn.Linear(2, 2)
    with tp.ActivationsHistogram(model, tmp_run) as hist:
        model(torch.randn(1, 2))
        hist.end_epoch()
    with sqlite3.connect(tmp_run) as conn:
        rows = conn.execute("SELECT dtype, shape, data FROM arrays").fetchall()
    assert {dt for dt, _, _ in rows} <= {"<i8", "<f8", "|u1", "<u2", "<u4"}
    for dt, shape, data in rows:  # every blob is exactly its raw numbers: no room for a pickle
        assert len(data) == np.dtype(dt).itemsize * int(np.prod(json.loads(shape)))


def test_closed_run_file_alone_holds_everything(tmp_path, tmp_run):
    """After close the .tp file needs no -wal beside it, even while a reader is still open."""
    model = torch.nn.Linear(2, 2)
    hist = tp.ActivationsHistogram(model, tmp_run)
    with hist:
        model(torch.randn(3, 2))
        hist.end_epoch()
        reader = tp.open_run(tmp_run)  # a reader open while the writer closes
        assert reader.epochs == 1
    copy = tmp_path / "copy.tp"
    copy.write_bytes(tmp_run.read_bytes())  # the main file only
    assert tp.open_run(copy).histogram(-1, epoch=0).total == 6
    reader.close()
