"""The recorder: a small facade over the parts in :mod:`twinpeaks.recording`.

Design constraints (the hot path is every forward of every hooked layer):

* Bin inside the hook. The next module may overwrite an output in place
  (``ReLU(inplace=True)``), so counts are taken before the hook returns.
* No host sync in a step. Counts and stats accumulate in float64 device buffers,
  one row per step; rows move to the host only at a flush (``end_epoch``, or when
  the buffer of ``flush_every`` rows is full). No ``.item()``, no ``.cpu()``, no
  branching on tensor values in a step.
* Bounded memory. Host-side, per-step rows go into column stores that merge
  pairwise past ``max_columns`` (see :mod:`twinpeaks.columns`).
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
from .outputs import flatten, is_main, path_name
from .recording import ops
from .recording.clock import StepClock
from .recording.engine import (
    AUTO_SAMPLE,
    EXACT_BELOW,
    SAMPLE_BLOCK,
    BinningEngine,
    BlockPool,
    PhaseBuffers,
    Record,
    Taken,
    window_rows,
)
from .recording.epoch_writer import LANES, EpochWriter
from .recording.probe import CompositeProbe
from .recording.selection import (
    Hooks,
    RecordNames,
    composite_candidates,
    layer_name,
    leaf_modules,
    named_modules,
    select_modules,
    unwrap,
)
from .recording.writer_thread import WriterThread, pause, start_later
from .run import Run, open_run
from .rundir import claim, claim_run_path, names_a_folder, next_run_path, refuse_existing
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
#: The largest ``margin``: wider automatic ranges would leave float32.
MAX_MARGIN = 1e6


def _int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _as_range(value: Any, bins: int, what: str = "range") -> tuple[float, float]:
    """``(lo, hi)`` checked: finite, ``lo < hi``, and within float32 (lo, hi and hi - lo), the kernel's type."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be (lo, hi) or None, got {value!r}; e.g. range=(-10, 10)") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"{what} must be two finite numbers lo < hi, got {value!r}; e.g. range=(-10, 10)")
    if max(abs(lo), abs(hi)) > _F32_MAX or hi - lo > _F32_MAX:
        raise ValueError(f"{what} {value!r} does not fit float32 (the binning kernel's type): lo, hi and hi - lo "
                         f"must be at most {_F32_MAX:.3g} in magnitude; e.g. range=(-1e6, 1e6)")
    try:
        binning.check_range(lo, hi, bins)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    return lo, hi


def check_arguments(*, bins: Any, sample: Any, margin: Any, flush_every: Any, max_columns: Any, seed: Any,
                    modules: Any) -> None:
    """Raise one ``ValueError``/``TypeError`` naming the first bad argument and the values it takes.

    ``bins`` goes up to :data:`~twinpeaks.runfile.MAX_BINS` (10,000): every step of every layer keeps
    ``bins + 3`` counts on the device for ``flush_every`` steps and ``max_columns`` columns of them on
    the host, and no chart shows more than about a thousand (10**6 bins took 20 s and 4.2 GB on the
    first forward of a 3-layer MLP). ``range`` is checked by ``_as_range``.

    Example:
        >>> check_arguments(bins=0, sample="auto", margin=1.0, flush_every=256, max_columns=1000, seed=0,
        ...                 modules=None)
        Traceback (most recent call last):
        ValueError: bins must be an int in 1..10,000, got 0; e.g. bins=100
    """
    if not _int(bins) or not 1 <= bins <= MAX_BINS:
        raise ValueError(f"bins must be an int in 1..{MAX_BINS:,}, got {bins!r}; e.g. bins=100")
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


def check_writable(path: str | os.PathLike) -> None:
    """Fail now, naming ``path``, when its folder cannot hold a new run file (read-only, or a file on the way)."""
    p = Path(path)
    folder = p if names_a_folder(path) else p.parent
    while not os.path.lexists(folder) and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise RunFileError(f"cannot create the run file {str(p)!r}: {str(folder)!r} is "
                           f"{'not a folder' if not folder.is_dir() else 'read-only'}; "
                           "pick a path in a folder you can write to")


def _check_range_option(value: Any, bins: int) -> Any:
    """``range=`` as given, checked: None, ``(lo, hi)``, ``{layer name: (lo, hi) or None}`` or a function."""
    if value is None:
        return None
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"range: dict keys must be layer names (str), got {k!r}")
            out[k] = None if v is None else _as_range(v, bins, f"range[{k!r}]")
        return out
    if callable(value):
        return value
    if isinstance(value, (str, bytes)):
        raise ValueError(f"range must be (lo, hi), a dict of layer names or a function, got {value!r}")
    return _as_range(value, bins)


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
            ``hist.path`` says which; a ``pathlib.Path`` drops a trailing ``/``, so give a str or an
            existing folder); None keeps the run in memory. An existing run file is refused here, when
            the recorder is made, unless ``overwrite``.
        modules: None = every leaf module, parameter-less ones included, and every module whose
            children do not run through their own forward (attention: see
            :mod:`twinpeaks.recording.probe`); or a list of qualified names / integer indices into
            the leaf list.
        bins: bins per histogram.
        range: None (the default): automatic, every step's histogram on a grid that holds
            all of that step's values (docs/grids.md), so nothing falls out of range however
            a layer grows, shrinks or shifts. ``(lo, hi)``: one fixed range for every layer,
            binned as ``np.histogram(values, bins, range=(lo, hi))`` (values outside it are
            counted as underflow/overflow). ``{layer name: (lo, hi) or None}``: fixed ranges
            for some layers (a sub-record such as ``"lstm.0"`` also matches its module's
            name), automatic for the others. A function ``name -> (lo, hi) or None``: the same,
            decided per layer.
        per_class: for the last layer, also one histogram per output column.
        sample: ``"auto"`` (the last layer and outputs up to 16,384 elements per call
            binned exactly, larger ones on a sample sized by a total-variation bound,
            7,888 values per call at 100 bins: evenly spaced 16-element blocks with a
            random offset per step; README, "sampling"), or a fraction in (0, 1]; 1.0 =
            every element, exact.
        classes: class names, stored in the run for the charts.
        margin: deprecated, has no effect: automatic ranges follow every step's values (docs/grids.md), so
            there is no range to widen. Still accepted so that old calls run; a value other than the
            default 1.0 warns (:class:`twinpeaks.TwinpeaksWarning`) when the recorder is made.
        flush_every: steps kept on the device before rows move to the host.
        max_columns: per-step columns kept per layer and phase before merging pairwise
            (a file run merges in its writer's idle time: up to twice as many meanwhile,
            at most ``max_columns`` once closed).
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

    def __init__(
        self,
        model: nn.Module,
        path: str | os.PathLike | None = None,
        modules: Sequence[str | int] | None = None,
        bins: int = 100,
        range: Any = None,  # noqa: A002 - contract name: None, (lo, hi), {layer: (lo, hi) | None} or a function
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
        check_arguments(bins=bins, sample=sample, margin=margin, flush_every=flush_every, max_columns=max_columns,
                        seed=seed, modules=modules)
        range = _check_range_option(range, bins)
        if margin != 1.0:
            warn(f"margin={margin!r} is deprecated and has no effect: automatic ranges follow every step's values "
                 "(docs/grids.md); remove it, or give range=(lo, hi) for a fixed range", TwinpeaksWarning)
        if classes is not None:
            classes = [str(c) for c in classes]
        if output is not None and not callable(output):
            raise TypeError(f"output must be a function of the model's output or None, got {output!r}")
        if not isinstance(overwrite, bool):
            raise TypeError(f"overwrite must be True or False, got {overwrite!r}")
        self._folder: Path | None = None
        if path is not None:
            # the writer's process only (global rank 0): rank 0 may already have created the file when another
            # rank constructs its recorder, and other ranks may have no such folder
            if distributed.is_rank_zero() and os.environ.get("RANK", "0") in ("", "0"):
                refuse_existing(path, overwrite)  # now, not after the user's set-up: a second run fails here
                check_writable(path)
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
        self.flush_every = int(flush_every)
        self.max_columns = int(max_columns)
        #: how the recorder syncs under torch.distributed (set by :func:`twinpeaks.distributed.configure`)
        self.dist_options = distributed.DistOptions()
        self._output = output
        self._selected = select_modules(self.root, modules)
        self._probe: CompositeProbe | None = None
        self._probe_wanted = modules is None  # default selection: also the layers leaf hooks miss
        self._probe_started = False
        self._hooked = 0  # selected modules with a hook
        self._listed: set[int] = set()  # records with a layer row
        self._output_index = len(self._selected) if output is not None else -1
        if output is not None:
            self._selected.append(("output", self.root))
        self._order = {id(m): k for k, m in enumerate(self.root.modules())}  # layers are listed in this order
        self._check_range_names()
        rows = window_rows(flush_every, len(self._selected), bins)  # device rows within a budget for all layers
        self.clock = StepClock(rows)
        self.engine = BinningEngine(self.clock, bins=bins, sample=sample, per_class=self.per_class, rows=rows,
                                    seed=seed, warn=self._warn_once,
                                    range_of=lambda rec: self._range_for(rec.name, rec.module_name))
        self._hooks = Hooks()
        self._sync: distributed.DistSync | None = None
        self._writer: EpochWriter | None = None
        self._thread = WriterThread(str(id(self)))  # the writer's work, off the training thread
        self._blocks = BlockPool()  # the hand-overs' host blocks, reused (their pages touched off the step)
        self._block_wanted = False
        self._hook_fns: dict[int, Callable[..., None]] = {}
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
            self._hook_fns = {}  # made once per run (see _hook_for)
            self._sync = distributed.setup(self.dist_options)
            if self._sync is not None and not self._sync.writes:
                self.path = None  # only rank 0 writes; the others keep the same summed run in memory
            claimed = self._claim()
            if self._sync is not None:
                writer = self._sync.open_writer(self.path, self._meta(), [name for name, _ in self._selected],
                                                overwrite=self.overwrite, claimed=claimed, warn=self._file_message)
            else:
                writer = RunWriter(self.path, self._meta(), self._file_message, overwrite=self.overwrite,
                                   claimed=claimed)
            # a file run's merges past max_columns wait for the writer's idle time (readers use their own
            # connection, which sees commits only); an in-memory run's are done at once (read on the same one)
            self._writer = EpochWriter(writer, self.bins, self.max_columns, defer=self.path is not None)
            if self.path is not None:  # a merge stops between chunks of layers when a window comes
                settle_one, waiting = self._writer.settle_one, self._thread.job_waiting
                self._thread.idle = lambda: settle_one(waiting)
            self._names = RecordNames(self.root)
            for i, (name, mod) in enumerate(self._selected):
                own = i != self._output_index  # the "output" record is no module's own record
                rec = Record(len(self._records), self._module_order(i, mod), 0, self._names.take(name, module=own),
                             type(mod).__name__, i == len(self._selected) - 1)
                self.engine.know_range(rec)  # a fixed range's edges are written with the layer
                self._records.append(rec)
                self._by_module.append({(): rec})
            if self._probe_wanted:  # layers are written once the first step showed which modules are layers
                self._probe = CompositeProbe(self.root, composite_candidates(self.root), self._observe_composite)
            else:
                self._write_layers()
            self._commit(wait=True)
        ops.register(self)
        self._hooks.register(self.root, self._begin_step, [mod for _, mod in self._selected], self._hook_for)
        self._hooked = len(self._selected)
        # the first window's host block: reserved once the first step made the buffers (blocks are kept)
        self._block_wanted = not self._blocks.nbytes
        return self

    def _claim(self) -> bool:
        """Folder runs: create the run file under its name (the next free one if it was taken since)."""
        if self._folder is None or self.path is None:
            return False
        if not claim(self.path):
            self.path = claim_run_path(self._folder)
        return True

    def _module_order(self, index: int, module: nn.Module) -> int:
        """Where a selected module's records are listed: the model's order, the ``output`` record last."""
        return len(self._order) if index == self._output_index else self._order.get(id(module), len(self._order))

    def detach(self) -> None:
        """Remove the hooks; recorded data stays. Attach again to go on recording."""
        if self._probe is not None:
            self._probe.remove()
            self._settle()
        self._hooks.remove()

    def close(self) -> None:
        """Detach, close the open epoch (see :meth:`end_epoch`) and close the file."""
        self.detach()
        if self._writer is None:
            return
        try:
            self.flush()
        finally:
            self._thread.close()  # every job has run: the writer is this thread's again
            self._deliver()
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
                "bins": self.bins, "per_class": self.per_class,
                "range": self.range if not callable(self.range) else "function",
                "sample": self.sample, "margin": self.margin, "flush_every": self.flush_every,
                "max_columns": self.max_columns,
            },
        }

    # -- ranges -----------------------------------------------------------------
    def _check_range_names(self) -> None:
        """Fail early on a ``range=`` that names no recorded layer, or a function that returns a bad range."""
        names = [name for name, _ in self._selected]
        if isinstance(self.range, dict):  # any module of the model (composite layers are found while training)
            known = [*named_modules(self.root), *names]
            unknown = [k for k in self.range if not any(k == n or k.startswith(n + ".") for n in known if n)]
            if unknown:
                shown = ", ".join(repr(n) for n in names[:6])
                raise ValueError(f"range: no recorded layer named {unknown[0]!r}; recorded layers are {shown}, ...")
        if callable(self.range) or isinstance(self.range, dict):
            for name in names:
                self._range_for(name)  # raises naming the layer
        if self.bins < 2 and any(self._range_for(name) is None for name in names):
            raise ValueError("bins must be >= 2 with automatic ranges (values of both signs need two bins); "
                             "e.g. bins=100, or give every layer a range=(lo, hi)")

    def _range_for(self, name: str, module_name: str | None = None) -> tuple[float, float] | None:
        """The fixed range of a layer (or sub-record ``name`` of module ``module_name``), or None: automatic."""
        r = self.range
        if r is None or isinstance(r, tuple):
            return r
        if isinstance(r, dict):
            got = r.get(name, r.get(module_name)) if module_name is not None else r.get(name)
        else:
            try:
                got = r(name)
            except Exception as exc:
                raise ValueError(f"range: the function raised {exc!r} for layer {name!r}; it must return "
                                 "(lo, hi) or None") from None
        return None if got is None else _as_range(got, self.bins, f"range for layer {name!r}")

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

    def targets(self, y: torch.Tensor, ignore_index: int = -100) -> None:
        """Give the targets of the current batch, before or after its forward.

        Splits the last layer into the outputs of the true class(es) ("yes") and
        all others ("no"). ``y`` holds class indices (``[batch]``) or 0/1 per
        output (multi-label, binary). A sample whose index is ``ignore_index``
        (-100, as in ``cross_entropy``: padding) is left out of both; any other
        index outside ``[0, K)`` is left out too, with one warning (counted on
        the device, read at the epoch's end: no host sync per batch). Nothing is
        clamped. With 0/1 per output, an output whose target is
        ``ignore_index`` is left out.

        Example:
            >>> hist.targets(y)                       # doctest: +SKIP
            >>> hist.targets(tokens, ignore_index=0)  # doctest: +SKIP
        """
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise ValueError(f"ignore_index must be an int, got {ignore_index!r}; e.g. ignore_index=-100")
        if not isinstance(y, torch.Tensor):
            y = torch.as_tensor(y)
        self.engine.set_targets(y.detach(), ignore_index)

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
        self._wait_writer()  # layer rows handed over since (a detach) are in the file too

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
        if self._probe is not None:  # the probe watches the first step; the next one settles the layers
            if self._probe_started:
                self._settle()
            self._probe_started = True
        self.engine.pending = []
        if self._block_wanted:
            self._reserve_block()
        if self.clock.full(phase):
            self._flush_window()
        self.clock.start(phase)

    def _reserve_block(self) -> None:
        """Have the writer's thread make the first window's host block ready (its pages touched: not in the step
        that hands the window over), once the buffers exist (after the first step)."""
        pairs = [(pd, self.clock.rows) for rec in self._records for pd in rec.phases.values()]
        if pairs:
            self._block_wanted = False
            blocks, size = self._blocks, PhaseBuffers.hand_over_bytes(pairs)
            self._thread.submit(lambda: blocks.reserve(size))

    # -- the hot path ---------------------------------------------------------------------
    def _hook_for(self, module_index: int) -> Callable[..., None]:
        """The hook of a selected module, made once per run: attaching again reuses it (an attach makes no new
        closures, which would otherwise build up until a full garbage collection)."""
        fn = self._hook_fns.get(module_index)
        if fn is None:
            fn = self._hook_fns[module_index] = self._make_hook(module_index)
        return fn

    def _make_hook(self, module_index: int) -> Callable[..., None]:
        pick = self._output if module_index == self._output_index else None
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
            path = () if is_main(path) else path  # the first tensor of a tuple is the module's own layer
            rec = recs.get(path)
            if rec is None:
                rec = self._add_subrecord(module_index, path)
            self.engine.bin(rec, t)
        if not found:
            self._warn_once(self._selected[module_index][0], f"returned {kind}, which holds no tensor: nothing to bin")

    def _add_subrecord(self, module_index: int, path: tuple) -> Record:
        recs = self._by_module[module_index]
        base = recs[()]
        rec = Record(len(self._records), base.module_index, len(recs), self._names.take(path_name(base.name, path)),
                     base.type, base.last)
        rec.module_name = base.module_name
        recs[path] = rec
        self._records.append(rec)
        return rec

    # -- layers that leaf hooks miss (see twinpeaks.recording.probe) ---------------------------
    def _observe_composite(self, name: str, module: nn.Module, out: Any) -> None:
        """The probe saw ``module`` run while no descendant ran: record this output as its layer."""
        try:
            index = next((i for i, (_, m) in enumerate(self._selected) if m is module and i != self._output_index),
                         None)
            if index is None:
                index = len(self._selected)
                self._selected.append((name, module))
                rec = Record(len(self._records), self._module_order(index, module), 0,
                             self._names.take(name, module=True), type(module).__name__, False)
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
        if self._hooks:  # attached: the layers found get the ordinary hook (attach hooks every selected module)
            for i in range(self._hooked, len(self._selected)):
                self._hooks.add(self._selected[i][1], self._hook_for(i))
            self._hooked = len(self._selected)
        owner = {id(r): i for i, recs in enumerate(self._by_module) for r in recs.values()}
        for rec in self._records:
            if id(self._selected[owner[id(rec)]][1]) in inside and rec.out_shape is None:
                rec.dirty = False  # part of a layer found, and never ran itself: not listed as never called
        self._write_layers()

    def _write_layers(self) -> None:
        """Write the layer rows that changed; a module whose outputs all went to sub-records (a dict) is not listed."""
        w = self._writer
        assert w is not None
        changes = self._layer_changes()
        self._thread.submit(lambda: w.apply_layers(changes))

    def _layer_changes(self) -> list[tuple]:
        """The layer rows to (re)write or drop, taken now (the writer's thread applies them)."""
        w = self._writer
        assert w is not None
        changes: list[tuple] = []
        for recs in self._by_module:
            main = recs[()]
            if main.out_shape is None and any(r.out_shape is not None for r in recs.values()):
                main.dirty = False
                if main.id in self._listed:
                    changes.append(("drop", main.id))
                    self._listed.discard(main.id)
        self._listed.update(rec.id for rec in self._records if rec.dirty)
        return changes + w.layer_changes(self._records)

    def _commit(self, wait: bool) -> None:
        """Commit what was handed to the writer's thread; ``wait``: return once it is in the file."""
        w = self._writer
        assert w is not None
        self._thread.submit(w.commit)
        if wait:
            self._wait_writer()
        else:
            self._deliver()

    def _file_message(self, msg: str) -> None:
        """The run writer's message (the file cannot be written): kept by the writer's thread for the user."""
        if self._thread.on_thread():
            self._thread.say(msg)
        else:
            self._warn_file(msg)

    def _wait_writer(self) -> None:
        """Return once everything handed to the writer's thread is in the file; issue its messages here."""
        self._thread.wait()
        self._deliver()

    def _deliver(self) -> None:
        """Issue the writer thread's messages here, on the training thread (they point at the user's line)."""
        for msg in self._thread.deliver():
            self._warn_file(msg)

    def _warn_file(self, msg: str) -> None:
        """The run file cannot be written (its writer says so once): training goes on."""
        warn(f"twinpeaks: {msg}")

    def _warn_once(self, key: str, what: str) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        warn(f"twinpeaks: layer {key!r} {what}")

    # -- flushing --------------------------------------------------------------------------
    def _take_window(self) -> dict[tuple[int, str], tuple[int, dict]]:
        """The open window's rows of every record and phase, on the host: ``{(id, phase): (first step, rows)}``."""
        return {key: (start, pd.finish(raw)) for key, (start, pd, raw) in self._take_raw().items()}

    def _take_raw(self) -> Taken:
        """The open window's rows copied as they are (:meth:`PhaseBuffers.take_raw`; the step waits only for this):
        a :class:`Taken`, a few lists and arrays for all records (no object per record: see :class:`HandOver`)."""
        window = self.clock.window
        rids: list[int] = []
        phases: list[str] = []
        starts: list[int] = []
        pds: list[PhaseBuffers] = []
        ns: list[int] = []
        for rec in self._records:
            for phase, pd in rec.phases.items():
                start, n = window(phase)
                if n > 0:
                    rids.append(rec.id)
                    phases.append(phase)
                    starts.append(start)
                    pds.append(pd)
                    ns.append(n)
        hand = PhaseBuffers.hand_over(list(zip(pds, ns)), self._blocks)  # one C call for every CPU buffer set
        return Taken(rids, phases, starts, pds, hand)

    def _flush_window(self, epoch_end: bool = False) -> Callable[[], None] | None:
        """Take all rows of the current window to the host and hand them to the writer's thread.

        Mid-epoch the writer's thread writes and commits the new columns (the step only waits for the
        rows' copy); at an epoch's end the work is returned, for :meth:`_close_epoch` to hand over with
        the epoch (one transaction). Distributed: mid-epoch, rows only move to this rank's host; at the
        epoch's end every rank's rows are combined here, on the training thread (see
        :mod:`twinpeaks.distributed`).
        """
        if self._probe is not None:
            self._settle()
        w = self._writer
        assert w is not None
        if self._sync is not None:
            self._sync.hold(self._take_window(), {p: self.clock.window(p)[0] for p in self.clock.step})
            self.clock.close_window()
            if not epoch_end:
                return None
            reduced = self._reduce()
            taken: Taken | dict[tuple[int, str], tuple[int, None, dict]] = {
                key: (start, None, rows) for key, (start, rows) in reduced.items()}
            block = 0
        else:
            taken = self._take_raw()
            self.clock.close_window()
            block = taken.hand.nbytes
        changes = self._layer_changes()
        blocks = self._blocks

        def write() -> None:
            if not epoch_end:
                start_later()  # not in the step that handed the window over (it paid for the hand-over)
            blocks.reserve(block)  # the next hand-over's block: ready, its pages touched here
            w.apply_layers(changes)
            # the records of a phase that record the same window: finished and written at once (stacked)
            for phase, start, rids, rows in PhaseBuffers.finish_windows(taken, LANES):
                w.add_window(rids, phase, start, *PhaseBuffers.columns(rows))
                if not epoch_end:  # training goes on meanwhile: leave it the GIL between stacks
                    pause()
            if not epoch_end:  # at an epoch's end, _close_epoch commits the columns with the epoch
                w.commit()

        if epoch_end:
            return write
        self._thread.submit(write)
        self._deliver()
        return None

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
            self.engine.know_range(rec)
            extra = {k: shape[0] for k, (shape, _, _) in other.phases[phase].items()
                     if k not in ("counts", "sums", "peaks", "grid")}
            rec.phases[phase] = self.engine.new_buffers(self._buffer_device(), extra, auto=rec.fixed is None)
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
        write = self._flush_window(epoch_end=True)
        for name, n, cols in self.engine.take_bad_targets():
            if name + "/targets" not in self._warned:
                self._warned.add(name + "/targets")
                warn(f"twinpeaks: layer {name!r} got {n} target class index(es) outside [0, {cols}) other than "
                     f"ignore_index={self.engine.ignore_index} this epoch: left out of the YES/NO split, not clamped "
                     "(pass hist.targets(y, ignore_index=...) for padding)")
        w = self._writer
        assert w is not None
        clock = self.clock
        phases = clock.open_phases()
        # Eval-only steps after the last end_epoch (a final test pass) join the last epoch.
        merge = final and clock.epoch > 0 and "train" not in phases
        epoch = clock.epoch - 1 if merge else clock.epoch
        rids = [rec.id for rec in self._records]
        spans = {p: (clock.epoch_first[p], clock.step[p]) for p in phases}

        def write_epoch() -> None:
            if write is not None:
                write()
            w.write_epoch(rids, epoch, spans, merge)
            w.commit()

        for p in phases:
            clock.close_epoch_phase(p)
        if not merge:
            clock.epoch += 1
        self._thread.submit(write_epoch)
        self._wait_writer()  # end_epoch, flush and close return once the epoch is in the file
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
        self._wait_writer()  # what was handed over is in the file
        if self._run is None:
            self._run = open_run(self.path) if self.path is not None else Run(self._writer.conn, None, owned=False)  # type: ignore[union-attr]
        return self._run.refresh()

    def add_listener(self, fn: Callable[[ActivationsHistogram], None]) -> None:
        """Call ``fn(hist)`` after every closed epoch (live charts use this)."""
        self._listeners.append(fn)
