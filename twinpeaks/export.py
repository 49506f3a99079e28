"""Export a run's histograms to TensorBoard and to Weights & Biases.

Design constraints:

* Real summaries, read by the tools themselves: TensorBoard histogram summaries
  written with ``SummaryWriter.add_histogram_raw`` (counts computed by
  twinpeaks, not re-binned), W&B ``wandb.Histogram(np_histogram=...)``.
* Nothing dropped silently: values under or over the range get their own
  bucket (TensorBoard) or bin (W&B) when there are any; non-finite values,
  which neither tool can show, are left out of the histogram and said so in
  the run's log.
* Steps aligned with the run: TensorBoard's train histograms sit at the train
  step of each stored column (its first step); valid/test histograms, one per
  epoch, at the last train step of that epoch. W&B logs one histogram per
  layer, phase and epoch at ``step=epoch``.
* The tools are optional: imported here only, with an install hint.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np

from .display import merge_bins
from .format import MAX, MIN, SUM, SUMSQ, mean_std
from .run import Run, open_run

log = logging.getLogger("twinpeaks")

#: W&B refuses histograms of more than 512 bins.
WANDB_MAX_BINS = 512


def _tensorboard_writer(logdir: str | os.PathLike) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError("TensorBoard export needs tensorboard: pip install 'twinpeaks[tensorboard]'") from None
    return SummaryWriter(log_dir=str(logdir))


def tb_buckets(counts: np.ndarray, edges: np.ndarray, under: int, over: int,
               vmin: float, vmax: float) -> tuple[list[float], list[float]]:
    """TensorBoard bucket limits and counts (bucket ``i`` covers ``(limit[i-1], limit[i]]``).

    Bin ``i`` ends at ``edges[i + 1]``; values under the range go in a first
    bucket ending at ``edges[0]``, values over it in a last one ending at the
    largest value seen (or just above the range).

    Example:
        >>> tb_buckets(np.array([1, 2]), np.array([0.0, 1.0, 2.0]), 0, 3, 0.0, 5.0)
        ([1.0, 2.0, 5.0], [1.0, 2.0, 3.0])
    """
    limits = [float(e) for e in edges[1:]]
    values = [float(c) for c in counts]
    if under:
        limits.insert(0, float(edges[0]))
        values.insert(0, float(under))
    if over:
        top = vmax if np.isfinite(vmax) and vmax > edges[-1] else float(np.nextafter(edges[-1], np.inf))
        limits.append(float(top))
        values.append(float(over))
    return limits, values


def _tb_histogram(writer: Any, tag: str, step: int, counts: np.ndarray, edges: np.ndarray,
                  under: int, over: int, stats: np.ndarray) -> bool:
    finite = int(counts.sum()) + int(under) + int(over)
    if not finite:
        return False
    vmin, vmax = float(stats[MIN]), float(stats[MAX])
    lo = vmin if np.isfinite(vmin) else float(edges[0])
    limits, values = tb_buckets(counts, edges, under, over, vmin, vmax)
    hi = vmax if np.isfinite(vmax) else limits[-1]
    total, total_sq = float(stats[SUM]), float(stats[SUMSQ])
    if not (np.isfinite(total) and np.isfinite(total_sq)):  # NaN/inf poisoned the sums: use bucket middles
        right = np.array(limits)
        mids = (np.concatenate([[lo], right[:-1]]) + right) / 2
        total, total_sq = float((mids * values).sum()), float((mids * mids * values).sum())
    writer.add_histogram_raw(tag, min=lo, max=hi, num=finite, sum=total, sum_squares=total_sq,
                             bucket_limits=limits, bucket_counts=values, global_step=int(step))
    return True


def export_tensorboard(run: Run | str | os.PathLike, logdir: str | os.PathLike) -> Path:
    """Write every layer's histograms as TensorBoard histogram summaries.

    Tags are ``activations/<layer>/<phase>``. Train histograms: one per stored
    column of the run (up to ``max_columns`` per layer, each covering one or
    more steps) at the column's first train step. Valid, test and other
    phases: one per epoch at the epoch's last train step (or the epoch number
    when the run has no train phase). Also scalars ``mean/<layer>/<phase>``
    and ``std/<layer>/<phase>`` at the same steps.

    Args:
        run: a :class:`~twinpeaks.run.Run` or a run file path.
        logdir: TensorBoard log directory (created if missing).

    Returns:
        The log directory.

    Example:
        >>> tp.export_tensorboard("runs/exp1.tp", "tb/exp1")  # doctest: +SKIP
        # then: tensorboard --logdir tb
    """
    r = open_run(run)
    try:
        writer = _tensorboard_writer(logdir)
        with _fast_crc():
            try:
                n = _write_tensorboard(r, writer)
            finally:
                writer.close()  # its thread has written every frame
    finally:
        if r is not run:
            r.close()
    log.info("exported %d histograms to TensorBoard log dir %s", n, logdir)
    return Path(logdir)


@contextlib.contextmanager
def _fast_crc() -> Iterator[None]:
    """TensorBoard's record writer with twinpeaks' C CRC32C while the export writes (the same values, tested against
    its own): its pure-Python one made a 500-layer export take 70 s, its thread holding the GIL. Left as it is
    where either is missing."""
    from . import binning

    try:
        from tensorboard.summary.writer import record_writer
    except ImportError:
        yield
        return
    fast = getattr(binning._cbin, "masked_crc32c", None)
    old = getattr(record_writer, "masked_crc32c", None)
    if fast is None or old is None:
        yield
        return
    record_writer.masked_crc32c = fast
    try:
        yield
    finally:
        record_writer.masked_crc32c = old


def _epoch_step(run: Run, epoch: int) -> int:
    steps = run.epoch_info(epoch).steps
    return steps["train"][1] - 1 if "train" in steps else epoch


def _write_tensorboard(run: Run, writer: Any) -> int:
    n = 0
    nonfinite = 0
    for info in run.layers:
        if not info.called:
            continue
        for phase in run.phases:
            tag = f"activations/{info.name}/{phase}"
            if phase == "train":  # every column on its own edges (automatic ranges: each step its grid)
                cols = run.columns(info, phase)
                nonfinite += int(cols.nonfinite.sum())
                rows: list[tuple[Any, ...]] = list(
                    zip(cols.starts.tolist(), cols.counts, cols.edges, cols.underflow, cols.overflow, cols.stats))
            else:
                rows = []
                for e in range(run.epochs):
                    h = run.histogram(info, phase, e)
                    nonfinite += h.nonfinite
                    rows.append((_epoch_step(run, e), h.counts, h.edges, h.underflow, h.overflow, h.stats))
            for step, counts, edges, under, over, stats in rows:
                if _tb_histogram(writer, tag, step, counts, edges, int(under), int(over), stats):
                    n += 1
                    mean, std = mean_std(stats)
                    if np.isfinite(mean) and np.isfinite(std):
                        writer.add_scalar(f"mean/{info.name}/{phase}", float(mean), int(step))
                        writer.add_scalar(f"std/{info.name}/{phase}", float(std), int(step))
    if nonfinite:
        log.warning("twinpeaks: %d non-finite values (NaN/inf) are not in the TensorBoard histograms", nonfinite)
    return n


def wandb_bins(counts: np.ndarray, edges: np.ndarray, under: int = 0, over: int = 0,
               vmin: float = float("nan"), vmax: float = float("nan"),
               max_bins: int = WANDB_MAX_BINS) -> tuple[np.ndarray, np.ndarray]:
    """``(counts, edges)`` for ``wandb.Histogram(np_histogram=...)``: at most ``max_bins`` bins.

    Adjacent bins are summed when there are too many; values under or over the
    range get an extra bin reaching to the smallest or largest value seen.

    Example:
        >>> c, e = wandb_bins(np.ones(1000, np.int64), np.linspace(0, 1, 1001))
        >>> len(c), int(c.sum())
        (500, 1000)
    """
    room = max_bins - bool(under) - bool(over)
    counts, edges = merge_bins(np.asarray(counts), np.asarray(edges, np.float64), room)
    if under:
        lo = vmin if np.isfinite(vmin) and vmin < edges[0] else float(np.nextafter(edges[0], -np.inf))
        counts, edges = np.concatenate([[under], counts]), np.concatenate([[lo], edges])
    if over:
        hi = vmax if np.isfinite(vmax) and vmax > edges[-1] else float(np.nextafter(edges[-1], np.inf))
        counts, edges = np.concatenate([counts, [over]]), np.concatenate([edges, [hi]])
    return counts, edges


_WANDB_MODES = ("offline", "online", "disabled", "shared")


def export_wandb(
    run: Run | str | os.PathLike,
    project: str,
    *,
    name: str | None = None,
    dir: str | os.PathLike | None = None,  # noqa: A002 - wandb's name
    mode: str | None = None,
) -> str:
    """Log every layer's per-epoch histograms to a Weights & Biases run.

    One ``wandb.Histogram`` per layer, phase and epoch (keys
    ``activations/<layer>/<phase>``, ``step=epoch``); train is the whole
    epoch, ``train_last_quarter`` its last quarter (what Twin Peaks compares).
    At most 512 bins: adjacent bins are summed when the run has more.

    Args:
        run: a :class:`~twinpeaks.run.Run` or a run file path.
        project: W&B project name.
        name: W&B run name (default: the run file's name).
        dir: where wandb writes its files (default: wandb's own choice).
        mode: ``"offline"`` (the default unless ``WANDB_MODE`` says otherwise;
            upload later with ``wandb sync``), ``"online"`` or ``"disabled"``.

    Returns:
        The local directory of the W&B run.

    Example:
        >>> tp.export_wandb("runs/exp1.tp", "my-project")  # doctest: +SKIP
    """
    if not isinstance(project, str) or not project:
        raise ValueError(f"project must be a non-empty W&B project name, got {project!r}")
    try:
        import wandb
    except ImportError:
        raise ImportError("W&B export needs wandb: pip install 'twinpeaks[wandb]'") from None
    mode = mode or os.environ.get("WANDB_MODE") or "offline"
    if mode not in _WANDB_MODES:
        raise ValueError(f"mode must be one of {', '.join(_WANDB_MODES)} (or WANDB_MODE), got {mode!r}")
    r = open_run(run)
    try:
        meta = r.meta
        wrun = wandb.init(
            project=project, name=name or (r.path.stem if r.path else None), mode=cast(Any, mode),
            dir=None if dir is None else str(dir), reinit="create_new",
            config={"twinpeaks": {"run_file": str(r.path) if r.path else None, "model": meta.get("model"),
                                  **(meta.get("options") or {})}},
        )
        try:
            for e in range(r.epochs):
                wrun.log({"epoch": e, **_wandb_epoch(r, e, wandb)}, step=e)
        finally:
            wrun.finish()
            # finish() may return before wandb's service wrote everything (seen offline with
            # wandb 0.31); teardown waits for it, but would also end a run the caller still has open
            if wandb.run is None:
                wandb.teardown()
        out = str(Path(wrun.dir).parent) if wrun.dir else ""
    finally:
        if r is not run:
            r.close()
    log.info("exported %d epochs to W&B project %s (%s)", r.epochs, project, out)
    return out


def _wandb_epoch(run: Run, epoch: int, wandb: Any) -> dict[str, Any]:
    logs: dict[str, Any] = {}
    for info in run.layers:
        if not info.called:
            continue
        for phase in run.phases:
            picks = [(phase, False)] + ([("train_last_quarter", True)] if phase == "train" else [])
            for key, lq in picks:
                h = run.histogram(info, phase, epoch, last_quarter=lq)
                if not h.total - h.nonfinite:
                    continue
                counts, edges = wandb_bins(h.counts, h.edges, h.underflow, h.overflow, h.min, h.max)
                logs[f"activations/{info.name}/{key}"] = wandb.Histogram(np_histogram=(counts, edges))
    return logs


__all__ = ["export_tensorboard", "export_wandb", "tb_buckets", "wandb_bins", "WANDB_MAX_BINS"]
