"""Issue #17: the writer does a window's and an epoch's host work for all layers at once (stacked).

The oracle is the per-layer writing, written here independently of the stacked code: each layer's rows
(the copies the recorder took, finished one layer at a time) go into their own
:class:`~twinpeaks.columns.ColumnStore` (the run's columns past ``max_columns``, and the open epoch's),
and the epoch summaries are their totals, as the writer made them one layer at a time. The run file must
hold exactly that (the same arrays, the same bytes for the summaries); numpy checks the histograms.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from column_reference import ColumnStore
from torch import nn

import twinpeaks as tp
from twinpeaks.columns import ColumnStack
from twinpeaks.format import MAX, MIN, combine_stats, decode, encode
from twinpeaks.recording import epoch_writer
from twinpeaks.recording.engine import Carved, PhaseBuffers
from twinpeaks.runfile import encode_lanes

BINS = 20
SLOTS = BINS + 3


def model() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 3))


def _summary(ep: ColumnStore, extra: dict[str, ColumnStore], lq_first: int) -> dict[str, np.ndarray]:
    """One layer's epoch summaries from its own stores (the per-layer writer's rules)."""
    counts, stats, n, grid = ep.total()
    lq_counts, lq_stats, lq_n, lq_grid = ep.total(lq_first)
    arrays = {"counts": counts, "stats": stats, "lq_counts": lq_counts, "lq_stats": lq_stats,
              "summary": np.array([n, lq_n], np.int64)}
    for k, store in extra.items():
        name = "class" if k == "classes" else k
        arrays[f"{name}_counts"] = store.total(None, onto=grid)[0]
        arrays[f"{name}_lq"] = store.total(lq_first, onto=lq_grid)[0]
    if ep.grid is not None:
        arrays["grid"] = np.array(grid if grid is not None else (0, 0), np.int64)
        arrays["lq_grid"] = np.array(lq_grid if lq_grid is not None else (0, 0), np.int64)
    return arrays


def _oracle(log: list, max_columns: int) -> tuple[dict, dict]:
    """Expected run columns ``{(layer, phase): ColumnStore}`` and summaries ``{(layer, phase, kind, epoch): array}``."""
    runs: dict[tuple[int, str], ColumnStore] = {}
    epochs: dict[tuple[int, str], tuple[ColumnStore, dict[str, ColumnStore]]] = {}
    expected: dict[tuple, np.ndarray] = {}
    last: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for entry in log:
        if entry[0] == "window":
            for (rid, phase), (start, pd, raw) in sorted(entry[1].items()):
                counts, stats, extra, grid = PhaseBuffers.columns(pd.finish(raw))  # one layer at a time
                gridded = grid is not None
                runs.setdefault((rid, phase), ColumnStore(max_columns, (SLOTS,), gridded)).append(
                    start, counts, stats, grid)
                ep, ex = epochs.setdefault((rid, phase), (
                    ColumnStore(epoch_writer.EPOCH_COLUMNS, (SLOTS,), gridded),
                    {k: ColumnStore(epoch_writer.EPOCH_COLUMNS, v.shape[1:], gridded) for k, v in extra.items()}))
                ep.append(start, counts, stats, grid)
                for k, v in extra.items():
                    ex[k].append(start, v, stats, grid)
            continue
        _, epoch, phases, merge, _ = entry
        if not merge:
            last = {}
        for phase, (first, end) in phases.items():
            lq_first = end - max(1, math.ceil((end - first) / 4))
            for (rid, p), (ep, ex) in sorted(epochs.items()):
                if p != phase or not len(ep):
                    continue
                arrays = _summary(ep, ex, lq_first)
                prev = last.get((rid, phase)) if merge else None
                if prev is not None and ep.grid is not None:
                    epoch_writer._add_on_grids(prev, arrays)
                elif prev is not None:
                    for kind, arr in list(arrays.items()):
                        if kind in prev:
                            arrays[kind] = (combine_stats(np.vstack([prev[kind], arr])) if kind.endswith("stats")
                                            else prev[kind] + arr)
                last[rid, phase] = arrays
                for kind, arr in arrays.items():
                    expected[rid, phase, kind, epoch] = arr
                for store in (ep, *ex.values()):
                    store.clear()
    return runs, expected


def _raw(raw):
    return raw.rows() if isinstance(raw, Carved) else raw


def _record(path, monkeypatch, windows: int = 5, max_columns: int = 6, stack: bool = True, lanes: int = 64) -> list:
    """Train a small model (automatic and fixed ranges, per-class and truth rows on the last layer, train, valid
    and a final test pass) and return the log of what the writer was given."""
    log: list = []
    take_raw = tp.ActivationsHistogram._take_raw
    write_epoch = epoch_writer.EpochWriter.write_epoch

    def spy_take(self):
        taken = take_raw(self)
        log.append(("window", {k: (s, pd, {n: a.copy() for n, a in _raw(raw).items()})
                               for k, (s, pd, raw) in taken.items()}))
        return taken

    def spy_epoch(self, rids, epoch, phases, merge):
        log.append(("epoch", epoch, dict(phases), merge, max(len(c.rids) for cs in self._cohorts.values() for c in cs)))
        return write_epoch(self, rids, epoch, phases, merge)

    monkeypatch.setattr(tp.ActivationsHistogram, "_take_raw", spy_take)
    monkeypatch.setattr(epoch_writer.EpochWriter, "write_epoch", spy_epoch)
    monkeypatch.setattr(epoch_writer, "LANES", lanes)  # records per cohort
    monkeypatch.setattr(epoch_writer, "MERGE_BYTES", 1 if lanes < 64 else epoch_writer.MERGE_BYTES)  # 1: merged
    # one record at a time
    monkeypatch.setattr(tp.recorder, "LANES", lanes)
    if not stack:  # every layer finished and written alone
        monkeypatch.setattr(PhaseBuffers, "lane_key", lambda self: None)
    torch.manual_seed(0)
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    hist = tp.ActivationsHistogram(net, path, bins=BINS, flush_every=windows, max_columns=max_columns,
                                   per_class=True, range={"1": (0.0, 2.0), "3": (-1.0, 1.0)}, sample=1.0)
    gen = torch.Generator().manual_seed(1)
    outputs: dict[str, list[torch.Tensor]] = {"1": [], "3": []}
    hooks = [net[int(k)].register_forward_hook(lambda m, a, out, k=k: outputs[k].append(out.detach().clone()))
             for k in outputs]
    with hist:
        for e in range(3):
            net.train()
            for i in range(23):
                x = torch.randn(8, 6, generator=gen) * (1 + (i + e) % 5)  # ranges move: grids differ per step
                y = torch.randint(0, 3, (8,), generator=gen)
                hist.targets(y)
                loss = nn.functional.cross_entropy(net(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                for i in range(7):
                    hist.targets(torch.randint(0, 3, (8,), generator=gen))
                    net(torch.randn(8, 6, generator=gen) * (1 + i))
            hist.end_epoch()
        with hist.phase("test"), torch.no_grad():  # after the last end_epoch: joins the last epoch (merge)
            for _ in range(3):
                hist.targets(torch.randint(0, 3, (8,), generator=gen))
                net(torch.randn(8, 6, generator=gen) * 3)
    for h in hooks:
        h.remove()
    return [log, outputs]


def _file_arrays(path) -> dict[tuple, tuple]:
    conn = tp.runfile.connect_reader(path)
    try:
        return {tuple(r[:5]): tuple(r[5:]) for r in conn.execute(
            "SELECT layer, phase, kind, epoch, part, dtype, shape, data FROM arrays")}
    finally:
        conn.close()


def _columns(rows: dict[tuple, tuple], layer: int, phase: str, kind: str) -> np.ndarray:
    parts = sorted((k[4], decode(*v)) for k, v in rows.items() if k[:4] == (layer, phase, kind, -1))
    return np.concatenate([a for _, a in parts])


@pytest.mark.parametrize("windows,max_columns,lanes", [(5, 6, 64), (4, 40, 64), (16, 3, 64), (5, 6, 3)],
                         ids=["merging", "no-merge", "big-window", "cohorts-of-3"])
def test_the_stacked_writer_writes_what_the_per_layer_writer_wrote(tmp_run, monkeypatch, windows, max_columns, lanes):
    log, outputs = _record(tmp_run, monkeypatch, windows, max_columns, lanes=lanes)
    runs, expected = _oracle(log, max_columns)
    assert max(e[4] for e in log if e[0] == "epoch") == min(lanes, 4)  # 4 layers of automatic ranges stack
    rows = _file_arrays(tmp_run)
    layers = sorted({rid for rid, _ in runs})
    assert len(layers) == 7 and {p for _, p in runs} == {"train", "valid", "test"}
    assert any(len(s) == max_columns for s in runs.values()) or max_columns == 40  # merges happened
    for (rid, phase), store in runs.items():  # the run's columns: the same arrays as the layer's own store
        np.testing.assert_array_equal(_columns(rows, rid, phase, "col_steps"), store.steps)
        np.testing.assert_array_equal(_columns(rows, rid, phase, "col_counts"), store.counts)
        stats = _columns(rows, rid, phase, "col_stats")  # a merge in the writer's idle time adds in another order
        np.testing.assert_allclose(stats, store.stats, rtol=1e-12, atol=0)
        np.testing.assert_array_equal(stats[:, MIN], store.stats[:, MIN])
        np.testing.assert_array_equal(stats[:, MAX], store.stats[:, MAX])
        if store.grid is not None:
            np.testing.assert_array_equal(_columns(rows, rid, phase, "col_grid"), store.grid)
        else:
            assert not any(k[:3] == (rid, phase, "col_grid") for k in rows)
    summaries = {k[:4]: v for k, v in rows.items() if k[3] >= 0}
    assert set(summaries) == set(expected)
    assert any(k[1] == "test" and k[2] == "class_counts" for k in expected)  # the last layer's per-class rows
    for key, arr in expected.items():  # the epoch summaries: the same bytes
        assert summaries[key] == encode(arr), key
    run = tp.open_run(tmp_run)  # numpy: the fixed layers' histograms over the whole run
    for name, (lo, hi) in (("1", (0.0, 2.0)), ("3", (-1.0, 1.0))):
        every = torch.cat([o.reshape(-1) for o in outputs[name]]).double().numpy()
        total = sum(run.histogram(name, p, epoch=e).counts for e in range(3) for p in ("train", "valid", "test")
                    if (e, p) != (0, "test") and (e, p) != (1, "test"))
        np.testing.assert_array_equal(total, np.histogram(every[(every >= lo) & (every <= hi)], BINS, (lo, hi))[0])


def test_stacked_and_one_layer_at_a_time_write_the_same_file(tmp_path, monkeypatch):
    a, b = tmp_path / "stacked.tp", tmp_path / "alone.tp"
    _record(a, monkeypatch)
    monkeypatch.undo()
    _record(b, monkeypatch, stack=False)
    ra, rb = _file_arrays(a), _file_arrays(b)
    summaries = {k for k in ra if k[3] >= 0}
    assert summaries == {k for k in rb if k[3] >= 0}
    for key in summaries:  # the epoch summaries: the same bytes
        assert ra[key] == rb[key], key
    # the step columns: the same arrays (how they are cut into parts depends on when the writer's idle time merged
    # them, and a merge in idle time adds the sums in another order)
    columns = {k[:3] for k in ra if k[3] == -1}
    assert columns == {k[:3] for k in rb if k[3] == -1}
    for layer, phase, kind in columns:
        got, want = _columns(ra, layer, phase, kind), _columns(rb, layer, phase, kind)
        if kind == "col_stats":
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
            np.testing.assert_array_equal(got[:, [MIN, MAX]], want[:, [MIN, MAX]])
        else:
            np.testing.assert_array_equal(got, want)


def test_column_stack_lanes_follow_column_stores():
    """Every lane of a stack holds what a ColumnStore fed its rows holds, across merges and grids."""
    rng = np.random.default_rng(0)
    for gridded in (False, True):
        lanes, cap = 5, 7
        stack, refs = ColumnStack(lanes, cap, (6,), gridded), [ColumnStore(cap, (6,), gridded) for _ in range(lanes)]
        start = 0
        for _ in range(30):
            n = int(rng.integers(1, 9))
            counts = rng.integers(0, 50, (lanes, n, 6))
            counts[..., 1] = counts[..., -1] = counts[..., -2] = 0
            stats = np.concatenate([rng.random((lanes, n, 5)) * 1e3, -rng.random((lanes, n, 1)),
                                    rng.random((lanes, n, 1))], axis=2)
            grid = np.stack([rng.integers(-3, -1, (lanes, n)), rng.integers(-8, -4, (lanes, n))], axis=2) \
                if gridded else None
            stack.append(start, counts, stats, grid)
            for i, ref in enumerate(refs):
                ref.append(start, counts[i], stats[i], None if grid is None else grid[i])
            start += n
            for i, ref in enumerate(refs):
                np.testing.assert_array_equal(stack.steps, ref.steps)
                np.testing.assert_array_equal(stack.counts[i], ref.counts)
                assert stack.stats[i].tobytes() == ref.stats.tobytes()
                if gridded:
                    np.testing.assert_array_equal(stack.grid[i], ref.grid)
            assert stack.width == refs[0].width


def test_encode_lanes_is_encode_of_each():
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 10, (6, 3, 4))
    arr[1, 0, 0], arr[2, 1, 1], arr[3, 2, 2], arr[4, 0, 1] = 300, 70_000, 1 << 40, -5
    for a in (arr, rng.random((4, 5))):
        assert encode_lanes(a) == [encode(x) for x in a]
