"""The verdict suite: train every scenario of ``bench/scenarios.py`` with several seeds and score ``tp.diagnose``.

Each scenario knows its truth (the finding kinds its defect must produce;
none for a healthy run). Thresholds were chosen on the *tuning* seeds; this
script reports, on the *held-out* seeds, for every finding kind: precision
(of the runs where the kind was found as a warning or problem, the share
whose truth has it) and recall (of the runs whose truth has it, the share
where it was found), plus the number of problem-level findings on healthy
runs (the goal is zero). Run files are kept under ``--runs`` and reused
unless ``--retrain`` is given, so a change of the rules re-scores in seconds.

Run::

    make verdicts                                  # everything, table into bench/results/verdicts.md
    python bench/verdicts.py --only mlp_digits dead_mlp --seeds 0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import scenarios as S  # noqa: E402

import twinpeaks as tp  # noqa: E402

#: seeds the thresholds were chosen on (2 and 3 were also seen while building the rules), and the
#: held-out seeds the scores are reported on (run once, after the thresholds were fixed)
TUNE_SEEDS = (0, 1, 2, 3)
TEST_SEEDS = (4, 5)
#: the kinds a scenario's truth can name (the problems the suite builds in)
KINDS = ("overfitting", "unstable", "dead", "saturated", "vanishing")


def run_one(s: S.Scenario, seed: int, root: Path, retrain: bool) -> dict:
    """Train (unless cached) and diagnose one scenario with one seed; a row of the table."""
    path = root / f"{s.name}-s{seed}.tp"
    side = path.with_suffix(".json")
    if retrain or not (path.exists() and side.exists()):
        t = S.train(s, seed, path)
        side.write_text(json.dumps({"valid_loss": t.valid_loss, "valid_accuracy": t.valid_accuracy,
                                    "train_loss": t.train_loss, "seconds": t.seconds}))
    info = json.loads(side.read_text())
    d = tp.diagnose(path)
    found = sorted({f.kind for f in d.findings if f.severity in ("warning", "problem") and f.kind in KINDS})
    problems = sorted({f.kind for f in d.findings if f.severity == "problem"})
    sep = d.metric("separation", "valid") if "valid" in d.phases else d.metric("separation", "train")
    lf = d.metric("separation_label_free", "valid") if "valid" in d.phases else np.full(1, np.nan)
    la = d.metric("separation_label_aware", "valid") if "valid" in d.phases else np.full(1, np.nan)
    found = [k for k in found if k in s.truth or k not in s.also]  # true consequences are neither hit nor false
    return {"scenario": s.name, "seed": seed, "truth": list(s.truth), "found": found, "problems": problems,
            "warnings": sorted({f.kind for f in d.findings if f.severity == "warning"}),
            "task": d.task, "separation_last": float(sep[-1]), "label_free": [float(v) for v in lf],
            "label_aware": [float(v) for v in la], "valid_accuracy": info["valid_accuracy"][-1],
            "valid_loss_lowest_epoch": int(np.argmin(info["valid_loss"])), "epochs": len(info["valid_loss"]),
            "seconds": info["seconds"], "messages": [f"{f.severity} {f.kind} [{f.layer}] e{f.epoch}: {f.message}"
                                                     for f in d.findings if f.severity != "info"]}


def score(rows: list[dict], seeds: tuple[int, ...]) -> dict[str, dict[str, float]]:
    """Precision and recall per kind over the rows of ``seeds``, and healthy runs with a problem."""
    rows = [r for r in rows if r["seed"] in seeds]
    out: dict[str, dict[str, float]] = {}
    for k in KINDS:
        tp_ = sum(k in r["found"] and k in r["truth"] for r in rows)
        fp = sum(k in r["found"] and k not in r["truth"] for r in rows)
        fn = sum(k not in r["found"] and k in r["truth"] for r in rows)
        out[k] = {"tp": tp_, "fp": fp, "fn": fn,
                  "precision": tp_ / (tp_ + fp) if tp_ + fp else float("nan"),
                  "recall": tp_ / (tp_ + fn) if tp_ + fn else float("nan")}
    healthy = [r for r in rows if not r["truth"]]
    out["healthy"] = {"runs": len(healthy), "with_problem": sum(bool(r["problems"]) for r in healthy),
                      "with_warning": sum(bool(set(r["warnings"]) & set(KINDS)) for r in healthy)}
    return out


def agreement(rows: list[dict], healthy_only: bool = False) -> dict[str, float]:
    """Label-free vs label-aware valid separation on the runs recorded with targets (every epoch from 1).

    ``healthy_only``: only the healthy single-label classifiers (what the
    label-free reading is built for: (K-1):1 masses).
    """
    a, f = [], []
    for r in rows:
        if r["task"] != "classification":
            continue
        if healthy_only and (r["truth"] or r["scenario"].startswith(("imbalanced", "multilabel", "label_noise"))):
            continue
        for la, lf in list(zip(r["label_aware"], r["label_free"]))[1:]:
            if np.isfinite(la) and np.isfinite(lf):
                a.append(la)
                f.append(lf)
    a_, f_ = np.array(a), np.array(f)
    if not len(a_):
        return {}
    return {"pairs": len(a_), "pearson": float(np.corrcoef(a_, f_)[0, 1]),
            "median_abs_diff": float(np.median(np.abs(a_ - f_))), "mean_diff": float(np.mean(f_ - a_)),
            "within_0_5": float(np.mean(np.abs(a_ - f_) <= 0.5)), "within_1": float(np.mean(np.abs(a_ - f_) <= 1.0))}


def agreement_table(rows: list[dict]) -> str:
    """Per scenario with targets: label-aware and label-free valid separation at the last epoch (mean over seeds)."""
    by: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if r["task"] == "classification" and r["label_aware"]:
            by.setdefault(r["scenario"], []).append((r["label_aware"][-1], r["label_free"][-1]))
    lines = ["| scenario | label-aware | label-free | difference |", "|---|---|---|---|"]
    for n, v in by.items():
        a, f = np.nanmean([x[0] for x in v]), np.nanmean([x[1] for x in v])
        lines.append(f"| {n} | {a:.2f} | {f:.2f} | {f - a:+.2f} |")
    return "\n".join(lines)


def table(rows: list[dict], seeds: tuple[int, ...]) -> str:
    """The markdown table: scenario, truth, found per seed (warnings and problems of the suite's kinds)."""
    names = list(dict.fromkeys(r["scenario"] for r in rows))
    by = {(r["scenario"], r["seed"]): r for r in rows}
    head = "| scenario | truth | " + " | ".join(f"seed {s}" for s in seeds) + " |"
    lines = [head, "|" + "---|" * (2 + len(seeds))]
    for n in names:
        sc = S.SCENARIOS[n]
        truth = (", ".join(sc.truth) or "healthy") + (f" (may: {', '.join(sc.also)})" if sc.also else "")
        cells = []
        for s in seeds:
            r = by.get((n, s))
            if r is None:
                cells.append("")
                continue
            found = ", ".join(r["found"]) or "-"
            extra = [k for k in r["problems"] if k not in KINDS]
            ok = set(r["found"]) == set(r["truth"]) and not (not r["truth"] and r["problems"])
            cells.append(("" if ok else "**x** ") + found + (f" (+{', '.join(extra)})" if extra else ""))
        lines.append(f"| {n} | {truth} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="*", default=[*TUNE_SEEDS, *TEST_SEEDS])
    p.add_argument("--only", nargs="*", default=None, help="scenario names (default: all)")
    p.add_argument("--runs", default="bench/results/verdict-runs", help="folder for the run files (reused)")
    p.add_argument("--retrain", action="store_true", help="train again even where a run file exists")
    p.add_argument("--out", default="bench/results/verdicts.md", help="the table and scores (markdown)")
    p.add_argument("-v", "--verbose", action="store_true", help="print every finding's message")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    names = args.only or list(S.SCENARIOS)
    unknown = [n for n in names if n not in S.SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {unknown}")
    root = Path(args.runs)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = []
    for n in names:
        for seed in args.seeds:
            r = run_one(S.SCENARIOS[n], seed, root, args.retrain)
            rows.append(r)
            if args.verbose:
                print(f"{n} seed {seed}: found {r['found']} truth {r['truth']} acc {r['valid_accuracy']:.2f}",
                      file=sys.stderr)
                for m in r["messages"]:
                    print("   ", m, file=sys.stderr)
    seeds = tuple(args.seeds)
    test = tuple(s for s in seeds if s in TEST_SEEDS) or seeds
    tune = tuple(s for s in seeds if s in TUNE_SEEDS)
    parts = [f"# Verdict suite\n\n{len(names)} scenarios x seeds {list(seeds)}, "
             f"{time.perf_counter() - t0:.0f} s (training {sum(r['seconds'] for r in rows):.0f} s). "
             f"Found = findings of the suite's kinds at warning or problem level; **x** = differs from the truth.\n",
             table(rows, seeds), ""]
    for label, ss in (("held-out seeds " + str(list(test)), test), ("tuning seeds " + str(list(tune)), tune)):
        if not ss:
            continue
        sc = score(rows, ss)
        parts.append(f"\n## Precision and recall per kind, {label}\n")
        parts.append("| kind | precision | recall | tp | fp | fn |\n|---|---|---|---|---|---|")
        for k in KINDS:
            v = sc[k]
            parts.append(f"| {k} | {v['precision']:.2f} | {v['recall']:.2f} | {v['tp']} | {v['fp']} | {v['fn']} |")
        h = sc["healthy"]
        parts.append(f"\nHealthy runs: {h['runs']}, with a problem-level finding: {h['with_problem']}, "
                     f"with a warning of the suite's kinds: {h['with_warning']}.")
    parts.append("\n## Label-free vs label-aware separation\n\nValid separation of every epoch from 1, on the "
                 "runs recorded with targets (the label-free one is computed there too, from the same histograms).\n")
    for label, only in (("healthy single-label classifiers", True), ("every run with targets", False)):
        ag = agreement(rows, only)
        if ag:
            parts.append(f"- {label}: {ag['pairs']} pairs, Pearson r {ag['pearson']:.3f}, median |difference| "
                         f"{ag['median_abs_diff']:.2f}, mean (free - aware) {ag['mean_diff']:+.2f}, within 0.5: "
                         f"{ag['within_0_5']:.0%}, within 1.0: {ag['within_1']:.0%}")
    parts.append("\nLast epoch, mean over the seeds:\n\n" + agreement_table(rows))
    text = "\n".join(parts) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    (out.with_suffix(".json")).write_text(json.dumps(rows, indent=1))
    sc = score(rows, test)
    ok = sc["healthy"]["with_problem"] == 0 and all(
        not np.isfinite(sc[k]["recall"]) or sc[k]["recall"] >= 0.9 for k in KINDS)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
