"""The package's structure: one-way imports, a torch-free reading side, warnings at the user's line."""

from __future__ import annotations

import ast
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import twinpeaks as tp

PACKAGE = Path(tp.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def import_graph() -> dict[str, set[str]]:
    """Every twinpeaks module -> the twinpeaks modules it imports (at any depth of its code, TYPE_CHECKING aside)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_lines(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                if t in modules and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_import_graph_is_read_from_the_code():
    graph = import_graph()
    assert "twinpeaks.recording.engine" in graph["twinpeaks.recorder"]
    assert "twinpeaks.format" in graph["twinpeaks.run"]


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    assert find_cycle(import_graph()) is None


@pytest.mark.parametrize("module, forbidden", [
    ("twinpeaks.recorder", "twinpeaks.live"),
    ("twinpeaks.recorder", "twinpeaks.charts"),
    ("twinpeaks.distributed", "twinpeaks.recorder"),
    ("twinpeaks.export", "twinpeaks.web.payload"),
    ("twinpeaks.charts.colorful", "twinpeaks.charts.twin_peaks"),
], ids=["recorder-live", "recorder-charts", "distributed-recorder", "export-payload", "colorful-twin_peaks"])
def test_one_way_imports(module, forbidden):
    graph = import_graph()
    seen, todo = set(), [module]
    while todo:  # everything `module` reaches
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph[m])
    assert forbidden not in seen


def test_recording_parts_never_import_the_facade_or_the_sync():
    graph = import_graph()
    parts = [m for m in graph if m.startswith("twinpeaks.recording.")]
    assert len(parts) >= 5
    for m in parts:
        assert not graph[m] & {"twinpeaks.recorder", "twinpeaks.distributed"}, m


def test_reading_side_does_not_import_torch():
    code = ("import sys, twinpeaks, twinpeaks.run, twinpeaks.cli, twinpeaks.format, twinpeaks.display, "
            "twinpeaks.columns, twinpeaks.runfile, twinpeaks.rundir, twinpeaks.export, twinpeaks.web.payload, twinpeaks.web.build, "
            "twinpeaks.web.server, twinpeaks.charts, twinpeaks.diagnosis\n"
            "from twinpeaks.commands import info, diagnose, plot, report, serve, export\n"
            "tp = twinpeaks; tp.open_run; tp.Run; tp.Histogram\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr


def test_lazy_package_still_gives_the_public_names():
    code = ("import sys, twinpeaks as tp\nassert 'torch' not in sys.modules\n"
            "assert tp.ActivationsHistogram.__name__ == 'ActivationsHistogram'\nassert 'torch' in sys.modules\n"
            "assert tp.distributed.configure and tp.diagnose and tp.plot_twin_peaks")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr


class _Complex(nn.Module):
    def forward(self, x):
        return torch.complex(x, x)


def test_skipped_layer_warns_once_at_the_users_line(tmp_run):
    model = nn.Sequential(nn.Linear(3, 3), _Complex())
    with warnings.catch_warnings(record=True) as caught, tp.ActivationsHistogram(model, tmp_run) as hist:
        warnings.simplefilter("always")
        for _ in range(3):
            model(torch.randn(2, 3))  # the line the warning must name
        hist.end_epoch()
    ours = [w for w in caught if issubclass(w.category, tp.TwinpeaksWarning)]
    assert len(ours) == 1
    assert Path(ours[0].filename).resolve() == Path(__file__).resolve()
    assert "model(torch.randn(2, 3))" in Path(__file__).read_text().splitlines()[ours[0].lineno - 1]


def test_warning_is_not_also_logged(tmp_run, caplog):
    model = nn.Sequential(nn.Linear(3, 3), _Complex())
    with warnings.catch_warnings(record=True), tp.ActivationsHistogram(model, tmp_run):
        model(torch.randn(2, 3))
    assert not [r for r in caplog.records if "complex" in r.getMessage()]
