"""The registry of diagnosis rules: each rule module registers itself here.

A rule is one module under :mod:`twinpeaks.diagnosis.rules` that declares, in
one place, everything the diagnosis needs to know about it: the finding kind
it produces, its thresholds (name, default, one line each), the metrics it
computes, and its check. Adding a finding kind is adding one module (and one
import line in ``rules/__init__.py``): nothing else changes.

Two decorators:

* :func:`measure` registers a function that computes metrics into the
  context (``ctx.put(name, phase, layer, values)``); measures run first, in
  ``order``.
* :func:`rule` registers a check that reads the metrics and adds findings
  (``ctx.add(kind, severity, ...)``); checks run next, in ``order``, only
  for the tasks they name.

This module imports nothing of the diagnosis, so rule modules can import it
without cycles.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: what a check or a measure receives: the run's :class:`~twinpeaks.diagnosis.core.Context`
Check = Callable[[Any], None]

TASKS = ("classification", "unlabeled", "regression")


@dataclass(frozen=True)
class Measure:
    """A registered metric computation."""

    name: str
    order: int
    metrics: dict[str, tuple[bool, bool, str]]  #: name -> (per phase, per layer, one line)
    fn: Check


@dataclass(frozen=True)
class Rule:
    """A registered check: one finding kind, its thresholds and its function."""

    kind: str
    order: int
    fn: Check
    thresholds: dict[str, tuple[float, str]] = field(default_factory=dict)  #: name -> (default, one line)
    tasks: tuple[str, ...] = TASKS  #: the run kinds it judges
    doc: str = ""  #: one line about the kind, for the docs


MEASURES: list[Measure] = []
RULES: list[Rule] = []
#: finding kinds declared by rules (a rule module may emit more than its own kind, e.g. "no_twin_peaks")
EXTRA_KINDS: list[tuple[int, str, str]] = []


def measure(order: int, metrics: dict[str, tuple[bool, bool, str]]) -> Callable[[Check], Check]:
    """Register ``fn(ctx)`` as the computation of ``metrics`` (run before every rule, by ``order``).

    Example:
        >>> @measure(5, {"my_metric": (True, True, "what it is")})   # doctest: +SKIP
        ... def _my_metric(ctx): ...
    """
    def wrap(fn: Check) -> Check:
        taken = {m for x in MEASURES for m in x.metrics}
        clash = taken & set(metrics)
        if clash:
            raise ValueError(f"metric(s) {sorted(clash)} registered twice")
        MEASURES.append(Measure(fn.__module__ + "." + fn.__name__, order, dict(metrics), fn))
        MEASURES.sort(key=lambda m: m.order)
        return fn
    return wrap


def rule(kind: str, order: int, *, thresholds: dict[str, tuple[float, str]] | None = None,
         tasks: tuple[str, ...] = TASKS, doc: str = "") -> Callable[[Check], Check]:
    """Register ``fn(ctx)`` as the check of finding ``kind`` with its ``thresholds``.

    Example:
        >>> @rule("dead", 10, thresholds={"dead_problem": (0.95, "zero fraction for a problem")})  # doctest: +SKIP
        ... def check(ctx):
        ...     ...
    """
    def wrap(fn: Check) -> Check:
        names = {n for r in RULES for n in r.thresholds}
        clash = names & set(thresholds or {})
        if clash:
            raise ValueError(f"threshold(s) {sorted(clash)} registered twice")
        bad = set(tasks) - set(TASKS)
        if bad:
            raise ValueError(f"unknown task(s) {sorted(bad)}; tasks are {TASKS}")
        RULES.append(Rule(kind, order, fn, dict(thresholds or {}), tuple(tasks), doc))
        RULES.sort(key=lambda r: r.order)
        return fn
    return wrap


def declare_kind(kind: str, order: int, doc: str = "") -> None:
    """Declare a finding kind that a rule emits besides its own (e.g. ``no_twin_peaks``)."""
    EXTRA_KINDS.append((order, kind, doc))


def kinds() -> tuple[str, ...]:
    """Every finding kind, in rule order, each once."""
    out: list[str] = []
    for _, k in sorted([(r.order, r.kind) for r in RULES] + [(o, k) for o, k, _ in EXTRA_KINDS]):
        if k not in out:
            out.append(k)
    return tuple(out)


def metrics() -> dict[str, tuple[bool, bool, str]]:
    """Every metric, in measure order: name -> (per phase, per layer, one line)."""
    out: dict[str, tuple[bool, bool, str]] = {}
    for m in MEASURES:
        out.update(m.metrics)
    return out


def thresholds() -> dict[str, tuple[float, str]]:
    """Every threshold, in rule order: name -> (default, one line)."""
    out: dict[str, tuple[float, str]] = {}
    for r in RULES:
        out.update(r.thresholds)
    return out
