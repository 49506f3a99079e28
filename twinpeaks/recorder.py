"""Recording: forward hooks that bin every layer's output into device buffers.

Design constraints (the hot path is every forward of every hooked layer):

* Bin inside the hook. The next module may overwrite an output in place
  (``ReLU(inplace=True)``), so counts are taken before the hook returns.
* No host sync in a step. Counts and stats accumulate in int64/float64 buffers
  on the activations' device, one row per step; rows move to the host only at a
  flush (``end_epoch``, or when the buffer of ``flush_every`` rows is full).
  No ``.item()``, no ``.cpu()``, no branching on tensor values in a step.
* Bounded memory. Host-side, per-step rows go into column stores that merge
  pairwise past ``max_columns`` (see :mod:`twinpeaks.columns`).
* Never crash training. Anything a hook cannot handle is skipped with one
  warning per module, and training goes on.
* Knows nothing of charts: it writes a run file; everything else reads it.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import math
import os
import random
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from . import binning, distributed
from ._version import __version__
from .columns import ColumnStore, combine_stats, empty_stats
from .outputs import flatten, is_main, path_name
from .recording.probe import CompositeProbe
from .run import Run, _memory_run, open_run
from .rundir import claim, claim_run_path, names_a_folder, next_run_path, refuse_existing
from .runfile import RunWriter

log = logging.getLogger("twinpeaks")

#: Outputs with at most this many elements per call are always binned exactly.
EXACT_BELOW = 1 << 14
#: With ``sample="auto"``, larger outputs are binned on a sample of about this many elements.
AUTO_SAMPLE = 1 << 13
#: Sampled elements come in contiguous blocks of this many.
SAMPLE_BLOCK = 16
_SKIP = None  # the plan of an output that is not binned (empty, complex)


def _no_kernel(*args: Any) -> None:
    raise RuntimeError("twinpeaks._cbin is not built")  # never called: plans use the kernel only when it is built


_cbin_observe: Callable[..., None] = binning._cbin.observe if binning._cbin is not None else _no_kernel
_CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)
_EXTRA_BUDGET = 64 << 20  # bytes of per-step per-class/truth rows kept on the device


class TwinpeaksWarning(UserWarning):
    """Something twinpeaks skipped so that training could go on."""


#: Attributes through which wrappers hold the module they wrap, left out of layer names: FSDP1 units
#: (``FullyShardedDataParallel``) and activation checkpointing (``checkpoint_wrapper``).
_WRAPPED = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module")


def layer_name(qualified: str) -> str:
    """A module's name without wrapper segments: ``0._fsdp_wrapped_module`` -> ``0``.

    Example:
        >>> layer_name("blocks.1._checkpoint_wrapped_module.mlp")
        'blocks.1.mlp'
    """
    return ".".join(p for p in qualified.split(".") if p not in _WRAPPED)


def named_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every module by :func:`layer_name`; a wrapper and the module it wraps share a name: the module wins."""
    return {layer_name(name): m for name, m in model.named_modules()}


def leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every leaf module in registration order, parameter-less ones included, named without wrappers.

    Containers that cannot be called (an empty ``ModuleList``) are left out; a
    model that is itself a leaf is its own only layer.
    """
    leaves = [
        (layer_name(name), m) for name, m in model.named_modules()
        if not any(True for _ in m.children()) and not isinstance(m, _CONTAINERS) and layer_name(name)
    ]
    return leaves or [(type(model).__name__, model)]


def composite_candidates(model: nn.Module) -> dict[int, str]:
    """``id -> layer name`` of the modules that may be layers leaf hooks miss (see :mod:`twinpeaks.recording.probe`).

    Modules with children, except containers and the model itself.
    """
    return {id(m): layer_name(name) for name, m in model.named_modules()
            if m is not model and layer_name(name) and not isinstance(m, _CONTAINERS) and any(True for _ in m.children())}


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP/DataParallel/FSDP1/``torch.compile`` wrappers."""
    while True:
        inner = getattr(model, "module", None) if isinstance(
            model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else None
        inner = inner or getattr(model, "_orig_mod", None) or getattr(model, "_fsdp_wrapped_module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


class _PhaseData:
    """Device buffers (one row per step of the current window) and host stores of one record in one phase.

    On the device: ``counts`` (float64, exact to 2**53) of the ``B + 3`` slots
    (the torch path adds only finite values and the nonfinite slot is recovered
    at :meth:`take` as binned minus counted; the C kernel counts it), ``sums``
    (sum, sum of squares, non-zeros, elements binned, elements seen) and ``peaks``
    (-min, max), combined by max. On the host: the binning plan per output layout.
    """

    def __init__(self, rows: int, slots: int, device: torch.device, max_columns: int, extra: dict[str, int]):
        self.counts = torch.zeros(rows, slots, dtype=torch.float64, device=device)
        self.finite = self.counts[:, :-1]  # view: underflow, bins, overflow
        self.sums = torch.zeros(rows, 5, dtype=torch.float64, device=device)
        self.peaks = torch.full((rows, 2), -math.inf, dtype=torch.float64, device=device)
        self.plans: dict[tuple, _Plan] = {}  # (shape, strides, dtype, type) -> ActivationsHistogram._plan()
        self.store = ColumnStore(max_columns, (slots,))
        self.epoch = ColumnStore(256, (slots,))
        self.extra = {k: torch.zeros(rows, c, slots, dtype=torch.int64, device=device) for k, c in extra.items()}
        self.epoch_extra = {k: ColumnStore(256, (c, slots)) for k, c in extra.items()}
        # CPU: the buffers' addresses and the bytes of a counts row, for the C kernel
        self.addr = (self.counts.data_ptr(), self.sums.data_ptr(), self.peaks.data_ptr(), slots * 8
                     ) if device.type == "cpu" else None

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Move the first ``n`` rows to the host (the flush's only sync) and reset them."""
        # .cpu() is a no-op on CPU and .numpy() shares memory: copy (astype) before resetting
        counts = self.counts[:n].cpu().numpy().astype(np.int64)
        sums = self.sums[:n].cpu().numpy().copy()
        peaks = self.peaks[:n].cpu().numpy().copy()
        binned = sums[:, 3].astype(np.int64)
        counts[:, -1] += binned - counts.sum(axis=1)  # torch path: NaN and +-inf are binned but not counted
        stats = empty_stats(n)
        stats[:, 0], stats[:, 1] = binned, sums[:, 4]
        stats[:, 2:4] = sums[:, :2]
        stats[:, 4] = binned - sums[:, 2]
        stats[:, 5], stats[:, 6] = -peaks[:, 0], peaks[:, 1]
        extra = {k: v[:n].cpu().numpy().copy() for k, v in self.extra.items()}
        for buf, value in ((self.counts, 0), (self.sums, 0), (self.peaks, -math.inf),
                           *((v, 0) for v in self.extra.values())):
            # CPU: reset through a numpy view, no torch operation
            (buf.numpy() if self.addr is not None else buf)[:n] = value
        return counts, stats, extra


class _Plan(NamedTuple):
    """How to bin one output layout of one record in one phase, made once (see ActivationsHistogram._plan)."""

    key: tuple  # (shape, strides, dtype, type) of the outputs it is for
    phase: str
    code: int  # the C kernel's dtype code, or -1: torch operations
    n: int  # elements per output
    stride: int  # sampling: block stride in elements
    blocks: int  # sampling: blocks per output; 0 = every element
    size: int  # bytes per element
    dense: bool  # the elements fill their storage block: read in storage order
    counts_addr: int  # C kernel: addresses of row 0 of the phase's counts, sums and peaks buffers
    sums_addr: int
    peaks_addr: int
    row_bytes: int  # bytes per counts row
    edges_addr: int
    pd: _PhaseData
    extra: bool  # the last layer with per-class or truth rows
    kn: torch.Tensor | None  # torch path: [binned, seen] to add per output


class _Record:
    """One recorded tensor: a module's output or one tensor inside it."""

    def __init__(self, rid: int, module_index: int, sub_index: int, name: str, type_: str, last: bool):
        self.id = rid
        self.module_index = module_index
        self.sub_index = sub_index
        self.name = name
        self.type = type_
        self.last = last  # belongs to the last hooked module: per-class and truth apply
        self.out_shape: list[int] | None = None
        self.bounds: binning.Bounds | None = None
        self.edges_written = False
        self.classes = 0  # per-class columns
        self.phases: dict[str, _PhaseData] = {}
        self.fast: _Plan | None = None  # the plan of the last output binned (see ActivationsHistogram._plan)
        self.dirty = True  # layer row needs (re)writing
        self.listed = False  # a layer row was written


class ActivationsHistogram:
    """Record the histogram of every layer's output, every step, into a run file.

    Every forward of ``model`` in training mode is one ``"train"`` step, every
    forward in eval mode one ``"valid"`` batch; ``with hist.phase("test"):``
    names a phase explicitly. ``end_epoch()`` closes an epoch and commits it.

    Args:
        model: the module to record (DDP, DataParallel, FSDP1 and ``torch.compile`` wrappers are unwrapped;
            FSDP1 units and activation-checkpoint wrappers inside it are left out of layer names).
        path: run file to create; a folder (it exists, or the path ends with ``/``) for a new run file in it
            each time, named by the time (``runs/2026-11-29_231500.tp``, see :mod:`twinpeaks.rundir`;
            ``hist.path`` says which); None keeps the run in memory. An existing run file is refused
            here, when the recorder is made, unless ``overwrite``.
        modules: None = every leaf module, parameter-less ones included, and every module whose
            children do not run through their own forward (attention: see
            :mod:`twinpeaks.recording.probe`); or a list of qualified names / integer indices into
            the leaf list.
        bins: bins per histogram.
        range: ``(lo, hi)`` for all layers; None = per layer, from its first batch,
            then frozen: hidden layers widened by ``margin`` x its span, the last layer
            ``+-max(10, 4 x max|x|)`` (or ``[0, 1]`` for probabilities), since logits grow
            as a model learns (see :func:`twinpeaks.binning.auto_bounds`).
        per_class: for the last layer, also one histogram per output column.
        sample: ``"auto"`` (the last layer and outputs up to 16,384 elements per call
            binned exactly, larger ones on a sample of 8,192: evenly spaced 16-element
            blocks with a random offset per step), or a fraction in (0, 1]; 1.0 = every
            element, exact.
        classes: class names, stored in the run for the charts.
        margin: widening of automatic ranges, as a multiple of the first batch's span.
        flush_every: steps kept on the device before rows move to the host.
        max_columns: per-step columns kept per layer and phase before merging pairwise.
        seed: seed of the sampling offsets.
        live: redraw the Twin Peaks chart at every ``end_epoch`` (Jupyter: in one
            output cell; elsewhere: ``<path>.live.png``). See :mod:`twinpeaks.live`.
        output: also record the model's own output, passed through this function
            (e.g. ``lambda out: out.logits``), as the last layer, named ``"output"``.
        overwrite: replace an existing run file at ``path`` when recording starts (the new
            empty run is renamed over it: the path always holds a whole run file). Default:
            an existing run is never overwritten.

    Example:
        >>> hist = tp.ActivationsHistogram(model, path="runs/exp1.tp")  # doctest: +SKIP
        >>> with hist:                                                   # doctest: +SKIP
        ...     for epoch in range(3):
        ...         train_one_epoch(model); evaluate(model)
        ...         hist.end_epoch()
    """

    #: set by attach() when torch.distributed runs more than one rank (see twinpeaks.distributed)
    _sync: distributed.DistSync | None = None

    def __init__(
        self,
        model: nn.Module,
        path: str | os.PathLike | None = None,
        modules: Sequence[str | int] | None = None,
        bins: int = 100,
        range: tuple[float, float] | None = None,  # noqa: A002 - contract name
        per_class: bool = False,
        sample: float | str = "auto",
        *,
        classes: Sequence[str] | None = None,
        margin: float = 1.0,
        flush_every: int = 256,
        max_columns: int = 1000,
        seed: int = 0,
        live: bool = False,
        output: Callable[[Any], Any] | None = None,
        overwrite: bool = False,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
            raise ValueError(f"bins must be a positive int, got {bins!r}; e.g. bins=100")
        if range is not None:
            try:
                lo, hi = (float(v) for v in range)
            except (TypeError, ValueError):
                raise ValueError(f"range must be (lo, hi) or None, got {range!r}; e.g. range=(-10, 10)") from None
            binning.check_range(lo, hi, bins)
            range = (lo, hi)
        if sample != "auto" and not (isinstance(sample, (int, float)) and 0 < sample <= 1):
            raise ValueError(f"sample must be 'auto' or a fraction in (0, 1], got {sample!r}; 1.0 bins everything")
        if not (isinstance(margin, (int, float)) and margin >= 0):
            raise ValueError(f"margin must be a number >= 0, got {margin!r}")
        if not (isinstance(flush_every, int) and flush_every >= 1):
            raise ValueError(f"flush_every must be a positive int, got {flush_every!r}")
        if classes is not None:
            classes = [str(c) for c in classes]
        if not isinstance(overwrite, bool):
            raise TypeError(f"overwrite must be True or False, got {overwrite!r}")
        self._folder: Path | None = None
        if path is not None:
            refuse_existing(path, overwrite)  # now, not after the user's set-up: a second run of a script fails here
            if names_a_folder(path):
                self._folder = Path(path)
                path = next_run_path(self._folder)  # claimed (created) when recording starts
        self.model = model
        self.root = unwrap(model)
        self.path = path
        self.overwrite = overwrite
        self.bins = bins
        self.range = range
        self.per_class = bool(per_class)
        self.sample = sample
        self.classes = classes
        self.margin = float(margin)
        self.flush_every = flush_every
        self.max_columns = max_columns
        self._rng = random.Random(seed)
        if output is not None and not callable(output):
            raise TypeError(f"output must be a function of the model's output or None, got {output!r}")
        self._output = output
        self._selected = self._select(modules)
        self._probe: CompositeProbe | None = None
        self._probe_started = False
        self._claimed = False
        self._hooked = 0
        self._probe_wanted = modules is None  # default selection: also the layers leaf hooks miss
        self._output_index = len(self._selected) if output is not None else -1
        if output is not None:
            self._selected.append(("output", self.root))
        self._order = {id(m): k for k, m in enumerate(self.root.modules())}  # layers are listed in this order
        self._handles: list[Any] = []
        self._writer: RunWriter | None = None
        self._records: list[_Record] = []
        self._by_module: list[dict[tuple, _Record]] = []
        self._explicit: list[str] = []
        self._manual_steps = False
        self._phase: str | None = None
        self._row = 0
        self._rows = flush_every
        self._step: dict[str, int] = {}
        self._window_start: dict[str, int] = {}
        self._epoch_first: dict[str, int] = {}
        self.epoch = 0
        self._warned: set[str] = set()
        self._targets: torch.Tensor | None = None
        self._targets_after: bool | None = None
        self._pending: list[tuple[_Record, str, int, torch.Tensor]] = []
        self._listeners: list[Callable[[ActivationsHistogram], None]] = []
        self._run: Run | None = None
        if live:
            from .live import LiveChart

            self.add_listener(LiveChart())

    # -- selection -----------------------------------------------------------
    def _select(self, modules: Sequence[str | int] | None) -> list[tuple[str, nn.Module]]:
        leaves = leaf_modules(self.root)
        if modules is None:
            return leaves
        if isinstance(modules, (str, int)):
            modules = [modules]
        by_name = named_modules(self.root)
        picked: list[tuple[str, nn.Module]] = []
        for m in modules:
            if isinstance(m, bool) or not isinstance(m, (str, int)):
                raise TypeError(f"modules must hold qualified names or int indices, got {m!r}")
            if isinstance(m, int):
                if not -len(leaves) <= m < len(leaves):
                    raise ValueError(f"modules index {m} is out of range: the model has {len(leaves)} leaf modules")
                picked.append(leaves[m])
            elif m in by_name and m:
                picked.append((m, by_name[m]))
            else:
                names = ", ".join(repr(n) for n, _ in leaves[:6])
                raise ValueError(f"modules: no module named {m!r} in the model; leaf modules are {names}, ...")
        order = {id(mod): i for i, (_, mod) in enumerate(self.root.named_modules())}
        picked = list({id(mod): (n, mod) for n, mod in picked}.values())
        return sorted(picked, key=lambda nm: order.get(id(nm[1]), 0))

    # -- attach / detach ---------------------------------------------------------
    def attach(self) -> ActivationsHistogram:
        """Create the run file and register the hooks (what ``with hist:`` does on entry)."""
        if self._handles:
            return self
        if self._writer is None:
            self._sync = distributed.setup(self)
            claimed = self._claimed = False
            if self._folder is not None and (self._sync is None or self._sync.writes):
                claimed = self._claimed = True
                if self.path is None or not claim(self.path):  # taken since the recorder was made: the next free name
                    self.path = claim_run_path(self._folder)
            self._writer = self._sync.open_writer(self) if self._sync else RunWriter(
                self.path, self._meta(), overwrite=self.overwrite, claimed=claimed)
            for i, (name, mod) in enumerate(self._selected):
                rec = _Record(len(self._records), self._module_order(i, mod), 0, name, type(mod).__name__,
                              i == len(self._selected) - 1)
                self._records.append(rec)
                self._by_module.append({(): rec})
            if self._probe_wanted:  # layers are written once the first step showed which modules are layers
                self._probe = CompositeProbe(self.root, composite_candidates(self.root), self._observe_composite)
            else:
                self._write_layers()
            self._writer.commit()
        self._handles.append(self.root.register_forward_pre_hook(self._begin_step))
        for i, (_, mod) in enumerate(self._selected):
            self._handles.append(mod.register_forward_hook(self._make_hook(i)))
        self._hooked = len(self._selected)
        return self

    def _module_order(self, index: int, module: nn.Module) -> int:
        """Where a selected module's records are listed: the model's order, the ``output`` record last."""
        return len(self._order) if index == self._output_index else self._order.get(id(module), len(self._order))

    # -- layers that leaf hooks miss (see twinpeaks.recording.probe) ---------------------------
    def _observe_composite(self, name: str, module: nn.Module, out: Any) -> None:
        """The probe saw ``module`` run with no descendant running: record this output as its layer."""
        try:
            index = next((i for i, (_, m) in enumerate(self._selected) if m is module and i != self._output_index),
                         None)
            if index is None:
                index = len(self._selected)
                self._selected.append((name, module))
                rec = _Record(len(self._records), self._module_order(index, module), 0, name, type(module).__name__,
                              False)
                self._records.append(rec)
                self._by_module.append({(): rec})
            with torch.no_grad():
                self._observe(index, flatten(out), type(out).__name__)
        except Exception as exc:  # never crash the user's training
            self._warn_once(name, f"recording failed and is skipped ({exc!r})")

    def _settle(self) -> None:
        """End the probe (after the first step): hook the layers found, leave out their never-run descendants."""
        probe, self._probe = self._probe, None
        if probe is None:
            return
        layers = [m for _, m in probe.finish()]
        inside = {id(d) for m in layers for d in m.modules() if d is not m}
        if self._handles:  # attached: the layers found get the ordinary hook (attach hooks every selected module)
            for i in range(self._hooked, len(self._selected)):
                self._handles.append(self._selected[i][1].register_forward_hook(self._make_hook(i)))
            self._hooked = len(self._selected)
        owner = {id(r): i for i, recs in enumerate(self._by_module) for r in recs.values()}
        for rec in self._records:
            if id(self._selected[owner[id(rec)]][1]) in inside and rec.out_shape is None:
                rec.dirty = False  # part of a layer found, and never ran itself: not listed as never called
        self._write_layers()

    def detach(self) -> None:
        """Remove the hooks; recorded data stays. Attach again to go on recording."""
        if self._probe is not None:
            self._probe.remove()
            self._settle()
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def close(self) -> None:
        """Detach, close the open epoch (see :meth:`end_epoch`) and close the file."""
        self.detach()
        if self._writer is None:
            return
        self.flush()
        if self._sync is not None:
            self._sync.release()
        if self.path is not None:
            if self._run is not None:
                self._run.close()
                self._run = None
            self._writer.close()
            self._writer = None

    def __enter__(self) -> ActivationsHistogram:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _meta(self) -> dict[str, Any]:
        return {
            "twinpeaks_version": __version__,
            "torch_version": torch.__version__,
            "model": type(self.root).__name__,
            "classes": self.classes,
            "options": {
                "bins": self.bins, "range": self.range, "per_class": self.per_class,
                "sample": self.sample, "margin": self.margin, "flush_every": self.flush_every,
                "max_columns": self.max_columns,
            },
        }

    # -- phases ---------------------------------------------------------------------
    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Record the forwards inside the block as phase ``name`` (e.g. ``"test"``).

        Example:
            >>> with hist.phase("test"), torch.no_grad():  # doctest: +SKIP
            ...     model(x_test)
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"phase name must be a non-empty str, got {name!r}")
        self._explicit.append(name)
        try:
            yield
        finally:
            self._explicit.pop()

    def set_phase(self, name: str | None) -> None:
        """Force the phase of the next forwards (None: back to train/eval detection). For framework adapters."""
        self._explicit = [] if name is None else [name]

    def targets(self, y: torch.Tensor) -> None:
        """Give the targets of the current batch, before or after its forward.

        Splits the last layer into the outputs of the true class(es) ("yes") and
        all others ("no"). ``y`` holds class indices (``[batch]``) or 0/1 per
        output (multi-label, binary).
        """
        if not isinstance(y, torch.Tensor):
            y = torch.as_tensor(y)
        y = y.detach()
        # The first call fixes the style: targets given after the forward apply to
        # that forward's pending outputs; given before, they wait for the next one.
        if self._targets_after is None:
            self._targets_after = bool(self._pending)
        if self._targets_after:
            for rec, phase, row, out in self._pending:
                self._count_truth(rec, phase, row, out, y)
            self._pending = []
        else:
            self._targets = y

    # -- the hot path ---------------------------------------------------------------------
    def begin_step(self, phase: str | None = None) -> None:
        """Start a step now, in ``phase`` (None: the usual phase rule). For framework adapters.

        After the first call, forwards of the model no longer start steps: the
        framework's batch events do, so a batch whose step calls submodules
        directly, or the model twice, is still one step.
        """
        self._manual_steps = True
        self._start_step(phase or self._current_phase())

    def flush(self) -> None:
        """Commit the steps recorded since the last ``end_epoch()``, as :meth:`close` does, keeping the file open.

        Under torch.distributed every rank must call it, like ``end_epoch()``.
        Evaluation-only steps (a test pass after training) join the last closed
        epoch; steps that include training close a new epoch. For framework adapters.
        """
        if self._writer is None:
            return
        need = any(self._step.get(p, 0) > self._epoch_first.get(p, 0) for p in self._step)
        if self._sync is not None:
            self._sync.close(self, need)  # every rank or none closes the epoch; logs instead of raising
        elif need:
            self._close_epoch(final=True)

    def _current_phase(self) -> str:
        return self._explicit[-1] if self._explicit else ("train" if self.root.training else "valid")

    def _begin_step(self, module: nn.Module, args: Any) -> None:
        if torch.compiler.is_compiling():  # traced: the bookkeeping runs at run time inside an opaque op
            torch.ops.twinpeaks.begin_step(self._token, id(self))
            return
        if not self._manual_steps:
            self._start_step(self._current_phase())

    def _start_step(self, phase: str) -> None:
        if self._probe is not None:  # the probe watches the first step; the next one settles the layers
            if self._probe_started:
                self._settle()
            self._probe_started = True
        self._pending = []
        if phase not in self._step:
            self._step[phase] = self._window_start[phase] = self._epoch_first[phase] = 0
        row = self._step[phase] - self._window_start[phase]
        if row >= self._rows:
            self._flush_window()
            row = 0
        self._step[phase] += 1
        self._phase, self._row = phase, row

    def _make_hook(self, module_index: int) -> Callable[..., None]:
        _LIVE[id(self)] = self
        if getattr(self, "_token", None) is None:
            self._token = torch.zeros(1)
        pick = self._output if module_index == self._output_index else None
        main = self._by_module[module_index][()]  # the record of a plain tensor output

        def hook(module: nn.Module, args: Any, out: Any) -> None:
            if torch.compiler.is_compiling():  # traced: one opaque op, no graph break (see _observe_op)
                pairs = list(flatten(pick(out) if pick is not None else out))
                if pairs:
                    torch.ops.twinpeaks.observe([t.detach() for _, t in pairs], self._token, id(self),
                                                module_index, repr(tuple(p for p, _ in pairs)))
                return
            try:
                if pick is not None:
                    with torch.no_grad():
                        out = pick(out)
                if isinstance(out, torch.Tensor) and self._phase is not None:
                    self._bin(main, out)  # the common case, kept short: this runs for every layer, every step
                else:
                    self._observe(module_index, flatten(out), type(out).__name__)
            except Exception as exc:  # never crash the user's training
                self._warn_once(self._selected[module_index][0], f"recording failed and is skipped ({exc!r})")
        return hook

    def _observe(self, module_index: int, pairs: Any, kind: str) -> None:
        if self._phase is None:  # a layer called outside a forward of the model
            self._start_step(self._current_phase())
        recs = self._by_module[module_index]
        found = False
        for path, t in pairs:
            found = True
            path = () if is_main(path) else path  # the first tensor of a tuple is the module's own layer
            rec = recs.get(path)
            if rec is None:
                rec = self._add_subrecord(module_index, path)
            self._bin(rec, t)
        if not found:
            self._warn_once(self._selected[module_index][0], f"returned {kind}, which holds no tensor: nothing to bin")

    def _add_subrecord(self, module_index: int, path: tuple) -> _Record:
        recs = self._by_module[module_index]
        base = recs[()]
        rec = _Record(len(self._records), base.module_index, len(recs), path_name(base.name, path), base.type, base.last)
        recs[path] = rec
        self._records.append(rec)
        return rec

    def _bin(self, rec: _Record, t: torch.Tensor) -> None:
        # Runs for every layer, every step: kept to a few attribute reads. Everything that depends only on
        # the output's layout and the phase sits in one cached tuple (see _plan).
        key = (t.shape, t.stride(), t.dtype, type(t))
        f = rec.fast
        if f is None or f[0] != key or f[1] != self._phase:  # f.key, f.phase (indexing is faster)
            with torch.no_grad():
                f = self._plan(rec, t, key)
            if f is _SKIP:
                return
        _, _, code, n, stride, blocks, size, dense, c0, s0, p0, cs, edges, pd, extra, _ = f  # type: ignore[misc]
        row = self._row
        if code >= 0:  # the C kernel: one pass over the memory, no torch operation
            src = t if dense else t.reshape(-1)  # a dense layout (even permuted) is read in storage order
            ptr = src.data_ptr()
            if blocks:  # blocks of SAMPLE_BLOCK elements, stride apart, from a random offset: unbiased over steps
                ptr += int(self._rng.random() * (stride - SAMPLE_BLOCK + 1)) * size
            _cbin_observe(ptr, code, n, stride, blocks, SAMPLE_BLOCK, edges, self.bins,
                          c0 + row * cs, s0 + row * 40, p0 + row * 16)
        else:
            with torch.no_grad():
                self._bin_torch(rec, t, row, f)
        if extra:  # the last layer: per-class and truth (YES/NO) counts
            with torch.no_grad():
                self._bin_last(rec, pd, t)

    def _plan(self, rec: _Record, t: torch.Tensor, key: tuple) -> _Plan | None:
        """How to bin outputs of ``t``'s layout (``key``: shape, strides, dtype, type) in this phase; cached on ``rec``.

        ``_SKIP`` for outputs that are not binned. Creates the phase's buffers and the layer's bounds on first use.
        """
        n = t.numel()
        if n == 0:
            return _SKIP
        if t.is_complex():
            self._warn_once(rec.name, "has a complex output: not binned")
            return _SKIP
        pd = rec.phases.get(self._phase)  # type: ignore[arg-type]
        plan = pd.plans.get(key) if pd is not None else None
        if plan is None:
            if rec.out_shape is None:
                rec.out_shape = list(t.shape)
                rec.dirty = True
            if pd is None:
                pd = self._phase_data(rec, t)
            if rec.bounds is None:  # once per layer, from the whole first output (not the sample)
                rec.bounds = (binning.fixed_bounds(*self.range, self.bins, t.device) if self.range
                              else self._sync.auto_bounds(t.detach(), self.bins, self.margin, rec.id, output=rec.last)
                              if self._sync else binning.auto_bounds(t.detach(), self.bins, self.margin, output=rec.last))
            stride, blocks = self._stride(n, t.shape, rec.last)
            k = blocks * SAMPLE_BLOCK if blocks else n
            kernel = (pd.addr is not None and binning.KERNEL and rec.bounds.edges_ptr and t.dtype in binning.KERNEL_DTYPES
                      and type(t) in (torch.Tensor, nn.Parameter))  # a subclass (DTensor, ...) may hold no memory
            c0, s0, p0, cs = (pd.addr if kernel else None) or (0, 0, 0, 0)
            kn = None
            if not kernel:
                with torch.inference_mode(False):  # the torch path adds [binned, seen] from this tensor
                    kn = torch.tensor([k, n], dtype=torch.float64, device=t.device)
            plan = pd.plans[key] = _Plan(
                key, self._phase, binning.KERNEL_DTYPES[t.dtype] if kernel else -1,  # type: ignore[arg-type]
                n, stride, blocks, t.element_size(), binning.is_dense(t), c0, s0, p0, cs, rec.bounds.edges_ptr, pd,
                rec.last and bool(rec.classes or "truth" in pd.extra), kn)
        rec.fast = plan
        return plan

    def _bin_torch(self, rec: _Record, t: torch.Tensor, row: int, plan: _Plan) -> None:
        """The same as the C kernel with torch operations: other devices and dtypes, or no kernel."""
        stride, blocks, dense, pd = plan.stride, plan.blocks, plan.dense, plan.pd
        flat = t.detach()
        if not dense:
            flat = flat.reshape(-1)
        if blocks:
            offset = flat.storage_offset() + int(self._rng.random() * (stride - SAMPLE_BLOCK + 1))
            flat = flat.as_strided((blocks, SAMPLE_BLOCK), (stride, 1), offset).reshape(-1)
        elif dense:
            flat = flat.as_strided((t.numel(),), (1,), flat.storage_offset())
        # one contiguous float32 copy of a sample: the five passes below then read it from cache
        v = flat.float() if flat.dtype != torch.float32 else flat.contiguous() if stride > 1 else flat
        pd.finite[row].add_(binning.bin_finite(v, rec.bounds))  # type: ignore[arg-type]
        add, peak = binning.stats_parts(v)
        sums = pd.sums[row]
        sums[:3].add_(add)
        sums[3:].add_(plan.kn)  # type: ignore[arg-type]  # set for every torch-path plan
        peaks = pd.peaks[row]
        torch.maximum(peaks, peak, out=peaks)

    def _stride(self, n: int, shape: tuple[int, ...], last: bool = False) -> tuple[int, int]:
        """Sampling plan for an output of ``n`` elements: ``(block stride, blocks)``; ``(1, 0)``: bin all.

        Samples are contiguous blocks (cache lines, not scattered elements: a
        strided gather of single floats costs a cache miss each). The stride is
        made coprime with the size of one batch item, so that the blocks of a
        step walk through every position of a feature map.
        """
        if n <= EXACT_BELOW or self.sample == 1 or (last and self.sample == "auto"):
            return 1, 0  # small outputs, and the last layer that Twin Peaks and the diagnosis read: exact
        want = AUTO_SAMPLE if self.sample == "auto" else n * float(self.sample)
        blocks = max(1, int(want) // SAMPLE_BLOCK)
        stride = n // blocks
        if stride < 2 * SAMPLE_BLOCK:
            return 1, 0
        item = math.prod(shape[1:]) if len(shape) > 1 else 1
        while math.gcd(stride, item) != 1 and stride > SAMPLE_BLOCK:
            stride -= 1
        return stride, blocks

    def _phase_data(self, rec: _Record, t: torch.Tensor) -> _PhaseData:
        extra: dict[str, int] = {}
        if rec.last:
            cols = t.shape[-1] if t.dim() >= 2 else 1
            if self.per_class:
                rec.classes = cols
                rec.dirty = True
                extra["classes"] = cols
            extra["truth"] = 2
            per_row = sum(extra.values()) * binning.n_slots(self.bins) * 8
            self._rows = min(self._rows, max(8, _EXTRA_BUDGET // per_row))
        with torch.inference_mode(False):  # buffers must stay normal tensors, updatable outside inference mode
            pd = _PhaseData(self.flush_every, binning.n_slots(self.bins), t.device, self.max_columns, extra)
        rec.phases[self._phase] = pd  # type: ignore[index]
        return pd

    def _bin_last(self, rec: _Record, pd: _PhaseData, t: torch.Tensor) -> None:
        cols = t.shape[-1] if t.dim() >= 2 else 1
        out = t.detach().reshape(-1, cols)
        slots = None
        s = binning.n_slots(self.bins)
        if "classes" in pd.extra and cols == rec.classes:
            slots = binning.slot_index(out, rec.bounds)  # type: ignore[arg-type]
            offs = torch.arange(cols, device=slots.device) * s
            pd.extra["classes"][self._row] += binning.count_slots(slots + offs, cols * s).view(cols, s)
        if self._targets is not None:
            self._count_truth(rec, self._phase, self._row, out, self._targets, slots)  # type: ignore[arg-type]
            self._targets = None
        elif self._targets_after is not False:
            # binned when targets() comes after the forward: a copy, in case the output is changed in place
            self._pending.append((rec, self._phase, self._row, out.clone()))  # type: ignore[arg-type]

    def _count_truth(self, rec: _Record, phase: str, row: int, out: torch.Tensor, y: torch.Tensor,
                     slots: torch.Tensor | None = None) -> None:
        pd = rec.phases[phase]
        b, cols = out.shape
        y = y.to(out.device)
        if y.numel() == b * cols and (cols == 1 or y.dim() >= 2 or y.is_floating_point() or y.dtype == torch.bool):
            yes = y.reshape(b, cols) > 0.5
        elif y.numel() == b and cols > 1 and not y.is_floating_point():
            yes = torch.nn.functional.one_hot(y.reshape(b).long().clamp(0, cols - 1), cols).bool()
        else:
            self._warn_once(rec.name, f"targets of shape {tuple(y.shape)} do not match outputs {tuple(out.shape)}: "
                                      "truth split skipped (pass class indices [batch] or 0/1 per output)")
            return
        if slots is None:
            slots = binning.slot_index(out, rec.bounds)  # type: ignore[arg-type]
        s = binning.n_slots(self.bins)
        pd.extra["truth"][row] += binning.count_slots(slots + (~yes).long() * s, 2 * s).view(2, s)

    def _warn_once(self, key: str, what: str) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        msg = f"twinpeaks: layer {key!r} {what}"
        log.warning(msg)
        warnings.warn(msg, TwinpeaksWarning, stacklevel=3)

    # -- flushing --------------------------------------------------------------------------
    def _flush_window(self, epoch_end: bool = False) -> None:
        """Move all rows of the current window to the host stores and commit the new columns.

        Distributed: mid-epoch, rows only move to this rank's host; at the epoch's
        end every rank's rows are summed (see :mod:`twinpeaks.distributed`).
        """
        if self._probe is not None:
            self._settle()
        if self._sync is not None and not epoch_end:
            self._sync.hold(self)
            return
        reduced = self._sync.reduce(self) if self._sync is not None else None
        w = self._writer
        assert w is not None
        for rec in self._records:
            for phase, pd in rec.phases.items():
                if reduced is not None:
                    if (rec.id, phase) not in reduced:
                        continue
                    start, counts, stats, extra = reduced[rec.id, phase]
                else:
                    n = self._step[phase] - self._window_start[phase]
                    if n <= 0:
                        continue
                    counts, stats, extra = pd.take(n)
                    start = self._window_start[phase]
                pd.store.append(start, counts, stats)
                pd.epoch.append(start, counts, stats)
                for k, arr in extra.items():
                    pd.epoch_extra[k].append(start, arr, stats)
                first, rewrite = pd.store.unwritten()
                if rewrite:
                    w.drop_columns(rec.id, phase)
                if first < len(pd.store):
                    w.put_array(rec.id, phase, "col_steps", -1, first, pd.store.steps[first:])
                    w.put_array(rec.id, phase, "col_counts", -1, first, pd.store.counts[first:])
                    w.put_array(rec.id, phase, "col_stats", -1, first, pd.store.stats[first:])
                pd.store.mark_written()
        for phase in self._step:
            self._window_start[phase] = self._step[phase]
        self._write_layers()
        if not epoch_end:  # at an epoch's end, _close_epoch commits the columns with the epoch: one transaction
            w.commit()

    def _write_layers(self) -> None:
        w = self._writer
        assert w is not None
        for recs in self._by_module:  # a module that returned only a dict: its keys are its layers, itself not
            main = recs[()]
            if main.out_shape is None and any(r.out_shape is not None for r in recs.values()):
                main.dirty = False
                if main.listed:
                    w.drop_layer(main.id)
                    main.listed = False
        for rec in self._records:
            if rec.dirty:
                rec.listed = True
                w.put_layer(rec.id, rec.module_index, rec.sub_index, rec.name, rec.type,
                            rec.out_shape, self.bins, rec.classes)
                rec.dirty = False
            if rec.bounds is not None and not rec.edges_written:
                w.put_array(rec.id, "", "edges", -1, 0, rec.bounds.edges.cpu().double().numpy())
                rec.edges_written = True

    def end_epoch(self) -> None:
        """Close the current epoch: flush its steps and summaries to the file and commit.

        Call it once per epoch, after validation; every phase recorded since the
        previous call belongs to this epoch.
        """
        if self._writer is None:
            raise RuntimeError("end_epoch() before attach(): use `with hist:` or hist.attach() first")
        self._close_epoch(final=False)

    def _close_epoch(self, final: bool) -> None:
        self._flush_window(epoch_end=True)
        w = self._writer
        assert w is not None
        phases = [p for p in self._step if self._step[p] > self._epoch_first[p]]
        # Eval-only steps after the last end_epoch (a final test pass) join the last epoch.
        merge = final and self.epoch > 0 and "train" not in phases
        epoch = self.epoch - 1 if merge else self.epoch
        steps: dict[str, list[int]] = {}
        for phase in phases:
            first, end = self._epoch_first[phase], self._step[phase]
            lq_first = end - max(1, math.ceil((end - first) / 4))
            steps[phase] = [first, end, lq_first]
            for rec in self._records:
                pd = rec.phases.get(phase)
                if pd is None or not len(pd.epoch):
                    continue
                self._write_summary(rec, phase, epoch, pd, lq_first, add=merge)
                for store in (pd.epoch, *pd.epoch_extra.values()):
                    store.clear()
            self._epoch_first[phase] = end
        if merge:
            old = self.run.epoch_info(epoch).steps
            # a phase already in that epoch (valid, then another evaluate()) keeps its first step
            steps = {**{p: list(v) for p, v in old.items()},
                     **{p: [old[p][0], *v[1:]] if p in old else v for p, v in steps.items()}}
        w.put_epoch(epoch, steps)
        w.commit()
        if not merge:
            self.epoch += 1
        if self._run is not None:
            self._run.refresh()
        for listener in self._listeners if self._sync is None or self._sync.writes else []:  # charts: rank 0 only
            try:
                listener(self)
            except Exception as exc:  # a chart must never stop training
                self._warn_once(f"listener {listener!r}", f"failed ({exc!r})")

    def _write_summary(self, rec: _Record, phase: str, epoch: int, pd: _PhaseData, lq_first: int, add: bool) -> None:
        w = self._writer
        assert w is not None
        counts, stats, n = pd.epoch.total()
        lq_counts, lq_stats, lq_n = pd.epoch.total(lq_first)
        arrays = {"counts": counts, "stats": stats, "lq_counts": lq_counts, "lq_stats": lq_stats,
                  "summary": np.array([n, lq_n], np.int64)}
        for k, store in pd.epoch_extra.items():
            name = "class" if k == "classes" else k
            arrays[f"{name}_counts"] = store.total()[0]
            arrays[f"{name}_lq"] = store.total(lq_first)[0]
        if add:
            old_run = self.run
            for kind, arr in list(arrays.items()):
                prev = old_run._array(rec.id, phase, kind, epoch)
                if prev is None:
                    continue
                if kind.endswith("stats"):
                    arrays[kind] = combine_stats(np.vstack([prev, arr]))
                else:
                    arrays[kind] = prev + arr
        for kind, arr in arrays.items():
            w.put_array(rec.id, phase, kind, epoch, 0, arr)

    # -- reading back ------------------------------------------------------------------------
    @property
    def run(self) -> Run:
        """The run recorded so far (committed data), for charts and checks during training."""
        if self._writer is None and self.path is None:
            raise RuntimeError("nothing recorded yet: attach first")
        if self._run is None:
            self._run = open_run(self.path) if self.path is not None else _memory_run(self._writer.conn)  # type: ignore[union-attr]
        return self._run.refresh()

    def add_listener(self, fn: Callable[[ActivationsHistogram], None]) -> None:
        """Call ``fn(hist)`` after every closed epoch (live charts use this)."""
        self._listeners.append(fn)


#: Recorders with hooks, by id, for the compiled-graph op below (weak: a dropped recorder just stops recording).
_LIVE: weakref.WeakValueDictionary[int, ActivationsHistogram] = weakref.WeakValueDictionary()


@torch.library.custom_op("twinpeaks::observe", mutates_args=("token",))
def _observe_op(ts: list[torch.Tensor], token: torch.Tensor, recorder: int, module_index: int, paths: str) -> None:
    """A hook's work as one opaque operator, so that ``torch.compile`` keeps the graph whole.

    Dynamo traces forward hooks registered before compiling; binning (Python
    state, ``torch.histogram``) cannot be traced, so the traced hook calls this
    op, which runs the eager hook body at run time. ``token`` is a declared
    mutation that keeps the op from being removed as dead code.
    """
    hist = _LIVE.get(recorder)
    if hist is None:
        return
    try:
        with torch.no_grad():
            hist._observe(module_index, zip(ast.literal_eval(paths), ts), "a tuple")
    except Exception as exc:  # never crash the user's training
        hist._warn_once(hist._selected[module_index][0], f"recording failed and is skipped ({exc!r})")


@_observe_op.register_fake
def _observe_fake(ts: list[torch.Tensor], token: torch.Tensor, recorder: int, module_index: int, paths: str) -> None:
    return None


@torch.library.custom_op("twinpeaks::begin_step", mutates_args=("token",))
def _begin_step_op(token: torch.Tensor, recorder: int) -> None:
    """The root pre-hook's bookkeeping (phase, step, flush) as an opaque op, for compiled graphs."""
    hist = _LIVE.get(recorder)
    if hist is not None:
        hist._begin_step(hist.root, ())


@_begin_step_op.register_fake
def _begin_step_fake(token: torch.Tensor, recorder: int) -> None:
    return None
