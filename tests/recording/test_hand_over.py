"""A flush's hand-over in one C call (``PhaseBuffers.take_raw_many``) gives what ``take_raw`` gives.

``take_raw`` copies the first ``n`` rows of every buffer of one record and resets them, a few numpy
operations per buffer: thousands per flush for hundreds of layers, inside the training step.
``take_raw_many`` does all of them in one C call into one host block; the rows (and the reset
buffers) must be the same, bit for bit, for every kind of buffer set.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twinpeaks import binning
from twinpeaks.recording.engine import Carved, PhaseBuffers

pytestmark = pytest.mark.skipif(binning._cbin is None, reason="the C kernel is not built")

KINDS = {  # (slots, extra rows, automatic grids)
    "auto": (103, {}, True),
    "fixed": (13, {}, False),
    "last layer, auto": (23, {"classes": 3, "truth": 2}, True),
    "last layer, fixed": (23, {"classes": 4}, False),
}


def _filled(kind: str, rows: int, seed: int) -> PhaseBuffers:
    slots, extra, auto = KINDS[kind]
    pd = PhaseBuffers(rows, slots, torch.device("cpu"), extra, auto)
    g = torch.Generator().manual_seed(seed)
    for buf, _, _ in pd.states.values():
        buf.copy_((torch.randn(buf.shape, generator=g, dtype=torch.float64) * 1e3).to(buf.dtype))
    if pd.extra_grids is not None:
        pd.extra_grids.copy_(torch.randn(pd.extra_grids.shape, generator=g, dtype=torch.float64))
        pd.extra_grids[::3] = float("nan")
    return pd


def _state(pd: PhaseBuffers) -> dict[str, np.ndarray]:
    out = {name: buf.numpy().copy() for name, (buf, _, _) in pd.states.items()}
    if pd.extra_grids is not None:
        out["extra_grids"] = pd.extra_grids.numpy().copy()
    return out


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()  # NaN bits too


@pytest.mark.parametrize("n", [1, 5, 7])
def test_take_raw_many_gives_the_rows_and_the_resets_of_take_raw(n):
    kinds = list(KINDS) * 3  # several of each, in one call
    ref = [_filled(k, 7, seed) for seed, k in enumerate(kinds)]
    got = [_filled(k, 7, seed) for seed, k in enumerate(kinds)]
    want = [pd.take_raw(n) for pd in ref]
    taken = PhaseBuffers.take_raw_many([(pd, n) for pd in got])
    assert all(isinstance(t, Carved) for t in taken)
    for w, t, r, g in zip(want, taken, ref, got):
        rows = t.rows()
        assert rows.keys() == w.keys()
        for name in w:
            assert _same(rows[name], w[name]), name
            assert rows[name].ctypes.data % 64 == 0
        after_ref, after_got = _state(r), _state(g)
        for name in after_ref:  # the buffers are reset the same way (zeros, -inf peaks, NaN grids), the rest kept
            assert _same(after_got[name], after_ref[name]), name


def test_buffers_the_c_hand_over_cannot_view_take_the_numpy_path():
    pd = _filled("auto", 4, 0)
    odd = _filled("fixed", 4, 1)
    odd.states["counts"] = (odd.counts.t().contiguous().t(), *odd.states["counts"][1:])  # not contiguous
    ref = _filled("fixed", 4, 1)
    taken = PhaseBuffers.take_raw_many([(pd, 2), (odd, 2)])
    assert isinstance(taken[0], Carved) and isinstance(taken[1], dict)
    want = ref.take_raw(2)
    assert all(_same(taken[1][k], want[k]) for k in want)


def test_take_rows_refuses_a_bad_table_before_touching_anything():
    src = np.arange(8, dtype=np.float64)
    dst = np.zeros(8, dtype=np.float64)
    table = np.array([[src.ctypes.data, 64, 8, 0, 0], [src.ctypes.data, 63, 8, 0, 0]], dtype=np.int64)
    with pytest.raises(ValueError, match="bad row"):
        binning._cbin.take_rows(table.ctypes.data, 2, dst.ctypes.data)
    assert (src == np.arange(8)).all() and (dst == 0).all()
    binning._cbin.take_rows(table.ctypes.data, 1, dst.ctypes.data)
    assert (dst == np.arange(8)).all() and (src == 0).all()


def test_hand_overs_through_a_block_pool_never_share_a_block_still_read():
    """With a BlockPool, a window still held (the writer has not written it) keeps its block: the next hand-over
    copies into another one, and both give take_raw's rows; once let go, the block is reused."""
    from twinpeaks.recording.engine import BlockPool

    pool = BlockPool()
    ref = [_filled(k, 7, seed) for seed, k in enumerate(KINDS)]
    got = [_filled(k, 7, seed) for seed, k in enumerate(KINDS)]
    first_want = [pd.take_raw(3) for pd in ref]
    first = PhaseBuffers.take_raw_many([(pd, 3) for pd in got], pool)
    for seed, (r, g) in enumerate(zip(ref, got)):  # new values in the rows, the same in both
        for (buf_r, _, _), (buf_g, _, _) in zip(r.states.values(), g.states.values()):
            fresh = torch.randn(buf_r.shape, generator=torch.Generator().manual_seed(seed + 50), dtype=torch.float64)
            buf_r.copy_((fresh * 1e3).to(buf_r.dtype))
            buf_g.copy_((fresh * 1e3).to(buf_g.dtype))
    second_want = [pd.take_raw(3) for pd in ref]
    second = PhaseBuffers.take_raw_many([(pd, 3) for pd in got], pool)
    assert second[0].block.ctypes.data != first[0].block.ctypes.data  # the first block is still held
    for want, taken in ((first_want, first), (second_want, second)):
        for w, t in zip(want, taken):
            rows = t.rows()
            assert all(_same(w[name], rows[name]) for name in w)
    address = first[0].block.ctypes.data
    del first, rows, t
    third = PhaseBuffers.take_raw_many([(pd, 3) for pd in got], pool)
    assert third[0].block.ctypes.data == address  # let go: reused


def _tracked_growth(fn) -> int:
    """How many more objects the garbage collector tracks after ``fn()`` than before (its collections paused)."""
    import gc

    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects())
        keep = fn()
        grown = len(gc.get_objects()) - before
        del keep
    finally:
        gc.enable()
    return grown


@pytest.mark.parametrize("layers", [50, 400])
def test_a_window_handed_over_and_queued_adds_no_tracked_object_per_layer(layers):
    """The hand-over (PhaseBuffers.hand_over) and the run writer's queue of arrays hold no object the garbage
    collector tracks per layer: on a 500-layer model those (thousands a window) made it run often and promote,
    and its full runs paused training ~150 ms. The growth is the same for 50 and 400 layers."""
    from twinpeaks.recording.engine import BlockPool
    from twinpeaks.runfile import RunWriter

    pds = [_filled("auto", 7, seed) for seed in range(layers)]
    pool = BlockPool()
    PhaseBuffers.hand_over([(pds[0], 1)])  # first calls import and cache (not per layer)
    hand_grown = _tracked_growth(lambda: PhaseBuffers.hand_over([(pd, 5) for pd in pds], pool))
    w = RunWriter(None, {"options": {}})
    arr = np.arange(layers * 5 * 103).reshape(layers, 5, 103)

    def queue() -> None:
        for kind in ("col_counts", "col_stats", "col_grid"):
            w.put_lanes(list(range(layers)), "train", kind, -1, 0, arr)
        w.put_lanes(list(range(layers)), "train", "col_steps", -1, 0, arr[0, :, :2], shared=True)

    w.put_lanes([0], "warm", "col_counts", -1, 0, arr[:1])  # first calls import and cache (not per layer)
    w.put_lanes([0], "warm", "col_steps", -1, 0, arr[0, :, :2], shared=True)
    queue_grown = _tracked_growth(queue)
    assert hand_grown < 40 and queue_grown < 40, (hand_grown, queue_grown)
