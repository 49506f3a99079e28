"""The floor of recording deep500's model: what the least a recorder can do per layer costs its step.

Run ``PYTHONPATH=$PWD python bench/floor.py`` (about 2 minutes).

Issue #17 asks deep500 (501 leaf layers, ``bench/overhead.py``) for at most 1.05x its step. Its step takes
about 9.6 ms on this project's machine, 19 us per leaf layer for forward, backward and SGD: 1.05x leaves
0.96 us per layer and step for everything a recorder does. This script measures what the parts of the
recorder's per-layer work cost inside that step, in one process, interleaved (rounds of ``--steps`` steps of
each variant, the order alternating), with the writer's jobs dropped in every variant (the writer thread's
share is measured apart, by ``overhead.py deep500``'s continuous run):

- ``none``: no tap on any module (the model as it was).
- ``tap``: the recorder's step clock (a tap on the model) and a tap on every leaf whose hook is a no-op Python
  function: the cheapest way to run Python after each layer's forward (a forward hook costs more: see
  :class:`twinpeaks.recording.selection.Tap`), and the window hand-overs of empty rows.
- ``tap + kernel``: the same, with the hook calling the C kernel on the output directly (the recorder's own
  buffers and arguments, no other Python): the floor of binning every value of every output on every step.
- ``recorder``: twinpeaks' hooks as they are (writer jobs dropped).

It prints, for each, the mean step, the ratio of the means to ``none``, the median of the per-round ratios
and the cost per layer and step in microseconds; ``--out`` writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from overhead import deep500_model  # noqa: E402

import twinpeaks as tp  # noqa: E402
from twinpeaks import binning  # noqa: E402

VARIANTS = ("none", "tap", "tap + kernel", "recorder")


def measure(rounds: int, steps: int, blocks: int = 250, width: int = 32, batch: int = 32) -> dict[str, Any]:
    """Mean steps of every variant over ``rounds`` interleaved rounds of ``steps`` (see the module's docstring)."""
    model, step = deep500_model(blocks, width, batch)
    observe = binning._cbin.observe  # type: ignore[union-attr]
    with tempfile.TemporaryDirectory() as tmp:
        hist = tp.ActivationsHistogram(model, Path(tmp) / "floor.tp")
        hist.attach()
        hist._thread.submit = lambda job: None  # the writer's share is measured apart (overhead.py deep500)
        for _ in range(3):  # the buffers and the kernel's plans are made
            step()
        clock = hist.clock
        taps = {id(t.module): t for t in hist._hooks._taps.values()}
        root = model.__dict__["forward"]
        leaves, hooks = [], {v: [] for v in VARIANTS[1:]}
        for index, (_, module) in enumerate(hist._selected):
            tap = taps[id(module)]
            leaves.append((module, tap))
            hooks["recorder"].append(tap.hook)
            hooks["tap"].append(lambda m, a, o: None)
            args = hist._by_module[index][()].fast.kernel_args

            def kernel(m: Any, a: Any, o: torch.Tensor, args: tuple = args) -> None:
                observe(o.data_ptr(), *args, clock.row)
            hooks["tap + kernel"].append(kernel)

        def use(variant: str) -> None:
            if variant == "none":
                model.__dict__.pop("forward", None)
                for module, _ in leaves:
                    module.__dict__.pop("forward", None)
                return
            model.__dict__["forward"] = root
            for (module, tap), hook in zip(leaves, hooks[variant]):
                module.__dict__["forward"] = tap
                tap.hook = hook

        times: dict[str, list[list[float]]] = {v: [] for v in VARIANTS}
        for r in range(rounds):
            for variant in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
                use(variant)
                for _ in range(3):
                    step()
                ts = []
                for _ in range(steps):
                    t0 = time.perf_counter()
                    step()
                    ts.append(time.perf_counter() - t0)
                times[variant].append(ts)
        use("recorder")
        hist.detach()
    layers = len(leaves)
    base = [statistics.mean(ts) for ts in times["none"]]
    base_mean = statistics.mean(x for ts in times["none"] for x in ts)
    out: dict[str, Any] = {"layers": layers, "rounds": rounds, "steps": steps, "variants": {}}
    for variant in VARIANTS:
        mean = statistics.mean(x for ts in times[variant] for x in ts)
        out["variants"][variant] = {
            "mean_ms": mean * 1e3,
            "ratio_of_means": mean / base_mean,
            "median_round_ratio": statistics.median(statistics.mean(ts) / b for ts, b in zip(times[variant], base)),
            "us_per_layer": (mean - base_mean) / layers * 1e6,
        }
    out["budget_us_per_layer_at_1_05"] = 0.05 * base_mean / layers * 1e6
    return out


def table(res: dict[str, Any]) -> str:
    lines = ["| variant | mean ms/step | ratio of means | median round ratio | us per layer-step |",
             "|---|---:|---:|---:|---:|"]
    for variant, v in res["variants"].items():
        lines.append(f"| {variant} | {v['mean_ms']:.2f} | {v['ratio_of_means']:.3f} | {v['median_round_ratio']:.3f} "
                     f"| {v['us_per_layer']:.2f} |")
    lines.append(f"\n1.05x leaves {res['budget_us_per_layer_at_1_05']:.2f} us per layer-step ({res['layers']} layers).")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30, help="interleaved rounds")
    ap.add_argument("--steps", type=int, default=40, help="steps of each variant per round")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = ap.parse_args()
    res = measure(args.rounds, args.steps)
    print(table(res))
    if args.out:
        args.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
