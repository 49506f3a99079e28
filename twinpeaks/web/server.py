"""``twinpeaks serve``: a live dashboard of the run files under a folder.

Design constraints:

* Read-only and never in the writer's way. Each request opens the run file
  with a read-only SQLite connection (WAL readers never block the writer),
  reads, and closes it; no read transaction outlives a request.
* Safe by default. Binds 127.0.0.1; the routes are a fixed table (no URL maps
  to a file); a run is named by a query parameter that must resolve, after
  symlinks, to a regular ``*.tp`` file inside the served folder, else 404, and
  answers name runs by their path under the folder, never the server's path.
  On a loopback address the Host header must name a loopback host or the bound
  address (no DNS rebinding). Pages carry a Content-Security-Policy allowing
  only this server.
* Bounded. Connections wait for their request in one selector thread (no
  thread per connection): an idle or half-open connection costs a socket until
  ``IDLE_S`` and at most ``MAX_PENDING`` wait (the oldest is dropped); a
  complete request head (at most ``MAX_HEAD`` bytes, GET has no body) goes to a
  fixed pool of ``WORKERS`` threads, whose writes time out after ``IO_S``.
* One bad run never takes the others down: a corrupt or half-written file
  answers an error for that run only.
* Live: the page polls ``/api/status`` (cheap: a stamp of the file and its WAL,
  and the epoch count) and re-fetches ``/api/run`` when it changes. Payloads
  are cached per stamp.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import selectors
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .._version import __version__
from ..errors import TwinpeaksError
from ..run import Run, open_run
from ..rundir import run_sort_key
from .build import plotly_js, static_text
from .payload import report_payload

log = logging.getLogger("twinpeaks")

RUN_SUFFIX = ".tp"
MIN_REBUILD_S = 2.0
#: Seconds a connection may take to send its request head; a request head's most bytes.
IDLE_S = 20.0
MAX_HEAD = 16384
#: Connections waiting for their request at most (the oldest beyond are closed); worker threads.
MAX_PENDING = 1024
WORKERS = 8
#: Socket timeout of a worker's reads and writes.
IO_S = 20.0
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1", "[::1]"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
INDEX = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>twinpeaks serve</title><link rel="stylesheet" href="/static/report.css"></head>
<body><div class="tp-dash"><aside class="tp-side"><h1>twinpeaks</h1><ul id="tp-runlist"></ul>
<p class="tp-status" id="tp-status"></p></aside>
<main id="tp-app" class="tp-app"><p class="tp-note">Pick a run on the left.</p></main></div>
<script src="/static/plotly.min.js"></script><script src="/static/report.js"></script>
<script src="/static/dashboard.js"></script></body></html>
"""


class NotARun(Exception):
    """The request names nothing that may be served: answered 404, saying no more."""


@dataclass
class _Cached:
    stamp: tuple
    body: bytes
    built_at: float
    seconds: float


class RunDirectory:
    """The run files under one folder, and cached payloads of them."""

    def __init__(self, root: str | os.PathLike):
        root_path = Path(root)
        if not root_path.is_dir():
            raise NotADirectoryError(f"DIR {str(root)!r} is not a directory: give the folder that holds your .tp runs")
        self.root = root_path.resolve()
        self._cache: dict[Path, _Cached] = {}
        self._lock = threading.Lock()

    def runs(self) -> list[str]:
        """Relative paths (with ``/``) of the ``*.tp`` files under the folder, hidden folders skipped."""
        found = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if not name.endswith(RUN_SUFFIX) or name.startswith("."):
                    continue
                rel = (Path(dirpath) / name).relative_to(self.root).as_posix()
                try:
                    self.resolve(rel)
                except NotARun:
                    continue
                found.append(rel)
        return found

    def newest(self, rels: list[str]) -> str | None:
        """The newest of the runs ``rels`` (by the time in their names, see :mod:`twinpeaks.rundir`)."""
        return max(rels, key=lambda rel: run_sort_key(self.root / rel), default=None)

    def resolve(self, rel: str | None) -> Path:
        """The real path of run ``rel``, or :class:`NotARun` for anything else."""
        if not rel or "\x00" in rel or "\\" in rel or rel.startswith("/") or not rel.endswith(RUN_SUFFIX):
            raise NotARun(rel)
        parts = rel.split("/")
        if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            raise NotARun(rel)
        try:
            real = (self.root / rel).resolve(strict=True)
        except (OSError, RuntimeError):
            raise NotARun(rel) from None
        if not real.is_relative_to(self.root) or not real.is_file():
            raise NotARun(rel)
        return real

    @staticmethod
    def stamp(real: Path) -> tuple:
        """Changes whenever the writer commits (the WAL grows) or checkpoints."""
        out: list[Any] = []
        for p in (real, Path(str(real) + "-wal")):
            try:
                st = p.stat()
                out += [st.st_size, st.st_mtime_ns]
            except OSError:
                out += [None, None]
        return tuple(out)

    @staticmethod
    @contextlib.contextmanager
    def _open(real: Path, rel: str) -> Iterator[Run]:
        """The run, read-only; its errors name it as the page knows it, not by its path on this machine."""
        try:
            with open_run(real) as run:
                yield run
        except TwinpeaksError as exc:
            raise type(exc)(str(exc).replace(str(real), rel)) from None

    def status(self, rel: str) -> dict:
        real = self.resolve(rel)
        stamp = self.stamp(real)
        with self._open(real, rel) as run:
            _ = run.meta, run.layers  # checked here (cheap): a damaged run is marked in the list
            return {"path": rel, "stamp": "-".join(map(str, stamp)), "epochs": run.epochs,
                    "steps": {p: run.n_steps(p) for p in run.phases}}

    def payload(self, rel: str) -> bytes:
        """The page data of run ``rel``, rebuilt when the file changed.

        While a long run is written the file changes at every flush; rebuilds
        are spaced by at least ``MIN_REBUILD_S`` and 4x the last build's time,
        so that watching never takes more than a fraction of a core from training.
        """
        real = self.resolve(rel)
        stamp = self.stamp(real)
        with self._lock:
            hit = self._cache.get(real)
        now = time.monotonic()
        if hit and (hit.stamp == stamp or now - hit.built_at < max(MIN_REBUILD_S, 4 * hit.seconds)):
            return hit.body
        with self._open(real, rel) as run:
            data = report_payload([run], [rel])
        for r in data["runs"]:
            r["path"] = rel  # relative to DIR: the page never learns where the server keeps its files
        data["title"] = f"twinpeaks · {rel}"
        data["stamp"] = "-".join(map(str, stamp))
        body = json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
        with self._lock:
            self._cache[real] = _Cached(stamp, body, now, time.monotonic() - now)
        return body


class Handler(BaseHTTPRequestHandler):
    """GET only; a fixed table of routes."""

    server_version = f"twinpeaks/{__version__}"
    directory: RunDirectory  # set on the subclass made by make_server
    loopback_only: bool = True
    host_names: frozenset[str] = frozenset(LOOPBACK_NAMES)  # Host names accepted on a loopback address
    timeout = IO_S
    server: BoundedHTTPServer

    def setup(self) -> None:
        super().setup()
        head = self.server.take_head(self.connection)
        if head is not None:  # the selector thread has read the request head already
            self.rfile.close()
            self.rfile = io.BytesIO(head)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base class name
        log.debug("serve: %s - %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, ctype: str, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        if ctype.startswith("text/html"):
            self.send_header("Content-Security-Policy", CSP)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj, allow_nan=False).encode(), "application/json; charset=utf-8")

    def _host_ok(self) -> bool:
        if not self.loopback_only:
            return True
        host = (self.headers.get("Host") or "").strip().lower()
        if host.startswith("["):
            name = host[: host.find("]") + 1]
        else:
            name = host.rsplit(":", 1)[0] if ":" in host else host
        return name in self.host_names

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        try:
            if not self._host_ok():
                self._json(HTTPStatus.BAD_REQUEST, {"error": "unexpected Host header: open the dashboard at 127.0.0.1"})
                return
            url = urlsplit(self.path)
            route = ROUTES.get(url.path)
            if route is None:
                self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
                return
            route(self, parse_qs(url.query, keep_blank_values=True))
        except (BrokenPipeError, ConnectionResetError):  # the browser went away
            pass
        except NotARun:
            self._json(HTTPStatus.NOT_FOUND, {"error": "no such run under the served folder"})
        except (TwinpeaksError, sqlite3.Error, OSError, ValueError, KeyError, IndexError) as exc:
            # a corrupt or half-written run: say so for this run only
            self._json(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": f"{type(exc).__name__}: {exc}"})
        except Exception as exc:  # noqa: BLE001 - a bug of ours: answer, never drop the connection
            log.warning("serve: %s failed: %r", self.path, exc)
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"})

    # -- routes ---------------------------------------------------------------------
    def _index(self, query: dict) -> None:
        self._send(HTTPStatus.OK, INDEX.encode(), "text/html; charset=utf-8")

    def _static(self, name: str, ctype: str) -> None:
        text = plotly_js() if name == "plotly.min.js" else static_text(name)
        self._send(HTTPStatus.OK, text.encode(), ctype, cache=name == "plotly.min.js")

    def _runs(self, query: dict) -> None:
        out = []
        for rel in self.directory.runs():
            try:
                out.append(self.directory.status(rel))
            except NotARun:
                continue
            except Exception as exc:  # noqa: BLE001 - one bad run never hides the others
                out.append({"path": rel, "error": f"{type(exc).__name__}: {exc}"})
        self._json(HTTPStatus.OK, {"runs": out, "root": self.directory.root.name, "newest": self.directory.newest(
            [r["path"] for r in out if "error" not in r])})

    def _one(self, query: dict, what: str) -> None:
        rel = query.get("path", [None])
        if len(rel) != 1 or not rel[0]:
            self._json(HTTPStatus.BAD_REQUEST, {"error": "give exactly one ?path=RUN"})
            return
        if what == "status":
            self._json(HTTPStatus.OK, self.directory.status(rel[0]))
        else:
            self._send(HTTPStatus.OK, self.directory.payload(rel[0]), "application/json; charset=utf-8")


ROUTES = {
    "/": Handler._index,
    "/index.html": Handler._index,
    "/static/report.js": lambda h, q: h._static("report.js", "text/javascript; charset=utf-8"),
    "/static/dashboard.js": lambda h, q: h._static("dashboard.js", "text/javascript; charset=utf-8"),
    "/static/report.css": lambda h, q: h._static("report.css", "text/css; charset=utf-8"),
    "/static/plotly.min.js": lambda h, q: h._static("plotly.min.js", "text/javascript; charset=utf-8"),
    "/favicon.ico": lambda h, q: h._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon"),
    "/api/runs": Handler._runs,
    "/api/status": lambda h, q: h._one(q, "status"),
    "/api/run": lambda h, q: h._one(q, "run"),
}


class BoundedHTTPServer(ThreadingHTTPServer):
    """An HTTP server with a fixed pool of workers; connections wait for their request in one selector thread."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="twinpeaks-serve")
        self._heads: dict[socket.socket, bytes] = {}
        self._new: list[tuple[socket.socket, Any]] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._waiter = threading.Thread(target=self._wait_for_requests, name="twinpeaks-serve-wait", daemon=True)
        self._waiter.start()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Called by the accept loop: park the connection until its request head has arrived."""
        request.setblocking(False)
        with self._lock:
            self._new.append((request, client_address))

    def take_head(self, conn: socket.socket) -> bytes | None:
        with self._lock:
            return self._heads.pop(conn, None)

    def _wait_for_requests(self) -> None:
        sel = selectors.DefaultSelector()
        pending: dict[socket.socket, tuple[Any, float, bytearray]] = {}  # insertion order = age
        while not self._closing.is_set():
            with self._lock:
                new, self._new = self._new, []
            for conn, addr in new:
                pending[conn] = (addr, time.monotonic(), bytearray())
                sel.register(conn, selectors.EVENT_READ)
            while len(pending) > MAX_PENDING:  # too many waiting: drop the oldest
                self._drop(sel, pending, next(iter(pending)))
            for key, _ in sel.select(timeout=0.1):
                conn = key.fileobj  # type: ignore[assignment]
                addr, _t0, buf = pending[conn]  # type: ignore[index]
                try:
                    chunk = conn.recv(MAX_HEAD + 1 - len(buf))  # type: ignore[union-attr]
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    chunk = b""
                buf += chunk
                if not chunk or b"\r\n\r\n" in buf or b"\n\n" in buf or len(buf) > MAX_HEAD:
                    sel.unregister(conn)
                    del pending[conn]  # type: ignore[arg-type]
                    if not chunk and not buf:
                        self.shutdown_request(conn)
                        continue
                    with self._lock:
                        self._heads[conn] = bytes(buf)  # type: ignore[index]
                    conn.setblocking(True)  # type: ignore[union-attr]
                    self._pool.submit(self._work, conn, addr)
            now = time.monotonic()
            for conn in [c for c, (_, t0, _) in pending.items() if now - t0 > IDLE_S]:
                self._drop(sel, pending, conn)
        for conn in list(pending):
            self._drop(sel, pending, conn)
        sel.close()

    def _drop(self, sel: selectors.BaseSelector, pending: dict, conn: socket.socket) -> None:
        sel.unregister(conn)
        del pending[conn]
        self.shutdown_request(conn)

    def _work(self, conn: socket.socket, addr: Any) -> None:
        try:
            self.finish_request(conn, addr)
        except Exception:  # noqa: BLE001 - as socketserver does: log, go on
            self.handle_error(conn, addr)
        finally:
            with self._lock:
                self._heads.pop(conn, None)
            self.shutdown_request(conn)

    def server_close(self) -> None:
        self._closing.set()
        self._waiter.join(5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        super().server_close()


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_NAMES or host.startswith("127.")


def make_server(directory: str | os.PathLike, host: str = "127.0.0.1", port: int = 8686) -> BoundedHTTPServer:
    """A dashboard server for the runs under ``directory`` (not started: call ``serve_forever``).

    Example:
        >>> srv = make_server("runs", port=0)                 # doctest: +SKIP
        >>> threading.Thread(target=srv.serve_forever).start()  # doctest: +SKIP
    """
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in 0..65535, got {port!r}")
    bound = host.strip().lower()
    names = {*LOOPBACK_NAMES, bound, f"[{bound}]" if ":" in bound and not bound.startswith("[") else bound}
    handler = type("RunHandler", (Handler,), {"directory": RunDirectory(directory),
                                              "loopback_only": is_loopback(host), "host_names": frozenset(names)})
    server_cls: type[BoundedHTTPServer] = BoundedHTTPServer
    if ":" in host:

        class BoundedHTTPServerV6(BoundedHTTPServer):
            address_family = socket.AF_INET6

        server_cls = BoundedHTTPServerV6
    server = server_cls((host, port), handler)
    if not is_loopback(host):
        log.warning("twinpeaks serve: listening on %s: anyone who can reach it can read the runs under %s",
                    host, directory)
    return server


def serve(directory: str | os.PathLike, host: str = "127.0.0.1", port: int = 8686) -> None:
    """Serve the dashboard until interrupted (Ctrl-C).

    Example:
        >>> serve("runs")  # then open http://127.0.0.1:8686  # doctest: +SKIP
    """
    server = make_server(directory, host, port)
    try:
        server.serve_forever()
    finally:
        server.server_close()


__all__ = ["make_server", "serve", "RunDirectory"]
