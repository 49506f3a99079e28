"""Issue #14.9: any explicit host works, idle and half-open connections cost no thread and time out,
and answers name runs relative to DIR."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import threading
import time

import pytest

from twinpeaks.web import server as srvmod
from twinpeaks.web.server import make_server


@pytest.fixture(scope="module")
def root(tmp_path_factory, record_run):
    root = tmp_path_factory.mktemp("served") / "runs"
    root.mkdir()
    record_run(root / "good.tp", epochs=1, steps=2, valid=1)
    (root / "sub").mkdir()
    shutil.copyfile(root / "good.tp", root / "sub" / "nested.tp")
    return root


@pytest.fixture
def serve(root):
    servers = []

    def start(host="127.0.0.1"):
        s = make_server(root, host, 0)
        threading.Thread(target=s.serve_forever, daemon=True).start()
        servers.append(s)
        return s.server_address[1]

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def get(host, port, path, headers=None, timeout=10):
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        res = conn.getresponse()
        return res.status, res.read().decode()
    finally:
        conn.close()


def test_an_explicit_loopback_host_answers_its_own_name(serve):
    port = serve("127.0.0.2")
    assert get("127.0.0.2", port, "/api/runs")[0] == 200  # Host: 127.0.0.2:port
    for host in ("localhost", f"localhost:{port}", "127.0.0.1", f"127.0.0.2:{port}", "127.0.0.2"):
        assert get("127.0.0.2", port, "/api/runs", headers={"Host": host})[0] == 200, host
    status, body = get("127.0.0.2", port, "/api/runs", headers={"Host": f"evil.example:{port}"})
    assert status == 400 and "Host" in body


def test_api_run_names_the_run_relative_to_dir(serve, root):
    port = serve()
    for rel in ("good.tp", "sub/nested.tp"):
        status, body = get("127.0.0.1", port, f"/api/run?path={rel}")
        assert status == 200
        assert json.loads(body)["runs"][0]["path"] == rel
        assert str(root) not in body and str(root.parent) not in body


def test_idle_and_half_open_connections_do_not_block_a_request(serve):
    port = serve()
    before = threading.active_count()
    socks = []
    try:
        for i in range(400):
            s = socket.create_connection(("127.0.0.1", port))
            if i % 4 == 0:
                s.sendall(b"GET /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # half a request head, never finished
            socks.append(s)
        t0 = time.monotonic()
        status, body = get("127.0.0.1", port, "/api/runs")
        assert status == 200 and json.loads(body)["runs"]
        assert time.monotonic() - t0 < 5
        assert threading.active_count() <= before + srvmod.WORKERS + 2  # a fixed pool, no thread per connection
    finally:
        for s in socks:
            s.close()


def test_a_silent_connection_is_closed_after_the_idle_timeout(serve, monkeypatch):
    monkeypatch.setattr(srvmod, "IDLE_S", 0.5)
    port = serve()
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(10)
    t0 = time.monotonic()
    try:
        assert s.recv(1) == b""  # closed by the server, not by our timeout
    finally:
        s.close()
    assert time.monotonic() - t0 < 5


def test_too_many_waiting_connections_drop_the_oldest(serve, monkeypatch):
    monkeypatch.setattr(srvmod, "MAX_PENDING", 20)
    port = serve()
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
    try:
        socks[0].settimeout(10)
        assert socks[0].recv(1) == b""
        assert get("127.0.0.1", port, "/api/runs")[0] == 200
    finally:
        for s in socks:
            s.close()
