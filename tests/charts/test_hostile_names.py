"""Issue #14.8: names users control are text everywhere: charts (never mathtext), the terminal
(control characters escaped) and the report and dashboard (never HTML, also not Plotly's tags)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from torch import nn

import twinpeaks as tp
from twinpeaks import cli

MATH = "$\\frac{$"
TERM = "\x1b]0;PWNED\x07\x1b[2J"
TAGS = '<span style="font-size:200px">BIG</span>'
TEMPLATE = "%{x} 100%"
NAMES = [MATH, TERM, TAGS, TEMPLATE]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    torch.manual_seed(0)
    body = nn.Sequential()
    body.add_module(MATH, nn.Linear(6, 8))
    body.add_module(TERM, nn.ReLU())
    body.add_module(TAGS, type(MATH, (nn.Linear,), {})(8, 4))  # a class named "$\frac{$" too
    body.add_module(TEMPLATE, nn.Identity())
    path = tmp_path_factory.mktemp("hostile") / "run.tp"
    hist = tp.ActivationsHistogram(body, path, classes=NAMES, per_class=True, range=(-3.0, 3.0), bins=20)
    with hist:
        for _ in range(2):
            for _ in range(4):
                x = torch.randn(8, 6)
                hist.targets(x[:, :4].argmax(1))
                body(x)
            with torch.no_grad():
                hist.targets(torch.zeros(8, dtype=torch.long))
                body(torch.randn(8, 6))
            hist.end_epoch()
    run = tp.open_run(path)
    assert [i.name for i in run.layers] == NAMES and run.layers[2].type == MATH
    run.close()
    return path


@pytest.mark.parametrize("args", [["--chart", "colorful", "--layer-info"], ["--chart", "twinpeaks", "--per-class"],
                                  ["--chart", "twinpeaks", "--by-truth"], ["--chart", "history", "--per-class"]],
                         ids=["colorful", "per-class", "by-truth", "history"])
def test_charts_draw_names_as_text(hostile_run, tmp_path, args, capsys):
    out = tmp_path / "x.png"
    assert cli.main(["plot", str(hostile_run), *args, "-o", str(out)]) == 0, capsys.readouterr().err
    assert matplotlib.image.imread(out).ndim == 3


def test_chart_texts_hold_the_names_verbatim(hostile_run):
    from matplotlib.text import Text

    for fig in (tp.plot_colorful_dimension(hostile_run), tp.plot_twin_peaks(hostile_run, per_class=True)):
        fig.canvas.draw()
        texts = [t for t in fig.findobj(Text) if t.get_text()]
        assert any(MATH in t.get_text() for t in texts)
        assert all(not t.get_usetex() and not t.get_parse_math() for t in texts if MATH in t.get_text())
        assert any("\\x1b]0;PWNED\\x07" in t.get_text() for t in texts)  # control characters as escapes
        assert not any("\x1b" in t.get_text() for t in texts)


def test_terminal_output_escapes_control_characters(hostile_run, capsys):
    for command in (["info"], ["diagnose"], ["diagnose", "--json"]):
        assert cli.main([command[0], str(hostile_run), *command[1:]]) in (0, 1)
        out = capsys.readouterr().out
        assert "\x1b" not in out and "\x07" not in out, command
        if command == ["info"]:
            assert "\\x1b]0;PWNED\\x07\\x1b[2J" in out and MATH in out
    assert cli.main(["plot", str(hostile_run), "--layers", TERM + "x"]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and err.count("\n") == 1


def test_report_and_dashboard_show_names_as_text_in_plotly(hostile_run, tmp_path):
    from twinpeaks.web.payload import report_payload

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    with tp.open_run(hostile_run) as run:
        payload = report_payload([run], ["run"])
    (tmp_path / "payload.json").write_text(json.dumps(payload))
    script = """
        globalThis.window = {};
        require(process.argv[1]);
        const f = window.twinpeaks.figures;
        const run = JSON.parse(require("fs").readFileSync(process.argv[2], "utf8")).runs[0];
        const figs = [f.peaksFigure(run, 0), f.classesFigure(run, 0, "train"), f.truthFigure(run, 1)];
        for (const l of run.layers) {
          const m = run.heatmaps[String(l.index)] && run.heatmaps[String(l.index)].train;
          if (m) figs.push(f.heatmapFigure(run, l, "train", m));
        }
        const strings = [];
        const walk = (o, key) => {
          if (typeof o === "string") { if (["name", "text", "hovertemplate"].includes(key)) strings.push(o); }
          else if (o && typeof o === "object") for (const [k, v] of Object.entries(o)) walk(v, Array.isArray(o) ? key : k);
        };
        figs.forEach((g) => walk(g, ""));
        console.log(JSON.stringify({ strings, escaped: window.twinpeaks.ptext("<b>%{x}&") }));
    """
    proc = subprocess.run([node, "-e", script, str(REPO / "twinpeaks/web/static/report.js"),
                           str(tmp_path / "payload.json")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["escaped"] == "&lt;b&gt;&#37;{x}&amp;"
    strings = res["strings"]
    assert any('&lt;span style="font-size:200px"&gt;BIG&lt;/span&gt;' in s for s in strings)  # a class name
    assert any("&#37;{x} 100&#37;" in s for s in strings)  # the layer named "%{x} 100%" in a title
    for s in strings:
        assert "<span" not in s and "%{x} 100%" not in s, s
    # the report page carries the names as data only (the payload is gzip+base64, rendered with textContent)
    out = tp.report([hostile_run], tmp_path / "r.html")
    page = Path(out).read_text()
    assert "<span style" not in page and "PWNED" not in page
    assert np.isfinite(Path(out).stat().st_size)
