"""torch.distributed: many ranks, one run file.

With ``torch.distributed`` initialised and more than one rank, the recorder
attaches a :class:`DistSync` and every rank records its own shard as usual.
This module holds all of the collective logic.

Design constraints:

* One picture. At every flush the ranks sum their rows with ``all_reduce``:
  slot counts (int64), binned/seen element counts and the sums behind the stats
  (sum, sum of squares, zeros) add; minima and maxima combine. Every rank ends
  with the same rows; only rank 0 writes the file, the others keep the same run
  in memory (nothing on disk).
* Identical bin edges. An automatic range is agreed on a layer's first recorded
  call: its first batch's finite min and max are all-reduced once, then every
  rank computes the same bounds (:func:`twinpeaks.binning.auto_bounds` depends
  only on them). That is the one collective inside a training step; it needs
  every rank to run the same layers in the same order on its first step (DDP
  and FSDP do).
* No collective in a training step otherwise. A full ``flush_every`` buffer
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

import hashlib
import logging
import math
import warnings
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from . import binning
from .errors import TwinpeaksError

if TYPE_CHECKING:
    from .recorder import ActivationsHistogram
    from .runfile import RunWriter

log = logging.getLogger("twinpeaks")

_Rows = tuple[int, np.ndarray, np.ndarray, dict[str, np.ndarray]]  # start step, counts, stats, extra


def is_rank_zero() -> bool:
    """True unless torch.distributed runs and this process is not global rank 0.

    Framework adapters use it to draw charts and print diagnoses once.

    Example:
        >>> is_rank_zero()
        True
    """
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def configure(
    hist: ActivationsHistogram,
    *,
    group: Any = None,
    timeout: float | timedelta | None = None,
) -> ActivationsHistogram:
    """Set how ``hist`` syncs across ranks; call it on every rank before ``attach``.

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
    if hist._writer is not None:
        raise RuntimeError("configure() after attach(): call it before `with hist:` / hist.attach()")
    if timeout is not None and not isinstance(timeout, timedelta):
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout must be seconds > 0 or a timedelta, got {timeout!r}; e.g. timeout=600")
        timeout = timedelta(seconds=float(timeout))
    hist._dist_options = {"group": group, "timeout": timeout}  # type: ignore[attr-defined]
    return hist


def setup(hist: ActivationsHistogram) -> DistSync | None:
    """The sync of a recorder that attaches now, or None when no more than one rank runs."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    opts = getattr(hist, "_dist_options", {})
    group = opts.get("group")
    if dist.get_world_size(group) <= 1:
        return None
    return DistSync(group, opts.get("timeout"))


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
        self.monitored = str(dist.get_backend(self.ctrl)) == "gloo"
        self.timeout = timeout
        self._held: dict[tuple[int, str], list[_Rows]] = {}
        self._base: dict[str, int] = {}

    # -- attach ---------------------------------------------------------------------------
    def open_writer(self, hist: ActivationsHistogram) -> RunWriter:
        """Rank 0 creates the run file, the others an in-memory run; a failure on any rank fails all."""
        from .runfile import RunWriter

        if not self.writes:
            hist.path = None  # only rank 0 writes; the others keep the same summed run in memory
        writer, error = None, None
        try:
            writer = RunWriter(hist.path, hist._meta(), overwrite=hist.overwrite, claimed=hist._claimed)
            writer.set_meta("distributed", {"world_size": self.world, "backend": self.backend})
            writer.commit()
        except Exception as exc:  # reported to every rank below, then raised here
            error = exc
        names = [name for name, _ in hist._selected]
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

    # -- the one collective in a step ----------------------------------------------------------
    def auto_bounds(self, values: torch.Tensor, bins: int, margin: float, record: int,
                    output: bool = False) -> binning.Bounds:
        """Automatic bounds from the first batch of every rank: finite min/max all-reduced once.

        The same as :func:`twinpeaks.binning.auto_bounds` over all ranks' first
        batches together (it depends on their min and max only).
        """
        v = values.reshape(-1).float()
        finite = torch.isfinite(v)
        inf = torch.full((), math.inf, device=v.device)  # a fill, not a copy from the host: no sync
        mn = torch.where(finite, v, inf).amin() if v.numel() else inf
        mx = torch.where(finite, v, -inf).amax() if v.numel() else -inf
        rid = torch.full((), float(record), device=v.device)
        buf = torch.stack([-mn, mx, rid, -rid]).double()
        buf = buf.to(self._device(v.device))
        dist.all_reduce(buf, op=dist.ReduceOp.MAX, group=self.data)
        if buf.device.type == "cpu" and buf[2] != -buf[3]:  # on an accelerator this check would sync the host
            raise TwinpeaksError("ranks agreed automatic ranges of different layers: every rank must run the same "
                                 "layers in the same order on its first step, or pass range=(lo, hi)")
        lohi = torch.stack([-buf[0], buf[1]]).to(v.device)
        return binning.auto_bounds(lohi, bins, margin, output=output)

    def _device(self, device: torch.device) -> torch.device:
        """Where tensors of the data group's collectives live: the host for gloo, else the accelerator."""
        if str(dist.get_backend(self.data)) == "gloo":
            return torch.device("cpu")
        if device.type == "cpu" and torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return device

    # -- flushing --------------------------------------------------------------------------
    def hold(self, hist: ActivationsHistogram) -> None:
        """Move the window's rows to this rank's host (no collective): the summing waits for end_epoch."""
        for rec in hist._records:
            for phase, pd in rec.phases.items():
                start = hist._window_start[phase]
                n = hist._step[phase] - start
                if n > 0:
                    self._held.setdefault((rec.id, phase), []).append((start, *pd.take(n)))
        for phase in hist._step:
            self._base.setdefault(phase, hist._window_start[phase])
            hist._window_start[phase] = hist._step[phase]

    def reduce(self, hist: ActivationsHistogram) -> dict[tuple[int, str], _Rows]:
        """Sum every rank's rows of this epoch; align the step counters of all ranks.

        Returns ``{(record id, phase): (start step, counts, stats, extra)}``,
        the same on every rank.
        """
        self.hold(hist)
        phases = {p: [self._base.get(p, hist._window_start[p]), hist._step[p], hist._epoch_first[p]]
                  for p in hist._step}
        records = [[rec.name, {p: {k: list(v.shape[1:-1]) for k, v in pd.extra.items()}
                               for p, pd in sorted(rec.phases.items())}, rec.classes, rec.out_shape]
                   for rec in hist._records]
        # The layer structure travels as a digest; the full lists only when ranks differ (rare: a rank
        # without a phase's batches), so 1,000 layers on 1,024 ranks exchange a few bytes per rank.
        digest = hashlib.sha1(repr([r[:2] for r in records]).encode()).hexdigest()  # names, phases, extras
        what = f"end_epoch() of epoch {hist.epoch}"
        infos = self._handshake(what, {"kind": "end_epoch()", "epoch": hist.epoch, "phases": phases, "layers": digest})
        self._agree(infos, "kind", "epoch")
        if all(info["layers"] == digest for info in infos):
            for info in infos:
                info["records"] = records
        else:
            for info, recs in zip(infos, self._gather(what, records)):
                info["records"] = recs
        names = [r[0] for r in records]
        for r, info in enumerate(infos):
            if [x[0] for x in info["records"]] != names:
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
        hist._step = {p: end for p, (_, end, _) in agreed.items()}
        hist._window_start = dict(hist._step)
        hist._epoch_first = {p: first for p, (_, _, first) in agreed.items()}
        self._base = {}
        out: dict[tuple[int, str], _Rows] = {}
        for p, (base, end, _) in agreed.items():
            out.update(self._reduce_phase(hist, infos, p, base, end - base))
        return out

    def _reduce_phase(self, hist: ActivationsHistogram, infos: list[dict], phase: str, base: int,
                      n: int) -> dict[tuple[int, str], _Rows]:
        from .recorder import _PhaseData

        slots = binning.n_slots(hist.bins)
        specs: list[tuple[int, dict[str, list[int]]]] = []
        for i, rec in enumerate(hist._records):
            spec = next((info["records"][i][1][phase] for info in infos if phase in info["records"][i][1]), None)
            if spec is None:
                continue
            if phase not in rec.phases:  # this rank never ran the layer in this phase: create it for the summed rows
                other = next(info["records"][i] for info in infos if phase in info["records"][i][1])
                rec.out_shape = rec.out_shape or other[3]
                if other[2] and not rec.classes:
                    rec.classes = other[2]
                rec.dirty = True
                if rec.bounds is None and hist.range is not None:
                    rec.bounds = binning.fixed_bounds(*hist.range, hist.bins, torch.device("cpu"))
                with torch.inference_mode(False):
                    rec.phases[phase] = _PhaseData(hist.flush_every, slots, self._buffer_device(hist),
                                                   hist.max_columns, {k: c[0] for k, c in spec.items()})
            specs.append((rec.id, spec))
        if not specs or n == 0:
            return {}
        # Three buffers for the whole phase, filled in place: int64 counts (+ per-class/truth counts), float64
        # sums (binned, seen, sum, sumsq, zeros) and float64 [-min, max], so one all_reduce each.
        sizes = [n * slots * (1 + sum(math.prod(shape) for shape in spec.values())) for _, spec in specs]
        ints = np.zeros(sum(sizes), np.int64)
        sums = np.zeros((len(specs), n, 5))
        ext = np.full((len(specs), 2, n), -np.inf)
        views: list[tuple[int, np.ndarray, dict[str, np.ndarray]]] = []
        o = 0
        for b, (rid, spec) in enumerate(specs):
            counts = ints[o:o + n * slots].reshape(n, slots)
            o += n * slots
            extra = {}
            for k, shape in spec.items():
                size = n * math.prod(shape) * slots
                extra[k] = ints[o:o + size].reshape(n, *shape, slots)
                o += size
            for start, c, st, e in self._held.pop((rid, phase), []):
                r = slice(start - base, start - base + len(c))
                counts[r], sums[b, r], ext[b, 0, r], ext[b, 1, r] = c, st[:, :5], -st[:, 5], st[:, 6]
                for k, arr in e.items():
                    extra[k][r] = arr
            views.append((rid, counts, extra))
        for arr, op in ((ints, dist.ReduceOp.SUM), (sums, dist.ReduceOp.SUM), (ext, dist.ReduceOp.MAX)):
            self._all_reduce(arr, op)
        out: dict[tuple[int, str], _Rows] = {}
        for b, (rid, counts, extra) in enumerate(views):
            stats = np.empty((n, 7))
            stats[:, :5], stats[:, 5], stats[:, 6] = sums[b], -ext[b, 0], ext[b, 1]
            out[rid, phase] = (base, counts, stats, extra)
        return out

    def _buffer_device(self, hist: ActivationsHistogram) -> torch.device:
        for rec in hist._records:
            for pd in rec.phases.values():
                return pd.counts.device
        return torch.device("cpu")

    def _all_reduce(self, arr: np.ndarray, op: Any) -> None:
        """All-reduce ``arr`` in place (through the accelerator when the data group needs it)."""
        host = torch.from_numpy(arr)
        t = host.to(self._device(host.device))
        self._collective(lambda: dist.all_reduce(t, op=op, group=self.data), "summing the flush")
        if t is not host:
            host.copy_(t.cpu())

    # -- closing -----------------------------------------------------------------------------
    def close(self, hist: ActivationsHistogram, need: bool) -> None:
        """Close the open epoch on every rank if any rank has steps in it; never raises (logs instead)."""
        try:
            infos = self._handshake("close()", {"kind": "close()", "epoch": hist.epoch, "need": need})
            self._agree(infos, "kind", "epoch")
            if any(info["need"] for info in infos):
                hist._close_epoch(final=True)
        except Exception as exc:  # closing is best effort: the file keeps every committed epoch
            msg = f"the last epoch was not written: {exc}"
            log.error(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=3)

    def release(self) -> None:
        """Destroy the private control group (after the last collective of ``close()``).

        A gloo group left alive past the training framework's own teardown can abort the
        process at exit ("terminate called without an active exception"); a group the user
        passed to :func:`configure` is theirs and stays.
        """
        if not self._own_ctrl or self.ctrl is None:
            return
        group, self.ctrl = self.ctrl, None
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
