"""The self-contained HTML report: one file that opens offline, anywhere.

Design constraints:

* No network. Plotly's own bundled JavaScript (from the ``plotly`` package)
  and the data are embedded in the file, gzip-compressed and base64-encoded;
  the page unpacks them with the browser's ``DecompressionStream``. Nothing is
  fetched from a CDN: clusters often have no internet.
* A few MB at most, whatever the run's length: the payload is downsampled for
  display (:mod:`twinpeaks.web.payload`), never the run file.
* Runs are read, never written.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import logging
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from .._version import __version__
from ..run import Run, open_run
from .payload import MAX_BINS, report_payload

log = logging.getLogger("twinpeaks")

RunLike = Run | str | os.PathLike


def static_text(name: str) -> str:
    """A file of ``twinpeaks/web/static`` (the page's JavaScript and CSS)."""
    return resources.files("twinpeaks.web").joinpath("static").joinpath(name).read_text(encoding="utf-8")


def plotly_js() -> str:
    """Plotly's bundled JavaScript, from the installed ``plotly`` package (no download)."""
    try:
        from plotly.offline import get_plotlyjs
    except ImportError:
        raise ImportError("the HTML report needs plotly: pip install 'twinpeaks[report]'") from None
    return get_plotlyjs()


def _packed(text: str) -> str:
    return base64.b64encode(gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0)).decode("ascii")


def _inline(text: str, tag: str) -> str:
    if f"</{tag}" in text.lower():
        raise ValueError(f"cannot inline text containing '</{tag}'")
    return text


def _as_runs(runs: RunLike | Sequence[RunLike]) -> list[RunLike]:
    if isinstance(runs, (Run, str, os.PathLike)):
        return [runs]
    runs = list(runs)
    if not runs:
        raise ValueError("runs is empty: pass a run, a run file path, or a list of them")
    return runs


def render_html(
    runs: RunLike | Sequence[RunLike],
    *,
    title: str | None = None,
    max_columns: int | None = None,
    max_bins: int = MAX_BINS,
) -> str:
    """The report of one or more runs as one self-contained HTML string.

    Example:
        >>> page = render_html("runs/exp1.tp")  # doctest: +SKIP
        >>> page.startswith("<!doctype html>")   # doctest: +SKIP
        True
    """
    items = _as_runs(runs)
    opened = [open_run(r) for r in items]
    try:
        names = [None if isinstance(r, Run) else Path(run.path or r).name for r, run in zip(items, opened)]
        payload = report_payload(opened, names, max_columns=max_columns, max_bins=max_bins)
    finally:
        for orig, run in zip(items, opened):
            if run is not orig:
                run.close()
    title = title or "twinpeaks report: " + ", ".join(r["name"] for r in payload["runs"])
    payload["title"] = title
    data = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    return (
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<meta name=\"generator\" content=\"twinpeaks {html.escape(__version__)}\">\n"
        f"<title>{html.escape(title)}</title>\n<style>\n{_inline(static_text('report.css'), 'style')}</style>\n"
        "</head>\n<body>\n<div id=\"tp-app\" class=\"tp-app\"><p class=\"tp-note\">Loading the report...</p>"
        "<noscript>This twinpeaks report needs JavaScript.</noscript></div>\n"
        f"<script type=\"application/octet-stream\" id=\"tp-plotly\">{_packed(plotly_js())}</script>\n"
        f"<script type=\"application/octet-stream\" id=\"tp-payload\">{_packed(data)}</script>\n"
        f"<script>\n{_inline(static_text('report.js'), 'script')}</script>\n"
        "<script>window.twinpeaks.boot();</script>\n</body>\n</html>\n"
    )


def report(
    runs: RunLike | Sequence[RunLike],
    path: str | os.PathLike = "report.html",
    *,
    title: str | None = None,
    max_columns: int | None = None,
    max_bins: int = MAX_BINS,
) -> Path:
    """Write a self-contained HTML report of one run, or of several side by side.

    The report holds the diagnosis findings (linked to their charts), twin peaks
    per epoch with an epoch slider, per-class and by-truth views when recorded,
    the colorful dimension and mean/std telemetry of every layer, and the run's
    metadata. It opens offline: Plotly is embedded, nothing is fetched.

    Args:
        runs: a :class:`~twinpeaks.run.Run`, a run file path, or a list of them.
        path: the HTML file to write.
        title: page title (default: the run names).
        max_columns: heatmap columns shown per layer (merged for display only); None = up to
            240, fewer for models with many layers so that the file stays a few MB.
        max_bins: heatmap bins shown per layer (merged for display only).

    Returns:
        The path written.

    Example:
        >>> tp.report("runs/exp1.tp", "report.html")                  # doctest: +SKIP
        >>> tp.report(["runs/a.tp", "runs/b.tp"], "compare.html")     # doctest: +SKIP
    """
    page = render_html(runs, title=title, max_columns=max_columns, max_bins=max_bins)
    out = Path(path)
    if out.is_dir():
        raise IsADirectoryError(f"report path {str(out)!r} is a directory: give a file name, e.g. report.html")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    log.info("wrote report %s (%d bytes)", out, out.stat().st_size)
    return out


__all__ = ["render_html", "report", "RunLike", "static_text", "plotly_js"]
