"""Which steps a flush slows, and by how much: deep500's model recorded on every step (issue #17).

``overhead.py deep500`` interleaves recorded and unrecorded rounds and reports the worst step; this
script records every step, so that each step that hands a window over (every ``window`` steps) and
each merge past ``max_columns`` can be seen: it prints the median step (wall and thread CPU), every
step more than ``--over`` ms over the median with its thread CPU (wall without CPU is waiting: the
GIL), and the merges of the run's columns (done in the writer's idle time, a file stack of layers at a time:
how many, when, how long).

    PYTHONPATH=$PWD .venv/bin/python bench/flush_stalls.py --steps 2100

``--no-writer`` drops the writer's jobs (nothing is written): what is left is the hand-over alone.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from overhead import make_step  # noqa: E402

import twinpeaks as tp  # noqa: E402
from twinpeaks.recording import epoch_writer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2100, help="recorded steps (merges start at 1,000)")
    ap.add_argument("--epoch", type=int, default=300, help="end_epoch() every this many steps")
    ap.add_argument("--over", type=float, default=15.0, help="list the steps this many ms over the median")
    ap.add_argument("--no-writer", action="store_true", help="drop the writer's jobs: the hand-over alone")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    mods: list[nn.Module] = []
    for _ in range(250):
        mods += [nn.Linear(32, 32), nn.ReLU()]
    model = nn.Sequential(*mods, nn.Linear(32, 10))
    step = make_step(model, torch.randn(32, 32), torch.randint(0, 10, (32,)))
    for _ in range(30):
        step()
    t00 = time.perf_counter()
    merges: list[tuple[float, float, int]] = []
    settle = epoch_writer.FileStack.settle

    def timed_settle(self: Any, w: Any, rids: list[int], *a: Any, **k: Any) -> Any:
        merge = bool(self.pending)
        t0 = time.perf_counter()
        out = settle(self, w, rids, *a, **k)
        if merge:
            merges.append((t0 - t00, time.perf_counter() - t0, out[0]))
        return out

    epoch_writer.FileStack.settle = timed_settle  # type: ignore[method-assign]
    steps: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        hist = tp.ActivationsHistogram(model, Path(tmp) / "stalls.tp")
        hist.attach()
        if args.no_writer:
            hist._thread.submit = lambda job: None  # type: ignore[method-assign]
        for i in range(args.steps):
            t0, c0 = time.perf_counter(), time.thread_time()
            step()
            steps.append((time.perf_counter() - t0, time.thread_time() - c0))
            if (i + 1) % args.epoch == 0:
                hist.end_epoch()
        window = hist.clock.rows
        hist.close()
    wall = statistics.median(s[0] for s in steps)
    cpu = statistics.median(s[1] for s in steps)
    print(f"{args.steps} steps, window {window} steps: median step {wall * 1e3:.1f} ms wall, {cpu * 1e3:.1f} ms CPU")
    print(f"steps over the median by more than {args.over:g} ms (step: wall / thread CPU, ms):")
    print("  " + ", ".join(f"{i}: {w * 1e3:.0f} / {c * 1e3:.0f}" for i, (w, c) in enumerate(steps)
                           if w - wall > args.over / 1e3))
    if merges:  # a file stack's merge (MERGE_LANES layers), done in the writer's idle time
        spans = [(t, d) for t, d, _ in merges]
        print(f"merges past max_columns: {len(merges)} pieces ({sum(n for *_, n in merges)} layer-phases), "
              f"{min(t for t, _ in spans):.1f}-{max(t + d for t, d in spans):.1f} s into the run, "
              f"{statistics.median(d for _, d in spans) * 1e3:.0f} ms median, {max(d for _, d in spans) * 1e3:.0f} max")
    else:
        print("merges past max_columns: none")


if __name__ == "__main__":
    main()
