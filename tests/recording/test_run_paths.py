"""Where a run is written: refused early, replaced on purpose, or named anew in a folder of runs.

Regression: running the same script twice failed with FileExistsError at ``with hist:``, after all the
set-up; now the check happens when the recorder is made.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import twinpeaks as tp
from twinpeaks.rundir import list_runs, parse_run_name


def model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def record(path, epochs: int = 1, **options) -> tp.ActivationsHistogram:
    m = model()
    hist = tp.ActivationsHistogram(m, path, range=(-3, 3), bins=10, **options)
    with hist:
        for _ in range(epochs):
            m(torch.randn(3, 4))
            hist.end_epoch()
    return hist


def test_an_existing_run_is_refused_when_the_recorder_is_made(tmp_run):
    record(tmp_run)
    before = tmp_run.read_bytes()
    with pytest.raises(FileExistsError) as err:
        tp.ActivationsHistogram(model(), tmp_run)  # not at attach: before any set-up that follows
    msg = str(err.value)
    assert "overwrite=True" in msg and f"path={str(tmp_run.parent) + os.sep!r}" in msg
    assert tmp_run.read_bytes() == before


def test_overwrite_replaces_the_run_only_when_recording_starts(tmp_run):
    record(tmp_run, epochs=3)
    hist = tp.ActivationsHistogram(model(), tmp_run, overwrite=True)
    with tp.open_run(tmp_run) as old:
        assert old.epochs == 3  # made, not attached: the old run is intact
    m = hist.model
    with hist:
        m(torch.randn(3, 4))
        hist.end_epoch()
    with tp.open_run(tmp_run) as new:
        assert new.epochs == 1 and new.n_steps("train") == 1


def test_overwrite_replaces_a_run_killed_mid_write(tmp_path):
    """The old run's WAL (left by kill -9) must not be replayed into the new run."""
    path = tmp_path / "killed.tp"
    script = textwrap.dedent(f"""
        import sys, time, torch, twinpeaks as tp
        from torch import nn
        m = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 64))
        hist = tp.ActivationsHistogram(m, {str(path)!r}, range=(-3, 3), bins=50)
        hist.attach()
        for e in range(4):
            for _ in range(5):
                m(torch.randn(3, 4))
            hist.end_epoch()
        print("ready", flush=True)
        time.sleep(60)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        assert Path(f"{path}-wal").stat().st_size > 0  # committed, not checkpointed: the case
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    with tp.open_run(path) as old:
        assert old.epochs == 4
    record(path, overwrite=True)
    with tp.open_run(path) as new:
        assert new.epochs == 1 and [layer.name for layer in new.layers] == ["0", "1", "2"]
        assert new.layer("0").out_shape == (3, 8)


def test_an_existing_folder_named_like_a_run_is_a_folder_of_runs(tmp_path):
    (tmp_path / "adir.tp").mkdir()
    (tmp_path / "adir.tp" / "keep").write_text("x")
    hist = tp.ActivationsHistogram(model(), tmp_path / "adir.tp", overwrite=True)  # a folder: a run in it
    assert hist.path.parent == tmp_path / "adir.tp"


@pytest.mark.parametrize("form", ["trailing-slash", "existing-folder", "pathlike-folder"])
def test_a_folder_gets_a_new_sortable_run_each_time(tmp_path, form):
    folder = tmp_path / "runs"
    if form != "trailing-slash":
        folder.mkdir()
    arg = {"trailing-slash": f"{folder}{os.sep}", "existing-folder": str(folder), "pathlike-folder": folder}[form]
    first = tp.ActivationsHistogram(model(), arg, range=(-3, 3))
    assert isinstance(first.path, Path) and first.path.parent == folder
    assert parse_run_name(first.path.name) is not None  # a name to print before training
    assert not first.path.exists()  # created when recording starts
    with first:
        first.model(torch.randn(2, 4))
        first.end_epoch()
    second = record(arg)
    third = record(arg)
    assert list_runs(folder) == [first.path, second.path, third.path]  # sorted by name = made last
    assert len({first.path, second.path, third.path}) == 3
    with tp.open_run(folder) as newest:
        assert newest.path == third.path


def test_a_name_taken_between_making_and_recording_moves_to_the_next(tmp_path):
    hist = tp.ActivationsHistogram(model(), f"{tmp_path}/", range=(-3, 3))
    planned = hist.path
    planned.write_bytes(b"")  # another process took the name in the meantime
    with hist:
        hist.model(torch.randn(2, 4))
        hist.end_epoch()
    assert hist.path != planned and hist.path.parent == tmp_path
    assert parse_run_name(hist.path.name)[0] == parse_run_name(planned.name)[0]  # same second, next suffix
    assert list_runs(tmp_path)[-1] == hist.path
    with tp.open_run(hist.path) as run:
        assert run.epochs == 1


def test_two_processes_recording_into_one_folder_at_once(tmp_path):
    script = textwrap.dedent("""
        import sys, torch, twinpeaks as tp
        from torch import nn
        m = nn.Linear(4, 2)
        hist = tp.ActivationsHistogram(m, sys.argv[1], range=(-3, 3))
        with hist:
            m(torch.randn(2, 4)); hist.end_epoch()
        print(hist.path)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [subprocess.Popen([sys.executable, "-c", script, f"{tmp_path}/"], stdout=subprocess.PIPE, text=True,
                              env=env) for _ in range(3)]
    paths = [Path(p.communicate(timeout=300)[0].strip()) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(set(paths)) == 3 and sorted(paths) == sorted(list_runs(tmp_path))
    for p in paths:
        with tp.open_run(p) as run:
            assert run.epochs == 1


def test_in_memory_runs_are_unchanged():
    hist = record(None)
    assert hist.path is None and hist.run.epochs == 1


@pytest.mark.parametrize("bad", [1, "yes"], ids=["int", "str"])
def test_overwrite_must_be_a_bool(tmp_run, bad):
    with pytest.raises(TypeError, match="overwrite must be True or False"):
        tp.ActivationsHistogram(model(), tmp_run, overwrite=bad)


def test_adapters_check_when_the_callback_is_made_and_pass_overwrite(tmp_run):
    pytest.importorskip("lightning")
    from twinpeaks.lightning import ActivationsHistogram

    record(tmp_run)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        ActivationsHistogram(path=tmp_run)
    cb = ActivationsHistogram(path=tmp_run, overwrite=True)
    assert cb._options["overwrite"] is True
    folder_cb = ActivationsHistogram(path=f"{tmp_run.parent}/")
    assert folder_cb._options["path"] == f"{tmp_run.parent}/"  # named when the recorder is made (fit start)


def test_time_in_names_is_local_and_recent(tmp_path):
    hist = tp.ActivationsHistogram(model(), f"{tmp_path}/")
    when, _ = parse_run_name(hist.path.name)
    assert abs(when.timestamp() - time.time()) < 120
