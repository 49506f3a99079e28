"""TensorBoard and W&B export, read back with the tools' own readers; numpy is the oracle."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

import twinpeaks as tp
from twinpeaks import cli
from twinpeaks.export import WANDB_MAX_BINS, tb_buckets, wandb_bins


@pytest.fixture(scope="module")
def rec(recorded_run, tmp_path_factory):
    # a narrow range so that both out-of-range buckets are used
    return recorded_run(tmp_path_factory.mktemp("exp") / "exp.tp", epochs=2, value_range=(-0.2, 0.2), bins=20)


def np_parts(values, edges):
    v = values.reshape(-1).double().numpy()
    return np.histogram(v, bins=edges)[0], int((v < edges[0]).sum()), int((v > edges[-1]).sum())


def tb_expected(counts, under, over):
    """TensorBoard buckets twinpeaks should write: the bins, with an under/over bucket only when used."""
    return [under] * bool(under) + list(counts) + [over] * bool(over)


def accumulate(logdir):
    from tensorboard.backend.event_processing.event_accumulator import HISTOGRAMS, SCALARS, EventAccumulator

    return EventAccumulator(str(logdir), size_guidance={HISTOGRAMS: 0, SCALARS: 0}).Reload()


def test_tensorboard_histograms_read_back(rec, tmp_path):
    tp.export_tensorboard(rec.path, tmp_path / "tb")
    ea = accumulate(tmp_path / "tb")
    with tp.open_run(rec.path) as run:
        tags = set(ea.Tags()["histograms"])
        assert tags == {f"activations/{layer.name}/{p}" for layer in run.layers for p in ("train", "valid", "test")}
        edges = run.edges("2")
        # train: one histogram per recorded step, at that train step, counts = numpy on the captured outputs
        events = ea.Histograms("activations/2/train")
        assert [e.step for e in events] == run.columns("2", "train").starts.tolist() == list(range(16))
        for ev, values in zip(events, rec.steps("2", "train")):
            counts, under, over = np_parts(values, edges)
            h = ev.histogram_value
            assert list(h.bucket) == tb_expected(counts, under, over)
            assert h.num == values.numel()
            limits = list(h.bucket_limit[bool(under):len(h.bucket_limit) - bool(over)])
            assert limits == pytest.approx(edges[1:].tolist()) and (not under or h.bucket_limit[0] == pytest.approx(edges[0]))
            assert h.min == pytest.approx(values.min().item()) and h.max == pytest.approx(values.max().item())
            assert h.sum == pytest.approx(values.double().sum().item())
        # valid: one per epoch, at the epoch's last train step
        events = ea.Histograms("activations/2/valid")
        assert [e.step for e in events] == [run.epoch_info(e).steps["train"][1] - 1 for e in range(2)] == [7, 15]
        for e, ev in enumerate(events):
            counts, under, over = (sum(x) for x in zip(*(np_parts(v, edges) for v, _ in rec.epoch("2", "valid", e))))
            assert list(ev.histogram_value.bucket) == tb_expected(counts, under, over)
        assert [e.step for e in ea.Histograms("activations/2/test")] == [15]
        means = [s.value for s in ea.Scalars("mean/0/train")]
        np.testing.assert_allclose(means, [v.double().mean().item() for v in rec.steps("0", "train")], rtol=1e-5)


def test_tb_buckets_leave_out_empty_outside_buckets():
    limits, counts = tb_buckets(np.array([3, 4]), np.array([0.0, 0.5, 1.0]), 0, 0, 0.1, 0.9)
    assert (limits, counts) == ([0.5, 1.0], [3.0, 4.0])


@pytest.mark.parametrize("bins", [10, 512, 513, 1000, 4099])
def test_wandb_bins_at_most_512_and_exact(bins):
    rng = np.random.default_rng(bins)
    counts = rng.integers(0, 100, bins)
    edges = np.linspace(-1, 1, bins + 1)
    c, e = wandb_bins(counts, edges, under=5, over=7, vmin=-3.0, vmax=2.0)
    assert len(c) <= WANDB_MAX_BINS and len(e) == len(c) + 1 and np.all(np.diff(e) > 0)
    assert c.sum() == counts.sum() + 12 and (c[0], c[-1], e[0], e[-1]) == (5, 7, -3.0, 2.0)
    # every merged bin is the sum of the original bins between its edges
    inner = c[1:-1]
    starts = np.searchsorted(edges, e[1:-1])
    np.testing.assert_array_equal(inner, np.add.reduceat(counts, starts[:-1]))


def read_wandb_records(path: Path):
    """Records of a .wandb file: W&B's LevelDB-style log (7-byte header, 32 KiB blocks) of protobuf Records."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pos, block, pending = [], 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 2, 3, 4):  # full, first, middle, last
            pending = chunk if kind in (1, 2) else pending + chunk
            if kind in (1, 4):
                rec = wandb_internal_pb2.Record()
                rec.ParseFromString(pending)
                records.append(rec)
        elif kind == 0 and length == 0:
            pos += left - 7  # zero padding to the end of the block
    return records


def test_wandb_offline_histograms(recorded_run, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    import json

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    rec = recorded_run(tmp_path / "wide.tp", epochs=2, bins=1000, test=False)
    out = Path(tp.export_wandb(rec.path, "twinpeaks-test"))
    assert out.is_dir() and out.is_relative_to(tmp_path)
    (wandb_file,) = out.glob("*.wandb")
    history = [r.history for r in read_wandb_records(wandb_file) if r.WhichOneof("record_type") == "history"]
    assert len(history) == 2
    with tp.open_run(rec.path) as run:
        for e, h in enumerate(history):
            edges = run.histogram("2", "valid", e).edges  # each epoch's histogram on its own grid
            items: dict = {}
            for i in h.item:  # nested values come flattened: nested_key = [key, field]
                keys = [i.key] if i.key else list(i.nested_key)
                node = items
                for k in keys[:-1]:
                    node = node.setdefault(k, {})
                node[keys[-1]] = json.loads(i.value_json)
            assert items["epoch"] == e and items["_step"] == e
            assert {k for k in items if k.startswith("activations/")} == {
                f"activations/{n}/{p}" for n in ("0", "1", "2") for p in ("train", "train_last_quarter", "valid")}
            hist = items["activations/2/valid"]
            assert hist["_type"] == "histogram" and len(hist["values"]) <= WANDB_MAX_BINS
            assert len(hist["bins"]) == len(hist["values"]) + 1
            valid = [v for v, _ in rec.epoch("2", "valid", e)]
            all_values = np.concatenate([v.reshape(-1).double().numpy() for v in valid])
            assert sum(hist["values"]) == all_values.size
            # the merged bins hold exactly what numpy counts between their edges (a subset of the run's edges)
            counts, under, over = np.histogram(all_values, bins=edges)[0], (all_values < edges[0]).sum(), (
                all_values > edges[-1]).sum()
            values, bins = np.array(hist["values"]), np.array(hist["bins"])
            if under:
                assert values[0] == under and bins[0] < edges[0]
                values, bins = values[1:], bins[1:]
            if over:
                assert values[-1] == over and bins[-1] > edges[-1]
                values, bins = values[:-1], bins[:-1]
            idx = np.searchsorted(edges, bins - 1e-9)
            np.testing.assert_allclose(edges[idx], bins, rtol=1e-6)
            assert len(values) < len(counts)  # 1000 bins were merged
            np.testing.assert_array_equal(values, np.add.reduceat(counts, idx[:-1]))


def test_cli_export(rec, tmp_path, capsys):
    assert cli.main(["export", str(rec.path), "--tensorboard", str(tmp_path / "tb")]) == 0
    assert "tensorboard --logdir" in capsys.readouterr().out
    assert accumulate(tmp_path / "tb").Tags()["histograms"]
    assert cli.main(["export", str(tmp_path / "missing.tp"), "--tensorboard", str(tmp_path / "tb2")]) == 2
    assert "no run file" in capsys.readouterr().err


def test_wandb_bad_mode_fails_early_naming_it(recorded_run, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    rec = recorded_run(tmp_path / "run.tp", epochs=1, bins=10, test=False)
    with pytest.raises(ValueError, match="mode must be one of offline, online, disabled, shared.*'ofline'"):
        tp.export_wandb(rec.path, "twinpeaks-test", mode="ofline")
    monkeypatch.setenv("WANDB_MODE", "nope")
    with pytest.raises(ValueError, match="WANDB_MODE.*'nope'"):
        tp.export_wandb(rec.path, "twinpeaks-test")


def test_the_c_crc32c_is_tensorboards_and_is_used_while_exporting_only(rec, tmp_path, monkeypatch):
    """TensorBoard's record writer computes CRC32C in pure Python (a 500-layer export: 70 s); the export swaps in
    twinpeaks' C one, which must give its values exactly, and puts the original back."""
    pytest.importorskip("tensorboard")
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference
    from tensorboard.summary.writer import record_writer

    from twinpeaks import binning

    if binning._cbin is None:
        pytest.skip("the C kernel is not built")
    rng = np.random.default_rng(0)
    for n in (0, 1, 3, 7, 8, 9, 15, 16, 17, 255, 1024, 4099):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert binning._cbin.masked_crc32c(data) == reference(data), n
        assert binning._cbin.masked_crc32c(memoryview(data)) == reference(data)
    with pytest.raises(TypeError):
        binning._cbin.masked_crc32c("text")
    original = record_writer.masked_crc32c
    seen = []
    fast = binning._cbin.masked_crc32c
    monkeypatch.setattr(binning._cbin, "masked_crc32c", lambda data: seen.append(len(data)) or fast(data))
    tp.export_tensorboard(rec.path, tmp_path / "tb")
    assert seen and record_writer.masked_crc32c is original
    assert accumulate(tmp_path / "tb").Tags()["histograms"]  # the frames read back (their CRCs checked)
