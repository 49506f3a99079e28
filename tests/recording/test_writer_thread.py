"""Issue #17: the run file is written on a writer thread; a flush in a step only hands its rows over,
``end_epoch`` returns once everything is committed, and memory stays bounded however long the run."""

import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch
from torch import nn

import twinpeaks as tp
from twinpeaks.recording import epoch_writer
from twinpeaks.recording.engine import MIN_ROWS, window_rows
from twinpeaks.recording.writer_thread import WriterThread
from twinpeaks.run import Run
from twinpeaks.runfile import connect_reader


def mlp(layers: int = 3) -> nn.Module:
    mods: list[nn.Module] = []
    for _ in range(layers):
        mods += [nn.Linear(4, 4), nn.ReLU()]
    return nn.Sequential(*mods)


def binned(cols) -> int:
    return int(cols.counts.sum() + cols.underflow.sum() + cols.overflow.sum() + cols.nonfinite.sum())


def test_writer_thread_runs_jobs_in_order_and_reraises_on_the_training_thread():
    t = WriterThread("t")
    seen: list[tuple[int, str]] = []
    for i in range(5):
        t.submit(lambda i=i: seen.append((i, threading.current_thread().name)))
    t.wait()
    assert [i for i, _ in seen] == list(range(5))
    assert all(name.startswith("twinpeaks-writer-") for _, name in seen)
    t.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        t.wait()
    t.wait()  # raised once
    t.close()
    assert not t.running


def test_a_flush_in_a_step_does_not_wait_for_a_slow_writer(tmp_run, monkeypatch):
    """The writer is held (an event) while steps go on: the mid-epoch flush only handed its rows over."""
    release, entered = threading.Event(), threading.Event()
    threads: set[str] = set()
    add_window = epoch_writer.EpochWriter.add_window

    def held(self, *args, **kwargs):
        threads.add(threading.current_thread().name)
        entered.set()
        release.wait(60)  # a deliberately slow writer (the test fails by timing out, never hangs)
        return add_window(self, *args, **kwargs)

    monkeypatch.setattr(epoch_writer.EpochWriter, "add_window", held)
    model = mlp()
    hist = tp.ActivationsHistogram(model, tmp_run, flush_every=4).attach()
    x = torch.randn(8, 4)
    for _ in range(4 + 4 + 1):  # two windows handed over: one being written (held), one queued
        model(x)
    assert entered.wait(60)  # the writer's thread took the first window ...
    assert not release.is_set()  # ... and every step returned while it was held
    assert threads and threading.current_thread().name not in threads
    release.set()
    hist.end_epoch()
    run = tp.open_run(tmp_run)
    assert run.histogram(0, "train", epoch=0).total == 9 * 8 * 4
    cols = run.columns(0, "train")
    assert cols.starts[0] == 0 and cols.ends[-1] == 9 and binned(cols) == 9 * 8 * 4
    hist.close()


@pytest.mark.parametrize("slow", [False, True], ids=["plain", "slow-writer"])
def test_end_epoch_returns_once_everything_is_committed(tmp_run, monkeypatch, slow):
    """Right after end_epoch(), another read-only connection sees every step of every layer and the epoch."""
    if slow:
        add_window = epoch_writer.EpochWriter.add_window

        def slowed(self, *args, **kwargs):
            threading.Event().wait(0.01)
            return add_window(self, *args, **kwargs)

        monkeypatch.setattr(epoch_writer.EpochWriter, "add_window", slowed)
    model = mlp()
    hist = tp.ActivationsHistogram(model, tmp_run, flush_every=5, max_columns=8).attach()
    x = torch.randn(8, 4)
    for epoch in range(3):
        for _ in range(23):
            model(x)
        hist.end_epoch()
        conn = connect_reader(tmp_run)  # not the recorder's connection: only committed rows
        try:
            assert conn.execute("SELECT COUNT(*) FROM epochs").fetchone()[0] == epoch + 1
            run = Run(conn, tmp_run, owned=False)
            for layer in range(len(run.layers)):
                cols = run.columns(layer, "train")
                assert run.histogram(layer, "train").total == (epoch + 1) * 23 * 8 * 4
                assert binned(cols) == (epoch + 1) * 23 * 8 * 4 and cols.ends[-1] == (epoch + 1) * 23
                assert len(cols) <= 16  # a merge past max_columns waits for the writer's idle time: 2x at most
        finally:
            conn.close()
    hist.close()
    run = tp.open_run(tmp_run)
    assert all(len(run.columns(layer, "train")) <= 8 for layer in range(len(run.layers)))  # close() merged them


KILLED = textwrap.dedent("""
    import os, signal, sys, torch, twinpeaks as tp
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    hist = tp.ActivationsHistogram(model, sys.argv[1], flush_every=7, max_columns=10).attach()
    for epoch in range(3):
        for _ in range(100):
            model(torch.randn(8, 4))
        hist.end_epoch()
    for _ in range(50):  # a mid-epoch flush or more handed to the writer's thread, still being written
        model(torch.randn(8, 4))
    os.kill(os.getpid(), signal.SIGKILL)  # at once after the steps: what end_epoch returned from must be there
""")


def test_kill_9_right_after_end_epoch_loses_nothing_it_returned_from(tmp_run):
    proc = subprocess.run([sys.executable, "-c", KILLED, str(tmp_run)], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    run = tp.open_run(tmp_run)
    assert run.epochs == 3
    for layer, width in ((0, 16), (1, 16), (2, 2)):
        for e in range(3):
            assert run.histogram(layer, "train", epoch=e).total == 100 * 8 * width
        cols = run.columns(layer, "train")
        assert len(cols) <= 20  # a merge past max_columns=10 may still have been waiting for the writer
        assert binned(cols) >= 300 * 8 * width  # every committed step; a later flush may be there too


ENDS_WITHOUT_CLOSE = textwrap.dedent("""
    import sys, torch
    from torch import nn
    import twinpeaks as tp
    from twinpeaks.recording import epoch_writer
    add_window = epoch_writer.EpochWriter.add_window
    def slow(self, *args, **kwargs):  # a slow disk: the windows are still being written when the script ends
        import time
        time.sleep(0.01)
        return add_window(self, *args, **kwargs)
    epoch_writer.EpochWriter.add_window = slow
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    hist = tp.ActivationsHistogram(model, sys.argv[1], flush_every=16).attach()
    for _ in range(64):  # 3 full windows handed over (the 4th is still on the device), no close()
        model(torch.randn(8, 4))
""")


def test_a_script_that_ends_without_close_keeps_the_windows_it_handed_over(tmp_run):
    proc = subprocess.run([sys.executable, "-c", ENDS_WITHOUT_CLOSE, str(tmp_run)], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    run = tp.open_run(tmp_run)
    for layer, width in ((0, 16), (1, 16), (2, 2)):
        assert binned(run.columns(layer, "train")) == 48 * 8 * width  # the 3 windows handed over, whole


def held_bytes(hist: tp.ActivationsHistogram) -> int:
    """Bytes of numpy arrays and device buffers the recorder keeps between flushes."""
    total = 0
    for rec in hist._records:
        for pd in rec.phases.values():
            total += sum(buf.numel() * buf.element_size() for buf, _, _ in pd.states.values())
    w = hist._writer
    total += w.held_bytes()  # column stores and the last epoch's summaries
    return total + w.writer.queued_bytes + hist._blocks.nbytes  # and the hand-overs' host blocks, kept


def run_for(path, epochs: int, steps: int) -> int:
    torch.manual_seed(0)
    model = mlp()
    hist = tp.ActivationsHistogram(model, path, flush_every=16, max_columns=50).attach()
    x = torch.randn(8, 4)
    peak = 0
    for _ in range(epochs):
        for i in range(steps):
            model(x * (1 + i % 7))  # ranges move: columns on different grids merge
            if i % 97 == 0:
                hist._thread.wait()
                peak = max(peak, held_bytes(hist))
        hist.end_epoch()
        peak = max(peak, held_bytes(hist))
    hist.close()
    return peak


def test_memory_per_layer_does_not_grow_with_the_steps(tmp_path):
    """3 x 300 steps and 3 x 3000 steps hold the same bytes per layer: nothing grows with the run."""
    short = run_for(tmp_path / "short.tp", 3, 300)
    long = run_for(tmp_path / "long.tp", 3, 3000)
    slots, layers = 100 + 3, 6 + 2  # the last layer's YES/NO rows count as two more
    per_column = (slots + 7 + 2 + 2) * 8  # counts, stats, steps, grid
    device = 16 * (slots + 5 + 2 + 2) * 8  # a window of 16 rows
    epoch = (epoch_writer.EPOCH_COLUMNS + 16) * per_column  # the open epoch's columns (and one window appended)
    summaries = 4 * slots * 8 + 64  # the last epoch's summaries (counts and last quarter, truth rows)
    blocks = 3 * (device + 8 * 64)  # BlockPool(keep=3): a window's rows, each buffer's 64-byte aligned
    # the file columns' steps: up to 2 x max_columns while a merge waits for the writer's idle time
    bound = layers * (device + blocks + 2 * 50 * 16 + epoch + summaries)
    assert short <= bound and long <= bound
    assert long <= short * 1.05


def test_the_window_shrinks_for_many_layers():
    assert window_rows(256, 10, 100) == 256
    assert window_rows(256, 500, 100) < 64
    assert window_rows(256, 10**6, 100) == MIN_ROWS
    assert window_rows(4, 10**6, 100) == 4
    layers = 501
    assert layers * window_rows(256, layers, 100) * (103 + 9) * 8 <= 16 << 20
    assert np.isfinite(window_rows(256, 0, 100))


@pytest.mark.parametrize("gridded", [False, True], ids=["fixed", "grids"])
@pytest.mark.parametrize("cap,window", [(10, 3), (8, 8), (50, 37), (2, 5)], ids=str)
def test_file_columns_follow_the_column_store_exactly(gridded, cap, window):
    """The run's columns kept in the file (read back to merge) equal an in-memory ColumnStore fed the same rows,
    windows of any length against any cap, with a failed commit in the middle (its queue is read back too)."""
    from column_reference import ColumnStore

    from twinpeaks.runfile import RunWriter

    rng = np.random.default_rng(cap * 100 + window)
    w = RunWriter(None, {"options": {}})
    files, ref = epoch_writer.FileColumns(cap, (6,), gridded), ColumnStore(cap, (6,), gridded)
    start = 0
    for k in range(40):
        n = int(rng.integers(1, window + 1))
        counts = rng.integers(0, 50, (n, 6))
        stats = np.column_stack([rng.random((n, 5)) * 10, -rng.random(n), rng.random(n)])
        grid = np.column_stack([rng.integers(-3, -1, n), rng.integers(-8, -4, n)]) if gridded else None
        if gridded:  # rows on different grids must hold bins that fit the common one: keep 4 bins in the middle
            counts[:, 1] = counts[:, -1] = counts[:, -2] = 0
        files.append(w, 0, "train", start, counts, stats, grid)
        ref.append(start, counts, stats, grid)
        start += n
        if k % 7 != 3:  # every 7th flush's commit "fails": its arrays stay queued and are read back from there
            w.commit()
        got = w.read_columns(0, "train", ("col_steps", "col_counts", "col_stats", "col_grid"))
        np.testing.assert_array_equal(got["col_steps"], ref.steps)
        np.testing.assert_array_equal(files.steps, ref.steps)
        np.testing.assert_array_equal(got["col_counts"], ref.counts)
        np.testing.assert_array_equal(got["col_stats"], ref.stats)
        if gridded:
            np.testing.assert_array_equal(got["col_grid"], ref.grid)
        assert len(ref) <= cap


@pytest.mark.parametrize("gridded", [False, True], ids=["fixed", "grids"])
@pytest.mark.parametrize("cap,window", [(10, 3), (8, 8), (50, 37), (2, 5)], ids=str)
def test_deferred_merges_give_the_columns_of_merges_made_at_once(gridded, cap, window):
    """With ``defer``, windows past the cap are written as they come (at most 2x cap columns) and merged when
    settle() is called, at any point: the columns are then the store's that merged at once (steps, counts, grids
    and minima/maxima equal; sums equal to rounding, added in another order), and exactly equal when settled
    after every window."""
    from column_reference import ColumnStore

    from twinpeaks.format import MAX, MIN
    from twinpeaks.runfile import RunWriter

    rng = np.random.default_rng(cap * 100 + window + 7)
    kinds = ("col_steps", "col_counts", "col_stats", "col_grid")
    for settle_every in (1, 3, 1000):
        w = RunWriter(None, {"options": {}})
        files, ref = epoch_writer.FileColumns(cap, (6,), gridded, defer=True), ColumnStore(cap, (6,), gridded)
        start, over = 0, False
        for k in range(60):
            n = int(rng.integers(1, window + 1))
            counts = rng.integers(0, 50, (n, 6))
            stats = np.column_stack([rng.random((n, 5)) * 10, -rng.random(n), rng.random(n)])
            grid = np.column_stack([rng.integers(-3, -1, n), rng.integers(-8, -4, n)]) if gridded else None
            if gridded:
                counts[:, 1] = counts[:, -1] = counts[:, -2] = 0
            files.append(w, 0, "train", start, counts, stats, grid)
            ref.append(start, counts, stats, grid)
            start += n
            w.commit()
            assert len(files) <= 2 * cap + window
            over = over or len(files) > cap
            if k % settle_every == settle_every - 1 or k == 59:
                files.settle(w, 0, "train")
                w.commit()
                got = w.read_columns(0, "train", kinds)
                np.testing.assert_array_equal(got["col_steps"], ref.steps)
                np.testing.assert_array_equal(files.steps, ref.steps)
                np.testing.assert_array_equal(got["col_counts"], ref.counts)
                if settle_every == 1:
                    np.testing.assert_array_equal(got["col_stats"], ref.stats)
                np.testing.assert_allclose(got["col_stats"], ref.stats, rtol=1e-12, atol=0)
                np.testing.assert_array_equal(got["col_stats"][:, [MIN, MAX]], ref.stats[:, [MIN, MAX]])
                if gridded:
                    np.testing.assert_array_equal(got["col_grid"], ref.grid)
                assert len(files) <= cap
        assert over or settle_every == 1  # columns went past the cap while a merge waited


def test_the_writer_spreads_its_work_unless_the_training_thread_waits_for_it(monkeypatch):
    """After a stretch of work, pause() sleeps SPREAD times as long (capped), on the writer's thread only;
    while the training thread waits (wait(), or a hand-over into a full queue) it does not sleep."""
    from twinpeaks.recording import writer_thread as wt

    monkeypatch.setattr(wt, "SPREAD", 2.0)
    monkeypatch.setattr(wt, "SPREAD_MAX_S", 0.05)
    slept: list[float] = []

    def job(work_s: float, spread: bool = True) -> None:
        end = time.perf_counter() + work_s
        while time.perf_counter() < end:
            pass
        t0 = time.perf_counter()
        wt.pause(spread)
        slept.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    wt.pause()  # off the writer's thread: nothing
    assert time.perf_counter() - t0 < 0.005
    w = WriterThread("spread")
    for work, spread in ((0.01, True), (0.01, False), (0.1, True)):  # the last: capped at SPREAD_MAX_S
        w.submit(lambda work=work, spread=spread: job(work, spread))  # one at a time: a full queue is a wait too
        while w._queue.unfinished_tasks:  # not wait(): that tells the writer the training thread waits
            time.sleep(0.005)
    assert 0.015 <= slept[0] < 0.045 and slept[1] < 0.01 and 0.045 <= slept[2] < 0.09
    slept.clear()
    w.submit(lambda: job(0.01))
    w.wait()  # the training thread waits: no spreading
    assert slept[0] < 0.01
    w.close()


def test_merges_past_max_columns_wait_for_the_writers_idle_time(tmp_run, monkeypatch):
    """A file run's merges past max_columns are done by the writer's thread while no window waits (spread, so
    that training goes on), and the closed file holds at most max_columns columns per layer: the data of every step."""
    from twinpeaks.recording import writer_thread as wt

    spreads: list[bool] = []
    queued: list[int] = []
    pause, settle_one = wt.pause, epoch_writer.EpochWriter.settle_one
    monkeypatch.setattr(epoch_writer, "pause", lambda spread=True: spreads.append(spread) or pause(spread))
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    hist = tp.ActivationsHistogram(model, tmp_run, max_columns=4, flush_every=3)

    def settle(self, stop=None):
        if threading.current_thread().name.startswith("twinpeaks-writer-"):
            queued.append(stop is not None)  # the writer's thread stops a merge when a window comes
        return settle_one(self, stop)

    monkeypatch.setattr(epoch_writer.EpochWriter, "settle_one", settle)
    with hist:
        for _ in range(40):
            model(torch.randn(2, 4))
        hist.end_epoch()
    assert queued and all(queued)  # done on the writer's thread, between its jobs (see the idle test below)
    run = tp.open_run(tmp_run)
    for layer in range(2):
        cols = run.columns(layer, "train")
        assert len(cols) <= 4 and cols.starts[0] == 0 and cols.ends[-1] == 40 and binned(cols) == 40 * 2 * 4


@pytest.mark.parametrize("gridded", [False, True], ids=["fixed", "grids"])
def test_a_merge_stopped_midway_splits_its_stack_and_ends_with_the_same_columns(monkeypatch, gridded):
    """settle_one(stop) ends a file stack's merge between chunks of records when stop says so; the records done go
    on in a stack of their own, windows keep coming, and once every merge is done the columns are those of a
    writer that merged at once."""
    from twinpeaks.runfile import RunWriter

    monkeypatch.setattr(epoch_writer, "MERGE_BYTES", 1)  # chunks of one record
    rng = np.random.default_rng(5)
    lanes, cap = 12, 6
    rids = list(range(lanes))
    writers = {defer: epoch_writer.EpochWriter(RunWriter(None, {"options": {}}), 6, cap, defer=defer)
               for defer in (False, True)}
    start, splits = 0, 0
    asked = [0]

    def stop() -> bool:  # a window "comes" after every second chunk
        asked[0] += 1
        return asked[0] % 2 == 0

    for k in range(30):
        n = int(rng.integers(1, 5))
        counts = rng.integers(0, 50, (lanes, n, 6))
        stats = np.concatenate([rng.random((lanes, n, 5)) * 10, -rng.random((lanes, n, 1)),
                                rng.random((lanes, n, 1))], axis=2)
        grid = np.stack([rng.integers(-3, -1, (lanes, n)), rng.integers(-8, -4, (lanes, n))], axis=2) if gridded else None
        if gridded:
            counts[..., 1] = counts[..., -1] = counts[..., -2] = 0
        for w in writers.values():
            w.add_window(rids, "train", start, counts, stats, {}, grid)
            w.commit()
        start += n
        deferred = writers[True]
        if k % 3 == 2:
            deferred.settle_one(stop)
            splits = max(splits, len(deferred.cohort(0, "train").files))
    assert splits > 1  # some merge stopped midway
    assert any(f.pending for c in deferred._cohorts["train"] for _, f in c.files)
    deferred.writer.failed = "disk full"  # a file that cannot be written: no merge adds to the queue
    queued = deferred.writer.queued_bytes
    assert not deferred.settle_one() and deferred.writer.queued_bytes == queued
    deferred.writer.failed = None
    writers[True].settle()
    kinds = ("col_steps", "col_counts", "col_stats", "col_grid")
    for rid in rids:
        want = writers[False].writer.read_columns(rid, "train", kinds)
        got = writers[True].writer.read_columns(rid, "train", kinds)
        for kind in kinds[:2] + (("col_grid",) if gridded else ()):
            np.testing.assert_array_equal(got[kind], want[kind])
        np.testing.assert_allclose(got["col_stats"], want["col_stats"], rtol=1e-12, atol=0)
        assert len(got["col_steps"]) <= cap


def test_the_writer_does_its_idle_work_only_while_no_job_waits():
    """``idle`` runs a piece at a time between jobs, never before a job that waits; wait() does not wait for it;
    its exception is raised on the training thread; close() leaves what is left."""
    log: list[str] = []
    gate = threading.Event()
    pieces = [3]

    def idle() -> bool:
        log.append("idle")
        pieces[0] -= 1
        return pieces[0] > 0

    w = WriterThread("idle")
    w.idle = idle
    w.submit(lambda: gate.wait(5) and log.append("a"))
    w.submit(lambda: log.append("b"))  # waits behind a: idle work must not come between
    gate.set()
    w.wait()
    deadline = time.monotonic() + 5
    while pieces[0] > 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert log == ["a", "b", "idle", "idle", "idle"]
    time.sleep(0.05)
    assert log.count("idle") == 3  # done: not called again until a job comes
    blocked = threading.Event()
    w.idle = lambda: blocked.wait(5) and False
    w.submit(lambda: log.append("c"))
    w.wait()  # returns with the idle work still blocked
    assert log[-1] == "c" and not blocked.is_set()
    blocked.set()

    def fails() -> bool:
        raise ValueError("idle failed")

    w.idle = fails
    w.submit(lambda: None)
    with pytest.raises(ValueError, match="idle failed"):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            w.wait()
            time.sleep(0.005)
    w.close()


def test_block_pool_reuses_a_block_only_once_nothing_refers_to_it():
    """The hand-over's host blocks: reused when no view of one is alive (a window the writer still holds keeps its
    block), 64-byte aligned, at most ``keep`` kept; ``reserve`` makes a free block ready."""
    from twinpeaks.recording.engine import BlockPool

    pool = BlockPool(keep=2)
    a = pool.take(1000)
    view = a[10:20]
    del a
    b = pool.take(1000)  # the first block is still referred to (by view): a second one
    assert view.base is not b.base and len(pool._blocks) == 2
    del view
    c = pool.take(500)  # the first is free again: reused
    assert c.base is not b.base and c.ctypes.data % 64 == 0 and len(c) == 500 and len(pool._blocks) == 2
    d = pool.take(100)  # both in use, pool full: a block that is not kept
    assert len(pool._blocks) == 2 and d.base is not b.base and d.base is not c.base
    del b, c, d
    pool.reserve(4000)  # bigger than both: replaces a free smaller one
    assert len(pool._blocks) == 2 and max(x.nbytes for x in pool._blocks) >= 4064
    big = pool.take(4000)
    assert big.nbytes == 4000 and not big.any()  # the reserved block (touched: zeros)
