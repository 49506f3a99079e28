"""``torch.library`` custom ops: how a compiled graph calls a recorder's hooks.

Dynamo traces the recorder's taps (its wrapped layer forwards, see
:class:`twinpeaks.recording.selection.Tap`) and forward hooks registered before
compiling; binning (Python state, ``torch.histogram``) cannot be traced, so a traced hook calls one of these opaque
ops, which runs the eager hook body at run time. Recorders are found through a
weak registry by id (a dropped recorder just stops recording). This module knows
recorders only through the two methods of :class:`Traced`.
"""

from __future__ import annotations

import ast
import weakref
from typing import Any, Protocol

import torch


class Traced(Protocol):
    """What the ops call on a recorder."""

    def observe_traced(self, module_index: int, pairs: Any) -> None: ...

    def begin_traced(self) -> None: ...


#: Recorders with hooks, by id (weak).
_LIVE: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()


def register(recorder: Traced) -> int:
    """Make ``recorder`` reachable from compiled graphs; returns the id the ops take."""
    _LIVE[id(recorder)] = recorder
    return id(recorder)


@torch.library.custom_op("twinpeaks::observe", mutates_args=("token",))
def _observe_op(ts: list[torch.Tensor], token: torch.Tensor, recorder: int, module_index: int, paths: str) -> None:
    """A hook's work as one opaque operator, so that ``torch.compile`` keeps the graph whole.

    ``token`` is a declared mutation that keeps the op from being removed as dead code.
    """
    hist = _LIVE.get(recorder)
    if hist is not None:
        hist.observe_traced(module_index, zip(ast.literal_eval(paths), ts))


@_observe_op.register_fake
def _observe_fake(ts: list[torch.Tensor], token: torch.Tensor, recorder: int, module_index: int, paths: str) -> None:
    return None


@torch.library.custom_op("twinpeaks::begin_step", mutates_args=("token",))
def _begin_step_op(token: torch.Tensor, recorder: int) -> None:
    """The root pre-hook's bookkeeping (phase, step, flush) as an opaque op, for compiled graphs."""
    hist = _LIVE.get(recorder)
    if hist is not None:
        hist.begin_traced()


@_begin_step_op.register_fake
def _begin_step_fake(token: torch.Tensor, recorder: int) -> None:
    return None


def observe(ts: list[torch.Tensor], token: torch.Tensor, recorder: int, module_index: int, paths: str) -> None:
    """Call the observe op (inside a traced hook)."""
    torch.ops.twinpeaks.observe(ts, token, recorder, module_index, paths)


def begin_step(token: torch.Tensor, recorder: int) -> None:
    """Call the begin-step op (inside a traced pre-hook)."""
    torch.ops.twinpeaks.begin_step(token, recorder)
