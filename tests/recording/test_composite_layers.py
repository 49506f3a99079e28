"""Layers whose children never run through their own forward (attention) are recorded by default.

``nn.MultiheadAttention`` uses its ``out_proj`` weights functionally: hooks on leaves missed the attention
output of every transformer layer and listed ``out_proj`` as never called. The rule under test is general:
a module that ran while none of its descendants did is one layer; "never called" lists only modules that
truly never ran. numpy is the oracle of every histogram checked here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import twinpeaks as tp
from twinpeaks.recording.selection import Tap

RANGE = (-4.0, 4.0)
OPTS = {"range": RANGE, "bins": 32, "sample": 1.0}


def edges(bins: int = 32) -> np.ndarray:
    return np.linspace(*RANGE, bins + 1)


def capture_first(module: nn.Module, store: list) -> None:
    """The oracle's own hook: the first tensor of each output of ``module``."""
    module.register_forward_hook(lambda m, a, out: store.append((out[0] if isinstance(out, tuple) else out)
                                                                .detach().clone()))


@pytest.fixture
def assert_counts(assert_hist_equals):
    """``assert_counts(run, layer, values)``: the layer's train histogram equals numpy's of ``values``."""

    def check(run: tp.Run, name: str, values: list[torch.Tensor], phase: str = "train") -> None:
        h = run.histogram(name, phase, epoch=0)
        np.testing.assert_array_equal(h.edges, edges())
        assert_hist_equals(h, torch.cat([v.flatten() for v in values]))

    return check


def true_never_ran(model: nn.Module, run_model) -> set[str]:
    """Oracle: names of the modules whose forward never ran (pre-hooks on every module, our own)."""
    ran: set[int] = set()
    handles = [m.register_forward_pre_hook(lambda m, a: ran.add(id(m))) for m in model.modules()]
    run_model()
    for h in handles:
        h.remove()
    return {name for name, m in model.named_modules() if id(m) not in ran}


def record(model: nn.Module, path, batches, **options) -> tp.Run:
    hist = tp.ActivationsHistogram(model, path, **{**OPTS, **options})
    with hist:
        model.train()
        for args in batches:
            model(*args)
        hist.end_epoch()
    return tp.open_run(path)


class EncoderClassifier(nn.Module):
    def __init__(self, d: int = 16, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(8, d)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, 2, 32, dropout=0.0, batch_first=True),
                                             layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(1))


def test_encoder_attention_is_recorded_and_out_proj_is_not_listed(tmp_run, assert_counts):
    model = EncoderClassifier()
    seen: dict[str, list] = {f"encoder.layers.{i}.self_attn": [] for i in range(2)}
    for name, store in seen.items():
        capture_first(model.get_submodule(name), store)
    xs = [(torch.randn(4, 5, 8),) for _ in range(3)]
    run = record(model, tmp_run, xs)
    names = [layer.name for layer in run.layers]
    for name in seen:
        assert name in names
        layer = run.layer(name)
        assert layer.called and layer.out_shape == (4, 5, 16) and layer.type == "MultiheadAttention"
        assert_counts(run, name, seen[name])  # every step, the first one (the probe's) included
        assert run.histogram(name, "train", epoch=0).steps == 3
    assert not any("out_proj" in n for n in names)
    assert [layer.name for layer in run.layers if not layer.called] == []
    # attention sits where the model runs it: after its layer's inputs, before linear1
    assert names.index("encoder.layers.0.self_attn") < names.index("encoder.layers.0.linear1")
    assert run.layers[-1].name == "head"


def test_decoder_self_and_cross_attention_are_recorded(tmp_run, assert_counts):
    model = nn.TransformerDecoder(nn.TransformerDecoderLayer(16, 2, 32, dropout=0.0, batch_first=True), 2)
    expected = [f"layers.{i}.{a}" for i in range(2) for a in ("self_attn", "multihead_attn")]
    seen: dict[str, list] = {name: [] for name in expected}
    for name, store in seen.items():
        capture_first(model.get_submodule(name), store)
    batches = [(torch.randn(3, 4, 16), torch.randn(3, 6, 16)) for _ in range(2)]
    run = record(model, tmp_run, batches)
    names = [layer.name for layer in run.layers]
    assert [n for n in names if n.endswith("attn")] == expected
    for name in expected:
        assert_counts(run, name, seen[name])
    assert [layer.name for layer in run.layers if not layer.called] == []


def test_never_called_lists_only_modules_that_never_ran(tmp_run):
    """A truly unused module stays listed; a composite's children do not; the oracle is our own probe."""

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.unused = nn.Linear(8, 8)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.attn(x, x, x)[0].mean(1))

    model = Model()
    x = torch.randn(2, 3, 8)
    never = true_never_ran(model, lambda: model(x))
    assert never == {"attn.out_proj", "unused"}  # the case: out_proj never runs as a module
    run = record(model, tmp_run, [(x,)])
    assert [layer.name for layer in run.layers] == ["attn", "attn.1", "unused", "head"]  # need_weights: weights too
    assert [layer.name for layer in run.layers if not layer.called] == ["unused"]
    assert run.layer("attn.1").out_shape == (2, 3, 3)  # the head-averaged attention weights


def test_functional_use_of_child_weights_is_general_not_attention_only(tmp_run, assert_counts):
    class TiedLinear(nn.Module):  # uses its child's weights through F.linear: the child never runs
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(6, 6)

        def forward(self, x):
            return F.linear(x, self.inner.weight * 2, self.inner.bias)

    model = nn.Sequential(nn.Linear(6, 6), TiedLinear(), nn.ReLU())
    seen: list = []
    capture_first(model[1], seen)
    run = record(model, tmp_run, [(torch.randn(5, 6),) for _ in range(2)])
    assert [layer.name for layer in run.layers] == ["0", "1", "2"]
    assert run.layer("1").type == "TiedLinear" and run.layer("1").called
    assert_counts(run, "1", seen)


def test_selected_attention_records_under_its_own_name(tmp_run, assert_counts):
    model = EncoderClassifier()
    seen: list = []
    capture_first(model.encoder.layers[0].self_attn, seen)
    run = record(model, tmp_run, [(torch.randn(4, 5, 8),) for _ in range(2)],
                 modules=["encoder.layers.0.self_attn"])
    assert [(layer.name, layer.called) for layer in run.layers] == [("encoder.layers.0.self_attn", True)]
    assert_counts(run, "encoder.layers.0.self_attn", seen)


def test_lstm_output_is_the_layer_and_its_state_are_sub_records(tmp_run, assert_counts):
    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(5, 7, batch_first=True)
            self.head = nn.Linear(7, 2)

        def forward(self, x):
            out, _ = self.lstm(x)
            return self.head(out[:, -1])

    model = Tagger()
    outs: list = []
    states: list = []

    def keep(m, a, o) -> None:  # returns None: a hook's return value would replace the output
        outs.append(o[0].detach().clone())
        states.append(o[1][1].detach().clone())

    model.lstm.register_forward_hook(keep)
    run = record(model, tmp_run, [(torch.randn(2, 3, 5),) for _ in range(2)])
    assert [layer.name for layer in run.layers] == ["lstm", "lstm.1.0", "lstm.1.1", "head"]
    assert run.layer("lstm").out_shape == (2, 3, 7) and run.layer("lstm.1.1").out_shape == (1, 2, 7)
    assert all(layer.called for layer in run.layers)
    assert_counts(run, "lstm", outs)
    assert_counts(run, "lstm.1.1", states)


def test_bert_from_config_lists_no_module_that_ran_as_never_called(tmp_run):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=3)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg)
    ids = torch.randint(0, 40, (2, 9))
    never = true_never_ran(model, lambda: model(input_ids=ids))
    hist = tp.ActivationsHistogram(model, tmp_run, output=lambda out: out.logits, **OPTS)
    with hist:
        model.train()
        for _ in range(2):
            model(input_ids=ids)
        hist.end_epoch()
    run = tp.open_run(tmp_run)
    listed_never = {layer.name for layer in run.layers if not layer.called}
    ran_leaves = {name for name, m in model.named_modules()
                  if not any(True for _ in m.children()) and name not in never}
    assert listed_never <= never  # nothing that ran is listed as never called
    assert ran_leaves <= {layer.name for layer in run.layers if layer.called}
    for i in range(2):  # the attention output's projection is a leaf that runs: recorded
        assert run.layer(f"bert.encoder.layer.{i}.attention.output.dense").called
    assert run.layers[-1].name == "output"


def test_the_probe_leaves_no_hook_behind_after_the_first_step(tmp_run):
    model = EncoderClassifier()
    hist = tp.ActivationsHistogram(model, tmp_run, **OPTS)
    with hist:
        model(torch.randn(2, 5, 8))
        model(torch.randn(2, 5, 8))  # the second step settles the first
        pre = {name for name, m in model.named_modules() if m._forward_pre_hooks}
        post = {name for name, m in model.named_modules() if name and (m._forward_hooks or isinstance(m.forward, Tap))}
        hist.end_epoch()
    assert not pre  # the probe's pre-hooks are gone (the step starts in the model's own tap)
    run = tp.open_run(tmp_run)
    names = {layer.name for layer in run.layers}
    assert names <= post  # every layer keeps its ordinary hook ...
    assert {n.rsplit(".", 1)[-1] for n in post - names} == {"out_proj"}  # ... and the probe's post-hooks are gone
    assert not any(m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__
                   for m in model.modules())  # detached: all gone


def test_compiled_transformer_keeps_one_graph_and_its_leaves(tmp_path):
    """Attached, then compiled: the probe's hooks do nothing while traced (no graph break, no recompile)."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    try:
        model = EncoderClassifier()
        model.train()
        hist = tp.ActivationsHistogram(model, None, **OPTS)
        hist.attach()
        f = torch.compile(model, backend="eager")
        for _ in range(3):
            f(torch.randn(4, 5, 8)).sum().backward()
        hist.end_epoch()
        counters = torch._dynamo.utils.counters
        assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
        assert counters["stats"]["unique_graphs"] <= 2  # as with modules=["head"] (no probe): measured 2 too
        run = hist.run
        leaves = [n for n, m in model.named_modules() if not any(True for _ in m.children()) and n]
        called = {layer.name for layer in run.layers if layer.called}
        assert set(leaves) - called == {f"encoder.layers.{i}.self_attn.out_proj" for i in range(2)}
        assert run.n_steps("train") == 3
        hist.close()
    finally:
        torch._dynamo.reset()


def test_a_found_layer_that_cannot_be_binned_warns_once_at_the_users_line(tmp_run):
    import warnings
    from pathlib import Path

    class Complexify(nn.Module):  # its child never runs: the probe makes it a layer, whose output is complex
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(3, 3)

        def forward(self, x):
            return torch.complex(F.linear(x, self.inner.weight), x)

    model = nn.Sequential(nn.Linear(3, 3), Complexify())
    with warnings.catch_warnings(record=True) as caught, tp.ActivationsHistogram(model, tmp_run) as hist:
        warnings.simplefilter("always")
        for _ in range(3):
            model(torch.randn(2, 3))  # the line the warning names
        hist.end_epoch()
    ours = [w for w in caught if issubclass(w.category, tp.TwinpeaksWarning)]
    assert len(ours) == 1 and "complex" in str(ours[0].message) and "'1'" in str(ours[0].message)
    assert Path(ours[0].filename).resolve() == Path(__file__).resolve()
    assert "model(torch.randn(2, 3))" in Path(__file__).read_text().splitlines()[ours[0].lineno - 1]
