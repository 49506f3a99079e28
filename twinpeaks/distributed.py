"""torch.distributed: many ranks, one run file.

With ``torch.distributed`` initialised and more than one rank, the recorder
attaches a :class:`DistSync` and every rank records its own shard as usual.
This module holds all of the collective logic.

Design constraints:

* One picture, over declared state. At every flush the ranks combine their rows
  with ``all_reduce``, each buffer by the reduction it declared (``"sum"``,
  ``"max"``, ``"min"``; see :meth:`twinpeaks.recording.engine.PhaseBuffers.add_state`):
  this module never knows what a buffer holds, and never touches the recorder's
  state: the recorder hands it rows and applies what it returns. Every rank ends
  with the same rows; only rank 0 writes the file, the others keep the same run
  in memory (nothing on disk).
* One grid per combined row. With automatic ranges every rank's step row has its
  own grid (docs/grids.md), declared as state with the reduction ``"grid"``; the
  slot rows counted on it reduce as ``"sum@grid"``. Before summing, the ranks
  agree a common grid per row with two small all-reduces (the largest ``e``; then
  the lowest and highest occupied bin at that ``e``), and each rank regrids its
  rows onto it (exact).
* No collective in a training step. A full ``flush_every`` buffer
  moves its rows to the host of its own rank only. The collective flush runs in
  ``end_epoch()`` and ``close()``, which every rank must reach.
* Aligned steps. A rank's i-th step of a phase is step i of the run; ranks with
  fewer steps (uneven data) contribute zero rows, so totals stay exact.
* Misuse fails loudly. Every sync starts with a monitored barrier on a private
  gloo group and an exchange of what each rank is doing (epoch, kind of sync,
  phases, layers): a missing or disagreeing rank raises :class:`TwinpeaksError`
  naming it, after the timeout at most, instead of hanging.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist

from . import grids
from .errors import TwinpeaksError
from .runfile import RunWriter

log = logging.getLogger("twinpeaks")

#: Host rows of one record and phase: declared state name -> array, one row per step.
Rows = dict[str, np.ndarray]
#: How each declared reduction combines ranks, and its neutral element (the rows of a rank without that step).
_OPS = {"sum": (dist.ReduceOp.SUM, 0), "max": (dist.ReduceOp.MAX, -math.inf), "min": (dist.ReduceOp.MIN, math.inf),
        # automatic ranges: grids are agreed first (then equal on every rank), slot rows regridded onto them
        "grid": (dist.ReduceOp.MAX, 0), "sum@grid": (dist.ReduceOp.SUM, 0)}


@dataclass(frozen=True)
class DistOptions:
    """How a recorder syncs across ranks (see :func:`configure`)."""

    group: Any = None
    timeout: timedelta | None = None


class LayerState(NamedTuple):
    """What ranks compare of one record at an epoch's end."""

    name: str
    phases: dict[str, dict[str, list]]  # phase -> declared state -> [per-row shape, host dtype, reduction]
    classes: int
    out_shape: list[int] | None


def is_rank_zero() -> bool:
    """True unless torch.distributed runs and this process is not global rank 0.

    Framework adapters use it to draw charts and print diagnoses once.

    Example:
        >>> is_rank_zero()
        True
    """
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def configure(
    hist: Any,
    *,
    group: Any = None,
    timeout: float | timedelta | None = None,
) -> Any:
    """Set how ``hist`` (an ``ActivationsHistogram``) syncs across ranks; call it on every rank before ``attach``.

    Args:
        hist: the recorder.
        group: process group whose ranks are summed (its rank 0 writes the file);
            None = every rank. With a group, ranks outside it must not record,
            and the group itself carries the control messages (a gloo group also
            gets the monitored barrier).
        timeout: how long a sync waits for the slowest rank before it raises
            (seconds or timedelta); None = torch's default process-group timeout
            (30 minutes).

    Example:
        >>> hist = tp.ActivationsHistogram(model, "run.tp")      # doctest: +SKIP
        >>> tp.distributed.configure(hist, timeout=120)         # doctest: +SKIP
    """
    if hist.attached:
        raise RuntimeError("configure() after attach(): call it before `with hist:` / hist.attach()")
    if timeout is not None and not isinstance(timeout, timedelta):
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout must be seconds > 0 or a timedelta, got {timeout!r}; e.g. timeout=600")
        timeout = timedelta(seconds=float(timeout))
    hist.dist_options = DistOptions(group, timeout)
    return hist


def setup(options: DistOptions) -> DistSync | None:
    """The sync of a recorder that attaches now, or None when no more than one rank runs."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    if dist.get_world_size(options.group) <= 1:
        return None
    return DistSync(options.group, options.timeout)


#: Recorders' private control groups not released yet (see :meth:`DistSync.release` and :func:`_release_at_exit`)
_OWN_GROUPS: weakref.WeakSet[DistSync] = weakref.WeakSet()


def _release_at_exit() -> None:
    """Destroy the control groups of recorders never closed (a framework's callback that only flushes, a script
    that ends without ``close()``) before the interpreter exits: a gloo group destroyed during its teardown
    aborted one process in four of Lightning's ddp runs ("terminate called without an active exception")."""
    for sync in list(_OWN_GROUPS):
        sync.release()


atexit.register(_release_at_exit)


class DistSync:
    """The collective side of one recorder: range agreement, host-held rows, the summing flush."""

    def __init__(self, group: Any, timeout: timedelta | None):
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.writes = self.rank == 0
        self.backend = str(dist.get_backend(group))
        if group is None:
            # A private gloo group carries control messages (monitored barrier, object exchange) and keeps
            # twinpeaks' collectives apart from the user's; data goes over the default group unless it is gloo.
            self.ctrl = dist.new_group(backend="gloo", timeout=timeout)
            self.data = self.ctrl if self.backend == "gloo" else dist.group.WORLD
        else:
            self.ctrl = self.data = group
        self._own_ctrl = group is None
        if self._own_ctrl:
            _OWN_GROUPS.add(self)
        self.monitored = str(dist.get_backend(self.ctrl)) == "gloo"
        self.timeout = timeout
        self._held: dict[tuple[int, str], list[tuple[int, Rows]]] = {}
        self._base: dict[str, int] = {}

    # -- attach ---------------------------------------------------------------------------
    def open_writer(self, path: Any, meta: dict[str, Any], names: list[str], *, overwrite: bool = False,
                    claimed: bool = False, warn: Callable[[str], None] | None = None) -> RunWriter:
        """Rank 0 creates the run file, the others (``path`` None) an in-memory run; a failure on any rank fails all.

        ``overwrite``, ``claimed`` and ``warn`` are :class:`~twinpeaks.runfile.RunWriter`'s.
        """
        writer, error = None, None
        try:
            writer = RunWriter(path, meta, warn, overwrite=overwrite, claimed=claimed)
            writer.set_meta("distributed", {"world_size": self.world, "backend": self.backend})
            writer.commit()
        except Exception as exc:  # reported to every rank below, then raised here
            error = exc
        infos = self._handshake("attach()", {"kind": "attach()", "error": None if error is None else str(error),
                                             "layers": names})
        if error is not None:
            raise error
        self._agree(infos, "kind")
        for r, info in enumerate(infos):
            if info["error"] is not None:
                raise TwinpeaksError(f"twinpeaks: rank {r} could not attach: {info['error']}")
            if info["layers"] != names:
                raise TwinpeaksError(f"twinpeaks: rank {r} records other layers than rank {self.rank} "
                                     f"({len(info['layers'])} vs {len(names)}): every rank needs the same model and modules=")
        assert writer is not None
        return writer

    def _device(self, device: torch.device) -> torch.device:
        """Where tensors of the data group's collectives live: the host for gloo, else the accelerator."""
        if str(dist.get_backend(self.data)) == "gloo":
            return torch.device("cpu")
        if device.type == "cpu" and torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return device

    # -- flushing --------------------------------------------------------------------------
    def hold(self, taken: dict[tuple[int, str], tuple[int, Rows]], starts: dict[str, int]) -> None:
        """Keep a window's rows on this rank's host (no collective): the combining waits for the epoch's end.

        ``taken``: ``{(record id, phase): (first step, rows)}``; ``starts``: each phase's window start.
        """
        for key, rows in taken.items():
            self._held.setdefault(key, []).append(rows)
        for phase, start in starts.items():
            self._base.setdefault(phase, start)

    def agree_epoch(self, epoch: int, phases: dict[str, tuple[int, int]], layers: list[LayerState],
                    ) -> tuple[dict[str, list[int]], list[tuple[int, str, LayerState]]]:
        """Agree the steps of every phase and the records of every rank at ``end_epoch()`` (after :meth:`hold`).

        ``phases``: this rank's ``{phase: (step, epoch start)}``. Returns the agreed
        ``{phase: [first held step, end step, epoch start]}`` (the same on every rank; a
        rank with fewer steps contributes neutral rows), and the ``(record index,
        phase, another rank's state)`` of records this rank never ran in a phase that
        another rank did: the caller creates their buffers before :meth:`combine`.
        """
        mine = {p: [self._base.get(p, end), end, first] for p, (end, first) in phases.items()}
        # The layer structure travels as a digest; the full lists only when ranks differ (rare: a rank
        # without a phase's batches), so 1,000 layers on 1,024 ranks exchange a few bytes per rank.
        digest = hashlib.sha1(repr([(x.name, x.phases) for x in layers]).encode()).hexdigest()
        what = f"end_epoch() of epoch {epoch}"
        infos = self._handshake(what, {"kind": "end_epoch()", "epoch": epoch, "phases": mine, "layers": digest})
        self._agree(infos, "kind", "epoch")
        if all(info["layers"] == digest for info in infos):
            everyone = [layers] * len(infos)
        else:
            everyone = [[LayerState(*x) for x in recs] for recs in self._gather(what, [tuple(x) for x in layers])]
        names = [x.name for x in layers]
        for r, recs in enumerate(everyone):
            if [x.name for x in recs] != names:
                raise TwinpeaksError(f"twinpeaks: rank {r} recorded other layers than rank {self.rank}: "
                                     "every rank must run the same layers (sub-records included)")
        # phases: union in rank order; base and epoch start must agree, rows are the longest rank's
        agreed: dict[str, list[int]] = {}
        for r, info in enumerate(infos):
            for p, (base, end, first) in info["phases"].items():
                if p not in agreed:
                    agreed[p] = [base, end, first]
                elif agreed[p][0] != base or agreed[p][2] != first:
                    raise TwinpeaksError(f"twinpeaks: rank {r} is at another step of phase {p!r} than rank 0: "
                                         "ranks must call end_epoch() at the same points")
                else:
                    agreed[p][1] = max(agreed[p][1], end)
        self._base = {}
        missing = []
        for i, layer in enumerate(layers):
            for p in agreed:
                if p not in layer.phases:
                    other = next((recs[i] for recs in everyone if p in recs[i].phases), None)
                    if other is not None:
                        missing.append((i, p, other))
        return agreed, missing

    def combine(self, agreed: dict[str, list[int]], states: dict[int, dict[str, dict[str, list]]],
                ) -> dict[tuple[int, str], tuple[int, Rows]]:
        """Combine the held rows of every rank, each declared state by its reduction: one all_reduce per kind.

        ``states``: ``{record id: {phase: {state: [per-row shape, host dtype, reduction]}}}``, the same
        on every rank. Returns ``{(record id, phase): (first step, rows)}``, the same on every rank.
        """
        out: dict[tuple[int, str], tuple[int, Rows]] = {}
        for phase, (base, end, _) in agreed.items():
            n = end - base
            specs = [(rid, per[phase]) for rid, per in states.items() if phase in per]
            if not specs or n <= 0:
                for rid, _ in specs:
                    self._held.pop((rid, phase), None)
                continue
            # one flat buffer per (dtype, reduction), filled in place through views
            groups: dict[tuple[str, str], int] = {}
            for _, spec in specs:
                for shape, dtype, op in spec.values():
                    groups[dtype, op] = groups.get((dtype, op), 0) + n * math.prod(shape)
            flats = {k: np.full(size, _OPS[k[1]][1], np.dtype(k[0])) for k, size in groups.items()}
            used = dict.fromkeys(groups, 0)
            for rid, spec in specs:
                rows: Rows = {}
                for name, (shape, dtype, op) in spec.items():
                    size = n * math.prod(shape)
                    o = used[dtype, op]
                    rows[name] = flats[dtype, op][o:o + size].reshape(n, *shape)
                    used[dtype, op] = o + size
                for start, held in self._held.pop((rid, phase), []):
                    r = slice(start - base, start - base + len(held["counts"]))
                    for name, arr in held.items():
                        rows[name][r] = arr
                out[rid, phase] = (base, rows)
            gridded = [(rows, [k for k, (_, _, op) in spec.items() if op == "sum@grid"])
                       for (rid, spec), rows in ((x, out[x[0], phase][1]) for x in specs) if "grid" in spec]
            if gridded:
                self._agree_grids(gridded)
            for (_, op), flat in flats.items():
                self._all_reduce(flat, _OPS[op][0])
        return out

    def _agree_grids(self, gridded: list[tuple[Rows, list[str]]]) -> None:
        """One grid per row for all ranks; each rank's slot rows regridded onto it, in place (before summing).

        Two all-reduces for all records together: the largest ``e`` of every row (rows
        with no finite value take no part), then the lowest and highest occupied bin
        at that ``e``. The common grid is the smallest ``e`` >= it over which they fit,
        ``o`` the lowest (docs/grids.md).
        """
        none = np.iinfo(np.int64).min // 4
        local = np.stack([rows["grid"] for rows, _ in gridded])  # [records, n, 2]
        bins = gridded[0][0]["counts"].shape[-1] - 3
        occ_bins: np.ndarray = np.stack([rows["counts"][:, 1:-2] > 0 for rows, _ in gridded])  # [records, n, B]
        occ: np.ndarray = np.asarray(occ_bins.any(axis=2))
        lo_i = np.where(occ, occ_bins.argmax(axis=2), 0)
        hi_i = np.where(occ, bins - 1 - occ_bins[:, :, ::-1].argmax(axis=2), 0)
        e_max = np.where(occ, local[..., 0], none)
        self._all_reduce(e_max, dist.ReduceOp.MAX)
        live = e_max > none
        k = np.where(occ, e_max - local[..., 0], 0)

        def shift(v: np.ndarray) -> np.ndarray:
            return np.where(k < 62, v >> np.minimum(k, 62), np.where(v < 0, -1, 0))

        ends = np.stack([np.where(occ, -shift(local[..., 1] + lo_i), none), np.where(occ, shift(local[..., 1] + hi_i), none)])
        self._all_reduce(ends, dist.ReduceOp.MAX)
        lo, hi = -ends[0], ends[1]
        up = np.zeros(e_max.shape, np.int64)
        while True:  # the smallest e >= e_max over which every rank's occupied bins fit
            wide = live & ((hi >> up) - (lo >> up) > bins - 1)
            if not wide.any():
                break
            up += wide
        common = np.stack([np.where(live, e_max + up, 0), np.where(live, lo >> np.where(live, up, 0), 0)], axis=-1)
        for b, (rows, names) in enumerate(gridded):
            for i in np.flatnonzero(occ[b]):
                old, new = (int(local[b, i, 0]), int(local[b, i, 1])), (int(common[b, i, 0]), int(common[b, i, 1]))
                if old != new:
                    for name in names:
                        rows[name][i, ..., 1:-2] = grids.regrid(rows[name][i, ..., 1:-2], old, new)
            rows["grid"][:] = common[b]

    def _all_reduce(self, arr: np.ndarray, op: Any) -> None:
        """All-reduce ``arr`` in place (through the accelerator when the data group needs it)."""
        host = torch.from_numpy(arr)
        t = host.to(self._device(host.device))
        self._collective(lambda: dist.all_reduce(t, op=op, group=self.data), "summing the flush")
        if t is not host:
            host.copy_(t.cpu())

    # -- closing -----------------------------------------------------------------------------
    def agree_close(self, epoch: int, need: bool) -> bool:
        """Whether any rank has steps in the open epoch, so that every rank closes it (``close()``/``flush()``)."""
        infos = self._handshake("close()", {"kind": "close()", "epoch": epoch, "need": need})
        self._agree(infos, "kind", "epoch")
        return any(info["need"] for info in infos)

    def release(self) -> None:
        """Destroy the private control group (after the last collective of ``close()``).

        A gloo group left alive past the training framework's own teardown can abort the
        process at exit ("terminate called without an active exception"); a group the user
        passed to :func:`configure` is theirs and stays.
        """
        if not self._own_ctrl or self.ctrl is None:
            return
        group, self.ctrl = self.ctrl, None
        _OWN_GROUPS.discard(self)
        if self.data is group:  # no reference left: the group goes now, not at the interpreter's teardown
            self.data = dist.group.WORLD
        try:
            if dist.is_initialized():
                dist.destroy_process_group(group)
        except Exception as exc:  # teardown is best effort: never fail the user's close()
            log.debug("twinpeaks: could not destroy its control group: %r", exc)

    # -- control -------------------------------------------------------------------------------
    def _handshake(self, what: str, payload: dict) -> list[dict]:
        """Monitored barrier, then every rank's ``payload``; raises naming the missing ranks on timeout."""
        if self.monitored:
            self._collective(lambda: dist.monitored_barrier(self.ctrl, timeout=self.timeout, wait_all_ranks=True),
                             what)
        return self._gather(what, payload)

    def _gather(self, what: str, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world
        self._collective(lambda: dist.all_gather_object(out, obj, group=self.ctrl), what)
        return out

    def _collective(self, fn: Any, what: str) -> None:
        try:
            fn()
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            wait = (f"{self.timeout.total_seconds():g} s" if self.timeout
                    else "the process-group timeout (configure(hist, timeout=...) sets it)")
            raise TwinpeaksError(
                f"twinpeaks: {what} on rank {self.rank} failed: not every rank joined it within {wait} ({reason}). "
                "Every rank must call end_epoch() and close() at the same points; a rank that stopped or "
                "crashed leaves the others here") from exc

    def _agree(self, infos: list[dict], *keys: str) -> None:
        for key in keys:
            values = [info.get(key) for info in infos]
            if any(v != values[0] for v in values):
                where = ", ".join(f"rank {r}: {info.get('kind')}" + (f" of epoch {info['epoch']}" if "epoch" in info else "")
                                  for r, info in enumerate(infos))
                raise TwinpeaksError(f"twinpeaks: ranks are at different points ({where}): every rank must call "
                                     "end_epoch() and close() at the same points")
