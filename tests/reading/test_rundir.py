"""A folder of runs: sortable names, collisions, the newest run, and every reader that takes a folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

import twinpeaks as tp
from twinpeaks import cli
from twinpeaks.errors import RunFileError
from twinpeaks.rundir import (
    claim_run_path,
    list_runs,
    names_a_folder,
    newest_run,
    next_run_path,
    parse_run_name,
    resolve_run,
    run_name,
)

T = datetime(2026, 11, 29, 23, 15, 0)


def touch(path: Path, mtime: float | None = None) -> Path:
    path.write_bytes(b"x")  # not empty: an empty file is a claimed name without a run
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def test_names_sort_by_time_and_parse_back():
    names = [run_name(T + timedelta(seconds=s), n) for s, n in [(0, 1), (0, 2), (0, 10), (1, 1), (3600, 1)]]
    assert names[:3] == ["2026-11-29_231500.tp", "2026-11-29_231500_2.tp", "2026-11-29_231500_10.tp"]
    assert [parse_run_name(n) for n in names] == [(T, 1), (T, 2), (T, 10), (T + timedelta(seconds=1), 1),
                                                  (T + timedelta(hours=1), 1)]
    for bad in ["exp1.tp", "2026-11-29_231500.tp.live.png", "2026-13-45_231500.tp", "2026-11-29_231500_0.tp",
                "2026-11-29_2315.tp", "x2026-11-29_231500.tp"]:
        assert parse_run_name(bad) is None, bad


def test_a_second_run_in_the_same_second_gets_a_suffix_and_sorts_after(tmp_path):
    paths = [claim_run_path(tmp_path, T) for _ in range(11)]
    for p in paths:
        p.write_bytes(b"run")
    assert [p.name for p in paths[:3]] == ["2026-11-29_231500.tp", "2026-11-29_231500_2.tp", "2026-11-29_231500_3.tp"]
    assert paths[-1].name == "2026-11-29_231500_11.tp"
    assert list_runs(tmp_path) == paths  # _10 and _11 after _9: by number, not by text
    assert newest_run(tmp_path) == paths[-1]
    assert all(p.exists() for p in paths)


def test_a_new_name_sorts_last_even_if_the_clock_went_back(tmp_path):
    later = claim_run_path(tmp_path, T + timedelta(hours=2))
    new = claim_run_path(tmp_path, T)
    new.write_bytes(b"run")
    assert new.name == "2026-11-30_011500_2.tp" and later.name == "2026-11-30_011500.tp"
    assert newest_run(tmp_path) == new


def test_a_name_with_a_leftover_wal_is_not_reused(tmp_path):
    touch(tmp_path / "2026-11-29_231500.tp-wal")
    assert next_run_path(tmp_path, T).name == "2026-11-29_231500_2.tp"


def test_processes_claiming_in_the_same_second_get_different_names(tmp_path):
    code = ("import sys; from datetime import datetime; from twinpeaks.rundir import claim_run_path; "
            "print(claim_run_path(sys.argv[1], datetime(2026, 11, 29, 23, 15)).name)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(4)]
    names = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(names) == sorted(set(names)) and len(names) == 4, names
    assert {p.name for p in list_runs(tmp_path)} == set(names)


def test_threads_claiming_at_once_get_different_names(tmp_path):
    out: list[Path] = []
    threads = [threading.Thread(target=lambda: out.append(claim_run_path(tmp_path, T))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(out) == 8 and len(set(out)) == 8


def test_other_names_count_by_modification_time_hidden_and_folders_skipped(tmp_path):
    now = time.time()
    old = touch(tmp_path / "exp_old.tp", now - 3600)
    named = touch(tmp_path / run_name(datetime.fromtimestamp(now - 60)))
    fresh = touch(tmp_path / "exp_fresh.tp", now)
    touch(tmp_path / ".hidden.tp", now + 100)
    (tmp_path / "folder.tp").mkdir()
    touch(tmp_path / "notes.txt", now + 100)
    touch(tmp_path / f"{fresh.name}.live.png", now + 100)
    assert list_runs(tmp_path) == [old, named, fresh]
    assert newest_run(tmp_path) == fresh


def test_a_claimed_name_without_a_run_yet_is_passed_over(tmp_path):
    done = touch(tmp_path / run_name(T))
    claim_run_path(tmp_path, T + timedelta(seconds=5))  # a recorder about to write, or one that died first
    assert newest_run(tmp_path) == done
    (tmp_path / run_name(T)).unlink()
    with pytest.raises(RunFileError, match="no run files"):
        newest_run(tmp_path)


def test_folder_detection_and_errors(tmp_path):
    assert names_a_folder(tmp_path) and names_a_folder("nowhere/") and names_a_folder(f"nowhere{os.sep}")
    assert not names_a_folder(tmp_path / "run.tp") and not names_a_folder("nowhere")
    with pytest.raises(RunFileError, match="no folder at 'nowhere/'"):
        resolve_run("nowhere/")
    with pytest.raises(RunFileError, match=r"no run files \(\*\.tp\) in folder"):
        newest_run(tmp_path)
    (tmp_path / "cnn").mkdir()
    touch(tmp_path / "cnn" / "a.tp")
    with pytest.raises(RunFileError, match="sub-folders do: give one, e.g. '.*cnn'"):
        newest_run(tmp_path)
    assert resolve_run(tmp_path / "file.tp") == tmp_path / "file.tp"  # a file path is taken as given


@pytest.fixture(scope="module")
def runs(tmp_path_factory, record_run):
    """Two real runs in one folder: the older has 2 epochs, the newer 1; the newer is named 1 s later."""
    folder = tmp_path_factory.mktemp("folder")
    older = claim_run_path(folder, T)
    newer = claim_run_path(folder, T + timedelta(seconds=1))
    older.unlink()
    newer.unlink()
    record_run(older, epochs=2, steps=3, valid=1)
    record_run(newer, epochs=1, steps=3, valid=1)
    os.utime(older, (time.time() + 100, time.time() + 100))  # modified later: the name decides, not mtime
    return {"folder": folder, "older": older, "newer": newer}


@pytest.mark.parametrize("form", ["plain", "slash", "pathlike"])
def test_open_run_of_a_folder_opens_the_newest(runs, form):
    folder = runs["folder"]
    arg = {"plain": str(folder), "slash": f"{folder}/", "pathlike": folder}[form]
    with tp.open_run(arg) as run:
        assert run.path == runs["newer"] and run.epochs == 1


def test_readers_take_a_folder(runs, tmp_path):
    assert tp.diagnose(runs["folder"]).to_json() == tp.diagnose(runs["newer"]).to_json()
    assert tp.diagnose(runs["folder"]).to_json() != tp.diagnose(runs["older"]).to_json()
    fig = tp.plot_twin_peaks_history(runs["folder"])
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 1  # the newer run: one epoch
    out = tp.report(runs["folder"], tmp_path / "r.html")
    assert runs["newer"].name in out.read_text()
    assert runs["older"].name not in out.read_text()


def test_cli_commands_take_a_folder(runs, tmp_path, capsys):
    folder, newer = str(runs["folder"]), runs["newer"]
    said = f"twinpeaks: newest run in {folder}: {newer}"

    assert cli.main(["info", folder]) == 0
    cap = capsys.readouterr()
    assert f"run      {newer}" in cap.out and "epochs   1" in cap.out and said in cap.err

    assert cli.main(["diagnose", folder, "--json"]) == 0
    cap = capsys.readouterr()
    json.loads(cap.out)  # stdout stays pure JSON; the note goes to stderr
    assert said in cap.err

    assert cli.main(["plot", folder, "--chart", "history"]) == 0
    cap = capsys.readouterr()
    assert cap.out.strip() == f"{newer}.history.png" and Path(cap.out.strip()).is_file()

    assert cli.main(["report", folder, "-o", str(tmp_path / "rep.html")]) == 0
    assert newer.name in (tmp_path / "rep.html").read_text()
    capsys.readouterr()

    pytest.importorskip("tensorboard")
    assert cli.main(["export", folder, "--tensorboard", str(tmp_path / "tb")]) == 0
    assert said in capsys.readouterr().err
    assert any((tmp_path / "tb").iterdir())


def test_cli_folder_without_runs_is_a_one_line_error(tmp_path, capsys):
    for cmd in (["info"], ["diagnose"], ["plot"], ["report"]):
        assert cli.main([*cmd, str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no run files (*.tp) in folder" in err, err


def test_cli_help_says_what_a_folder_means(capsys):
    for cmd, words in [("info", "newest run"), ("diagnose", "newest run"), ("plot", "newest run"),
                       ("export", "newest run"), ("report", "newest run"), ("serve", "newest is shown")]:
        with pytest.raises(SystemExit):
            cli.main([cmd, "--help"])
        assert words in " ".join(capsys.readouterr().out.split()), cmd


def test_dashboard_lists_all_and_names_the_newest(runs):
    from twinpeaks.web.server import make_server

    server = make_server(runs["folder"], "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=20)
        conn.request("GET", "/api/runs")
        body = json.loads(conn.getresponse().read())
        conn.close()
    finally:
        server.shutdown()
        server.server_close()
    assert sorted(r["path"] for r in body["runs"]) == sorted([runs["older"].name, runs["newer"].name])
    assert body["newest"] == runs["newer"].name
