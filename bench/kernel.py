"""Per-element and per-call cost of the CPU binning kernel, against the torch path.

Run ``python bench/kernel.py``: for float32 (normal values, and ReLU outputs with half
exact zeros), bfloat16 and float16 tensors of 4,096 to 1M elements, the time of one
``_cbin.observe`` call on a fixed range (numpy's float64 edges, +-3, 100 bins) and on an
auto grid (a fresh step row: the finite min/max pass, the grid, the binning pass), on
the SSE2 path where built and the portable path, and of the torch operations of the
device path (:func:`twinpeaks.binning.observe_auto` + ``stats_parts``) on the same
values; torch on 1 thread, warm caches (a training step's caches are colder: see
bench/README.md).
"""

from __future__ import annotations

import sys
import time

import torch

from twinpeaks import binning


def per_call(fn, reps: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def main() -> int:
    if binning._cbin is None:
        print("twinpeaks._cbin is not built", file=sys.stderr)
        return 1
    torch.set_num_threads(1)
    torch.manual_seed(0)
    fixed = binning.fixed_grid(-3, 3, 100)
    paths = [True, False] if binning._cbin.simd() else [False]
    names = [f"C {'SSE2' if p else 'portable'} {k}" for p in paths for k in ("fixed", "auto")]
    print("| values | elements | " + " | ".join(names) + " | torch ops auto |")
    print("|---|---:|" + "---:|" * (len(names) + 1))
    for label, make in [("float32 normal", lambda n: torch.randn(n)),
                        ("float32 ReLU", lambda n: torch.randn(n).relu()),
                        ("bfloat16 normal", lambda n: torch.randn(n).bfloat16()),
                        ("float16 normal", lambda n: torch.randn(n).half())]:
        for n in (4096, 65536, 1 << 20):
            x = make(n)
            rows = [torch.zeros(k, dtype=torch.float64) for k in (103, 5, 2)]
            grid = binning.new_grids(1)[0]

            def auto(x=x, rows=rows, grid=grid):
                grid[0] = float("nan")  # a fresh row every call: the grid is chosen each time
                binning.kernel_observe(x, grid, *rows)

            reps = max(20, 4_000_000 // n)
            cells = []
            for simd in paths:
                binning._cbin.simd(simd)
                for fn in (lambda x=x, rows=rows: binning.kernel_observe(x, fixed, *rows), auto):
                    t = per_call(fn, reps)
                    cells.append(f"{t * 1e6:.1f} us ({t / n * 1e9:.2f} ns/el)")
            binning._cbin.simd(paths[0])
            xf = x.float()
            counts, g = torch.zeros(103, dtype=torch.float64), binning.new_grids(1)[0]
            t = per_call(lambda xf=xf, g=g, counts=counts: (binning.observe_auto(xf, g, counts), binning.stats_parts(xf)),
                         max(5, reps // 20))
            cells.append(f"{t * 1e6:.1f} us ({t / n * 1e9:.2f} ns/el)")
            print(f"| {label} | {n:,} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
