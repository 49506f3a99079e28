"""The HTML report: numbers against numpy, offline in headless chromium, findings linked to charts."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import sys
import types

import numpy as np
import pytest
import torch

import twinpeaks as tp
from twinpeaks import cli
from twinpeaks.web.payload import LEVELS, report_payload, run_payload


@pytest.fixture(scope="module")
def rec(recorded_run, tmp_path_factory):
    return recorded_run(tmp_path_factory.mktemp("rep") / "small.tp")


@pytest.fixture(scope="module")
def rec_b(recorded_run, tmp_path_factory):
    return recorded_run(tmp_path_factory.mktemp("rep") / "other.tp", epochs=2, value_range=(-0.5, 0.5), test=False)


def np_counts(values, edges):
    v = values.reshape(-1).double().numpy()
    return np.histogram(v, bins=edges)[0]


def decoded(m):
    levels = np.frombuffer(base64.b64decode(m["levels"]), "<u2").reshape(m["rows"], m["cols"])
    return np.expm1(levels / LEVELS * m["scale"])


def embedded(html: str, tag_id: str) -> str:
    b64 = re.search(rf'<script type="application/octet-stream" id="{tag_id}">([^<]*)</script>', html).group(1)
    return gzip.decompress(base64.b64decode(b64)).decode()


@pytest.mark.parametrize("layer", ["0", "2"])
@pytest.mark.parametrize("max_columns,max_bins", [(5, 10), (240, 100)], ids=["merged", "full"])
def test_heatmap_is_numpy_counts_per_step(rec, layer, max_columns, max_bins):
    """Display cells = numpy histogram of the captured outputs over the column's steps, with the shown edges."""
    with tp.open_run(rec.path) as run:
        idx = run.layer(layer).index
        m = run_payload(run, max_columns=max_columns, max_bins=max_bins)["heatmaps"][str(idx)]["train"]
    steps = rec.steps(layer, "train")
    # automatic ranges: the rows span only the bins the layer used (test_automatic_range_axes_...)
    assert m["cols"] == min(len(steps), max_columns) and 0 < m["rows"] <= min(40, max_bins)
    edges = np.array(m["edges"])
    want = np.stack([
        sum(np_counts(steps[s], edges) for s in range(a, b)) / (b - a) for a, b in zip(m["starts"], m["ends"])
    ]).T
    assert m["starts"][0] == 0 and m["ends"][-1] == len(steps) and m["starts"][1:] == m["ends"][:-1]
    np.testing.assert_allclose(decoded(m), want, rtol=2e-4, atol=1e-9)
    means = [torch.cat([steps[s].reshape(-1) for s in range(a, b)]).double().mean().item()
             for a, b in zip(m["starts"], m["ends"])]
    np.testing.assert_allclose(m["mean"], means, rtol=1e-4)


def test_twin_peaks_per_class_and_truth_are_numpy(rec):
    with tp.open_run(rec.path) as run:
        p = run_payload(run)
    tpk = p["twinpeaks"]
    edges = np.array(tpk["edges"])  # the shown edges (a fixed range's, or the used part of an automatic grid)
    assert tpk["name"] == "2" and len(tpk["epochs"]) == 3
    for e, entry in enumerate(tpk["epochs"]):
        train = [v for v, _ in rec.epoch("2", "train", e)]
        last_q = train[-2:]  # last quarter of 8 steps
        assert entry["phases"]["train"]["counts"] == sum(np_counts(v, edges) for v in last_q).tolist()
        valid = rec.epoch("2", "valid", e)
        assert entry["phases"]["valid"]["counts"] == sum(np_counts(v, edges) for v, _ in valid).tolist()
        assert entry["phases"]["valid"]["total"] == sum(v.numel() for v, _ in valid)
        for k in range(3):
            assert entry["classes"][k]["valid"]["counts"] == sum(np_counts(v[:, k], edges) for v, _ in valid).tolist()
        yes = sum(np_counts(v[torch.arange(len(y)), y], edges) for v, y in valid)
        assert entry["truth"]["yes"]["valid"]["counts"] == yes.tolist()
    assert "test" in tpk["epochs"][-1]["phases"] and "test" not in tpk["epochs"][0]["phases"]


def test_display_downsampling_never_touches_the_run(tmp_path):
    """A run longer than the display width: the page merges columns, the file and its data stay as recorded."""
    path = tmp_path / "long.tp"
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Tanh())
    with tp.ActivationsHistogram(model, path) as hist, torch.no_grad():
        for _ in range(600):
            model(torch.randn(1, 2))
        hist.end_epoch()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    out = tp.report(path, tmp_path / "long.html", max_columns=50)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    payload = json.loads(embedded(out.read_text(), "tp-payload"))
    m = payload["runs"][0]["heatmaps"]["0"]["train"]
    assert m["cols"] == 50 and m["stored_columns"] == 600
    with tp.open_run(path) as run:
        assert len(run.columns(0, "train")) == 600
        # automatic width: 2 layers x 1 phase x 100 bins in a budget of 20,000 cells -> 100 columns
        assert run_payload(run, max_cells=20_000)["heatmaps"]["1"]["train"]["cols"] == 100
        assert run_payload(run, max_cells=10**9)["display_columns"] == 240
        assert decoded(m).sum(axis=0) @ (np.array(m["ends"]) - m["starts"]) == pytest.approx(
            run.histogram(0).counts.sum(), rel=1e-4)


def test_tp_report_stays_the_function(rec, tmp_path):
    import twinpeaks.web.build  # noqa: F401 - importing the package must not shadow tp.report

    assert callable(tp.report) and tp.report.__name__ == "report"
    assert tp.report([rec.path], tmp_path / "r.html").stat().st_size > 100_000


def test_report_json_has_no_nan_and_names_are_text(tmp_path):
    """Layer names and class names reach the page as JSON text, never as markup."""
    model = torch.nn.Sequential()
    model.add_module("<img src=x onerror=alert(1)>", torch.nn.Linear(2, 2))
    path = tmp_path / "odd.tp"
    with tp.ActivationsHistogram(model, path, classes=["</script><b>x"]) as hist:
        model(torch.tensor([[float("nan"), 1.0]]))
        hist.end_epoch()
    html = tp.report(path, tmp_path / "odd.html").read_text()
    assert "<img src=x" not in html and "</script><b>" not in html
    payload = json.loads(embedded(html, "tp-payload"))  # strict JSON: NaN would not parse in a browser
    assert payload["runs"][0]["layers"][0]["name"] == "<img src=x onerror=alert(1)>"
    json.dumps(payload, allow_nan=False)


def test_cli_report(rec, rec_b, tmp_path, capsys):
    out = tmp_path / "cmp.html"
    assert cli.main(["report", str(rec.path), str(rec_b.path), "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    payload = json.loads(embedded(out.read_text(), "tp-payload"))
    assert [r["name"] for r in payload["runs"]] == ["small.tp", "other.tp"]
    assert cli.main(["report", str(tmp_path / "missing.tp"), "-o", str(out)]) == 2
    assert "no run file" in capsys.readouterr().err


def test_report_opens_offline_in_chromium(new_page, browser, rec, rec_b, tmp_path):  # noqa: F811
    out = tp.report([rec.path, rec_b.path], tmp_path / "report.html")
    page = new_page(browser, offline=True)
    try:
        pg = page.page
        pg.goto(out.as_uri())
        pg.wait_for_selector("body[data-ready='1']", timeout=30_000)
        # twin peaks side by side, per-class and by-truth views, every layer listed in the picker
        assert pg.locator("#tp-twinpeaks .tp-peaks.js-plotly-plot").count() == 2
        assert pg.locator("#r0-classes.js-plotly-plot").count() == 1 and pg.locator("#r0-truth.js-plotly-plot").count() == 1
        assert pg.locator("#r0-layer-picker option").count() == 1 + 3
        assert "epoch 2" in pg.text_content("#r0-peaks .gtitle")
        # the epoch slider redraws the twin peaks
        pg.locator("#tp-epoch").fill("0")
        assert "epoch 0" in pg.text_content("#r0-peaks .gtitle")
        assert "epoch 0" in pg.text_content("#r1-peaks .gtitle")
        # every layer's colorful dimension, drawn when scrolled to
        pg.locator("#r0-layer-2").scroll_into_view_if_needed()
        pg.wait_for_selector("#r0-heatmap-2.js-plotly-plot", timeout=10_000)
        pg.evaluate("window.twinpeaks.state.renderAll()")
        assert pg.locator(".tp-heatmap[data-rendered]").count() == 6
        # hover: value and count
        pg.locator("#r0-heatmap-0").scroll_into_view_if_needed()
        box = pg.locator("#r0-heatmap-0 .nsewdrag").first.bounding_box()
        pg.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        pg.wait_for_selector("#r0-heatmap-0 .hovertext", timeout=5_000)
        hover = pg.text_content("#r0-heatmap-0 .hovertext")
        assert "count/step" in hover and "value" in hover
        # the layer picker shows one layer
        pg.select_option("#r0-layer-picker", "2")
        assert pg.locator("#r0-layer-0").is_hidden() and pg.locator("#r0-layer-2").is_visible()
        # metadata
        meta = pg.text_content("#r0-meta")
        assert "Sequential" in meta and "16×8" in meta and tp.__version__ in meta and "bins=40" in meta
        diag = pg.text_content("#tp-diagnosis")
        assert "Diagnosis unavailable" in diag or pg.locator(".tp-finding").count() or "No findings" in diag
        pg.select_option("#r0-layer-picker", "all")
        pg.evaluate("window.scrollTo(0, 0)")
        pg.screenshot(path=str(tmp_path / "report.png"))
        assert not page.errors, page.errors
        assert all(u.startswith(("file:", "data:")) for u in page.requests), page.requests
    finally:
        page.close()


class Finding:
    def __init__(self, kind, severity, layer, epoch, message, evidence=None):
        self.kind, self.severity, self.layer, self.epoch, self.message, self.evidence = (
            kind, severity, layer, epoch, message, evidence)


@pytest.fixture
def fake_diagnose(monkeypatch):
    """Chosen findings in the shape tp.diagnose returns them, to test how the page sorts and links them."""
    fake = lambda run: types.SimpleNamespace(findings=[  # noqa: E731
        Finding("dead", "info", None, None, "all fine overall"),
        Finding("saturated", "problem", "2", 1, "layer 2 saturates", {"fraction": np.float64(0.75)}),
        Finding("gap", "warning", None, 0, "train and valid peaks drift apart", np.arange(5000)),
    ])
    monkeypatch.setattr("twinpeaks.diagnosis.diagnose", fake)


def test_findings_sorted_and_linked(new_page, fake_diagnose, browser, rec, tmp_path):  # noqa: F811
    with tp.open_run(rec.path) as run:
        findings = report_payload([run])["runs"][0]["findings"]
    assert [f["severity"] for f in findings] == ["problem", "warning", "info"]
    assert findings[0]["evidence"] == {"fraction": 0.75}
    assert findings[1]["evidence"].startswith("[0, 1, 2") and len(findings[1]["evidence"]) < 4100  # capped
    out = tp.report(rec.path, tmp_path / "f.html")
    page = new_page(browser, offline=True)
    try:
        pg = page.page
        pg.goto(out.as_uri())
        pg.wait_for_selector("body[data-ready='1']", timeout=30_000)
        items = pg.locator("#tp-diagnosis .tp-finding")
        assert items.count() == 3 and "layer 2 saturates" in items.nth(0).text_content()
        link = items.nth(0).locator("a[href='#r0-layer-2']")
        assert pg.locator("#r0-layer-2").count() == 1
        pg.locator("#tp-epoch").fill("2")
        items.nth(0).locator("a[href='#r0-twinpeaks']").click()
        assert "epoch 1" in pg.text_content("#r0-peaks .gtitle")
        link.click()
        pg.wait_for_selector("#r0-heatmap-2.js-plotly-plot", timeout=10_000)
        assert pg.evaluate("location.hash") == "#r0-layer-2"
        assert not page.errors, page.errors
    finally:
        page.close()


def test_real_diagnosis_findings_appear(new_page, browser, rec, tmp_path):  # noqa: F811
    with tp.open_run(rec.path) as run:
        n = len(tp.diagnose(run).findings)
    out = tp.report(rec.path, tmp_path / "d.html")
    page = new_page(browser, offline=True)
    try:
        page.page.goto(out.as_uri())
        page.page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        assert page.page.locator("#tp-diagnosis .tp-finding").count() == n
        if not n:
            assert "No findings" in page.page.text_content("#tp-diagnosis")
        assert not page.errors, page.errors
    finally:
        page.close()


def test_run_before_its_first_epoch(new_page, browser, tmp_path):  # noqa: F811
    """A run still in its first epoch (flushed steps, no closed epoch) shows its heatmaps and says why no peaks."""
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU())
    hist = tp.ActivationsHistogram(model, tmp_path / "early.tp", flush_every=4).attach()
    try:
        for _ in range(9):  # the 9th step's start flushes steps 4-7
            model(torch.randn(5, 2))
        assert hist.run.epochs == 0  # hist.run waits for the writer's thread: the flushed steps are committed
        with tp.open_run(tmp_path / "early.tp") as run:  # read while the writer is open
            assert run.epochs == 0
            payload = run_payload(run)
            out = tp.report(run, tmp_path / "early.html")
    finally:
        hist.close()
    assert payload["twinpeaks"]["epochs"] == [] and payload["heatmaps"]["1"]["train"]["ends"][-1] == 8
    page = new_page(browser, offline=True)
    try:
        page.page.goto(out.as_uri())
        page.page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        assert "No closed epoch yet" in page.page.text_content("#tp-twinpeaks")
        page.page.wait_for_selector("#r0-heatmap-0.js-plotly-plot", timeout=10_000)
        assert not page.errors, page.errors
    finally:
        page.close()


def test_import_twinpeaks_loads_no_optional_dependency():
    import subprocess

    code = ("import sys, twinpeaks as tp; tp.report, tp.export_tensorboard, tp.export_wandb; "
            "import twinpeaks.web.server, twinpeaks.commands.report, twinpeaks.commands.serve, twinpeaks.commands.export; "
            "bad = [m for m in ('plotly', 'wandb', 'tensorboard', 'torch.utils.tensorboard', 'playwright') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_automatic_range_axes_span_only_where_values_went(tmp_path):
    """With automatic ranges the layer's common grid is a power-of-two grid that may reach far past the values
    (e.g. to 8.5 for logits within +-4): the report's value axes span the bins any histogram used, and the
    counts over the shown edges are still numpy's."""
    path = tmp_path / "auto.tp"
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    outs: dict[str, list[torch.Tensor]] = {"train": [], "valid": []}
    model[0].register_forward_hook(lambda m, a, o: outs["train" if m.training else "valid"].append(o.detach().clone()))
    with tp.ActivationsHistogram(model, path) as hist, torch.no_grad():
        for scale in (1.0, 2.0, 3.0):
            model.train()
            for _ in range(4):
                model(torch.randn(16, 4) * scale)
            model.eval()
            model(torch.randn(16, 4) * scale)
            hist.end_epoch()
    with tp.open_run(path) as run:
        p = run_payload(run)
        full = run.edges(-1)
    tpk, m = p["twinpeaks"], p["heatmaps"]["0"]["train"]
    shown = outs["valid"] + outs["train"][3::4]  # Twin Peaks: valid and each epoch's last training quarter
    for edges, seen in ((np.array(tpk["edges"]), shown), (np.array(m["edges"]), outs["train"])):
        values = torch.cat([o.reshape(-1) for o in seen]).double().numpy()
        assert edges[0] <= values.min() and edges[-1] > values.max()
        assert edges[0] >= full[0] and edges[-1] <= full[-1] and len(edges) <= len(full)
    last = tpk["epochs"][-1]["phases"]["valid"]
    assert last["counts"] == np_counts(outs["valid"][-1], np.array(tpk["edges"])).tolist()
    used = np.sum([h["counts"] for e in tpk["epochs"] for h in e["phases"].values()], axis=0)
    assert used[0] > 0 and used[-1] > 0  # the axis starts and ends at a used bin
    rows = decoded(m).sum(axis=1)
    assert rows[0] > 0 and rows[-1] > 0
