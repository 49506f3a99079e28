"""Issue #14.1: columns stay of even width and nothing overflows, for any run length and flush size.

A simulation drives :class:`ColumnStore` the way the recorder does (a run store and an
epoch store per phase; a flush every ``flush_every`` steps and at every epoch end) and checks,
after every flush: exact totals, contiguous coverage, every column inside one aligned bucket,
``width`` bounded by the run length (no overflow), and the first column never most of the run.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from column_reference import ColumnStore
from torch import nn

import twinpeaks as tp
from twinpeaks.columns import empty_stats


def _check(store: ColumnStore, steps_total: int, first: int) -> None:
    st = store.steps
    assert 1 <= len(store) <= store.cap
    assert st[0, 0] == first and st[-1, 1] == first + steps_total
    np.testing.assert_array_equal(st[1:, 0], st[:-1, 1])  # contiguous, in order
    assert int(store.counts[:, 0].sum()) == steps_total  # every step counted once (row value 1 per step)
    w = store.width
    assert 1 <= w <= max(1, 2 * steps_total // (store.cap - store.cap // 4))
    rel = st - store.origin
    np.testing.assert_array_equal(rel[:, 0] // w, (rel[:, 1] - 1) // w)  # inside one bucket
    if store.cap >= 8 and steps_total >= 4 * store.cap:
        assert st[0, 1] - st[0, 0] <= steps_total / 3 + 1


def _simulate(steps: int, cap: int, flush_every: int, epoch_every: int | None, check_every: int = 1) -> ColumnStore:
    run, epoch = ColumnStore(cap, (2,)), ColumnStore(256, (2,))
    start = epoch_first = 0
    one = np.array([[1, 0]], np.int64)
    flushes = 0
    step = 0
    while step < steps:
        n = min(flush_every, steps - step)
        if epoch_every:
            n = min(n, epoch_first + epoch_every - step)
        rows = np.repeat(one, n, axis=0)
        stats = empty_stats(n)
        step += n
        run.append(start, rows, stats)
        epoch.append(start, rows, stats)
        start = step
        flushes += 1
        if flushes % check_every == 0 or step == steps:
            _check(run, step, 0)
            _check(epoch, step - epoch_first, epoch_first)
        if epoch_every and step - epoch_first == epoch_every:
            epoch.clear()
            epoch_first = step
    return run


@pytest.mark.parametrize("cap", range(2, 9))
@pytest.mark.parametrize("flush_every", range(1, 5))
@pytest.mark.parametrize("epoch_every", [None, 7, 500], ids=["no-epochs", "epoch7", "epoch500"])
def test_small_stores_stay_even_over_a_long_run(cap, flush_every, epoch_every):
    _simulate(2_000, cap, flush_every, epoch_every, check_every=3)


@pytest.mark.parametrize("cap,flush_every,epoch_every", [(1000, 1, 500), (1000, 256, None), (8, 4, None),
                                                         (2, 1, None), (1000, 1, None)])
def test_million_step_runs_do_not_overflow(cap, flush_every, epoch_every):
    steps = 2_000_000 if flush_every >= 256 else 60_000
    run = _simulate(steps, cap, flush_every, epoch_every, check_every=97)
    # small flushes for millions of steps cost a Python call per step: go on from there with
    # single-step flushes at ever farther steps (a store takes gaps between flushes).
    step = steps
    for step in np.unique(np.geomspace(steps, 10**17, 400).astype(np.int64)).tolist():
        run.append(step, np.array([[1, 0]], np.int64), empty_stats(1))
        rel = run.steps - run.origin
        np.testing.assert_array_equal(rel[:, 0] // run.width, (rel[:, 1] - 1) // run.width)
        assert len(run) <= cap
    assert run.width <= 2 * (step + 1) // (cap - cap // 4)


def test_issue_example_forty_thousand_forwards_with_epochs(tmp_path):
    """nn.Linear, flush_every=1, end_epoch every 500: crashed at step 32,003 before the fix."""
    m = nn.Linear(4, 2)
    h = tp.ActivationsHistogram(m, tmp_path / "a.tp", flush_every=1, max_columns=8)
    h.attach()
    x = torch.randn(1, 4)
    with torch.no_grad():
        for i in range(1, 4001):
            m(x)
            if i % 500 == 0:
                h.end_epoch()
    h.close()
    run = tp.open_run(tmp_path / "a.tp")
    cols = run.columns(0)
    spans = cols.ends - cols.starts
    assert int(spans.sum()) == 4000 and cols.starts[0] == 0
    assert spans[0] <= 4000 / 3 + 1  # the first column does not hold most of the run
    assert int(cols.counts.sum() + cols.underflow.sum() + cols.overflow.sum()) == 4000 * 2
    run.close()
