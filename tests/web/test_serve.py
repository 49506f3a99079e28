"""``twinpeaks serve``: only run files under DIR, errors per run, live updates in headless chromium.

Every request goes to 127.0.0.1 on an ephemeral port; every loop is bounded.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from twinpeaks.web.server import make_server

SECRET = "TOPSECRET-do-not-serve"


@pytest.fixture(scope="module")
def served(recorded_run, tmp_path_factory):
    base = tmp_path_factory.mktemp("serve")
    root, outside = base / "runs", base / "outside"
    root.mkdir()
    outside.mkdir()
    good = recorded_run(root / "good.tp", epochs=2, test=False).path
    (root / "sub").mkdir()
    shutil.copy(good, root / "sub" / "nested.tp")
    (root / "corrupt.tp").write_bytes(b"this is not a run file at all " * 10)
    (root / "half.tp").write_bytes(good.read_bytes()[:3000])  # a run cut off mid-write
    (root / "notes.txt").write_text(SECRET)
    (root / ".hidden").mkdir()
    shutil.copy(good, root / ".hidden" / "h.tp")
    shutil.copy(good, outside / "secret.tp")
    (outside / "secret.txt").write_text(SECRET)
    os.symlink(outside / "secret.tp", root / "link.tp")
    os.symlink(outside, root / "linkdir")
    server = make_server(root, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"root": root, "outside": outside, "port": server.server_address[1], "good": good}
    finally:
        server.shutdown()
        server.server_close()


def get(port, path, method="GET", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request(method, path, headers=headers or {})
        res = conn.getresponse()
        return res.status, res.read().decode("utf-8", "replace"), dict(res.getheaders())
    finally:
        conn.close()


def test_lists_the_runs_under_dir_only(served):
    status, body, headers = get(served["port"], "/api/runs")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    runs = {r["path"]: r for r in json.loads(body)["runs"]}
    assert set(runs) == {"corrupt.tp", "good.tp", "half.tp", "sub/nested.tp"}
    assert runs["good.tp"]["epochs"] == 2 and runs["sub/nested.tp"]["epochs"] == 2
    assert "not a twinpeaks run file" in runs["corrupt.tp"]["error"]
    assert runs["half.tp"]["error"]
    assert str(served["root"]) not in body  # errors name runs as the page knows them


REFUSED = {
    "dotdot": "/api/run?path=../outside/secret.tp",
    "dotdot encoded": "/api/run?path=%2e%2e%2foutside%2fsecret.tp",
    "dotdot double encoded": "/api/run?path=%252e%252e%252foutside%252fsecret.tp",
    "dotdot inside": "/api/run?path=sub/../../outside/secret.tp",
    "absolute": "/api/run?path=/etc/passwd",
    "absolute encoded": "/api/run?path=%2Fetc%2Fpasswd",
    "backslash": "/api/run?path=..%5Coutside%5Csecret.tp",
    "symlinked file out of dir": "/api/run?path=link.tp",
    "symlinked folder out of dir": "/api/run?path=linkdir/secret.tp",
    "non-run file": "/api/run?path=notes.txt",
    "hidden folder": "/api/status?path=.hidden/h.tp",
    "nul byte": "/api/run?path=good.tp%00.txt",
    "missing run": "/api/run?path=nope.tp",
    "path in url": "/../outside/secret.txt",
    "static traversal": "/static/../../outside/secret.txt",
    "static encoded traversal": "/static/%2e%2e/%2e%2e/etc/passwd",
    "unknown route": "/api/secret",
}


@pytest.mark.parametrize("path", REFUSED.values(), ids=REFUSED.keys())
def test_refuses_everything_but_runs_under_dir(served, path):
    status, body, _ = get(served["port"], path)
    assert status == 404, body
    assert SECRET not in body and "root:" not in body


def test_absolute_path_of_a_real_run_is_refused(served):
    status, _, _ = get(served["port"], "/api/run?path=" + str(served["good"]))
    assert status == 404


@pytest.mark.parametrize("path", ["/api/run", "/api/run?path=", "/api/run?path=good.tp&path=half.tp"])
def test_bad_requests(served, path):
    status, body, _ = get(served["port"], path)
    assert status == 400 and "path" in json.loads(body)["error"]


def test_corrupt_and_half_written_runs_fail_alone(served):
    port = served["port"]
    status, body, _ = get(port, "/api/run?path=corrupt.tp")
    assert status == 422 and "not a twinpeaks run file" in json.loads(body)["error"]
    status, body, _ = get(port, "/api/status?path=half.tp")
    assert status == 422 and json.loads(body)["error"]
    status, body, _ = get(port, "/api/run?path=sub/nested.tp")
    assert status == 200
    run = json.loads(body)["runs"][0]
    assert run["epochs"] == 2 and [layer["name"] for layer in run["layers"]] == ["0", "1", "2"]


def test_read_only_and_safe_headers(served):
    digest = hashlib.sha256(served["good"].read_bytes()).hexdigest()
    status, body, headers = get(served["port"], "/")
    assert status == 200 and "Content-Security-Policy" in headers and headers["X-Content-Type-Options"] == "nosniff"
    assert get(served["port"], "/api/run?path=good.tp")[0] == 200
    assert get(served["port"], "/api/run?path=good.tp", method="POST")[0] == 501
    assert get(served["port"], "/api/run?path=good.tp", method="DELETE")[0] == 501
    assert hashlib.sha256(served["good"].read_bytes()).hexdigest() == digest


def test_foreign_host_header_is_refused(served):
    """A page on another site cannot reach the dashboard through DNS rebinding."""
    status, body, _ = get(served["port"], "/api/runs", headers={"Host": "evil.example:8686"})
    assert status == 400 and "Host" in body
    assert get(served["port"], "/api/runs", headers={"Host": "localhost"})[0] == 200


def test_cli_serve_binds_loopback(served):
    proc = subprocess.Popen([sys.executable, "-m", "twinpeaks", "serve", str(served["root"]), "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert url, line
        status, body, _ = get(int(url.group(1)), "/api/runs")
        assert status == 200 and len(json.loads(body)["runs"]) == 4
    finally:
        proc.terminate()
        proc.wait(10)


WRITER = textwrap.dedent("""
    import sys, torch, twinpeaks as tp
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    with tp.ActivationsHistogram(model, sys.argv[1], flush_every=8) as hist:
        for line in sys.stdin:  # one epoch per line the test sends
            model.train()
            for _ in range(12):
                model(torch.randn(4, 4)).sum().backward()
            model.eval()
            with torch.no_grad():
                model(torch.randn(4, 4))
            hist.end_epoch()
            print(hist.epoch, flush=True)
""")


def epochs_shown(pg, deadline_s=20.0):
    """The epoch count in the page's run header, polled (bounded) until it changes."""
    text = pg.text_content("#r0-epochs", timeout=int(deadline_s * 1000))
    return int(text.split()[0])


def wait_for_epochs(pg, n, timeout_s=20.0):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pg.locator("#r0-epochs").count() and epochs_shown(pg) >= n:
            return True
        pg.wait_for_timeout(200)
    return False


def test_dashboard_follows_a_growing_run(new_page, browser, served, tmp_path):  # noqa: F811
    live = served["root"] / "live.tp"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(live)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    page = new_page(browser)
    try:
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "1"
        pg = page.page
        pg.goto(f"http://127.0.0.1:{served['port']}/#run=live.tp")
        pg.wait_for_selector("body[data-ready='1']", timeout=30_000)
        assert wait_for_epochs(pg, 1)
        assert pg.locator("#r0-peaks.js-plotly-plot").count() == 1
        assert "epoch 0" in pg.text_content("#r0-peaks .gtitle")
        # the writer closes two more epochs while the page is open (and the server reads the file)
        for want in (2, 3):
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == str(want)  # never blocked by the reader
            assert wait_for_epochs(pg, want), f"page still shows {epochs_shown(pg)} epochs"
        assert "epoch 2" in pg.text_content("#r0-peaks .gtitle")  # the slider follows the last epoch
        assert "live.tp" in pg.text_content("#tp-runlist")
        pg.screenshot(path=str(tmp_path / "dashboard.png"))
        # a corrupt run shows its error; the others keep working
        pg.goto(f"http://127.0.0.1:{served['port']}/#run=corrupt.tp")
        pg.wait_for_selector("#tp-run-error", timeout=10_000)
        assert "not a twinpeaks run file" in pg.text_content("#tp-run-error")
        pg.goto(f"http://127.0.0.1:{served['port']}/#run=good.tp")
        pg.wait_for_selector("#r0-peaks.js-plotly-plot", timeout=10_000)
        assert not [e for e in page.errors if "422" not in e], page.errors
    finally:
        page.close()
        proc.stdin.close()
        proc.wait(20)
        live.unlink(missing_ok=True)
