"""The figures of one evaluation, as MLflow keeps them beside its numbers and the report draws its own:
an annotated language x language heatmap and a reliability diagram. Matplotlib's object API only (no
pyplot): no global backend, nothing shown, safe in Ray workers and threads."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from evaluation.results import EvalResult


def annotated(
    ax: Axes,
    values: np.ndarray,
    rows: Sequence[str],
    columns: Sequence[str],
    title: str,
    diverging: bool = False,
    limit: float | None = None,
    written: bool = True,
    fontsize: float | None = None,
) -> AxesImage:
    """An L x L heatmap on `ax`, blank where NaN; rows = query language, columns = candidate language.
    `diverging`: a signed difference, coloured around 0 (red below, blue above) up to +/- `limit` (shared
    by the panels of one kind; default: this matrix's largest). `written`: each cell's value in it (off
    where cells are too small to read). Returns the image, for the caller's colour bar."""
    finite = values[np.isfinite(values)]
    if diverging:
        limit = limit or max(float(np.abs(finite).max()) if finite.size else 0.0, 1e-6)
        image = ax.imshow(np.ma.masked_invalid(values), cmap="RdBu", vmin=-limit, vmax=limit)
    else:
        image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis")
    ax.set_xticks(range(len(columns)), columns, rotation=90 if len(columns) > 8 else 0)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("candidate language")
    ax.set_ylabel("query language")
    ax.set_title(title)
    ax.grid(False)
    size = fontsize or (6 if len(rows) > 8 else 8)
    norm = image.norm
    for (i, j), v in np.ndenumerate(values):
        if written and np.isfinite(v):  # white text on the dark ends of the colour map
            dark = abs(norm(v) - 0.5) > 0.3 if diverging else norm(v) < 0.5
            text = f"{v:+.2f}" if diverging else f"{v:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=size, color="white" if dark else "black")
    return image


def heatmap(matrix: np.ndarray, languages: tuple[str, ...], title: str, path: Path) -> None:
    """One evaluation's metric matrix as an annotated heatmap PNG at `path`."""
    side = 1.5 + 0.5 * len(languages)
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.subplots()
    fig.colorbar(annotated(ax, matrix, languages, languages, title), ax=ax, shrink=0.8)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def reliability_diagram(result: EvalResult, path: Path) -> None:
    """Accuracy per confidence bin against the diagonal (perfect calibration); bar labels = query counts."""
    table = result.reliability
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    centers, width = (table.lower + table.upper) / 2, table.upper - table.lower
    bars = ax.bar(centers, np.nan_to_num(table.accuracy), width=width, edgecolor="black", label="accuracy")
    ax.bar_label(bars, labels=[str(c) if c else "" for c in table.count], fontsize=6)
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_xlabel("top-1 softmax confidence")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title(f"{result.dataset}/{result.split}, step {result.step}: ECE {table.ece:.3f} (all queries)", fontsize=9)
    ax.legend(loc="upper left")
    fig.savefig(path, dpi=110, bbox_inches="tight")
