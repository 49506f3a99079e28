"""torch.distributed on CPU (gloo): two real processes train on scikit-learn digits; one run file.

Each test starts this file as a script in two processes (rank 0 and 1) with a
timeout, so a hang fails the test instead of blocking the suite. Every rank keeps
exact copies of its last layer's outputs; numpy on the union is the oracle.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import twinpeaks as tp

STEPS, BATCH, VALID_BATCH = 6, 16, 40  # per rank; the single-process twin sees 2x batches


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.data / 16.0), torch.tensor(d.target)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).double()


def shard(x: torch.Tensor, y: torch.Tensor, rank: int, steps: int, batch: int, offset: int = 0):
    """Rank ``rank``'s batches: global batch i is rank 0's batch i followed by rank 1's."""
    out = []
    for i in range(steps):
        s = offset + (2 * i + rank) * batch
        out.append((x[s:s + batch], y[s:s + batch]))
    return out


class Capture:
    """Exact copies of a module's outputs per (phase, epoch), and their sizes per step."""

    def __init__(self, module: nn.Module):
        self.key = ("train", 0)
        self.values: dict[tuple[str, int], list[np.ndarray]] = {}
        module.register_forward_hook(lambda m, a, out: self.values.setdefault(self.key, []).append(
            out.detach().float().numpy().ravel().copy()))

    def save(self, path: Path) -> None:
        np.savez(path, **{f"{p}_{e}_{i}": v for (p, e), vs in self.values.items() for i, v in enumerate(vs)})


def train(model, ddp, hist, cap, batches, valid, epochs, lr=0.1, die_at=None, skip_end_epoch=False, valid_inner=False):
    """``epochs`` of SGD on ``batches`` through ``ddp``, then ``valid`` through ``ddp`` (or the inner model)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for epoch in range(epochs):
        ddp.train()
        cap.key = ("train", epoch)
        with ddp.join() if isinstance(ddp, DDP) else contextlib.nullcontext():
            for i, (x, y) in enumerate(batches):
                if die_at == (epoch, i):
                    os._exit(3)
                loss = nn.functional.cross_entropy(ddp(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
        ddp.eval()
        cap.key = ("valid", epoch)
        with torch.no_grad():
            for x, _ in valid(epoch) if callable(valid) else valid:
                (model if valid_inner else ddp)(x)
        if not skip_end_epoch:
            hist.end_epoch()


# -- the worker (runs in each spawned process) -----------------------------------------------------
def worker(scenario: str, out: Path) -> None:
    import torch.distributed as dist

    import twinpeaks as tp

    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", timeout=timedelta(seconds=30))
    torch.set_num_threads(1)
    x, y = digits()
    model = make_model()
    ddp = DDP(model)
    cap = Capture(model[2])
    bins_range = (-6.0, 6.0) if scenario == "uneven" else None
    hist = tp.ActivationsHistogram(ddp, out / f"run{rank}.tp", bins=40, range=bins_range, sample=1.0,
                                   flush_every=4, per_class=scenario == "uneven")
    tp.distributed.configure(hist, timeout=3 if scenario == "misuse" else 20)
    hist.add_listener(lambda h: (out / f"listener{rank}.txt").write_text(str(h.epoch)))
    valid = shard(x, y, rank, 2, VALID_BATCH, offset=1200)
    try:
        with hist:
            if scenario == "even":
                train(model, ddp, hist, cap, shard(x, y, rank, STEPS, BATCH), valid, epochs=2)
            elif scenario == "uneven":  # rank 1: fewer train batches (DDP join), no valid batch in epoch 0
                steps = STEPS if rank == 0 else STEPS - 2  # uneven eval goes through the inner model (DDP's
                train(model, ddp, hist, cap, shard(x, y, rank, steps, BATCH),  # forward syncs under join)
                      lambda e: valid[:2] if rank == 0 else valid[:e], epochs=2, valid_inner=True)
                if rank == 0:  # a final test pass on rank 0 only, no end_epoch(): close() must still gather it
                    cap.key = ("test", 1)
                    with hist.phase("test"), torch.no_grad():
                        model(x[1500:1520])
            elif scenario == "dies":
                train(model, ddp, hist, cap, shard(x, y, rank, STEPS, BATCH), valid, epochs=2,
                      die_at=(1, 3) if rank == 1 else None)
            elif scenario == "misuse":  # rank 1 forgets end_epoch(): rank 0 must not wait forever
                train(model, ddp, hist, cap, shard(x, y, rank, STEPS, BATCH), valid, epochs=2,
                      skip_end_epoch=rank == 1)
            if rank == 1:
                run = hist.run  # rank 1's in-memory copy of the summed run
                np.save(out / "rank1_counts.npy", run.histogram(-1, "train", epoch=-1).counts)
                np.save(out / "rank1_valid0.npy", run.histogram(-1, "valid", epoch=0).counts)
    except Exception as exc:
        (out / f"error{rank}.txt").write_text(f"{type(exc).__name__}: {exc}")
        cap.save(out / f"cap{rank}.npz")
        sys.exit(1)
    cap.save(out / f"cap{rank}.npz")
    if scenario == "even":
        sync = hist._sync  # closed: its private control group destroyed, and no reference to it kept
        assert sync is not None and sync.ctrl is None and sync.data is dist.group.WORLD, vars(sync)
        assert sync not in tp.distributed._OWN_GROUPS  # nothing left for the exit handler
        fsdp_epoch(x, y, rank, out)
        fsdp1_epoch(x, y, rank, out)
    dist.destroy_process_group()


def fsdp_epoch(x, y, rank, out):
    """One epoch of the same training with FSDP2 ``fully_shard`` (CPU, gloo)."""
    from torch.distributed.fsdp import fully_shard

    import twinpeaks as tp

    model = make_model()
    for layer in (model[0], model[2]):
        fully_shard(layer)
    fully_shard(model)
    hist = tp.ActivationsHistogram(model, out / f"fsdp{rank}.tp", bins=40, sample=1.0)
    tp.distributed.configure(hist, group=torch.distributed.new_group(backend="gloo"), timeout=20)  # a user's group
    with hist:
        train(model, model, hist, Capture(model[2]), shard(x, y, rank, STEPS, BATCH), [], epochs=1)


def fsdp1_epoch(x, y, rank, out):
    """One epoch of the same training with FSDP1 ``FullyShardedDataParallel`` (CPU, gloo), each Linear a unit."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    import twinpeaks as tp

    fsdp = FSDP(make_model(), device_id=torch.device("cpu"), auto_wrap_policy=ModuleWrapPolicy({nn.Linear}))
    hist = tp.ActivationsHistogram(fsdp, out / f"fsdp1_{rank}.tp", bins=40, sample=1.0)
    with hist:
        train(fsdp, fsdp, hist, Capture(fsdp.module[2]), shard(x, y, rank, STEPS, BATCH), [], epochs=1)


# -- the tests (parent process) ------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(scenario: str, out: Path, timeout: float = 90) -> list[int]:
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, __file__, scenario, str(out)], env={**env, "RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    deadline = time.monotonic() + timeout
    codes, logs = [], []
    for p in procs:
        try:
            stdout, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"{scenario}: the ranks hung for more than {timeout} s")
        codes.append(p.returncode)
        logs.append(stdout)
    out.joinpath("logs.txt").write_text("\n----\n".join(logs))
    return codes


def captured(out: Path) -> dict[int, dict[tuple[str, int, int], np.ndarray]]:
    caps = {}
    for r in range(2):
        if not (out / f"cap{r}.npz").exists():
            continue
        with np.load(out / f"cap{r}.npz") as f:
            caps[r] = {(k.split("_")[0], int(k.split("_")[1]), int(k.split("_")[2])): f[k] for k in f.files}
    return caps


def oracle(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    counts, _ = np.histogram(values, bins=edges)
    return counts


def union(caps, phase: str, epoch: int) -> np.ndarray:
    return np.concatenate([v for r in caps for (p, e, _), v in sorted(caps[r].items()) if (p, e) == (phase, epoch)])


def single_process_twin(path: Path):
    """The same training in one process: each step sees both ranks' batches concatenated."""
    import twinpeaks as tp

    x, y = digits()
    model = make_model()
    both = [(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]]))
            for a, b in zip(shard(x, y, 0, STEPS, BATCH), shard(x, y, 1, STEPS, BATCH))]
    valid = [(torch.cat([a[0], b[0]]), None) for a, b in zip(shard(x, y, 0, 2, VALID_BATCH, 1200),
                                                            shard(x, y, 1, 2, VALID_BATCH, 1200))]
    hist = tp.ActivationsHistogram(model, path, bins=40, sample=1.0, flush_every=4)
    with hist:
        train(model, model, hist, Capture(model[2]), both, valid, epochs=2)
    return tp.open_run(path)


@pytest.fixture(scope="module")
def even(tmp_path_factory):
    out = tmp_path_factory.mktemp("even")
    codes = spawn("even", out)
    assert codes == [0, 0], out.joinpath("logs.txt").read_text()[-3000:]
    return out


def test_ddp_run_file_sums_both_ranks_exactly(even):
    import twinpeaks as tp

    assert not (even / "run1.tp").exists() and not (even / "fsdp1.tp").exists()  # rank 1 keeps nothing on disk
    run = tp.open_run(even / "run0.tp")
    assert [layer.name for layer in run.layers] == ["0", "1", "2"]  # no "module." prefix
    assert run.meta["distributed"]["world_size"] == 2
    caps = captured(even)
    for phase, steps in (("train", STEPS), ("valid", 2)):
        for epoch in range(2):
            h = run.histogram(-1, phase, epoch=epoch)
            values = union(caps, phase, epoch)
            np.testing.assert_array_equal(h.counts, oracle(values, h.edges))
            assert h.total == values.size and h.steps == steps
            assert h.min == values.min() and h.max == values.max()
            np.testing.assert_allclose(h.mean, values.astype(np.float64).mean(), rtol=1e-6)  # sums run in float32 per batch
    # per-step columns: step i holds rank 0's batch i plus rank 1's batch i
    cols = run.columns(-1, "train")
    per_step = [caps[0]["train", e, i].size + caps[1]["train", e, i].size for e in range(2) for i in range(STEPS)]
    np.testing.assert_array_equal(cols.counts.sum(1) + cols.underflow + cols.overflow + cols.nonfinite, per_step)
    np.testing.assert_array_equal(np.load(even / "rank1_counts.npy"), run.histogram(-1, "train", epoch=-1).counts)
    # live charts and diagnoses: rank 0 only
    assert (even / "listener0.txt").exists() and not (even / "listener1.txt").exists()


def test_ddp_equals_single_process_run_over_the_same_data(even, tmp_path):
    import twinpeaks as tp

    ddp_run, twin = tp.open_run(even / "run0.tp"), single_process_twin(tmp_path / "twin.tp")
    for layer in range(3):
        np.testing.assert_array_equal(ddp_run.edges(layer), twin.edges(layer))  # auto range agreed across ranks
        for phase in ("train", "valid"):
            for epoch in range(2):
                a = ddp_run.histogram(layer, phase, epoch=epoch)
                b = twin.histogram(layer, phase, epoch=epoch)
                np.testing.assert_array_equal(a.counts, b.counts)
                assert (a.underflow, a.overflow, a.steps) == (b.underflow, b.overflow, b.steps)
                np.testing.assert_allclose([a.mean, a.std, a.min, a.max], [b.mean, b.std, b.min, b.max], rtol=1e-6)  # sums run in float32 per batch


def test_fsdp2_fully_shard_run_equals_ddp_run(even):
    import twinpeaks as tp

    fsdp, ddp_run = tp.open_run(even / "fsdp0.tp"), tp.open_run(even / "run0.tp")
    assert [layer.name for layer in fsdp.layers] == ["0", "1", "2"] and fsdp.epochs == 1
    for layer in range(3):
        np.testing.assert_array_equal(fsdp.histogram(layer, "train", epoch=0).counts,
                                      ddp_run.histogram(layer, "train", epoch=0).counts)


def test_fsdp1_units_are_unwrapped_and_equal_the_ddp_run(even):
    """FSDP1: the root and every unit are unwrapped: layers keep the user's names, histograms equal DDP's."""
    import twinpeaks as tp

    fsdp, ddp_run = tp.open_run(even / "fsdp1_0.tp"), tp.open_run(even / "run0.tp")
    assert [layer.name for layer in fsdp.layers] == ["0", "1", "2"] and fsdp.epochs == 1
    assert [layer.type for layer in fsdp.layers] == ["Linear", "ReLU", "Linear"]
    for layer in range(3):
        np.testing.assert_array_equal(fsdp.histogram(layer, "train", epoch=0).counts,
                                      ddp_run.histogram(layer, "train", epoch=0).counts)


def test_uneven_shards_give_exact_totals_and_aligned_steps(tmp_path):
    import twinpeaks as tp

    assert spawn("uneven", tmp_path) == [0, 0], (tmp_path / "logs.txt").read_text()[-3000:]
    run, caps = tp.open_run(tmp_path / "run0.tp"), captured(tmp_path)
    for phase in ("train", "valid"):
        for epoch in range(2):
            h = run.histogram(-1, phase, epoch=epoch)
            values = union(caps, phase, epoch)
            np.testing.assert_array_equal(h.counts, oracle(values, h.edges))
            assert h.total == values.size
            assert h.steps == (STEPS if phase == "train" else 2)  # the longest rank's steps
    per_class = run.histogram(-1, "train", epoch=1, column=3)
    assert per_class.total == union(caps, "train", 1).size // 10
    cols = run.columns(-1, "train")
    sizes = [sum(caps[r].get(("train", e, i), np.empty(0)).size for r in range(2))
             for e in range(2) for i in range(STEPS)]
    np.testing.assert_array_equal(cols.counts.sum(1) + cols.underflow + cols.overflow, sizes)
    assert tuple(run.epoch_info(1).steps["train"][:2]) == (STEPS, 2 * STEPS)
    test = run.histogram(-1, "test", epoch=1)  # joined the last epoch at close(), from rank 0 only
    np.testing.assert_array_equal(test.counts, oracle(union(caps, "test", 1), test.edges))
    assert run.epochs == 2 and test.total == 200
    # rank 1 ran no valid batch in epoch 0, yet holds the same summed run in memory
    np.testing.assert_array_equal(np.load(tmp_path / "rank1_valid0.npy"), run.histogram(-1, "valid", epoch=0).counts)


def test_rank_dying_mid_training_leaves_a_good_file_and_no_hang(tmp_path):
    import twinpeaks as tp

    codes = spawn("dies", tmp_path, timeout=90)
    assert codes == [1, 3], (tmp_path / "logs.txt").read_text()[-3000:]
    assert (tmp_path / "error0.txt").exists()
    run, caps = tp.open_run(tmp_path / "run0.tp"), captured(tmp_path)  # rank 1 saved nothing: use rank 0's
    assert run.epochs == 1  # epoch 0 committed, epoch 1 lost with rank 1
    h = run.histogram(-1, "train", epoch=0)
    assert h.total == 2 * sum(v.size for (p, e, _), v in caps[0].items() if (p, e) == ("train", 0))


def test_rank_skipping_end_epoch_raises_instead_of_hanging(tmp_path):
    import twinpeaks as tp

    t0 = time.monotonic()
    codes = spawn("misuse", tmp_path, timeout=90)
    assert codes[0] == 1, (tmp_path / "logs.txt").read_text()[-3000:]
    message = (tmp_path / "error0.txt").read_text()
    assert "TwinpeaksError" in message and "end_epoch() of epoch 0" in message and "rank" in message
    assert time.monotonic() - t0 < 80
    assert tp.open_run(tmp_path / "run0.tp").epochs == 0


def test_configure_checks_its_arguments(tmp_path):
    import twinpeaks as tp

    hist = tp.ActivationsHistogram(make_model(), tmp_path / "run.tp")
    with pytest.raises(ValueError, match="timeout must be"):
        tp.distributed.configure(hist, timeout=-1)
    tp.distributed.configure(hist, timeout=5)
    with hist:  # torch.distributed not initialised: a plain single-process recorder
        assert hist._sync is None and tp.distributed.is_rank_zero()
        with pytest.raises(RuntimeError, match="before `with hist:`"):
            tp.distributed.configure(hist, timeout=5)


if __name__ == "__main__":
    worker(sys.argv[1], Path(sys.argv[2]))


def test_lightning_strategy_ddp_on_two_cpu_processes(tmp_path):
    """Lightning's own ddp launcher (2 CPU processes): one run file, both ranks' batches summed."""
    pytest.importorskip("lightning")
    path = tmp_path / "ddp.tp"
    script = Path(__file__).parents[1] / "frameworks" / "lightning_ddp_script.py"
    root = str(Path(__file__).parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    # The callback only flushes (a later trainer.test() may record on): the recorder's private gloo group is
    # destroyed at exit (distributed._release_at_exit). Left to the interpreter's teardown, it aborted 3 runs in
    # 20 ("terminate called without an active exception"); 0 in 28 since.
    proc = subprocess.run([sys.executable, str(script), str(path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tp.open_run(path)
    assert run.epochs == 2 and run.phases == ["train", "valid"]
    for e in range(2):
        steps = run.epoch_info(e).steps
        # 128 train samples -> 64 per rank -> 4 steps of 16; each step sums both ranks' batches
        assert steps["train"][1] - steps["train"][0] == 4
        assert run.histogram(-1, "train", epoch=e).total == 128 * 3
        # 50 valid samples, split 25/25 by Lightning's sampler (no padding): each counted once
        assert run.histogram(-1, "valid", epoch=e).total == 50 * 3
