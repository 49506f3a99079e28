"""How faithful is ``sample="auto"`` per number of steps, and what does each per-call sample size cost (issue #17).

Not a test: it prints the tables that README.md and bench/README.md quote.

* ``tv``: real layer outputs (the digits CNN of ``tests/recording/test_faithful.py``, the
  ``small`` CNN of ``bench/overhead.py``, an MLP on breast cancer), captured for 64
  training steps and a validation pass, then sampled exactly as the engine samples
  (``BinningEngine.sampling``: blocks of ``SAMPLE_BLOCK``, the same stride, a random offset
  per call) at several per-call sample sizes. Prints the total variation (TV) between the
  sampled and the exact histogram of 1, 4, 16 and 64 steps (100 bins over the layer's
  range; mean and 95th percentile over repeats), the multinomial prediction
  ``0.5 * sum_i sqrt(2 p_i (1 - p_i) (1 - k/n) / (pi N k))``, and the effective sample size
  of the blocks (``k * (predicted / measured)**2``).
* ``cost``: microseconds per hooked call (the recorder's hook on ReLU outputs of
  32K-1M elements, torch on 1 thread) at each per-call sample size.

    python bench/sampling.py tv [--repeats 40]
    python bench/sampling.py cost
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from twinpeaks.recording import engine  # noqa: E402

SIZES = (2048, 4096, engine.AUTO_SAMPLE, 8192, 16384)
STEPS = (1, 4, 16, 64)
BINS = 100


def sampler(n: int, shape: tuple[int, ...], k: int) -> tuple[int, int]:
    """The engine's (stride, blocks) for an output of ``n`` elements at a per-call sample of ``k``."""
    return engine.BinningEngine.sampling(types.SimpleNamespace(sample="auto", auto_sample=k), n, shape)  # type: ignore[arg-type]


def capture(model: nn.Module, batches, train: bool, opt=None) -> dict[str, list[np.ndarray]]:
    """Every leaf module's output of every batch (float32 numpy, storage order = C order)."""
    outs: dict[str, list[np.ndarray]] = {}
    hooks = []
    for name, m in model.named_modules():
        if name and not list(m.children()):
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: outs.setdefault(name, []).append(out.detach().numpy().copy())))
    model.train(train)
    for x, y in batches:
        if train:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:
            with torch.no_grad():
                model(x)
    for h in hooks:
        h.remove()
    return outs


def batches_of(x: torch.Tensor, y: torch.Tensor, batch: int, steps: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    out = []
    while len(out) < steps:
        perm = torch.randperm(len(x), generator=g)
        out += [(x[perm[i:i + batch]], y[perm[i:i + batch]]) for i in range(0, len(x) - batch + 1, batch)]
    return out[:steps]


def workloads():
    from overhead import small_cnn
    from sklearn.datasets import load_breast_cancer, load_digits

    from tests.recording.test_faithful import digits_net

    xd, yd = load_digits(return_X_y=True)
    xd = torch.tensor(xd, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16
    yd = torch.tensor(yd)
    xb, yb = load_breast_cancer(return_X_y=True)
    xb = torch.tensor((xb - xb.mean(0)) / xb.std(0), dtype=torch.float32)
    yb = torch.tensor(yb)
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(30, 512), nn.ReLU(), nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(),
                        nn.Linear(512, 512), nn.Tanh(), nn.Linear(512, 2))
    return [("digits-cnn", digits_net(), xd, yd, 32, 0.05),
            ("small-cnn", small_cnn(), xd, yd, 64, 0.05),
            ("cancer-mlp", mlp, xb, yb, 64, 0.01)]


def tv_table(repeats: int) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for wname, model, x, y, batch, lr in workloads():
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        train = capture(model, batches_of(x, y, batch, max(STEPS), 0), True, opt)
        valid = capture(model, batches_of(x, y, batch, 16, 1), False)
        for phase, outs in (("train", train), ("valid", valid)):
            for lname, steps in outs.items():
                n, shape = steps[0].size, steps[0].shape
                if n <= engine.EXACT_BELOW or lname == list(outs)[-1]:
                    continue  # exact in the default mode
                flat = [s.reshape(-1).astype(np.float64) for s in steps]
                lo = min(s.min() for s in flat)
                hi = max(s.max() for s in flat)
                edges = np.linspace(lo, hi if hi > lo else lo + 1, BINS + 1)
                exact = np.cumsum([np.histogram(s, edges)[0] for s in flat], axis=0).astype(np.float64)
                for k in SIZES:
                    stride, blocks = sampler(n, shape, k)
                    if not blocks:
                        continue
                    kk = blocks * engine.SAMPLE_BLOCK
                    within = np.arange(engine.SAMPLE_BLOCK)
                    starts = np.arange(blocks) * stride
                    tvs = {s: [] for s in STEPS if s <= len(flat)}
                    for _ in range(repeats):
                        acc = np.zeros(BINS)
                        for i, s in enumerate(flat):
                            off = int(rng.random() * (stride - engine.SAMPLE_BLOCK + 1))
                            acc += np.histogram(s[(starts[:, None] + within + off).reshape(-1)], edges)[0]
                            if i + 1 in tvs:
                                e = exact[i]
                                tvs[i + 1].append(0.5 * np.abs(acc / acc.sum() - e / e.sum()).sum())
                    for s, v in tvs.items():
                        p = exact[s - 1] / exact[s - 1].sum()
                        pred = 0.5 * math.sqrt(2 * (1 - kk / n) / (math.pi * s * kk)) * np.sqrt(p * (1 - p)).sum()
                        bound = 0.5 * math.sqrt(2 * (int((p > 0).sum()) - 1) / (math.pi * s * kk))
                        mean = float(np.mean(v))
                        rows.append((wname, phase, lname, n, kk, s, mean, float(np.quantile(v, 0.95)), pred, bound,
                                     kk * (pred / mean) ** 2 if mean else math.inf))
    print("workload | phase | layer | elements | k | steps | TV mean | TV p95 | predicted (iid) | C-S bound | k_eff/k")
    for r in rows:
        print(f"{r[0]} | {r[1]} | {r[2]} | {r[3]:,} | {r[4]:,} | {r[5]} | {r[6]:.4f} | {r[7]:.4f} | {r[8]:.4f}"
              f" | {r[9]:.4f} | {r[10] / r[4]:.2f}")
    print("\nworst sampled layer (max over layers of the mean TV, and of the 95th percentile), per k and steps:")
    for phase in ("train", "valid"):
        for k in SIZES:
            cells = []
            for s in STEPS:
                sel = [r for r in rows if r[1] == phase and r[4] == k and r[5] == s]
                if sel:
                    cells.append(f"{s}: {max(r[6] for r in sel):.4f} / {max(r[7] for r in sel):.4f}")
            effs = [r[10] / r[4] for r in rows if r[1] == phase and r[4] == k]
            print(f"{phase} k={k:>6,}  " + "  ".join(cells)
                  + f"   k_eff/k {min(effs):.2f}-{max(effs):.2f}")


class _Head(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:1, :2]


def cost_table(calls: int = 300) -> None:
    """Median time inside ``BinningEngine.bin`` per call on a ReLU output it has just written (warm caches)."""
    import twinpeaks as tp

    torch.set_num_threads(1)
    times: list[float] = []
    orig = engine.BinningEngine.bin

    def timed(self, rec, t):
        t0 = time.perf_counter()
        orig(self, rec, t)
        if t.numel() > 2:
            times.append(time.perf_counter() - t0)

    engine.BinningEngine.bin = timed  # type: ignore[method-assign]
    print("elements | k | us per call in BinningEngine.bin (median)")
    try:
        for n in (32768, 131072, 262144, 1048576):
            x = torch.randn(n // 64, 64)
            model = nn.Sequential(nn.ReLU(), _Head())
            for k in SIZES:
                with tempfile.TemporaryDirectory() as d, tp.ActivationsHistogram(model, Path(d) / "r.tp") as h:
                    h.engine.auto_sample = k
                    model(x)
                    times.clear()
                    for _ in range(calls):
                        model(x)
                    h.end_epoch()
                print(f"{n:,} | {k:,} | {sorted(times)[len(times) // 2] * 1e6:.1f}", flush=True)
    finally:
        engine.BinningEngine.bin = orig  # type: ignore[method-assign]


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("tv", "cost"))
    ap.add_argument("--repeats", type=int, default=40)
    a = ap.parse_args()
    tv_table(a.repeats) if a.what == "tv" else cost_table()
