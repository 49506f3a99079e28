"""Per-element and per-call cost of the CPU binning kernel, against the torch path it replaced.

Run ``python bench/kernel.py``: for float32 (normal values, and ReLU outputs with half
exact zeros), bfloat16 and float16 tensors of 4,096 to 1M elements, the time of one
``_cbin.observe`` call (SSE2 path where built, and the portable path) and of the torch
operations (``bin_finite`` + ``stats_parts``) on the same values, 100 bins, torch on 1
thread, warm caches (a training step's caches are colder: see bench/README.md).
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
    b = binning.fixed_bounds(-3, 3, 100, torch.device("cpu"))
    paths = [True, False] if binning._cbin.simd() else [False]
    print("| values | elements | " + " | ".join("C " + ("SSE2" if p else "portable") for p in paths)
          + " | torch ops |")
    print("|---|---:|" + "---:|" * (len(paths) + 1))
    for label, make in [("float32 normal", lambda n: torch.randn(n)),
                        ("float32 ReLU", lambda n: torch.randn(n).relu()),
                        ("bfloat16 normal", lambda n: torch.randn(n).bfloat16()),
                        ("float16 normal", lambda n: torch.randn(n).half())]:
        for n in (4096, 65536, 1 << 20):
            x = make(n)
            rows = [torch.zeros(k, dtype=torch.float64) for k in (103, 5, 2)]
            reps = max(20, 4_000_000 // n)
            cells = []
            for simd in paths:
                binning._cbin.simd(simd)
                t = per_call(lambda x=x, rows=rows: binning.kernel_observe(x, b, *rows), reps)
                cells.append(f"{t * 1e6:.1f} us ({t / n * 1e9:.2f} ns/el)")
            binning._cbin.simd(paths[0])
            xf = x.float()
            t = per_call(lambda xf=xf: (binning.bin_finite(xf, b), binning.stats_parts(xf)), max(5, reps // 5))
            cells.append(f"{t * 1e6:.1f} us ({t / n * 1e9:.2f} ns/el)")
            print(f"| {label} | {n:,} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
