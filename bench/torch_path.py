"""aten operations and time per hooked call on the torch path (TWINPEAKS_KERNEL=torch, or a non-CPU tensor).

Run ``TWINPEAKS_KERNEL=torch python bench/torch_path.py [time]``: for a plain output (the first of two hooked
layers) of 4,096 elements (binned exactly) and of 1M elements (a sample of 8,192), automatic and fixed ranges, the
aten operations one ``BinningEngine.bin`` call dispatches (counted with a ``TorchDispatchMode``, views included,
and without views), and with ``time`` the median time of 300 calls (torch on 1 thread). The operation count is
what a GPU pays in kernel launches; tests/recording/test_torch_path_cost.py bounds it.
"""

from __future__ import annotations

import collections
import statistics
import sys
import time

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import twinpeaks as tp
from twinpeaks import binning

VIEWS = {"select", "slice", "view", "detach", "unsqueeze", "as_strided", "alias", "_reshape_alias", "_unsafe_view"}


class Counter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.name().split("::")[-1].split(".")[0]] += 1
        return func(*args, **(kwargs or {}))


def measure(shape: tuple[int, ...], range_, timed: bool) -> tuple[collections.Counter[str], float]:
    model = nn.Sequential(nn.Identity(), nn.Flatten(0))
    x = torch.randn(*shape)
    with tp.ActivationsHistogram(model, None, modules=[0, 1], range=range_) as hist:
        model(x)
        rec = next(r for r in hist._records if not r.last)
        counter = Counter()
        with counter:
            hist.engine.bin(rec, x)
        times = []
        for _ in range(300 if timed else 0):
            t0 = time.perf_counter()
            hist.engine.bin(rec, x)
            times.append(time.perf_counter() - t0)
    return counter.ops, statistics.median(times) * 1e6 if times else float("nan")


def main() -> None:
    if binning.KERNEL:
        sys.exit("set TWINPEAKS_KERNEL=torch: CPU tensors go to the C kernel otherwise")
    torch.set_num_threads(1)
    timed = "time" in sys.argv[1:]
    for shape, range_ in [((4, 1024), None), ((1024, 1024), None), ((4, 1024), (-3, 3)), ((1024, 1024), (-3, 3))]:
        ops, us = measure(shape, range_, timed)
        total = sum(ops.values())
        kernels = total - sum(v for k, v in ops.items() if k in VIEWS)
        print(f"{'x'.join(map(str, shape)):>9} range={range_!s:8}: {total:4d} aten ops ({kernels} besides views)"
              + (f", median {us:.0f} us per call" if timed else ""))


if __name__ == "__main__":
    main()
