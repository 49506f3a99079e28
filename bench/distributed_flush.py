"""Time ``end_epoch()`` of a 2-rank gloo run: 1,000 recorded layers x 100 bins, ROWS train steps.

    python bench/distributed_flush.py [ROWS]

Prints, for rank 0, the time of the collective flush (all-reduce of every rank's rows,
then rank 0's SQLite write), the bytes all-reduced and the file size. Launches its own
two processes on this machine (gloo on CPU); see docs/scale.md for the 1,024-rank model.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from datetime import timedelta

LAYERS, BINS = 1000, 100


def rank_main(rows: int, out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch import nn

    import twinpeaks as tp

    dist.init_process_group("gloo", timeout=timedelta(seconds=300))
    torch.set_num_threads(1)
    rank = dist.get_rank()
    model = nn.Sequential(*[nn.Linear(8, 8) for _ in range(LAYERS)])
    hist = tp.ActivationsHistogram(model, os.path.join(out, f"bench{rank}.tp"), bins=BINS, range=(-4, 4),
                                   flush_every=64)
    with hist, torch.no_grad():
        for _ in range(rows):
            model(torch.randn(4, 8))
        dist.barrier()
        t0 = time.perf_counter()
        hist.end_epoch()
        dt = time.perf_counter() - t0
    if rank == 0:
        row = LAYERS * ((BINS + 3) * 8 + 7 * 8)
        size = os.path.getsize(os.path.join(out, "bench0.tp"))
        print(f"{LAYERS} layers x {BINS} bins, 2 ranks, {rows} rows: end_epoch {dt:.2f} s, "
              f"all-reduced {rows * row / 1e6:.0f} MB ({row / 1e3:.0f} KB per step row), file {size / 1e6:.0f} MB")
    dist.destroy_process_group()


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    with socket.socket() as s, tempfile.TemporaryDirectory() as out:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
               "OMP_NUM_THREADS": "1", "TWINPEAKS_BENCH_RANK": "1"}
        procs = [subprocess.Popen([sys.executable, __file__, str(rows), out], env={**env, "RANK": str(r)})
                 for r in range(2)]
        sys.exit(max(p.wait(timeout=600) for p in procs))


if __name__ == "__main__":
    if os.environ.get("TWINPEAKS_BENCH_RANK"):
        rank_main(int(sys.argv[1]), sys.argv[2])
    else:
        main()
