"""torch.compile: attached before compiling, the recorder records what eager records, without graph breaks."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import twinpeaks as tp


def net() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(inplace=True), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4))


def record(model: nn.Module, compile_backend: str | None, xs: list[torch.Tensor]) -> tp.Run:
    hist = tp.ActivationsHistogram(model, None)
    hist.attach()
    f = torch.compile(model, backend=compile_backend) if compile_backend else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for x in xs[:6]:
        f(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    with torch.no_grad():
        for x in xs[6:]:
            f(x)
    hist.end_epoch()
    return hist.run


@pytest.fixture
def clean_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield torch._dynamo.utils.counters
    torch._dynamo.reset()


@pytest.mark.parametrize("backend", ["aot_eager"])
def test_compiled_model_records_what_eager_records_without_graph_breaks(clean_dynamo, backend):
    model = net()
    twin = copy.deepcopy(model)
    xs = [torch.randn(16, 6) for _ in range(9)]
    compiled = record(model, backend, xs)
    assert sum(clean_dynamo["graph_break"].values()) == 0, dict(clean_dynamo["graph_break"])
    assert clean_dynamo["stats"]["unique_graphs"] <= 2  # train and eval, nothing else
    eager = record(twin, None, xs)
    for layer in eager.layers:
        for phase in ("train", "valid"):
            a = compiled.histogram(layer.name, phase, epoch=0)
            b = eager.histogram(layer.name, phase, epoch=0)
            np.testing.assert_array_equal(a.counts, b.counts)
            np.testing.assert_array_equal(a.edges, b.edges)
            assert (a.underflow, a.overflow, a.total, a.steps) == (b.underflow, b.overflow, b.total, b.steps)
            assert a.mean == pytest.approx(b.mean, rel=1e-5, abs=1e-7)
    assert compiled.n_steps("train") == 6 and compiled.n_steps("valid") == 3


def test_explain_sees_one_graph_with_the_recorder_attached(clean_dynamo):
    model = net()
    hist = tp.ActivationsHistogram(model, None)
    hist.attach()
    explained = torch._dynamo.explain(model)(torch.randn(4, 6))
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    ops = [str(n.target) for g in explained.graphs for n in g.graph.nodes if n.op == "call_function"]
    assert sum("twinpeaks.observe" in o for o in ops) == 5 and sum("twinpeaks.begin_step" in o for o in ops) == 1


def test_attached_after_compiling_still_records_once_recompiled(clean_dynamo):
    model = net()
    f = torch.compile(model, backend="eager")
    f(torch.randn(4, 6))  # compiled before the hooks exist
    hist = tp.ActivationsHistogram(model, None)
    hist.attach()
    with torch.no_grad():
        f(torch.randn(4, 6))
    hist.end_epoch()
    assert hist.run.histogram(-1, "train", epoch=0).total == 4 * 4
