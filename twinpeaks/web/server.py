"""``twinpeaks serve``: a live dashboard of the run files under a folder.

Design constraints:

* Read-only and never in the writer's way. Each request opens the run file
  with a read-only SQLite connection (WAL readers never block the writer),
  reads, and closes it; no read transaction outlives a request.
* Safe by default. Binds 127.0.0.1; the routes are a fixed table (no URL maps
  to a file); a run is named by a query parameter that must resolve, after
  symlinks, to a regular ``*.tp`` file inside the served folder, else 404.
  On a loopback address the Host header must name a loopback host (no DNS
  rebinding). Pages carry a Content-Security-Policy allowing only this server.
* One bad run never takes the others down: a corrupt or half-written file
  answers an error for that run only.
* Live: the page polls ``/api/status`` (cheap: a stamp of the file and its WAL,
  and the epoch count) and re-fetches ``/api/run`` when it changes. Payloads
  are cached per stamp.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .._version import __version__
from ..errors import TwinpeaksError
from ..run import open_run
from ..rundir import run_sort_key
from .build import plotly_js, static_text
from .payload import report_payload

log = logging.getLogger("twinpeaks")

RUN_SUFFIX = ".tp"
MIN_REBUILD_S = 2.0
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
    def _open(real: Path, rel: str) -> Any:
        try:
            return open_run(real)
        except TwinpeaksError as exc:  # name the run as the page knows it, not by its path on this machine
            raise type(exc)(str(exc).replace(str(real), rel)) from None

    def status(self, rel: str) -> dict:
        real = self.resolve(rel)
        stamp = self.stamp(real)
        with self._open(real, rel) as run:
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
        return name in LOOPBACK_NAMES

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
            except (TwinpeaksError, sqlite3.Error, OSError, ValueError, KeyError, IndexError) as exc:
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


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_NAMES or host.startswith("127.")


def make_server(directory: str | os.PathLike, host: str = "127.0.0.1", port: int = 8686) -> ThreadingHTTPServer:
    """A dashboard server for the runs under ``directory`` (not started: call ``serve_forever``).

    Example:
        >>> srv = make_server("runs", port=0)                 # doctest: +SKIP
        >>> threading.Thread(target=srv.serve_forever).start()  # doctest: +SKIP
    """
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in 0..65535, got {port!r}")
    handler = type("RunHandler", (Handler,), {"directory": RunDirectory(directory),
                                              "loopback_only": is_loopback(host)})
    server_cls: type[ThreadingHTTPServer] = ThreadingHTTPServer
    if ":" in host:
        import socket

        class ThreadingHTTPServerV6(ThreadingHTTPServer):
            address_family = socket.AF_INET6

        server_cls = ThreadingHTTPServerV6
    server = server_cls((host, port), handler)
    server.daemon_threads = True
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
