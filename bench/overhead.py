"""Overhead of recording activation histograms, against no telemetry and other approaches.

Run ``python bench/overhead.py`` (``make bench``); ``--quick`` for a smoke run.

Every workload is a real training step (forward, loss, backward, optimizer step)
on fixed synthetic data. The variants of one workload are measured in the same
process, interleaved (A B C ... A B C ...), each round timing a few steps of
each; the table reports the median step time over rounds and its ratio to no
telemetry. Besides the table (printed, and written as JSON under
``bench/results/``), it measures the peak RSS growth over 20,000 recorded MLP
steps, the run-file size, the ``end_epoch`` flush of 60 layers x 100 bins,
the rendering of a 60-layer colorful grid of a 10,000-step run, and issue #17's
500-layer case (``deep500``: step ratio, extra peak RSS, flush stalls, ``end_epoch``
time, bytes per layer-step). ``--only PART ...`` / ``--skip PART ...`` run a subset
(workloads ``cnn mlp transformer small``, extras ``percall memory flush render deep500``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import twinpeaks as tp
from twinpeaks.recorder import leaf_modules

RESULTS = Path(__file__).resolve().parent / "results"


# -- workloads --------------------------------------------------------------------------
def cnn(width: int = 32) -> nn.Module:
    """7 conv/BN/ReLU blocks, two max-pools, adaptive pool, linear head (24 leaf modules)."""
    chans = [1, width, width, width, 2 * width, 2 * width, 2 * width, 2 * width]
    layers: list[nn.Module] = []
    for i in range(7):
        layers += [nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False), nn.BatchNorm2d(chans[i + 1]), nn.ReLU()]
        if i in (1, 3):
            layers.append(nn.MaxPool2d(2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(chans[-1], 10)]
    return nn.Sequential(*layers)


def mlp(features: int = 64, hidden: int = 512, depth: int = 4, classes: int = 10) -> nn.Module:
    """A tabular MLP: Linear/BatchNorm/ReLU(inplace) blocks, like fastai's tabular model."""
    layers: list[nn.Module] = []
    width = features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        width = hidden
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def small_cnn(width: int = 24) -> nn.Module:
    """A small CNN for 8x8 digits: 3 conv/BN/ReLU blocks, two max-pools, a 2-layer head (15 leaf modules).

    At width 24 and batch 64 its training step takes about 5 ms on one thread of this machine: the short
    step of issue #17, where the per-call cost of the hooks weighs most.
    """
    w = width
    return nn.Sequential(
        nn.Conv2d(1, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
        nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * w * 4, 64), nn.ReLU(), nn.Linear(64, 10))


def digits_batch(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images of sklearn's ``load_digits`` (8x8, scaled to [0, 1]) and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (torch.tensor(d.images[:n] / 16.0, dtype=torch.float32).unsqueeze(1),
            torch.tensor(d.target[:n], dtype=torch.long))


class Encoder(nn.Module):
    """A small transformer encoder classifier over token ids."""

    def __init__(self, vocab: int = 1000, d: int = 128, heads: int = 4, layers: int = 2, classes: int = 2):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.enc = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d, heads, dim_feedforward=2 * d, batch_first=True), layers,
            enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.enc(self.emb(x))).mean(1))


def workloads(quick: bool, scale: int = 1) -> dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    b = (32 if quick else 128) * scale
    out = {
        "cnn": (cnn(16), torch.randn(b, 1, 28, 28, generator=g), torch.randint(0, 10, (b,), generator=g)),
        "mlp": (mlp(), torch.randn(8 * b, 64, generator=g), torch.randint(0, 10, (8 * b,), generator=g)),
        "transformer": (Encoder(), torch.randint(0, 1000, (b * 5 // 64, 128), generator=g),
                        torch.randint(0, 2, (b * 5 // 64,), generator=g)),
        "small": (small_cnn(), *digits_batch(64 * scale)),
    }
    return out


# steps per round of each workload: the short step runs more of them, so that a round is not a few ms of noise
STEPS_FACTOR = {"small": 10}


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: str = "none",
              lr: float = 1e-3) -> Callable[[], None]:
    """One SGD training step under optional autocast; no GradScaler (its step reads found-inf back: a sync)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    return step


# -- variants: each an object with attach() / detach() / after_step() ----------------------
class NoTelemetry:
    def attach(self) -> None: ...
    def detach(self) -> None: ...
    def after_step(self) -> None: ...


class Hooks:
    """Forward hooks on every leaf module, running ``fn(output)``."""

    def __init__(self, model: nn.Module, fn: Callable[[torch.Tensor], None]):
        self.mods = [m for _, m in leaf_modules(model)]
        self.fn = fn
        self.handles: list[Any] = []

    def _hook(self, module: nn.Module, args: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            with torch.no_grad():
                self.fn(out)

    def attach(self) -> None:
        self.handles = [m.register_forward_hook(self._hook) for m in self.mods]

    def detach(self) -> None:
        for h in self.handles:
            h.remove()

    def after_step(self) -> None: ...


class NoopHooks(Hooks):
    """A forward hook that does nothing on every leaf module: what any forward-hook recorder pays first."""

    def __init__(self, model: nn.Module):
        super().__init__(model, lambda out: None)

    def attach(self) -> None:
        self.handles = [m.register_forward_hook(_noop_hook) for m in self.mods]


def _noop_hook(module: nn.Module, args: Any, out: Any) -> None:
    return None


def floor_variant(model: nn.Module, device: torch.device) -> Hooks:
    """One read of every activation (a sum into a running total): the least an exact method pays."""
    acc = torch.zeros((), dtype=torch.float64, device=device)
    return Hooks(model, lambda out: acc.add_(out.sum()))


def original_variant(model: nn.Module) -> Hooks:
    """colorfuldim's approach: clone every output to the host, ``histc`` it there, every batch.

    The original also ``torch.cat``-s the growing history each batch (quadratic);
    this keeps the histograms in a list, so it is a lower bound on its cost.
    """
    kept: list[torch.Tensor] = []

    def fn(out: torch.Tensor) -> None:
        kept.append(torch.histc(out.clone().detach().cpu().float(), 100, -1, 1))
        if len(kept) > 10_000:
            kept.clear()

    return Hooks(model, fn)


class Twinpeaks:
    def __init__(self, model: nn.Module, **kwargs: Any):
        self.hist = tp.ActivationsHistogram(model, None, **kwargs)
        self.hist.attach()
        self.hist.detach()

    def attach(self) -> None:
        self.hist.attach()

    def detach(self) -> None:
        self.hist.detach()

    def after_step(self) -> None: ...


class FastaiStats:
    """fastai's ``ActivationStats(with_hist=True)`` on a tiny ``Learner`` wrapping the same model.

    Its hooks are registered by its own ``before_fit`` and its per-batch storage
    runs in ``after_batch``, as in ``Learner.fit``; only fastai's training loop
    is replaced by the benchmark's step.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        from fastai.callback.hook import ActivationStats
        from fastai.data.core import DataLoaders
        from fastai.learner import Learner

        ds = list(zip(x[:8], y[:8]))
        dls = DataLoaders.from_dsets(ds, ds, bs=4, device=x.device)
        self.learn = Learner(dls, model, loss_func=nn.CrossEntropyLoss(), cbs=[])
        self.cb = ActivationStats(with_hist=True)
        self.learn.add_cb(self.cb)
        self.learn.training = True

    def attach(self) -> None:
        self.cb.before_fit()

    def detach(self) -> None:
        self.cb.after_fit()

    def after_step(self) -> None:
        self.cb.after_batch()


def variants(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, Any], dict[str, str]]:
    out: dict[str, Any] = {
        "none": NoTelemetry(),
        "floor (one read)": floor_variant(model, x.device),
        "twinpeaks default": Twinpeaks(model),
        "twinpeaks exact": Twinpeaks(model, sample=1.0),
        "original (host copy + histc)": original_variant(model),
    }
    skipped = {}
    try:
        out["fastai ActivationStats(hist)"] = FastaiStats(model, x, y)
    except Exception as exc:  # fastai missing or incompatible: say so in the table
        skipped["fastai ActivationStats(hist)"] = f"{type(exc).__name__}: {exc}"
    return out, skipped


def measure(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, rounds: int, steps: int,
            amp: str = "none", sync_check: bool = False) -> dict[str, Any]:
    """Median step time of every variant, interleaved; ``sync_check`` runs the steps of every variant but
    the original and fastai (which copy to the host by design) under
    ``torch.cuda.set_sync_debug_mode("error")``, which raises on any host-device synchronisation."""
    step = make_step(model, x, y, amp)
    cuda = x.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    model.train()
    for _ in range(3):
        step()
    vs, skipped = variants(model, x, y)
    times: dict[str, list[float]] = {k: [] for k in vs}
    cpu: dict[str, list[float]] = {k: [] for k in vs}
    for r in range(rounds):
        order = list(vs.items())
        order = order[r % len(order):] + order[:r % len(order)]  # rotate: no variant always first
        for key, var in order:
            var.attach()
            step()  # one untimed step after switching
            var.after_step()
            # the baseline and the floor are checked too: a sync there is the model's, not twinpeaks'
            checked = sync_check and not key.startswith(("original", "fastai"))
            sync()
            t0, c0 = time.perf_counter(), time.thread_time()
            if checked:
                torch.cuda.set_sync_debug_mode("error")
            try:
                for _ in range(steps):
                    step()
                    var.after_step()
            finally:
                if checked:
                    torch.cuda.set_sync_debug_mode("default")
            sync()
            cpu[key].append((time.thread_time() - c0) / steps)
            times[key].append((time.perf_counter() - t0) / steps)
            var.detach()
    rows = {}
    for key, ts in times.items():
        # the ratio of each round to the baseline of the same round, then the median over rounds: variants
        # measured seconds apart share the machine's state, so drifts between rounds cancel
        cpu_ratio = statistics.median(c / b for c, b in zip(cpu[key], cpu["none"]))
        wall_ratio = statistics.median(w / b for w, b in zip(ts, times["none"]))
        rows[key] = {"cpu_ms": statistics.median(cpu[key]) * 1e3, "cpu_ratio": cpu_ratio,
                     "wall_ms": statistics.median(ts) * 1e3, "wall_ratio": wall_ratio}
    for key, why in skipped.items():
        rows[key] = {"skipped": why}
    n_act = activations_per_step(model, x)
    inside = time_inside(model, step, steps * rounds)
    return {"inside_twinpeaks": inside, "workload": name, "device": str(x.device), "amp": amp, "sync_checked": sync_check, "leaf_modules": len(leaf_modules(model)), "activations_per_step": n_act,
            "batch": len(x), "rounds": rounds, "steps_per_round": steps, "variants": rows}


def time_inside(model: nn.Module, step: Callable[[], None], steps: int) -> dict[str, Any]:
    """CPU time spent inside twinpeaks' own code per step (default settings), measured directly.

    Wraps the recorder's entry points (the per-layer ``engine.bin``, the per-step ``_begin_step``) with a
    thread-CPU clock. Unlike the ratio, this is not blurred by other jobs on the machine, but it leaves
    out indirect costs (caches the hooks evict, PyTorch's slower module call with hooks registered).
    """
    hist = tp.ActivationsHistogram(model, None)
    spent = [0.0]
    calls = [0]

    def timed(fn: Callable[..., None]) -> Callable[..., None]:
        def wrapper(*a: Any) -> None:
            t0 = time.thread_time()
            try:
                fn(*a)
            finally:
                spent[0] += time.thread_time() - t0
                calls[0] += 1
        return wrapper

    hist.engine.bin = timed(hist.engine.bin)  # type: ignore[method-assign]  # the hooks take it at attach
    hist._begin_step = timed(hist._begin_step)  # type: ignore[method-assign]
    with hist:
        step()
        spent[0] = calls[0] = 0
        c0 = time.thread_time()
        for _ in range(steps):
            step()
        total = time.thread_time() - c0
    return {"ms_per_step": spent[0] / steps * 1e3, "share_of_step": spent[0] / total,
            "calls_per_step": calls[0] / steps, "us_per_call": spent[0] / max(calls[0], 1) * 1e6}


def activations_per_step(model: nn.Module, x: torch.Tensor) -> int:
    total = 0

    def fn(out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel()

    h = Hooks(model, fn)
    h.attach()
    with torch.no_grad():
        model(x)
    h.detach()
    return total


# -- the other figures --------------------------------------------------------------------
def rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux VmHWM: unlike ru_maxrss, not inherited over exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def memory_and_file_in_child(steps: int) -> dict[str, Any]:
    """:func:`memory_and_file` in a fresh process, so that earlier workloads do not set the peak."""
    code = f"import json, overhead; print(json.dumps(overhead.memory_and_file({steps})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_and_file(steps: int) -> dict[str, Any]:
    """Peak RSS growth over ``steps`` recorded steps of a small-batch MLP, and the run file's size."""
    torch.set_num_threads(1)
    model = mlp(hidden=64, depth=4)
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    step = make_step(model, x, y)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mem.tp"
        hist = tp.ActivationsHistogram(model, path)
        marks = {}
        with hist:
            for i in range(steps):
                step()
                if (i + 1) % 1000 == 0:
                    hist.end_epoch()
                if i + 1 in (100, 1000, steps // 2, steps):
                    gc.collect()
                    marks[i + 1] = rss_mb()
        size = path.stat().st_size
    return {"steps": steps, "layers": len(leaf_modules(model)), "peak_rss_mb": marks,
            "rss_growth_100_to_end_mb": marks[steps] - marks[100],
            "rss_growth_1000_to_end_mb": marks[steps] - marks[1000], "run_file_mb": size / 2**20}


def deep_model(layers: int = 60) -> nn.Module:
    mods: list[nn.Module] = []
    for _ in range(layers // 2):
        mods += [nn.Linear(32, 32), nn.Tanh()]
    return nn.Sequential(*mods)


def deep500_in_child(quick: bool) -> dict[str, Any]:
    """:func:`deep500` in a fresh process, so that its peak RSS is its own."""
    code = f"import json, overhead; print(json.dumps(overhead.deep500(quick={quick})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def deep500_model(blocks: int = 250, width: int = 32, batch: int = 32) -> tuple[nn.Module, Callable[[], None]]:
    """deep500's model (``blocks`` x Linear+ReLU + a head) and its training step, on one thread, seeded."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    mods: list[nn.Module] = []
    for _ in range(blocks):
        mods += [nn.Linear(width, width), nn.ReLU()]
    model = nn.Sequential(*mods, nn.Linear(width, 10))
    return model, make_step(model, torch.randn(batch, width), torch.randint(0, 10, (batch,)))


def deep500(quick: bool = False, blocks: int = 250, width: int = 32, batch: int = 32) -> dict[str, Any]:
    """A deep stack of small layers (``blocks`` x Linear+ReLU + a head: 501 leaf modules), recording vs not.

    Issue #17's 500-layer case. One process, one thread. First 50 unrecorded steps, after which the peak
    RSS (VmHWM) is the model's own; then rounds of ``steps`` recorded and ``steps`` unrecorded training
    steps, interleaved (the order alternates), each step timed alone (thread CPU and wall). The recorder
    has its defaults (``flush_every=256``); ``end_epoch()`` runs, timed apart from the steps, every
    ``epoch`` recorded steps, with ``epoch > 256`` so that every epoch also has one mid-epoch flush,
    which runs inside the step that finds the window full. Reports the median of per-round ratios of
    the median step time, the peak RSS without and with recording, the worst recorded step but the
    first (which creates the buffers of every layer: reported apart) and its excess over the median
    recorded step (a flush's stall), the ``end_epoch`` times, and the run file's bytes per layer and
    recorded step.
    """
    model, step = deep500_model(blocks, width, batch)
    layers = len(leaf_modules(model))
    rounds, steps, epoch = (4, 10, 20) if quick else (100, 30, 300)  # full: 3,000 recorded steps, 10 epochs
    for _ in range(50):
        step()
    gc.collect()
    rss_none = rss_mb()
    wall: dict[str, list[list[float]]] = {"none": [], "twinpeaks": [], "no-op hook": []}
    cpu: dict[str, list[list[float]]] = {"none": [], "twinpeaks": [], "no-op hook": []}
    noop = NoopHooks(model)  # what any forward-hook recorder pays before doing anything (twinpeaks uses taps)
    ends: list[float] = []
    recorded = 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "deep.tp"
        hist = tp.ActivationsHistogram(model, path)
        flushes: list[tuple[int, float, float]] = []  # mid-epoch flushes inside a step: (step, wall s, thread CPU s)
        flush_window = hist._flush_window

        def timed_flush(epoch_end: bool = False) -> Any:
            if epoch_end:
                return flush_window(epoch_end)
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return flush_window(epoch_end)
            finally:
                flushes.append((recorded + 1, time.perf_counter() - t0, time.thread_time() - c0))

        hist._flush_window = timed_flush  # type: ignore[method-assign]
        t0 = time.perf_counter()
        hist.attach()
        attach_s = time.perf_counter() - t0
        hist.detach()
        for r in range(rounds):
            for key in (("none", "twinpeaks") if r % 2 else ("twinpeaks", "none")) + (("no-op hook",) if r % 4 == 0
                                                                                      else ()):
                if key == "twinpeaks":
                    hist.attach()
                if key == "no-op hook":
                    noop.attach()
                ws, cs = [], []
                for _ in range(steps):
                    t0, c0 = time.perf_counter(), time.thread_time()
                    step()
                    cs.append(time.thread_time() - c0)
                    ws.append(time.perf_counter() - t0)
                    if key == "twinpeaks":
                        recorded += 1
                        if recorded % epoch == 0:
                            t0 = time.perf_counter()
                            hist.end_epoch()
                            ends.append(time.perf_counter() - t0)
                if key == "twinpeaks":
                    hist.detach()
                if key == "no-op hook":
                    noop.detach()
                wall[key].append(ws)
                cpu[key].append(cs)
        hist.close()
        gc.collect()
        rss_with = rss_mb()
        size = path.stat().st_size
        continuous = _continuous(model, step, Path(tmp) / "continuous.tp", 100 if quick else 900, epoch)
    med = statistics.median

    def ratio(d: dict[str, list[list[float]]], key: str = "twinpeaks") -> float:
        nones = d["none"] if key == "twinpeaks" else d["none"][::4]  # the no-op hook ran in every 4th round
        return med(med(a) / med(b) for a, b in zip(d[key], nones))

    rec_wall = [t for ws in wall["twinpeaks"] for t in ws]
    flush_steps = [rec_wall[i - 1] for i, _, _ in flushes if 1 < i <= len(rec_wall)]
    none_wall = [t for ws in wall["none"] for t in ws]
    rec_cpu = [t for cs in cpu["twinpeaks"] for t in cs]
    none_cpu = [t for cs in cpu["none"] for t in cs]
    return {"layers": layers, "width": width, "batch": batch, "rounds": rounds, "steps_per_round": steps,
            "recorded_steps": recorded, "end_epoch_every": epoch, "flush_every": hist.flush_every,
            "attach_ms": attach_s * 1e3,
            "cpu_ms_none": med(none_cpu) * 1e3, "cpu_ms_twinpeaks": med(rec_cpu) * 1e3, "cpu_ratio": ratio(cpu),
            "noop_hook_cpu_ratio": ratio(cpu, "no-op hook"), "noop_hook_wall_ratio": ratio(wall, "no-op hook"),
            "wall_ms_none": med(none_wall) * 1e3, "wall_ms_twinpeaks": med(rec_wall) * 1e3,
            "wall_ratio": ratio(wall),
            "us_per_hooked_call_wall": (med(rec_wall) - med(none_wall)) / layers * 1e6,
            "first_step_ms_twinpeaks": rec_wall[0] * 1e3,
            "max_step_ms_none": max(none_wall) * 1e3, "max_step_ms_twinpeaks": max(rec_wall[1:]) * 1e3,
            "worst_stall_ms": (max(rec_wall[1:]) - med(rec_wall)) * 1e3,
            "slowest_steps_ms": {i + 1: round(rec_wall[i] * 1e3, 1)
                                 for i in sorted(range(len(rec_wall)), key=lambda i: -rec_wall[i])[:6]},
            "flushes_in_steps": len(flushes), "window_steps": hist.clock.rows,
            "flush_handover_ms_median": med(f[1] for f in flushes) * 1e3 if flushes else None,
            "flush_handover_ms_max": max(f[1] for f in flushes) * 1e3 if flushes else None,
            "flush_handover_cpu_ms_max": max(f[2] for f in flushes) * 1e3 if flushes else None,
            "flush_step_stall_ms_max": (max(flush_steps) - med(rec_wall)) * 1e3 if flush_steps else None,
            "end_epoch_ms_median": med(ends) * 1e3 if ends else None,
            "end_epoch_ms_max": max(ends) * 1e3 if ends else None, "end_epochs": len(ends),
            "peak_rss_mb_none": rss_none, "peak_rss_mb_twinpeaks": rss_with, "extra_rss_mb": rss_with - rss_none,
            "run_file_mb": size / 2**20, "bytes_per_layer_step": size / (layers * recorded), **continuous}


def _continuous(model: nn.Module, step: Callable[[], None], path: Path, steps: int, epoch: int) -> dict[str, Any]:
    """Mean step time (what a run's length is made of) of ``steps`` unrecorded steps, then ``steps`` recorded
    by one recorder attached throughout (``end_epoch`` every ``epoch`` steps, timed apart; its ``close`` waits
    for the writer), then ``steps`` unrecorded again: the ratio of the recorded mean to the two unrecorded ones.

    The interleaved rounds above compare medians of short rounds: they leave out the steps a flush or the writer
    slows, and the writer thread's work spread after a recorded round slows the unrecorded round that follows
    (it counts against the baseline). Here the writer works beside the recorded steps only.
    """
    def run(n: int, hist: Any = None) -> list[float]:
        ws = []
        for i in range(n):
            t0 = time.perf_counter()
            step()
            ws.append(time.perf_counter() - t0)
            if hist is not None and (i + 1) % epoch == 0:
                hist.end_epoch()
        return ws

    before = run(steps)
    hist = tp.ActivationsHistogram(model, path)
    hist.attach()
    recorded = run(steps, hist)
    hist.close()
    after = run(steps)
    none = (statistics.mean(before) + statistics.mean(after)) / 2
    return {"continuous_steps": steps, "continuous_ms_none": none * 1e3,
            "continuous_ms_twinpeaks": statistics.mean(recorded) * 1e3,
            "continuous_ratio": statistics.mean(recorded) / none}


def per_call(quick: bool = False, layers: int = 30) -> dict[str, Any]:
    """The fixed cost of one hooked call inside a training step (issue #17: <= 5 us, Python and dispatch together).

    ``layers`` x Linear(w, w) layers (no activation between), forward + backward + SGD on one
    thread, for outputs of 32 values (``Linear(8)``, batch 4: the binning itself is nothing, what is
    left is the fixed cost) and of 2,048 (``Linear(64)``, batch 32: binned exactly). Variants, in
    interleaved rounds of ``steps`` steps: no hook, a no-op forward hook on every layer (for
    reference: what any forward-hook recorder pays before doing anything, torch's slower
    ``_call_impl`` path and one Python call; twinpeaks records through taps, wrapped instance
    forwards, and does not pay it) and twinpeaks (defaults). Reports per variant the median step
    and the extra microseconds per recorded call ``(step - step without hooks) / layers``: for
    twinpeaks, everything it costs per call.
    """
    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    rounds, steps = (4, 20) if quick else (30, 60)
    for label, width, batch in (("32 values", 8, 4), ("2,048 values", 64, 32)):
        torch.manual_seed(0)
        model = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
        x, y = torch.randn(batch, width), torch.randint(0, width, (batch,))
        step = make_step(model, x, y)
        noop = NoopHooks(model)
        with tempfile.TemporaryDirectory() as tmp:
            hist = tp.ActivationsHistogram(model, Path(tmp) / "percall.tp")
            variants: dict[str, Any] = {"none": NoTelemetry(), "no-op hook": noop, "twinpeaks": hist}
            times: dict[str, list[float]] = {k: [] for k in variants}
            for _ in range(20):
                step()
            for r in range(rounds):
                order = list(variants) if r % 2 else list(reversed(variants))
                for key in order:
                    v = variants[key]
                    v.attach()
                    ts = []
                    for _ in range(steps):
                        t0 = time.perf_counter()
                        step()
                        ts.append(time.perf_counter() - t0)
                    v.detach()
                    times[key].append(statistics.median(ts))
            hist.close()
        med = {k: statistics.median(v) for k, v in times.items()}
        out[label] = {"layers": layers, "step_us": {k: v * 1e6 for k, v in med.items()},
                      "us_per_call": {k: (med[k] - med["none"]) / layers * 1e6 for k in med if k != "none"}}
    return out


def per_call_table(d: dict[str, Any]) -> str:
    """Markdown table of :func:`per_call`."""
    lines = ["| output per call | step us, not recorded | +us per call, a no-op forward hook (reference) "
             "| +us per call, twinpeaks (all of it) | #17 target |", "|---|---:|---:|---:|---:|"]
    for label, r in d.items():
        u = r["us_per_call"]
        lines.append(f"| {label} ({r['layers']} Linear layers) | {r['step_us']['none']:.0f} | {u['no-op hook']:.2f} "
                     f"| {u['twinpeaks']:.2f} | <= 5 |")
    return "\n".join(lines)


def flush_time(epochs: int, steps: int) -> dict[str, Any]:
    """Median ``end_epoch`` time for 60 layers x 100 bins, ``steps`` training steps per epoch."""
    model = deep_model()
    x = torch.randn(16, 32)
    times = []
    hist = tp.ActivationsHistogram(model, None, bins=100)
    with tempfile.TemporaryDirectory() as tmp:
        hist = tp.ActivationsHistogram(model, Path(tmp) / "flush.tp", bins=100)
        with hist, torch.no_grad():
            for _ in range(epochs):
                model.train()
                for _ in range(steps):
                    model(x)
                model.eval()
                for _ in range(max(1, steps // 5)):
                    model(x)
                t0 = time.perf_counter()
                hist.end_epoch()
                times.append(time.perf_counter() - t0)
    return {"layers": len(leaf_modules(model)), "bins": 100, "steps_per_epoch": steps, "epochs": epochs,
            "median_ms": statistics.median(times) * 1e3, "max_ms": max(times) * 1e3}


def render_time(steps: int) -> dict[str, Any]:
    """Time to render the 60-layer colorful grid of a ``steps``-step run (needs ``twinpeaks.charts``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from twinpeaks import charts  # noqa: F401
    except ImportError as exc:
        return {"skipped": f"twinpeaks.charts is not available ({exc}); run again after it is merged"}
    model = deep_model()
    x = torch.randn(4, 32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "grid.tp"
        with tp.ActivationsHistogram(model, path) as hist, torch.no_grad():
            for i in range(steps):
                model(x)
                if (i + 1) % 1000 == 0:
                    hist.end_epoch()
        run = tp.open_run(path)
        t0 = time.perf_counter()
        fig = tp.plot_colorful_dimension(run)
        fig.savefig(Path(tmp) / "grid.png")
        took = time.perf_counter() - t0
    return {"layers": len(run.layers), "steps": steps, "seconds": took}


# -- output -------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": cpu, "gpu": gpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "load_avg": os.getloadavg()}


def table(results: list[dict[str, Any]]) -> str:
    """Markdown table: median step CPU time (this thread) and wall time, and their ratios to no telemetry."""
    lines = ["| workload | variant | CPU ms/step | CPU ratio | wall ms/step | wall ratio |",
             "|---|---|---:|---:|---:|---:|"]
    for r in results:
        w = r["workload"] + ("" if r["amp"] == "none" else f" {r['amp']}") + ("" if r["device"] == "cpu" else " (gpu)")
        for key, row in r["variants"].items():
            if "skipped" in row:
                lines.append(f"| {w} | {key} | skipped: {row['skipped'][:80]} | | | |")
            else:
                lines.append(f"| {w} | {key} | {row['cpu_ms']:.1f} | {row['cpu_ratio']:.3f} "
                             f"| {row['wall_ms']:.1f} | {row['wall_ratio']:.3f} |")
    return "\n".join(lines)


def inside_table(results: list[dict[str, Any]]) -> str:
    """Markdown table of the CPU time spent inside twinpeaks' hooks (default settings) per step."""
    lines = ["| workload | twinpeaks CPU ms/step (inside hooks) | share of the step | calls/step (layers + 1) | us/call |",
             "|---|---:|---:|---:|---:|"]
    for r in results:
        i = r["inside_twinpeaks"]
        lines.append(f"| {r['workload']} | {i['ms_per_step']:.2f} | {100 * i['share_of_step']:.1f}% "
                     f"| {i['calls_per_step']:.0f} | {i['us_per_call']:.1f} |")
    return "\n".join(lines)


def deep_table(d: dict[str, Any]) -> str:
    """Markdown table of the 500-layer measurement (issue #17's targets beside the figures)."""
    rows = [("layers (leaf modules)", f"{d['layers']}", ""),
            ("step CPU ms, none / twinpeaks", f"{d['cpu_ms_none']:.2f} / {d['cpu_ms_twinpeaks']:.2f}", ""),
            ("CPU ratio (median of per-round ratios)", f"{d['cpu_ratio']:.3f}", "<= 1.05"),
            ("wall ratio", f"{d['wall_ratio']:.3f}", "<= 1.05"),
            (f"continuous: mean step ms, none / twinpeaks ({d['continuous_steps']} steps each, one recorder "
             "attached throughout)", f"{d['continuous_ms_none']:.2f} / {d['continuous_ms_twinpeaks']:.2f}", ""),
            ("continuous: ratio of the mean steps", f"{d['continuous_ratio']:.3f}", "<= 1.05"),
            ("reference: a no-op forward hook on every layer (twinpeaks uses taps), CPU / wall ratio",
             f"{d['noop_hook_cpu_ratio']:.3f} / {d['noop_hook_wall_ratio']:.3f}", ""),
            ("us per hooked call (wall, step difference / layers)", f"{d['us_per_hooked_call_wall']:.1f}", "<= 5"),
            ("peak RSS MiB, none / twinpeaks", f"{d['peak_rss_mb_none']:.0f} / {d['peak_rss_mb_twinpeaks']:.0f}", ""),
            ("extra peak RSS MiB", f"{d['extra_rss_mb']:.0f}", "<= 150"),
            ("first recorded step ms (buffers created)", f"{d['first_step_ms_twinpeaks']:.1f}", ""),
            ("worst recorded step ms but the first (unrecorded worst)",
             f"{d['max_step_ms_twinpeaks']:.1f} ({d['max_step_ms_none']:.1f})", ""),
            ("worst stall ms (worst - median recorded step)", f"{d['worst_stall_ms']:.1f}", "<= 20"),
            ("mid-epoch flushes in steps (window steps)", f"{d['flushes_in_steps']} ({d['window_steps']})", ""),
            ("flush hand-over in a step ms, median / max (thread CPU max)",
             "-" if d["flush_handover_ms_median"] is None
             else f"{d['flush_handover_ms_median']:.1f} / {d['flush_handover_ms_max']:.1f} "
                  f"({d['flush_handover_cpu_ms_max']:.1f})", "<= 20"),
            ("worst step with a flush ms, minus the median recorded step",
             "-" if d["flush_step_stall_ms_max"] is None else f"{d['flush_step_stall_ms_max']:.1f}", "<= 20"),
            ("end_epoch ms, median / max",
             "-" if d["end_epoch_ms_median"] is None
             else f"{d['end_epoch_ms_median']:.0f} / {d['end_epoch_ms_max']:.0f} ({d['end_epochs']} epochs)", ""),
            ("run file bytes per layer-step", f"{d['bytes_per_layer_step']:.0f} ({d['run_file_mb']:.1f} MiB)", "")]
    lines = ["| deep500 | figure | #17 target |", "|---|---:|---:|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


WORKLOADS = ("cnn", "mlp", "transformer", "small")
EXTRAS = ("percall", "memory", "flush", "render", "deep500")
PARTS = WORKLOADS + EXTRAS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small batches, few rounds: a smoke run")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 30, quick 3)")
    ap.add_argument("--only", nargs="*", default=None, choices=PARTS, metavar="PART",
                    help=f"parts to run, of: {' '.join(PARTS)} (default all)")
    ap.add_argument("--skip", nargs="*", default=[], choices=PARTS, metavar="PART", help="parts not to run")
    ap.add_argument("--skip-extras", action="store_true", help=f"only the overhead table (skip {' '.join(EXTRAS)})")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared machine, 2-thread steps wait on a descheduled thread)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--scale", type=int, default=1, help="batch multiplier (fill a GPU)")
    ap.add_argument("--amp", choices=["none", "fp16", "bf16"], default="none", help="autocast dtype")
    ap.add_argument("--sync-check", action="store_true",
                    help='run twinpeaks steps under torch.cuda.set_sync_debug_mode("error")')
    ap.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = ap.parse_args(argv)
    parts = [p for p in (args.only or PARTS) if p not in args.skip and not (args.skip_extras and p in EXTRAS)]
    rounds = args.rounds or (3 if args.quick else 30)
    steps = 2 if args.quick else 3
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    results = []
    dev = torch.device(args.device)
    for name, (model, x, y) in workloads(args.quick, args.scale).items():
        if name not in parts:
            continue
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        model, x, y = model.to(dev), x.to(dev), y.to(dev)
        results.append(measure(name, model, x, y, rounds, steps * STEPS_FACTOR.get(name, 1), args.amp,
                               args.sync_check))
    report: dict[str, Any] = {"machine": machine(), "quick": args.quick, "overhead": results}
    print(table(results))
    print(inside_table(results))
    extras: dict[str, Callable[[], dict[str, Any]]] = {
        "percall": lambda: per_call(args.quick),
        "memory": lambda: memory_and_file_in_child(2_000 if args.quick else 20_000),
        "flush": lambda: flush_time(3 if args.quick else 10, 100),
        "render": lambda: render_time(1_000 if args.quick else 10_000),
        "deep500": lambda: deep500_in_child(args.quick),
    }
    for key, fn in extras.items():
        if key in parts:
            print(f"{key} ...", file=sys.stderr, flush=True)
            report[key] = fn()
            print(f"{key}: {json.dumps(report[key])}")
    if "percall" in report:
        print(per_call_table(report["percall"]))
    if "deep500" in report:
        print(deep_table(report["deep500"]))
    out = args.out or RESULTS / f"overhead{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
