"""The recorder: a small facade over the parts in :mod:`twinpeaks.recording`.

Design constraints (the hot path is every forward of every hooked layer):

* Bin inside the hook. The next module may overwrite an output in place
  (``ReLU(inplace=True)``), so counts are taken before the hook returns.
* No host sync in a step. Counts and stats accumulate in float64 device buffers,
  one row per step; rows move to the host only at a flush (``end_epoch``, or when
  the buffer of ``flush_every`` rows is full). No ``.item()``, no ``.cpu()``, no
  branching on tensor values in a step.
* Bounded memory. Host-side, per-step rows go into column stores that merge
  into buckets of one width past ``max_columns`` (see :mod:`twinpeaks.columns`).
* Never crash training. Anything a hook cannot handle is skipped with one
  warning per module (:func:`twinpeaks.errors.warn`, attributed to the user's
  line), and training goes on.
* Knows nothing of charts: it writes a run file; everything else reads it.
  Optional features (live charts) attach as listeners, imported by name.

The parts, one job each (imports run one way: this module -> parts): hooks and
module selection (:mod:`~twinpeaks.recording.selection`), the step clock
(:mod:`~twinpeaks.recording.clock`), the binning engine
(:mod:`~twinpeaks.recording.engine`), the epoch writer
(:mod:`~twinpeaks.recording.epoch_writer`), the compile ops
(:mod:`~twinpeaks.recording.ops`) and, with several ranks,
:mod:`twinpeaks.distributed`.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import binning, distributed
from ._version import __version__
from .errors import RunFileError, TwinpeaksWarning, warn
from .outputs import flatten, path_name
from .recording import ops
from .recording.clock import StepClock
from .recording.engine import AUTO_SAMPLE, EXACT_BELOW, SAMPLE_BLOCK, BinningEngine, Record
from .recording.epoch_writer import EpochWriter
from .recording.selection import (
    Hooks,
    RecordNames,
    layer_name,
    leaf_modules,
    named_modules,
    select_modules,
    unwrap,
)
from .run import Run, open_run
from .runfile import MAX_BINS, RunWriter

__all__ = ["AUTO_SAMPLE", "EXACT_BELOW", "SAMPLE_BLOCK", "ActivationsHistogram", "TwinpeaksWarning", "layer_name",
           "leaf_modules", "named_modules", "unwrap"]

#: Optional listeners that options switch on, by option: "module:attribute", imported when asked for, so the
#: recorder never imports them itself (``live=True`` -> :class:`twinpeaks.live.LiveChart`).
LISTENERS = {"live": "twinpeaks.live:LiveChart"}


def _listener(option: str) -> Callable[[Any], None]:
    module, _, name = LISTENERS[option].partition(":")
    return getattr(import_module(module), name)()


_F32_MAX = float(np.finfo(np.float32).max)
#: The largest ``margin``: wider automatic ranges would leave float32 (the kernel's edges).
MAX_MARGIN = 1e6


def _int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_arguments(*, bins: Any, range: Any, sample: Any, margin: Any, flush_every: Any,  # noqa: A002
                    max_columns: Any, seed: Any, modules: Any) -> None:
    """Raise one ``ValueError``/``TypeError`` naming the first bad argument and the values it takes.

    ``bins`` goes up to :data:`~twinpeaks.runfile.MAX_BINS` (10,000): every step of every layer keeps
    ``bins + 3`` counts on the device for ``flush_every`` steps and ``max_columns`` columns of them on
    the host, and no chart shows more than about a thousand (10**6 bins took 20 s and 4.2 GB on the
    first forward of a 3-layer MLP). ``range`` must fit float32, the kernel's edges.

    Example:
        >>> check_arguments(bins=0, range=None, sample="auto", margin=1.0, flush_every=256,
        ...                 max_columns=1000, seed=0, modules=None)
        Traceback (most recent call last):
        ValueError: bins must be an int in 1..10,000, got 0; e.g. bins=100
    """
    if not _int(bins) or not 1 <= bins <= MAX_BINS:
        raise ValueError(f"bins must be an int in 1..{MAX_BINS:,}, got {bins!r}; e.g. bins=100")
    if range is not None:
        try:
            lo, hi = (float(v) for v in range)
        except (TypeError, ValueError):
            raise ValueError(f"range must be (lo, hi) or None, got {range!r}; e.g. range=(-10, 10)") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"range must be two finite numbers lo < hi, got {range!r}; e.g. range=(-10, 10)")
        if max(abs(lo), abs(hi)) > _F32_MAX or float(np.float32(hi)) - float(np.float32(lo)) > _F32_MAX:
            raise ValueError(f"range {range!r} does not fit float32 (the binning kernel's type): lo and hi "
                             f"and hi - lo must be at most {_F32_MAX:.3g}; e.g. range=(-1e6, 1e6)")
        binning.check_range(lo, hi, bins)
    if sample != "auto" and not (isinstance(sample, (int, float)) and not isinstance(sample, bool)
                                 and 0 < sample <= 1):
        raise ValueError(f"sample must be 'auto' or a fraction in (0, 1], got {sample!r}; 1.0 bins everything")
    if not (isinstance(margin, (int, float)) and not isinstance(margin, bool) and math.isfinite(margin)
            and 0 <= margin <= MAX_MARGIN):
        raise ValueError(f"margin must be a finite number in 0..{MAX_MARGIN:g}, got {margin!r}; e.g. margin=1.0")
    if not _int(flush_every) or flush_every < 1:
        raise ValueError(f"flush_every must be an int >= 1 (not a bool), got {flush_every!r}; e.g. flush_every=256")
    if not _int(max_columns) or max_columns < 2:
        raise ValueError(f"max_columns must be an int >= 2, got {max_columns!r}; e.g. max_columns=1000")
    if not _int(seed):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if modules is not None and not isinstance(modules, (str, int)) and len(modules) == 0:
        raise ValueError("modules is empty: give None (every leaf module) or a list of names or indices")


def check_new_path(path: str | os.PathLike) -> None:
    """Fail now, naming ``path``, when no run file can be created there (it exists, or its folder cannot hold it).

    Creation itself is atomic at :meth:`ActivationsHistogram.attach` (a writer started meanwhile still loses).
    """
    p = Path(path)
    if p.exists() or p.is_symlink():
        raise FileExistsError(f"path {str(p)!r} already exists; twinpeaks never overwrites a run: "
                              "pick a new path or delete the old file")
    folder = p.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise RunFileError(f"cannot create the run file {str(p)!r}: {str(folder)!r} is "
                           f"{'not a folder' if not folder.is_dir() else 'read-only'}; "
                           "pick a path in a folder you can write to")


class ActivationsHistogram:
    """Record the histogram of every layer's output, every step, into a run file.

    Every forward of ``model`` in training mode is one ``"train"`` step, every
    forward in eval mode one ``"valid"`` batch; ``with hist.phase("test"):``
    names a phase explicitly. ``end_epoch()`` closes an epoch and commits it.

    Args:
        model: the module to record (DDP, DataParallel, FSDP1 and ``torch.compile`` wrappers are unwrapped;
            FSDP1 units and activation-checkpoint wrappers inside it are left out of layer names).
        path: run file to create (never overwritten: an existing path raises ``FileExistsError``,
            a place that cannot hold it :class:`~twinpeaks.errors.RunFileError`, both here); None
            keeps the run in memory.
        modules: None = every leaf module, parameter-less ones included; or a list
            of qualified names / integer indices into that leaf list.
        bins: bins per histogram, 1 to 10,000 (each step of each layer keeps ``bins + 3`` counts;
            no chart shows more than about a thousand; see :func:`check_arguments`).
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
        margin: widening of automatic ranges, as a multiple of the first batch's span (finite, 0 to 1e6).
        flush_every: steps kept on the device before rows move to the host (an int >= 1).
        max_columns: per-step columns kept per layer and phase before merging (an int >= 2).
        seed: seed of the sampling offsets (an int).
        live: redraw the Twin Peaks chart at every ``end_epoch`` (Jupyter: in one
            output cell; elsewhere: ``<path>.live.png``). See :mod:`twinpeaks.live`.
        output: also record the model's own output, passed through this function
            (e.g. ``lambda out: out.logits``), as the last layer, named ``"output"``.

    Example:
        >>> hist = tp.ActivationsHistogram(model, path="runs/exp1.tp")  # doctest: +SKIP
        >>> with hist:                                                   # doctest: +SKIP
        ...     for epoch in range(3):
        ...         train_one_epoch(model); evaluate(model)
        ...         hist.end_epoch()
    """

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
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_arguments(bins=bins, range=range, sample=sample, margin=margin, flush_every=flush_every,
                        max_columns=max_columns, seed=seed, modules=modules)
        if range is not None:
            range = (float(range[0]), float(range[1]))
        if path is not None and distributed.is_rank_zero() and os.environ.get("RANK", "0") in ("", "0"):
            check_new_path(path)  # the writer's process only: under torch.distributed rank 0 writes, maybe first
        if classes is not None:
            classes = [str(c) for c in classes]
        if output is not None and not callable(output):
            raise TypeError(f"output must be a function of the model's output or None, got {output!r}")
        self.model = model
        self.root = unwrap(model)
        self.path = path
        self.bins = bins
        self.range = range
        self.per_class = bool(per_class)
        self.sample = sample
        self.classes = classes
        self.margin = float(margin)
        self.flush_every = int(flush_every)
        self.max_columns = int(max_columns)
        #: how the recorder syncs under torch.distributed (set by :func:`twinpeaks.distributed.configure`)
        self.dist_options = distributed.DistOptions()
        self._output = output
        self._selected = select_modules(self.root, modules)
        if output is not None:
            self._selected.append(("output", self.root))
        self.clock = StepClock(flush_every)
        self.engine = BinningEngine(self.clock, bins=bins, range=range, margin=self.margin, sample=sample,
                                    per_class=self.per_class, rows=flush_every, seed=seed, warn=self._warn_once)
        self._hooks = Hooks()
        self._sync: distributed.DistSync | None = None
        self._writer: EpochWriter | None = None
        self._records: list[Record] = []
        self._by_module: list[dict[tuple, Record]] = []
        self._explicit: list[str] = []
        self._manual_steps = False
        self._warned: set[str] = set()
        self._listeners: list[Callable[[ActivationsHistogram], None]] = []
        self._run: Run | None = None
        self._token = torch.zeros(1)  # compiled graphs: the declared mutation of the ops (see recording.ops)
        if live:
            self.add_listener(_listener("live"))

    @property
    def attached(self) -> bool:
        """Whether :meth:`attach` opened the run (it stays open until :meth:`close`)."""
        return self._writer is not None

    @property
    def epoch(self) -> int:
        """Number of closed epochs (the index of the open one)."""
        return self.clock.epoch

    # -- attach / detach ---------------------------------------------------------
    def attach(self) -> ActivationsHistogram:
        """Create the run file and register the hooks (what ``with hist:`` does on entry)."""
        if self._hooks:
            return self
        if self._writer is None:
            self._sync = distributed.setup(self.dist_options)
            if self._sync is not None:
                if not self._sync.writes:
                    self.path = None  # only rank 0 writes; the others keep the same summed run in memory
                writer = self._sync.open_writer(self.path, self._meta(), [name for name, _ in self._selected],
                                                warn=self._warn_file)
                self.engine.auto_bounds = self._sync_bounds
            else:
                writer = RunWriter(self.path, self._meta(), self._warn_file)
            self._writer = EpochWriter(writer, self.bins, self.max_columns)
            self._names = RecordNames(self.root)
            for i, (name, mod) in enumerate(self._selected):
                last = i == len(self._selected) - 1
                own = not (last and self._output is not None)  # the "output" record is no module's own record
                rec = Record(len(self._records), i, 0, self._names.take(name, module=own), type(mod).__name__, last)
                self._records.append(rec)
                self._by_module.append({(): rec})
            self._writer.write_layers(self._records)
            self._writer.commit()
        ops.register(self)
        self._hooks.register(self.root, self._begin_step, [mod for _, mod in self._selected], self._make_hook)
        return self

    def detach(self) -> None:
        """Remove the hooks; recorded data stays. Attach again to go on recording."""
        self._hooks.remove()

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

    def _sync_bounds(self, values: torch.Tensor, rec: Record) -> binning.Bounds:
        assert self._sync is not None
        return self._sync.auto_bounds(values, self.bins, self.margin, rec.id, output=rec.last)

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
        self.engine.set_targets(y.detach())

    # -- steps ------------------------------------------------------------------------------
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
        need = bool(self.clock.open_phases())
        if self._sync is not None:
            try:  # every rank or none closes the epoch
                if self._sync.agree_close(self.clock.epoch, need):
                    self._close_epoch(final=True)
            except Exception as exc:  # closing is best effort: the file keeps every committed epoch
                warn(f"twinpeaks: the last epoch was not written: {exc}", RuntimeWarning)
        elif need:
            self._close_epoch(final=True)

    def _current_phase(self) -> str:
        return self._explicit[-1] if self._explicit else ("train" if self.root.training else "valid")

    def _begin_step(self, module: nn.Module, args: Any) -> None:
        if torch.compiler.is_compiling():  # traced: the bookkeeping runs at run time inside an opaque op
            ops.begin_step(self._token, id(self))
            return
        if not self._manual_steps:
            self._start_step(self._current_phase())

    def begin_traced(self) -> None:
        """The pre-hook's work, called by the compiled graph's op (see :mod:`twinpeaks.recording.ops`)."""
        self._begin_step(self.root, ())

    def _start_step(self, phase: str) -> None:
        self.engine.pending = []
        if self.clock.full(phase):
            self._flush_window()
        self.clock.start(phase)

    # -- the hot path ---------------------------------------------------------------------
    def _make_hook(self, module_index: int) -> Callable[..., None]:
        pick = self._output if self._output is not None and module_index == len(self._selected) - 1 else None
        main = self._by_module[module_index][()]  # the record of a plain tensor output
        clock, bin_, token, tensor = self.clock, self.engine.bin, self._token, torch.Tensor

        def hook(module: nn.Module, args: Any, out: Any) -> None:
            if torch.compiler.is_compiling():  # traced: one opaque op, no graph break (see recording.ops)
                pairs = list(flatten(pick(out) if pick is not None else out))
                if pairs:
                    ops.observe([t.detach() for _, t in pairs], token, id(self), module_index,
                                repr(tuple(p for p, _ in pairs)))
                return
            try:
                if pick is not None:
                    with torch.no_grad():
                        out = pick(out)
                if isinstance(out, tensor) and clock.phase is not None:
                    bin_(main, out)  # the common case, kept short: this runs for every layer, every step
                else:
                    self._observe(module_index, flatten(out), type(out).__name__)
            except Exception as exc:  # never crash the user's training
                self._warn_once(self._selected[module_index][0], f"recording failed and is skipped ({exc!r})")
        return hook

    def observe_traced(self, module_index: int, pairs: Any) -> None:
        """A hook's work on the tensors of one output, called by the compiled graph's op."""
        try:
            with torch.no_grad():
                self._observe(module_index, pairs, "a tuple")
        except Exception as exc:  # never crash the user's training
            self._warn_once(self._selected[module_index][0], f"recording failed and is skipped ({exc!r})")

    def _observe(self, module_index: int, pairs: Any, kind: str) -> None:
        if self.clock.phase is None:  # a layer called outside a forward of the model
            self._start_step(self._current_phase())
        recs = self._by_module[module_index]
        found = False
        for path, t in pairs:
            found = True
            rec = recs.get(path)
            if rec is None:
                rec = self._add_subrecord(module_index, path)
            self.engine.bin(rec, t)
        if not found:
            self._warn_once(self._selected[module_index][0], f"returned {kind}, which holds no tensor: nothing to bin")

    def _add_subrecord(self, module_index: int, path: tuple) -> Record:
        recs = self._by_module[module_index]
        base = recs[()]
        rec = Record(len(self._records), module_index, len(recs), self._names.take(path_name(base.name, path)),
                     base.type, base.last)
        recs[path] = rec
        self._records.append(rec)
        return rec

    def _warn_once(self, key: str, what: str) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        warn(f"twinpeaks: layer {key!r} {what}")

    def _warn_file(self, msg: str) -> None:
        """The run file cannot be written (its writer says so once): training goes on."""
        warn(f"twinpeaks: {msg}")

    # -- flushing --------------------------------------------------------------------------
    def _take_window(self) -> dict[tuple[int, str], tuple[int, dict]]:
        """The open window's rows of every record and phase, on the host: ``{(id, phase): (first step, rows)}``."""
        taken = {}
        for rec in self._records:
            for phase, pd in rec.phases.items():
                start, n = self.clock.window(phase)
                if n > 0:
                    taken[rec.id, phase] = (start, pd.take(n))
        return taken

    def _flush_window(self, epoch_end: bool = False) -> None:
        """Move all rows of the current window to the host stores and commit the new columns.

        Distributed: mid-epoch, rows only move to this rank's host; at the epoch's
        end every rank's rows are combined (see :mod:`twinpeaks.distributed`).
        """
        w = self._writer
        assert w is not None
        if self._sync is not None:
            self._sync.hold(self._take_window(), {p: self.clock.window(p)[0] for p in self.clock.step})
            self.clock.close_window()
            if not epoch_end:
                return
            taken = self._reduce()
        else:
            taken = self._take_window()
            self.clock.close_window()
        for rec in self._records:
            for phase in rec.phases:
                if (rec.id, phase) in taken:
                    start, rows = taken[rec.id, phase]
                    w.add_window(rec, phase, start, *rec.phases[phase].columns(rows))
        w.write_layers(self._records)
        if not epoch_end:  # at an epoch's end, _close_epoch commits the columns with the epoch: one transaction
            w.commit()

    def _reduce(self) -> dict[tuple[int, str], tuple[int, dict]]:
        """Combine every rank's rows of this epoch by their declared reductions; align the clocks."""
        assert self._sync is not None
        clock = self.clock
        layers = [distributed.LayerState(rec.name, {p: pd.shapes() for p, pd in sorted(rec.phases.items())},
                                         rec.classes, rec.out_shape) for rec in self._records]
        phases = {p: (clock.step[p], clock.epoch_first[p]) for p in clock.step}
        agreed, missing = self._sync.agree_epoch(clock.epoch, phases, layers)
        clock.align({p: (end, first) for p, (_, end, first) in agreed.items()})
        for index, phase, other in missing:  # this rank never ran the layer in the phase: buffers for the sums
            rec = self._records[index]
            rec.out_shape = rec.out_shape or other.out_shape
            if other.classes and not rec.classes:
                rec.classes = other.classes
            rec.dirty = True
            if rec.bounds is None and self.range is not None:
                rec.bounds = binning.fixed_bounds(*self.range, self.bins, torch.device("cpu"))
            extra = {k: shape[0] for k, (shape, _, _) in other.phases[phase].items()
                     if k not in ("counts", "sums", "peaks")}
            rec.phases[phase] = self.engine.new_buffers(self._buffer_device(), extra)
        return self._sync.combine(agreed, {rec.id: {p: pd.shapes() for p, pd in rec.phases.items()}
                                           for rec in self._records})

    def _buffer_device(self) -> torch.device:
        for rec in self._records:
            for pd in rec.phases.values():
                return pd.counts.device
        return torch.device("cpu")

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
        clock = self.clock
        phases = clock.open_phases()
        # Eval-only steps after the last end_epoch (a final test pass) join the last epoch.
        merge = final and clock.epoch > 0 and "train" not in phases
        epoch = clock.epoch - 1 if merge else clock.epoch
        w.write_epoch(self._records, epoch, {p: (clock.epoch_first[p], clock.step[p]) for p in phases}, merge)
        for p in phases:
            clock.close_epoch_phase(p)
        w.commit()
        if not merge:
            clock.epoch += 1
        if self._run is not None:
            self._run.refresh()
        for listener in self._listeners if self._sync is None or self._sync.writes else []:  # charts: rank 0 only
            try:
                listener(self)
            except Exception as exc:  # a chart must never stop training
                self._warn_once(f"listener {listener!r}", f"failed ({exc!r})")

    # -- reading back ------------------------------------------------------------------------
    @property
    def run(self) -> Run:
        """The run recorded so far (committed data), for charts and checks during training."""
        if self._writer is None and self.path is None:
            raise RuntimeError("nothing recorded yet: attach first")
        if self._run is None:
            self._run = open_run(self.path) if self.path is not None else Run(self._writer.conn, None, owned=False)  # type: ignore[union-attr]
        return self._run.refresh()

    def add_listener(self, fn: Callable[[ActivationsHistogram], None]) -> None:
        """Call ``fn(hist)`` after every closed epoch (live charts use this)."""
        self._listeners.append(fn)
