"""GPU overhead of twinpeaks: the fused Triton kernel against the torch device path (issue #18).

One prepared script for a GPU machine (``bench/gpu.sh`` runs it with a timeout); prints one table and
writes ``bench/results/gpu-kernel.json``. In order, each section skipped (and said so) once the time
budget is spent:

1. **Correctness on the device**: every check of ``tests/recording/triton_checks.py`` (counts against numpy,
   values on and next to every edge, NaN/inf, sampled plans, regrids, per-class and YES/NO rows, the
   two-launch path) with the kernel compiled for this GPU; then a small recorded training run, its
   histograms with the kernel equal to those of the torch device path.
2. **Overhead**: a CNN and a transformer with 60 and 500 leaf modules, fp32 and bf16/fp16 autocast, a
   real training step; variants ``none``, ``floor`` (one read of every output), ``torch path`` (the
   recorder on the torch device operations), ``kernel`` (the recorder on the fused kernel; before the
   recorder uses it: hooks that call the kernel into per-layer step rows the way the recorder would),
   interleaved rounds, median of per-round ratios to ``none``. For each: device launches per step
   (``torch.profiler``, kernels + memcpy + memset) and whether the recorded steps ran clean under
   ``torch.cuda.set_sync_debug_mode("error")``.
3. **torch.compile**: the 60-layer CNN compiled with and without the recorder (hooks registered before
   compiling), fp32.

``--device cpu --dry-run`` runs every code path small on CPU (the kernel through Triton's interpreter),
to check the script before a GPU run; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

if "--device" in sys.argv and sys.argv[sys.argv.index("--device") + 1] == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: the kernels run in the interpreter
    os.environ["TWINPEAKS_KERNEL"] = "triton"  # and the recorder uses them for CPU tensors

import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "recording"))
sys.path.insert(0, str(ROOT / "bench"))

import overhead  # noqa: E402  (bench/overhead.py: the shared training step)

import twinpeaks as tp  # noqa: E402
from twinpeaks import _triton, binning  # noqa: E402
from twinpeaks.recorder import AUTO_SAMPLE, EXACT_BELOW, SAMPLE_BLOCK, leaf_modules  # noqa: E402

RESULTS = ROOT / "bench" / "results"


# -- models ------------------------------------------------------------------------------------
def cnn(leaves: int, width: int) -> nn.Module:
    """Conv/BN/ReLU blocks at constant width and a linear head: ``leaves`` leaf modules (3 per block + 3)."""
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    for _ in range(max(0, (leaves - 6) // 3)):
        layers += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)]
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """Token embedding, ``layers`` encoder layers (8 leaf modules each, 7 called), norm, mean-pool, head."""

    def __init__(self, layers: int, d: int):
        super().__init__()
        self.emb = nn.Embedding(1000, d)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, 4, dim_feedforward=2 * d, batch_first=True),
                                         layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.enc(self.emb(x))).mean(1))


def workload(kind: str, leaves: int, device: torch.device, small: bool) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if kind == "cnn":
        b, hw, width = (4, 8, 8) if small else (64, 16, 32)
        model: nn.Module = cnn(leaves, width)
        x = torch.randn(b, 3, hw, hw, generator=g)
    else:
        b, seq, d = (2, 16, 32) if small else (16, 128, 256)
        model = Encoder(max(1, round((leaves - 3) / 8)), d)
        x = torch.randint(0, 1000, (b, seq), generator=g)
    y = torch.randint(0, 10, (b,), generator=g)
    return model.to(device), x.to(device), y.to(device)


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: str) -> Callable[[], None]:
    """bench/overhead.py's training step (no GradScaler: its step reads found-inf back, a sync in every variant)."""
    return overhead.make_step(model, x, y, amp, lr=1e-4)


# -- variants ----------------------------------------------------------------------------------
class Variant:
    def attach(self) -> None: ...
    def detach(self) -> None: ...


class Floor(Variant):
    """One read of every leaf output (a sum into a device accumulator): the least an exact method pays."""

    def __init__(self, model: nn.Module):
        self.mods = [m for _, m in leaf_modules(model)]
        self.handles: list[Any] = []
        self.acc: torch.Tensor | None = None

    def _hook(self, module: nn.Module, args: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            with torch.no_grad():
                s = out.detach().sum(dtype=torch.float32)
                self.acc = s if self.acc is None else self.acc.add_(s)

    def attach(self) -> None:
        self.handles = [m.register_forward_hook(self._hook) for m in self.mods]

    def detach(self) -> None:
        for h in self.handles:
            h.remove()


def recorder_uses_kernel() -> bool:
    """Whether this checkout's recorder can bin with the fused kernel (``binning.DEVICE_KERNEL``)."""
    return hasattr(binning, "DEVICE_KERNEL")


class Recorder(Variant):
    """``tp.ActivationsHistogram(model)`` (defaults: every leaf module, 100 bins, sampled), in memory."""

    def __init__(self, model: nn.Module, kernel: bool | None):
        self.model = model
        self.kernel = kernel
        self.hist: tp.ActivationsHistogram | None = None
        self.old: Any = None

    def attach(self) -> None:
        if self.kernel is not None:
            self.old = binning.DEVICE_KERNEL  # type: ignore[attr-defined]
            binning.DEVICE_KERNEL = self.kernel  # type: ignore[attr-defined]
        if self.hist is None:  # one recorder per variant, its hooks attached and detached per round
            self.hist = tp.ActivationsHistogram(self.model, flush_every=512)
        self.hist.attach()

    def detach(self) -> None:
        assert self.hist is not None
        self.hist.detach()
        if self.kernel is not None:
            binning.DEVICE_KERNEL = self.old  # type: ignore[attr-defined]


class KernelHooks(Variant):
    """The fused kernel called from plain hooks into per-layer step rows, as the recorder would call it
    (used while the recorder does not: the kernel's own cost, with the recorder's sampling plan)."""

    def __init__(self, model: nn.Module, bins: int = 100, rows: int = 512):
        self.mods = [m for _, m in leaf_modules(model)]
        self.handles: list[Any] = []
        self.bins, self.rows = bins, rows
        self.state: dict[int, Any] = {}
        self.row = 0
        self.rng = random.Random(0)

    def _hook(self, module: nn.Module, args: Any, out: Any) -> None:
        if not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.numel() == 0:
            return
        with torch.no_grad():
            key = (id(module), out.shape, out.stride(), out.dtype)
            st = self.state.get(key)
            if st is None:  # one Binner per layout (the recorder's plan), over per-layer step buffers
                dev, s, n = out.device, self.bins + 3, out.numel()
                blocks = stride = 0
                if n > EXACT_BELOW:
                    blocks = AUTO_SAMPLE // SAMPLE_BLOCK
                    stride = n // blocks
                bufs = (torch.zeros(self.rows, s, dtype=torch.float64, device=dev),
                        torch.zeros(self.rows, 5, dtype=torch.float64, device=dev),
                        torch.full((self.rows, 2), -math.inf, dtype=torch.float64, device=dev),
                        binning.new_grids(self.rows, dev))
                binner = _triton.Binner(out, *bufs[:3], grid=bufs[3], blocks=blocks, stride=stride)
                st = self.state[key] = (binner, stride, bufs)
            binner, stride, _ = st
            offset = int(self.rng.random() * (stride - SAMPLE_BLOCK + 1)) if stride else 0
            binner(out.detach(), self.row % self.rows, offset)

    def attach(self) -> None:
        self.handles = [m.register_forward_hook(self._hook) for m in self.mods]
        self.handles.append(self.mods[0].register_forward_pre_hook(lambda *a: self._next()))

    def _next(self) -> None:
        self.row += 1

    def detach(self) -> None:
        for h in self.handles:
            h.remove()


def variants(model: nn.Module) -> dict[str, Variant]:
    out: dict[str, Variant] = {"none": Variant(), "floor": Floor(model)}
    if recorder_uses_kernel():
        out["torch path"] = Recorder(model, kernel=False)
        out["kernel"] = Recorder(model, kernel=True)
    else:
        out["torch path"] = Recorder(model, kernel=None)
        out["kernel (hooks)"] = KernelHooks(model)
    return out


# -- measuring ---------------------------------------------------------------------------------
def launches_per_step(step: Callable[[], None], steps: int, cuda: bool) -> float | None:
    if not cuda:
        return None
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    n = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    return n / steps


def sync_clean(step: Callable[[], None], steps: int, cuda: bool) -> str:
    if not cuda:
        return "n/a"
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(steps):
            step()
        return "clean"
    except RuntimeError as exc:
        return f"SYNC: {str(exc).splitlines()[0][:80]}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()


def measure(kind: str, leaves: int, amp: str, device: torch.device, rounds: int, steps: int,
            small: bool) -> dict[str, Any]:
    model, x, y = workload(kind, leaves, device, small)
    step = make_step(model, x, y, amp)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    model.train()
    for _ in range(3):
        step()
    vs = variants(model)
    extra: dict[str, dict[str, Any]] = {}
    for key, var in vs.items():  # warm up (Triton compiles here), launches per step, sync check
        var.attach()
        try:
            for _ in range(2):
                step()
            extra[key] = {"launches": launches_per_step(step, 2, cuda), "sync": sync_clean(step, 3, cuda)}
        finally:
            var.detach()
    times: dict[str, list[float]] = {k: [] for k in vs}
    for r in range(rounds):
        order = list(vs.items())
        order = order[r % len(order):] + order[:r % len(order)]
        for key, var in order:
            var.attach()
            step()
            sync()
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            sync()
            times[key].append((time.perf_counter() - t0) / steps)
            var.detach()
    rows = {}
    for key, ts in times.items():
        rows[key] = {"ms": statistics.median(ts) * 1e3,
                     "ratio": statistics.median(t / b for t, b in zip(ts, times["none"])), **extra[key]}
    base = rows["none"]["launches"]
    for row in rows.values():
        row["extra_launches"] = None if base is None or row["launches"] is None else row["launches"] - base
    return {"workload": kind, "leaves": len(leaf_modules(model)), "amp": amp, "batch": len(x), "variants": rows}


def compiled(device: torch.device, small: bool, rounds: int, steps: int) -> dict[str, Any]:
    """The 60-layer CNN under torch.compile (default mode), without and with the recorder, fp32."""
    out: dict[str, Any] = {"workload": "cnn (torch.compile)", "leaves": None, "amp": "none", "variants": {}}
    cuda = device.type == "cuda"
    for key in ("none", "kernel" if recorder_uses_kernel() else "torch path"):
        model, x, y = workload("cnn", 60, device, small)
        out["leaves"] = len(leaf_modules(model))
        hist = None
        if key != "none":
            hist = tp.ActivationsHistogram(model, flush_every=512).attach()  # hooks before compiling
        cmodel = torch.compile(model)
        step = make_step(cmodel, x, y, "none")
        t0 = time.perf_counter()
        for _ in range(3):
            step()
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        sync()
        warm = time.perf_counter() - t0
        ts = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            sync()
            ts.append((time.perf_counter() - t0) / steps)
        out["variants"][key] = {"ms": statistics.median(ts) * 1e3, "compile_s": warm,
                                "launches": launches_per_step(step, 2, cuda), "sync": sync_clean(step, 3, cuda)}
        if hist is not None:
            out["variants"][key]["recorded_steps"] = getattr(getattr(hist, "clock", None), "step", {}).get("train")
            hist.detach()
    base = out["variants"]["none"]
    for row in out["variants"].values():
        row["ratio"] = row["ms"] / base["ms"]
        row["extra_launches"] = None if base["launches"] is None else row["launches"] - base["launches"]
    return out


def device_checks(device: torch.device) -> dict[str, str]:
    """tests/recording/triton_checks.py's checks with every tensor moved to ``device`` around the kernel call."""
    import triton_checks

    real = _triton.observe

    def moved(t: torch.Tensor) -> torch.Tensor:
        whole = torch.empty(0, dtype=t.dtype).set_(t.untyped_storage())  # the storage, so layouts survive
        return whole.to(device).as_strided(t.size(), t.stride(), t.storage_offset())

    def observe(values: torch.Tensor, counts: torch.Tensor, sums: torch.Tensor, peaks: torch.Tensor,
                **kw: Any) -> int:
        if values.device.type == device.type:
            return real(values, counts, sums, peaks, **kw)
        dev = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
        c, s, p = counts.to(device), sums.to(device), peaks.to(device)
        n = real(moved(values), c, s, p, **dev)
        counts.copy_(c)
        sums.copy_(s)
        peaks.copy_(p)
        for k in ("grid", "extra_grid", "truth", "classes"):
            if kw.get(k) is not None:
                kw[k].copy_(dev[k])
        return n

    results = {}
    _triton.observe = observe  # type: ignore[assignment]
    try:
        for name, fn in triton_checks.CHECKS.items():
            if name in ("import_is_lazy", "recorder_on_kernel"):  # the process's business; CPU tensors
                continue
            try:
                fn()
                results[name] = "ok"
            except Exception:
                results[name] = traceback.format_exc(limit=4)
    finally:
        _triton.observe = real  # type: ignore[assignment]
    if recorder_uses_kernel():  # a recorded training run: the kernel against the torch device path
        try:
            if device.type == "cuda":
                triton_checks.recorder_kernel_vs_torch(str(device))
            else:  # the dry run: the kernel (interpreted) against the C kernel
                triton_checks.recorder_on_kernel()
            results["recorder_kernel_vs_torch"] = "ok"
        except Exception:
            results["recorder_kernel_vs_torch"] = traceback.format_exc(limit=4)
    return results


# -- output ------------------------------------------------------------------------------------
def table(results: list[dict[str, Any]]) -> str:
    lines = ["| workload | leaves | amp | variant | ms/step | ratio | launches/step | extra launches | syncs |",
             "|---|---:|---|---|---:|---:|---:|---:|---|"]
    for r in results:
        for key, v in r["variants"].items():
            la = "-" if v.get("launches") is None else f"{v['launches']:.0f}"
            ex = "-" if v.get("extra_launches") is None else f"{v['extra_launches']:+.0f}"
            lines.append(f"| {r['workload']} | {r['leaves']} | {r['amp']} | {key} | {v['ms']:.2f} | "
                         f"{v['ratio']:.3f} | {la} | {ex} | {v.get('sync', '-')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda, or cpu (with --dry-run: check the script)")
    ap.add_argument("--dry-run", action="store_true", help="tiny models, one round: exercise every path")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per variant and round")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip what is left after this many seconds")
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "gpu-kernel.json")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device (use --device cpu --dry-run to check the script)", file=sys.stderr)
        return 2
    small = args.dry_run
    rounds, steps = (1, 1) if small else (args.rounds, args.steps)
    info = {"torch": torch.__version__, "python": platform.python_version(),
            "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
            "triton": _triton.available(), "recorder_uses_kernel": recorder_uses_kernel(), "dry_run": small}
    try:
        import triton

        info["triton_version"] = triton.__version__
    except ImportError:
        pass
    print("#", json.dumps(info), flush=True)
    report: dict[str, Any] = {"machine": info, "checks": {}, "overhead": [], "skipped": []}

    def left() -> float:
        return args.budget_s - (time.perf_counter() - start)

    # 1. correctness on the device
    if _triton.available():
        t0 = time.perf_counter()
        report["checks"] = device_checks(device)
        bad = {k: v for k, v in report["checks"].items() if v != "ok"}
        print(f"# device checks: {len(report['checks']) - len(bad)}/{len(report['checks'])} ok "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
        for k, v in bad.items():
            print(f"# FAILED {k}:\n{v}", flush=True)
    # 2. overhead
    plan = [(kind, leaves, amp) for leaves in (60, 500) for kind in ("cnn", "transformer")
            for amp in ("none", "bf16", "fp16")]
    if small:
        plan = [("cnn", 12, "none"), ("transformer", 20, "bf16")]
    for kind, leaves, amp in plan:
        if left() < (60 if leaves >= 500 else 20) and not small:
            report["skipped"].append(f"{kind} {leaves} {amp}: time budget")
            continue
        t0 = time.perf_counter()
        try:
            r = measure(kind, leaves, amp, device, rounds, steps, small)
            report["overhead"].append(r)
            print(f"# {kind} {leaves} {amp}: " + ", ".join(f"{k} {v['ratio']:.3f}" for k, v in r["variants"].items())
                  + f" ({time.perf_counter() - t0:.1f} s)", flush=True)
        except Exception:
            report["skipped"].append(f"{kind} {leaves} {amp}: {traceback.format_exc(limit=3)}")
            print(f"# {kind} {leaves} {amp} FAILED:\n{traceback.format_exc(limit=5)}", flush=True)
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    # 3. torch.compile
    if args.skip_compile:
        report["skipped"].append("torch.compile: --skip-compile")
    elif left() < 150 and not small:
        report["skipped"].append("torch.compile: time budget")
    else:
        try:
            report["overhead"].append(compiled(device, small, rounds, steps))
        except Exception:
            report["skipped"].append(f"torch.compile: {traceback.format_exc(limit=3)}")
            print(f"# torch.compile FAILED:\n{traceback.format_exc(limit=5)}", flush=True)
    print(table(report["overhead"]))
    for s in report["skipped"]:
        print("# skipped:", s.splitlines()[0])
    print(f"# total {time.perf_counter() - start:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str))
    ok = all(v == "ok" for v in report["checks"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
