"""Layers are recorded through a wrapped instance ``forward`` (a tap), not a forward hook.

What a tap must keep: the model computes what it computes without twinpeaks; copies and pickles of
an attached model are plain models (not recorded, the copy's own weights used); detaching, in any
order among several recorders and other wrappers, gives every module back the forward it had.
"""

from __future__ import annotations

import copy
import inspect
import io
import pickle

import numpy as np
import pytest
import torch
from torch import nn

import twinpeaks as tp
from twinpeaks.recording.selection import CopySafe, Hooks, Tap


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def _plain(model: nn.Module) -> bool:
    return not any("forward" in m.__dict__ or m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def _untapped(model: nn.Module) -> bool:
    return not any(isinstance(m.__dict__.get("forward"), Tap) or any(
        isinstance(h, CopySafe) for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values()))
        for m in model.modules())


def test_leaves_get_taps_not_forward_hooks(tmp_run):
    model = _model()
    with tp.ActivationsHistogram(model, tmp_run):
        assert all(isinstance(m.__dict__.get("forward"), Tap) for m in model)
        assert not any(m._forward_hooks for m in model)  # torch's fast call path is kept
        assert isinstance(model.__dict__.get("forward"), Tap)  # the step starts in the model's own tap
    assert _plain(model)


def test_the_tap_sees_the_forward_output_and_returns_it_unchanged():
    m = nn.Linear(3, 2)
    seen: list[torch.Tensor] = []
    x = torch.randn(5, 3)
    want = m(x)
    tap = Tap(m, lambda mod, args, out: seen.append(out))
    got = m(x)
    assert got is seen[0] and torch.equal(got, want)
    assert inspect.signature(m.forward) == inspect.signature(type(m).forward.__get__(m))
    tap.remove()
    assert "forward" not in m.__dict__


@pytest.mark.parametrize("steps", [1, 2])  # in the first step, the composite probe's hooks are there too
def test_a_deep_copy_of_an_attached_model_is_a_plain_model_with_its_own_weights(tmp_run, steps):
    model = _model()
    x = torch.randn(6, 4)
    with tp.ActivationsHistogram(model, tmp_run) as hist:
        for _ in range(steps):
            model(x)
        ema = copy.deepcopy(model)  # an EMA / SWA copy made while recording
        with torch.no_grad():
            for p in ema.parameters():
                p.mul_(0.5)
        got = ema(x)
        assert _untapped(ema)
        want = nn.functional.linear(torch.relu(nn.functional.linear(x, ema[0].weight, ema[0].bias)),
                                    ema[2].weight, ema[2].bias)
        assert torch.equal(got, want)  # the copy's weights, not the original's
        hist.end_epoch()
    assert tp.open_run(tmp_run).histogram("0", "train").total == steps * 6 * 8  # the copy's forward is not recorded


def test_torch_save_of_an_attached_model_loads_as_a_plain_model(tmp_run):
    model = _model()
    x = torch.randn(2, 4)
    with tp.ActivationsHistogram(model, tmp_run):
        model(x)  # the probe's hooks are there in the first step
        buf = io.BytesIO()
        torch.save(model, buf)
        blob = pickle.dumps(model)
    buf.seek(0)
    for loaded in (torch.load(buf, weights_only=False), pickle.loads(blob)):
        assert _untapped(loaded)
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("order", ["first-in-first-out", "last-in-first-out"])
def test_two_recorders_and_a_user_wrapper_detach_in_any_order(tmp_path, order):
    model = _model()
    layer = model[0]
    calls: list[str] = []
    inner = layer.forward

    def user_wrapper(*args, **kwargs):  # a wrapper set by someone else, before and after the recorders
        calls.append("user")
        return inner(*args, **kwargs)

    layer.forward = user_wrapper
    a = tp.ActivationsHistogram(model, tmp_path / "a.tp")
    b = tp.ActivationsHistogram(model, tmp_path / "b.tp")
    a.attach()
    b.attach()
    model(torch.randn(2, 4))
    assert calls == ["user"]
    first, second = (a, b) if order == "first-in-first-out" else (b, a)
    first.detach()
    model(torch.randn(2, 4))
    second.detach()
    assert layer.__dict__["forward"] is user_wrapper  # back to what it had
    assert not any("forward" in m.__dict__ for m in model if m is not layer)
    model(torch.randn(2, 4))
    assert calls == ["user"] * 3
    for h in (a, b):
        h.close()
    steps = {name: tp.open_run(tmp_path / name).histogram("0", "train").total // 16 for name in ("a.tp", "b.tp")}
    assert steps == {"a.tp": 2 if order == "last-in-first-out" else 1, "b.tp": 2 if order == "first-in-first-out" else 1}


def test_a_wrapper_set_over_a_tap_keeps_working_after_detach(tmp_run):
    model = _model()
    hist = tp.ActivationsHistogram(model, tmp_run)
    hist.attach()
    tapped = model[0].forward
    model[0].forward = lambda x: tapped(x) * 2  # someone wraps the tap
    hist.detach()
    x = torch.randn(2, 4)
    assert torch.equal(model[0](x), nn.functional.linear(x, model[0].weight, model[0].bias) * 2)
    hist.close()


def test_a_scripted_layer_called_from_python_is_recorded(tmp_run):
    torch.manual_seed(0)
    scripted = torch.jit.script(nn.Linear(4, 8))  # register_forward_hook is not supported on ScriptModules
    model = nn.Sequential(scripted, nn.ReLU())
    x = torch.randn(3, 4)
    with tp.ActivationsHistogram(model, tmp_run, sample=1.0) as hist:
        model(x)
        hist.end_epoch()
    assert "forward" in scripted.__dict__  # its own script method is back
    with torch.no_grad():
        want = scripted(x).numpy().ravel().astype(np.float64)
    h = tp.open_run(tmp_run).histogram("0", "train", epoch=0)
    np.testing.assert_array_equal(h.counts, np.histogram(want, bins=h.edges)[0])


class _Frozen(nn.Linear):
    def __setattr__(self, name, value):
        if name == "forward":
            raise AttributeError("frozen")
        super().__setattr__(name, value)


def test_a_module_that_refuses_an_instance_forward_gets_a_forward_hook():
    layer = _Frozen(4, 8)
    model = nn.Sequential(layer, nn.ReLU())
    hooks = Hooks()
    seen: list[torch.Tensor] = []
    hooks.register(model, lambda *a: None, [layer, model[1]], lambda i: lambda m, a, o: seen.append(o))
    assert layer._forward_hooks and isinstance(model[1].__dict__["forward"], Tap)
    model(torch.randn(3, 4))
    assert [tuple(o.shape) for o in seen] == [(3, 8), (3, 8)]
    hooks.remove()
    model(torch.randn(3, 4))
    assert len(seen) == 2 and _plain(model)


def test_recorded_counts_through_taps_equal_numpy(tmp_run):
    model = _model()
    xs = [torch.randn(16, 4) for _ in range(3)]
    with torch.no_grad():
        outs = np.concatenate([model[0](x).numpy().ravel() for x in xs]).astype(np.float64)
    with tp.ActivationsHistogram(model, tmp_run, sample=1.0) as hist:
        for x in xs:
            model(x)
        hist.end_epoch()
    h = tp.open_run(tmp_run).histogram("0", "train", epoch=0)
    assert h.total == outs.size
    np.testing.assert_array_equal(h.counts, np.histogram(outs, bins=h.edges)[0])


def _replicate(model: nn.Module, scale: float) -> nn.Module:
    """What ``torch.nn.parallel.replicate`` does for one device (it needs CUDA): every module's
    ``_replicate_for_data_parallel``, children wired, parameters set as plain tensors (here scaled)."""
    copies = {id(m): m._replicate_for_data_parallel() for m in model.modules()}
    for m in model.modules():
        r = copies[id(m)]
        for key, child in m._modules.items():
            setattr(r, key, copies[id(child)])
        for key, p in m._parameters.items():
            setattr(r, key, p.detach() * scale)
    return copies[id(model)]


def test_a_data_parallel_replica_computes_with_its_own_parameters_and_is_recorded(tmp_run):
    model = _model()
    x = torch.randn(5, 4)
    with tp.ActivationsHistogram(model, tmp_run, sample=1.0) as hist:
        model(x)
        replica = _replicate(model, 0.5)
        with torch.no_grad():
            got = replica(x)
            h0 = nn.functional.linear(x, model[0].weight * 0.5, model[0].bias * 0.5)
            want = nn.functional.linear(torch.relu(h0), model[2].weight * 0.5, model[2].bias * 0.5)
        assert torch.allclose(got, want)  # the replica's parameters, not the module's
        assert replica[0].__dict__["forward"].module is replica[0]
        hist.end_epoch()
    assert "_replicate_for_data_parallel" not in model[0].__dict__ and _plain(model)
    assert tp.open_run(tmp_run).histogram("0", "train").total == 2 * 5 * 8  # the module's step and the replica's


def test_a_replica_of_a_module_with_another_wrapper_keeps_it(tmp_run):
    model = _model()
    calls: list[int] = []
    inner = model[0].forward
    model[0].forward = lambda *a: calls.append(1) or inner(*a)  # made for the module (as a user's wrapper is)
    with tp.ActivationsHistogram(model, tmp_run):
        replica = model[0]._replicate_for_data_parallel()
        replica(torch.randn(2, 4))
    assert calls == [1]
    assert isinstance(replica.__dict__["forward"], Tap) and replica.__dict__["forward"].prev is not None


def test_attaching_again_puts_the_same_taps_back_unless_the_module_changed(tmp_run):
    """Detach then attach again reuses the taps and hooks (no new objects per attach: they would pile up until a
    full garbage collection, 150 ms on a 500-layer model), records as before, and makes a new tap for a module
    whose forward changed meanwhile (another wrapper, or its class's forward replaced)."""
    model = _model()
    hist = tp.ActivationsHistogram(model, tmp_run).attach()
    x = torch.randn(5, 4)
    model(x)
    first = {name: m.__dict__["forward"] for name, m in model.named_children()}
    hist.detach()
    assert _plain(model)
    hist.attach()
    assert all(m.__dict__["forward"] is first[name] for name, m in model.named_children())
    model(x)
    hist.detach()
    wrapped = model[0].forward
    model[0].forward = lambda t: wrapped(t)  # a user wrapper, set while detached
    hist.attach()
    assert model[0].__dict__["forward"] is not first["0"] and model[2].__dict__["forward"] is first["2"]
    model(x)
    hist.detach()
    del model[0].__dict__["forward"]
    hist.close()
    run = tp.open_run(tmp_run)
    assert run.histogram("0").total == run.histogram("2").total * 8 // 3 == 3 * 5 * 8  # every step of both layers
    assert not any(isinstance(m.__dict__.get("forward"), Tap) for m in model.modules())
