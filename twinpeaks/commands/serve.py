"""``twinpeaks serve DIR``: a live dashboard of the runs under DIR."""

from __future__ import annotations

import argparse

HELP = "Serve a live dashboard of the run files (*.tp) under DIR; pages update while training writes."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", metavar="DIR",
                   help="folder holding .tp run files (searched recursively); all are listed, the newest is shown when the page opens")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8686, help="port (default: 8686; 0 picks a free one)")


def run(args: argparse.Namespace) -> int:
    from ..web.server import is_loopback, make_server

    server = make_server(args.directory, args.host, args.port)
    host, port = server.server_address[:2]
    host = host.decode() if isinstance(host, bytes) else host
    shown = f"[{host}]" if ":" in host else host
    print(f"twinpeaks dashboard of {args.directory}: http://{shown}:{port}/   (Ctrl-C to stop)", flush=True)
    if not is_loopback(args.host):
        print(f"warning: listening on {args.host}: anyone who can reach this address can read these runs", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
