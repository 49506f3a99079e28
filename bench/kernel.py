"""Per-element and per-call cost of the CPU binning kernel, on each code path, against the torch path.

Run ``python bench/kernel.py``: for float32 (normal values, and ReLU outputs with half
exact zeros), bfloat16 and float16 tensors of 64 to 4M elements, the time of one
``_cbin.observe`` call on a fixed range (numpy's float64 edges, +-3, 100 bins), on an
auto grid with two passes (``_cbin.single_pass(False)``: the finite min/max pass, the grid
check, the binning pass) and on an auto grid hinted in steady state (the same tensor binned
into a fresh row each call, as at successive steps, with the layer's hint: the single pass on
the guessed grid, kept), on every code path this build and CPU have
(``_cbin.PATHS``: AVX-512, AVX2, SSE2, portable); from 1M elements also the widest path
with ``threads=2`` (the call split over two threads: torch's OpenMP workers where torch
runs on OpenMP, ``_cbin.parallel()``); and the torch operations of the
device path (:func:`twinpeaks.binning.observe_auto` + ``stats_parts``) on the same values.
The kernel is called directly (as the recorder's hot path does), so a cell at 64 elements
is the whole per-call cost; each cell is the best of several timings (the machine may be
shared). torch on 1 thread, warm caches (a training step's caches are colder: see
bench/README.md). ``--quick``: the float32 rows only.

``--threads``: only the split, widest path, float32 normal values of 16K to 4M elements:
a fixed range and a hinted auto grid (steady state) on 1 thread, and on 2 threads over
torch's OpenMP workers (``gomp``, torch on 2 threads: its workers awake, as between a
training step's operations) and over pthreads started per call (``pthreads``).
"""

from __future__ import annotations

import sys
import time

import torch

from twinpeaks import binning

SIZES = (64, 512, 4096, 65536, 1 << 20, 1 << 22)
THREADED = 1 << 20  # from this many elements: a threads=2 column
STEPS = 64  # rows the hinted column cycles through


def best(fn, reps: int, trials: int = 7) -> float:
    """The best time per call over ``trials`` timings of ``reps`` calls."""
    fn()
    out = float("inf")
    for _ in range(trials):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        out = min(out, (time.perf_counter() - t0) / reps)
    return out


def cell(t: float, n: int) -> str:
    return f"{t * 1e6:.2f} us ({t / n * 1e9:.2f} ns/el)" if n >= 4096 else f"{t * 1e6:.2f} us"


def split_table(c) -> int:
    """--threads: 1 thread against 2 on each pool, ns per element."""
    torch.manual_seed(0)
    fixed = binning.fixed_grid(-3, 3, 100)
    pools = ["gomp", "pthreads"]
    try:
        c.parallel("gomp")
    except ValueError:
        pools = ["pthreads"]  # torch does not run on OpenMP here
    cols = [f"{k} {t}" for k in ("fixed", "auto, hinted") for t in ["1 thread"] + [f"2 threads {p}" for p in pools]]
    print(f"| elements | {' | '.join(cols)} |")
    print("|---:|" + "---:|" * len(cols))
    was = c.parallel()
    torch.set_num_threads(2)
    try:
        for n in (1 << 14, 1 << 15, 1 << 16, 1 << 17, 1 << 18, 1 << 20, 1 << 22):
            x = torch.randn(n)
            rows = [torch.zeros(k, dtype=torch.float64) for k in (103, 5, 2)]
            addr = [r.data_ptr() for r in rows]
            grid, hint = binning.new_grids(1)[0], binning.new_grids(1)[0]

            def fixed_call(threads, x=x, n=n, addr=addr):
                c.observe(x.data_ptr(), 0, n, 0, 0, 0, fixed.edges_ptr, 0, 100, *addr, threads, 0)

            def hinted_call(threads, x=x, n=n, addr=addr, grid=grid, hint=hint):
                grid[0] = float("nan")  # a fresh row each call, guessed from the hint: the single pass
                c.observe(x.data_ptr(), 0, n, 0, 0, 0, 0, grid.data_ptr(), 100, *addr, threads, hint.data_ptr(), 0)

            reps = max(5, 2_000_000 // n)
            cells = []
            for call in (fixed_call, hinted_call):
                cells.append(best(lambda call=call: call(1), reps))
                for p in pools:
                    c.parallel(p)
                    cells.append(best(lambda call=call: call(2), reps))
            print(f"| {n:,} | " + " | ".join(f"{t / n * 1e9:.3f} ns/el" for t in cells) + " |", flush=True)
    finally:
        c.parallel(was)
        torch.set_num_threads(1)
    return 0


def main() -> int:
    if binning._cbin is None:
        print("twinpeaks._cbin is not built", file=sys.stderr)
        return 1
    c = binning._cbin
    if "--threads" in sys.argv:
        return split_table(c)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    fixed = binning.fixed_grid(-3, 3, 100)
    paths = list(c.PATHS)
    names = ([f"C {p} {k}" for p in paths for k in ("fixed", "auto", "auto, hinted (steady)")]
             + [f"C {paths[0]} auto threads=2"])
    print("| values | elements | " + " | ".join(names) + " | torch ops auto |")
    print("|---|---:|" + "---:|" * (len(names) + 1))
    kinds = [("float32 normal", lambda n: torch.randn(n)), ("float32 ReLU", lambda n: torch.randn(n).relu()),
             ("bfloat16 normal", lambda n: torch.randn(n).bfloat16()), ("float16 normal", lambda n: torch.randn(n).half())]
    if "--quick" in sys.argv:
        kinds = kinds[:2]
    was = c.simd()
    try:
        for label, make in kinds:
            for n in SIZES:
                x = make(n)
                code = binning.KERNEL_DTYPES[x.dtype]
                rows = [torch.zeros(k, dtype=torch.float64) for k in (103, 5, 2)]
                grid = binning.new_grids(1)[0]
                ptr, gptr, edges = x.data_ptr(), grid.data_ptr(), fixed.edges_ptr
                addr = [r.data_ptr() for r in rows]

                def fixed_call(threads=1, ptr=ptr, code=code, n=n, edges=edges, addr=addr):
                    c.observe(ptr, code, n, 0, 0, 0, edges, 0, 100, *addr, threads, 0)

                def auto_call(threads=1, ptr=ptr, code=code, n=n, gptr=gptr, addr=addr):
                    c.observe(ptr, code, n, 0, 0, 0, 0, gptr, 100, *addr, threads, 0)

                # steady state: a fresh row per call (row i of STEPS, the grids reset every STEPS calls) and the hint
                many = [torch.zeros(STEPS, k, dtype=torch.float64) for k in (103, 5, 2)]
                grids, hint = binning.new_grids(STEPS), binning.new_grids(1)[0]
                maddr, step = [r.data_ptr() for r in many], [0]
                mgptr, hptr = grids.data_ptr(), hint.data_ptr()

                def hinted_call(ptr=ptr, code=code, n=n, gptr=mgptr, hptr=hptr, addr=maddr, step=step, grids=grids):
                    i = step[0] = (step[0] + 1) % STEPS
                    if not i:
                        grids[:, 0] = float("nan")
                    c.observe(ptr, code, n, 0, 0, 0, 0, gptr, 100, *addr, 1, hptr, i)

                reps = max(5, 1_000_000 // n)
                cells = []
                for path in paths:
                    c.simd(path)
                    c.single_pass(False)
                    two = cell(best(auto_call, reps), n)
                    c.single_pass(True)
                    cells += [cell(best(fixed_call, reps), n), two, cell(best(hinted_call, reps), n)]
                c.simd(paths[0])
                c.single_pass(False)
                cells.append(cell(best(lambda: auto_call(2), reps), n) if n >= THREADED else "")
                c.single_pass(True)
                xf = x.float()
                counts, g = torch.zeros(103, dtype=torch.float64), binning.new_grids(1)[0]
                t = best(lambda xf=xf, g=g, counts=counts: (binning.observe_auto(xf, g, counts), binning.stats_parts(xf)),
                         max(2, reps // 20), trials=3)
                cells.append(cell(t, n))
                print(f"| {label} | {n:,} | " + " | ".join(cells) + " |", flush=True)
    finally:
        c.simd(was)
        c.single_pass(True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
