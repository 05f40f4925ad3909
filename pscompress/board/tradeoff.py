"""Pictures of what a model's accuracy costs: ``pscompress ladder plot`` and ``pscompress eval --plot``.

Both draw the same figure, two panels sharing the accuracy axis: accuracy against latency and
accuracy against file size, one labelled point per model::

    from pscompress.board.ladder import load_manifest
    from pscompress.board.tradeoff import plot_ladder
    plot_ladder(load_manifest("LADDER"), "tradeoff.png", html="tradeoff.html")

matplotlib comes with the workstation extra only, so it is imported inside the functions that
draw: the board install imports this module, and a plot there is a one-line UserError.
"""
from __future__ import annotations

import base64
import html as html_text
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pscompress.board.evaluate import EvalResult
from pscompress.board.ladder import SPEED_PERCENTILE, Manifest, Rung
from pscompress.core.errors import UserError
from pscompress.core.files import atomic_output

NO_MATPLOTLIB = "plotting needs matplotlib, which the workstation extra installs: pip install 'pscompress[workstation]'"
FIGURE_INCHES = (12.0, 5.0)
DPI = 100  # 1200 x 500 pixels
_KEPT = "C0"
_DROPPED = "grey"


@dataclass(frozen=True)
class _Point:
    """One model as the figure draws it."""
    name: str
    accuracy: float  # percent
    latency_ms: float  # x of the latency panel
    size_kb: float
    kept: bool = True  # False: drawn hollow and grey
    spread_ms: tuple[float, float] | None = None  # a thin bar across the latency panel, e.g. p50..p99


def check_plot_output(png: str | os.PathLike, html: str | os.PathLike | None = None) -> None:
    """Refuse, before any work is done, outputs that are not .png/.html or a machine without matplotlib."""
    _check_suffix(png, ".png")
    if html is not None:
        _check_suffix(html, ".html")
    _figure_class()


def plot_ladder(manifest: Manifest, png: str | os.PathLike, html: str | os.PathLike | None = None) -> None:
    """Draw the ladder's rungs (kept ones filled and joined by the frontier) into ``png``;
    with ``html``, also a self-contained page: the picture and a table of the rungs."""
    check_plot_output(png, html)
    rungs = sorted(manifest.rungs, key=lambda r: r.latency_ms[SPEED_PERCENTILE])
    points = [_Point(r.name, 100 * r.accuracy, r.latency_ms[SPEED_PERCENTILE], r.bytes / 1024, r.kept,
                     (r.latency_ms["p50"], r.latency_ms["p99"])) for r in rungs]
    title = _ladder_title(manifest)
    image = _render(points, title, "latency p50 (ms), bar to p99", frontier=True)
    _write_bytes(png, image)
    if html is not None:
        _write_bytes(html, _ladder_page(title, image, rungs).encode())


def plot_evaluations(results: Sequence[EvalResult], names: Sequence[str], png: str | os.PathLike) -> None:
    """Draw the models of ``results`` (labelled ``names``) side by side into ``png``."""
    if not results or len(results) != len(names):
        raise UserError(f"plot_evaluations needs at least one result and a name for each, "
                        f"got {len(names)} name(s) for {len(results)} result(s)")
    check_plot_output(png)
    points = [_Point(name, 100 * r.top1, r.latency.image_p50, r.model.get("size_bytes", 0) / 1024)
              for r, name in zip(results, names)]
    data = results[0].data
    title = (f"{len(results)} model(s) on {data.get('name') or data.get('spec')}, {data['images']:,} images, "
             f"batches of {results[0].latency.batch_size}")
    _write_bytes(png, _render(points, title, "latency per image p50 (ms)", frontier=False))


# --- the figure -----------------------------------------------------------------------------

def _figure_class() -> Any:
    try:
        # Figure, not pyplot: no global figure list to leak and no interactive backend to pick;
        # savefig(format="png") renders with Agg whatever backend is configured.
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise UserError(NO_MATPLOTLIB) from exc
    return Figure


def _render(points: list[_Point], title: str, latency_label: str, frontier: bool) -> bytes:
    """The two-panel figure as PNG bytes; ``frontier`` joins the kept points of the latency panel by a step line."""
    figure = _figure_class()(figsize=FIGURE_INCHES, dpi=DPI, layout="constrained")
    latency_axes, size_axes = figure.subplots(1, 2, sharey=True)
    _panel(latency_axes, points, [p.latency_ms for p in points], latency_label, frontier)
    _panel(size_axes, points, [p.size_kb for p in points], "file size (KB)", False)
    latency_axes.set_ylabel("accuracy (%)")
    figure.suptitle(title, parse_math=False)  # a CPU name or model file may hold '$'
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _panel(axes: Any, points: list[_Point], xs: list[float], xlabel: str, frontier: bool) -> None:
    for point, x in zip(points, xs):
        colour = _KEPT if point.kept else _DROPPED
        if frontier and point.spread_ms is not None:
            low, high = point.spread_ms
            axes.errorbar(x, point.accuracy, xerr=[[x - low], [high - x]], fmt="none", ecolor=colour,
                          elinewidth=0.8, capsize=2)
        axes.plot(x, point.accuracy, "o", markersize=7, markeredgecolor=colour,
                  markerfacecolor=colour if point.kept else "none")
        axes.annotate(point.name, (x, point.accuracy), xytext=(5, 4), textcoords="offset points", fontsize=8,
                      color="black" if point.kept else _DROPPED, parse_math=False)
    if frontier:
        # the kept rungs, fastest first: at a latency budget x you get the accuracy of the step below x
        kept = sorted((x, p.accuracy) for p, x in zip(points, xs) if p.kept)
        axes.step([x for x, _ in kept], [a for _, a in kept], where="post", color=_KEPT, linewidth=1.2,
                  label="kept (monotone frontier)")
        if len(kept) < len(points):
            axes.plot([], [], "o", markeredgecolor=_DROPPED, markerfacecolor="none", label="dropped")
        axes.legend(loc="lower right", fontsize=8)
    axes.margins(x=0.15, y=0.1)  # room for the labels of the outermost points
    axes.set_xlabel(xlabel)
    axes.grid(alpha=0.3)


def _ladder_title(manifest: Manifest) -> str:
    threads = "default threads" if manifest.threads is None else f"{manifest.threads} thread(s)"
    return f"{manifest.cpu or 'unknown CPU'}, {threads}, batch {manifest.batch}"


# --- the page -------------------------------------------------------------------------------

_STYLE = ("body{font-family:sans-serif;margin:1em}img{max-width:100%}table{border-collapse:collapse}"
          "th,td{border:1px solid #ccc;padding:2px 6px;text-align:left}td.number{text-align:right}"
          "tr.dropped{color:#888}code{font-size:90%}")


def _ladder_page(title: str, png: bytes, rungs: list[Rung]) -> str:
    """One HTML file with nothing to fetch: the picture inline (base64) and a row per rung."""
    header = "".join(f"<th>{h}</th>" for h in ("rung", "accuracy", "size KB", "p50 ms", "p90 ms", "p99 ms",
                                                 "kept", "recipe"))
    rows = "\n".join(_rung_row(r) for r in rungs)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"><title>{_escape(title)}</title>'
            f"<style>{_STYLE}</style></head>\n<body>\n<h1>{_escape(title)}</h1>\n"
            f'<img alt="accuracy against latency and file size" src="data:image/png;base64,'
            f'{base64.b64encode(png).decode("ascii")}">\n'
            f"<table>\n<thead><tr>{header}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>\n</body>\n</html>\n")


def _rung_row(rung: Rung) -> str:
    numbers = [f"{100 * rung.accuracy:.2f}%", f"{rung.bytes / 1024:.1f}",
               *(f"{rung.latency_ms[k]:.3f}" for k in ("p50", "p90", "p99"))]
    recipe = json.dumps(rung.recipe, separators=(",", ":"), ensure_ascii=False)
    cells = [f"<td>{_escape(rung.name)}</td>", *(f'<td class="number">{n}</td>' for n in numbers),
             f"<td>{'yes' if rung.kept else 'no'}</td>", f"<td><code>{_escape(recipe)}</code></td>"]
    return f'<tr class="{"kept" if rung.kept else "dropped"}">{"".join(cells)}</tr>'


def _escape(text: str) -> str:
    return html_text.escape(text, quote=True)


# --- files ----------------------------------------------------------------------------------

def _check_suffix(path: str | os.PathLike, suffix: str) -> None:
    if Path(path).suffix.lower() != suffix:
        raise UserError(f"{path}: the file to write must end in {suffix}")


def _write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
