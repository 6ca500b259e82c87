"""The report's figures, one function per figure, each returning a matplotlib `Figure` (object API: no
pyplot, no global backend) or None when the sweep holds nothing to draw. Sized for a paper: one column
(`SINGLE` inches) or two (`DOUBLE`), fonts readable at that size, saved as PNG and as vector PDF.

Bands and error bars are 95% Student-t intervals over seeds; a configuration with one seed is a point
without one. A line joins only configurations that agree on every knob but alpha (`strata`): joining a
tau = 0.01 point to a tau = 0.05 point would draw an effect of alpha that is tau's.
"""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, NullLocator

from evaluation.mlflow_layout import SETTINGS
from evaluation.plots import annotated
from sweeps.report import analysis as A
from sweeps.report.best_alpha import GRID, BestAlpha
from sweeps.report.findings import ALPHA, TAU, Findings, alpha_label, name
from sweeps.report.glance import gaps_by_step

SINGLE, DOUBLE = 3.3, 7.0  # a paper's column and page widths, inches
STYLE = {
    "font.size": 7,
    "axes.titlesize": 7.5,
    "axes.labelsize": 7,
    "xtick.labelsize": 6.5,
    "ytick.labelsize": 6.5,
    "legend.fontsize": 6.5,
    "figure.titlesize": 8,
    "lines.linewidth": 1.0,
    "lines.markersize": 3.5,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.4,
    "pdf.fonttype": 42,  # TrueType in the PDF: text stays text, editable and searchable
}
PNG_DPI = 300
COLORS = {"mono": "tab:blue", "cross": "tab:orange", "multi": "tab:green"}
OTHER = "tab:gray"  # configurations alone in their stratum (one alpha): points, never joined


def figure(width: float, height: float) -> Figure:
    """A figure `width` inches wide whose layout keeps titles, colour bars and outside legends in it."""
    return Figure(figsize=(width, height), layout="constrained")


def _tau_ticks(axis, taus: pd.Series) -> None:
    """A log tau axis (or colour bar axis) ticked at the sweep's own taus, written as numbers."""
    values = sorted(set(taus.dropna().astype(float)))
    axis.set_major_locator(matplotlib.ticker.FixedLocator(values[:: max(1, len(values) // 6)]))
    axis.set_major_formatter(FormatStrFormatter("%.3g"))
    axis.set_minor_locator(NullLocator())


def export(fig: Figure) -> dict[str, bytes]:
    """The figure as {"png": ..., "pdf": ...} bytes, at its own size (no tight crop: the width is the paper's)."""
    FigureCanvasAgg(fig)
    out = {}
    for fmt in ("png", "pdf"):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=PNG_DPI, metadata={"Software": None} if fmt == "png" else None)
        out[fmt] = buffer.getvalue()
    return out


def to_png(fig: Figure) -> bytes:
    return export(fig)["png"]


def _done(f: Findings) -> pd.DataFrame:
    return f.summary[f.summary["complete"]].sort_values("mono_ratio") if len(f.summary) else f.summary


def strata(frame: pd.DataFrame, first: pd.Series | None = None) -> list[tuple[str, pd.DataFrame]]:
    """The configurations grouped by every knob but alpha, each sorted by alpha: the group holding `first`
    (the references) first, then groups of several alphas, largest first, then configurations alone."""
    if frame.empty:
        return []
    key = A.stratum_key(frame)
    home = (
        key[frame["config_key"] == first["config_key"]].iloc[0]
        if first is not None and (frame["config_key"] == first["config_key"]).any()
        else None
    )
    groups = [(k, g.sort_values("mono_ratio")) for k, g in frame.groupby(key, sort=False)]
    groups.sort(key=lambda kg: (kg[0] != home, -kg[1]["mono_ratio"].nunique()))
    return [(A.stratum_label(g.iloc[0]) or "all", g) for _, g in groups]


def _curve(ax: Axes, data: pd.DataFrame, column: str, color: str, label: str | None, x: str = "mono_ratio") -> None:
    """Seed means against x joined by a line, an error bar on every point with an interval and a 95% band
    between neighbours that both have one; a lone point gets its error bar only."""
    if column not in data:
        return
    data = data[[x, column, f"{column} ±"]].dropna(subset=[column]).sort_values(x)
    if data.empty:
        return
    xs, ys, half = data[x].to_numpy(float), data[column].to_numpy(float), data[f"{column} ±"].to_numpy(float)
    finite = np.isfinite(half)
    if len(xs) > 1:
        ax.plot(xs, ys, "-o", color=color, label=label)
        ax.errorbar(xs[finite], ys[finite], yerr=half[finite], fmt="none", ecolor=color, capsize=2, lw=0.8)
        if finite.sum() > 1:  # a band between neighbouring points that both have an interval
            ax.fill_between(
                xs, ys - np.nan_to_num(half), ys + np.nan_to_num(half), where=finite, color=color, alpha=0.18, lw=0
            )
        return
    ax.errorbar(xs, ys, yerr=np.where(finite, half, 0), fmt="s", color=color, capsize=2, label=label, mfc="white")


def _stratified(ax: Axes, f: Findings, frame: pd.DataFrame, column: str, legend: dict) -> None:
    """`column` against alpha: a line per stratum of several alphas, lone configurations as grey points."""
    for i, (label, group) in enumerate(strata(frame, f.ref0)):
        alone = group["mono_ratio"].nunique() < 2
        color = OTHER if alone else f"C{i}"
        text = "one alpha only (other tau / k / schedule)" if alone else label
        _curve(ax, group, column, color, None if text in legend else text)
        legend.setdefault(text, color)


def _horizontal(ax: Axes, f: Findings, column: str) -> None:
    """The base model and the two references as horizontal lines: what a hybrid must beat."""
    if column in f.base:
        ax.axhline(f.base[column], color="black", ls="--", lw=0.8, label="base model")
    for ref, style, label in ((f.ref0, ":", "alpha = 0 reference"), (f.ref1, "-.", "alpha = 1 reference")):
        if ref is not None and column in ref and np.isfinite(ref[column]):
            ax.axhline(ref[column], color="dimgray", ls=style, lw=0.8, label=label)


def _alpha_axis(ax: Axes) -> None:
    ax.set_xlim(-0.05, 1.05)
    ax.set_xlabel(ALPHA)


def _outside_legend(fig: Figure, axes: list[Axes]) -> None:
    """One legend for all panels, below them (outside the data), each label once."""
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(seen.values(), seen.keys(), loc="outside lower center", ncols=min(3, len(seen)), frameon=False)


def _ratio_panels(f: Findings, columns: list[str], axes: list[Axes]) -> None:
    done = _done(f)
    legend: dict = {}
    for ax, column in zip(axes, columns):
        _stratified(ax, f, done, column, legend)
        _horizontal(ax, f, column)
        _alpha_axis(ax)
        lower = column.endswith(("rank_distance", "ece"))
        ax.set_title(name(column) + (" (lower is better)" if lower else ""))
        ax.set_ylabel(name(column).split(" ", 1)[-1])


def alpha_curves(f: Findings) -> Figure | None:
    """The ratio curve: mono / cross / multi mAP and multilingual rank distance against alpha, per stratum."""
    done = _done(f)
    columns = [c for c in ("mono/map", "cross/map", "multi/map", "multi/rank_distance") if c in done]
    if done.empty or not columns:
        return None
    fig = figure(DOUBLE, 4.6)
    axes = list(fig.subplots(2, 2).flat)[: len(columns)]
    _ratio_panels(f, columns, axes)
    _outside_legend(fig, axes)
    fig.suptitle(
        f"{f.sweep.name}: retrieval against {ALPHA} ({f.dataset}, {f.selection.source} evaluation; mean ± 95% CI over seeds)"
    )
    return fig


def _fitted(ax: Axes, b: BestAlpha, color: str, label: str) -> None:
    """One evaluation set's trials on `ax`: each seed a dot, the mean per alpha a square, the fitted
    quadratic with its pointwise 95% band, and the best alpha with its 95% interval as a bar at the curve."""
    p = b.points
    ax.plot(p["mono_ratio"], p["value"], "o", color=color, ms=2, alpha=0.5, mew=0)
    means = p.groupby("mono_ratio")["value"].mean()
    ax.plot(means.index, means.to_numpy(), "s", color=color, mfc="white", label=label)
    if b.fit is None:
        return
    ax.plot(GRID, b.fit.curve, "-", color=color)
    ax.fill_between(GRID, b.fit.band_low, b.fit.band_high, color=color, alpha=0.18, lw=0)
    best = b.fit.best
    ax.errorbar(best, b.fit.at(best), xerr=[[best - b.fit.low], [b.fit.high - best]], fmt="D", color=color, capsize=2.5)


def best_alpha(f: Findings) -> Figure | None:
    """The best alpha per setting (`best_alpha`): mono, cross and multi mAP against alpha on the full
    evaluation, a colour per evaluation set (held-out, then each zero-shot set)."""
    panels = [c for c in (f"{s}/map" for s in SETTINGS) if any(b.objective == c and b.trials for b in f.best_alpha)]
    if not panels:
        return None
    datasets = list(dict.fromkeys(b.dataset for b in f.best_alpha))
    fig = figure(DOUBLE, 2.9)
    axes = list(np.atleast_1d(fig.subplots(1, len(panels))))
    for ax, column in zip(axes, panels):
        for b in (b for b in f.best_alpha if b.objective == column and b.trials):
            where = "held-out" if b.dataset == f.dataset else "out-of-domain"
            label = f"{b.dataset} ({where}; {b.stratum or 'all'})" + ("" if b.fit else f": no fit, {b.levels} levels")
            _fitted(ax, b, f"C{datasets.index(b.dataset)}", label)
        _alpha_axis(ax)
        ax.set_title(name(column))
        ax.set_ylabel("mAP")
    _outside_legend(fig, axes)
    fig.suptitle(
        f"{f.sweep.name}: the best {ALPHA} per setting (full evaluation). Dots: seeds; squares: mean per {ALPHA};\n"
        f"line and band: quadratic fit, pointwise 95%; diamond and bar: the best {ALPHA} and its 95% interval"
    )
    return fig


def heatmaps(f: Findings) -> Figure | None:
    """The focus configuration's L x L mAP and its differences from the references: one colour scale for
    mAP, one shared by the differences; values written only where a cell can hold them at this width;
    languages never trained on marked with *."""
    if not f.heatmaps:
        return None
    mats = list(f.heatmaps.items())
    n_lang = len(mats[0][1])
    trained = set(f.sweep.train_languages)
    mark = [lang for lang in mats[0][1].index if trained and lang not in trained]
    labels = [f"{lang}*" if lang in mark else lang for lang in mats[0][1].index]
    fig = figure(DOUBLE, 2.9)
    axes = list(np.atleast_1d(fig.subplots(1, len(mats))))
    cell_in = DOUBLE * 0.85 / len(mats) / n_lang
    write = cell_in >= 0.2  # "0.81" at 5 pt needs about a fifth of an inch
    diffs = [m.to_numpy(float) for _, m in mats[1:]]
    finite = np.concatenate([d[np.isfinite(d)] for d in diffs]) if diffs else np.array([])
    limit = max(float(np.abs(finite).max()) if finite.size else 0.0, 1e-6)
    images = []
    focus, _, first = mats[0][0].partition(": ")
    titles = [first] + [f"minus {title.rpartition(' minus ')[2]}" for title, _ in mats[1:]]
    for i, (ax, title, (_, matrix)) in enumerate(zip(axes, titles, mats)):
        images.append(
            annotated(
                ax,
                matrix.to_numpy(float),
                labels,
                labels,
                title,
                diverging=i > 0,
                limit=limit if i > 0 else None,
                written=write,
                fontsize=5,
            )
        )
    fig.colorbar(images[0], ax=axes[0], shrink=0.8, label="mAP")
    if len(images) > 1:
        fig.colorbar(images[1], ax=axes[1:], shrink=0.8, label="difference in mAP")
    note = f"; * never trained on (zero-shot): {', '.join(mark)}" if mark else ""
    fig.suptitle(
        f"{f.sweep.name}, {focus}: mAP by query (rows) and candidate (columns) language\n"
        f"{f.heatmap_source} evaluation, differences of seed means{note}"
    )
    return fig


def _place_labels(ax: Axes, xs: np.ndarray, ys: np.ndarray, texts: list[str]) -> None:
    """Each label beside its point at the first of several offsets where it overlaps no label placed
    before and no point, further out when every near spot is taken; a leader line ties it to its point."""
    fig = ax.figure
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw_without_rendering()
    points = ax.transData.transform(np.column_stack([xs, ys]))
    taken = []
    near = [(5, 4), (5, -9), (-5, 4), (-5, -9), (0, 8), (0, -12)]
    far = [(dx * r, dy * r) for r in (2.2, 3.4) for dx, dy in near]
    for (x, y), text in sorted(zip(zip(xs, ys), texts), key=lambda p: (-p[0][1], p[0][0])):
        for dx, dy in near + far:
            label = ax.annotate(
                text,
                (x, y),
                xytext=(dx, dy),
                textcoords="offset points",
                ha="left" if dx > 0 else "right" if dx < 0 else "center",
                fontsize=5.5,
                arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "gray", "shrinkA": 0, "shrinkB": 2},
            )
            box = label.get_window_extent(renderer).expanded(1.05, 1.1)
            hits_point = any(box.contains(px, py) for px, py in points)
            if not hits_point and not any(box.overlaps(other) for other in taken):
                taken.append(box)
                break
            label.remove()


def pareto(f: Findings) -> Figure | None:
    """Mono against cross mAP per configuration, tau as colour (log scale), the front filled and joined."""
    p = f.pareto
    if p.empty or "front" not in p:
        return None
    fig = figure(SINGLE, 3.2)
    ax = fig.subplots()
    taus = p["temperature"].astype(float)
    norm = LogNorm(taus.min(), taus.max()) if taus.notna().all() and taus.min() < taus.max() else None
    cmap = matplotlib.colormaps["viridis"]
    color = [cmap(norm(t)) if norm else "tab:purple" for t in taus]
    for (_, row), c in zip(p.iterrows(), color):
        ax.errorbar(
            row["mono/map"],
            row["cross/map"],
            xerr=np.nan_to_num(row["mono/map ±"]),
            yerr=np.nan_to_num(row["cross/map ±"]),
            fmt="o",
            color=c,
            mfc=c if row["front"] else "white",
            capsize=1.5,
            lw=0.6,
        )
    front = p[p["front"]].sort_values("mono/map")
    ax.plot(front["mono/map"], front["cross/map"], "--", color="tab:red", lw=0.8, label="Pareto front (filled)")
    texts = [
        f"{row['mono_ratio']:.2g}"
        + (
            f" {row['alpha_schedule']}"
            if isinstance(row.get("alpha_schedule"), str) and row["alpha_schedule"] != "constant"
            else ""
        )
        for _, row in p.iterrows()
    ]
    _place_labels(ax, p["mono/map"].to_numpy(float), p["cross/map"].to_numpy(float), texts)
    if norm:
        bar = fig.colorbar(matplotlib.cm.ScalarMappable(norm, cmap), ax=ax, label=TAU, shrink=0.8)
        _tau_ticks(bar.ax.yaxis, taus)
    ax.set_xlabel("mono mAP")
    ax.set_ylabel("cross mAP")
    ax.legend(loc="lower left", frameon=False)
    encoded = f"colour = {TAU}" if norm else f"{TAU} = {taus.iloc[0]:.3g} for all"
    ax.set_title(f"{f.sweep.name}: mono vs cross mAP\nlabels = {ALPHA}, {encoded} (mean ± 95% CI)")
    return fig


def search(f: Findings) -> Figure | None:
    """alpha x tau coloured by the objective; the importances and an interpolated surface only with enough
    configurations (`analysis.MIN_IMPORTANCE_CONFIGS`), said in the figure otherwise."""
    data = _done(f).dropna(subset=["temperature", f.objective]) if len(f.summary) else f.summary
    if data.empty:
        return None
    enough = len(data) >= A.MIN_IMPORTANCE_CONFIGS and data["mono_ratio"].nunique() > 2
    fig = figure(DOUBLE if enough and f.importance else SINGLE, 2.8)
    if enough and f.importance:
        left, right = fig.subplots(1, 2)
        items = sorted(f.importance.items(), key=lambda kv: kv[1])
        left.barh([k for k, _ in items], [v for _, v in items], color="tab:purple")
        left.set_xlabel("importance (normalised)")
        left.set_title(f.importance_note)
    else:
        right = fig.subplots()
    if enough and data["temperature"].nunique() > 2:
        try:  # a surface needs non-collinear points; the scatter alone otherwise
            right.tricontourf(
                data["mono_ratio"], data["temperature"], data[f.objective], levels=10, cmap="viridis", alpha=0.35
            )
        except (ValueError, RuntimeError):
            pass
    points = right.scatter(
        data["mono_ratio"],
        data["temperature"],
        c=data[f.objective],
        cmap="viridis",
        s=8 + 6 * data["seeds"],
        edgecolors="black",
        linewidths=0.4,
    )
    right.set_yscale("log")
    _tau_ticks(right.yaxis, data["temperature"])
    fig.colorbar(points, ax=right, label=name(f.objective), shrink=0.8)
    right.set_xlabel(ALPHA)
    right.set_ylabel(TAU)
    caveat = (
        ""
        if enough
        else f"\n{len(data)} configurations (< {A.MIN_IMPORTANCE_CONFIGS}): no surface, no parameter importances"
    )
    right.set_title(f"{f.sweep.name}: {ALPHA} x {TAU}, colour = {name(f.objective)}, size = seeds{caveat}")
    return fig


def calibration(f: Findings) -> Figure | None:
    """ECE against alpha per stratum, and the reliability diagram of the references and the focus."""
    done = _done(f)
    columns = [c for c in ("mono/ece", "cross/ece", "multi/ece") if c in done]
    if done.empty or not columns:
        return None
    fig = figure(DOUBLE, 4.6)
    axes = list(fig.subplots(2, 2).flat)
    _ratio_panels(f, columns, axes[: len(columns)])
    right = axes[-1]
    right.plot([0, 1], [0, 1], "--", color="gray", lw=0.8)
    for label, table in f.reliability.items():
        t = table[table["count"] > 0]
        right.plot(t["confidence"], t["accuracy"], "-o", markersize=2.5, label=f"{label}: ECE {A.ece_of(table):.3f}")
    right.set_xlabel("top-1 confidence")
    right.set_ylabel("top-1 accuracy")
    right.set_title("reliability (seeds pooled; dashed: perfect)")
    if right.lines[1:]:
        right.legend(loc="upper left", fontsize=5, frameon=False)
    _outside_legend(fig, axes[: len(columns)])
    fig.suptitle(f"{f.sweep.name}: calibration against {ALPHA} (ECE at each trial's own {TAU}; mean ± 95% CI)")
    return fig


def robustness(f: Findings) -> Figure | None:
    """The worst cross-lingual pair and the spread across pairs against alpha, per stratum."""
    if f.robust.empty:
        return None
    fig = figure(DOUBLE, 2.6)
    axes = list(fig.subplots(1, 2))
    legend: dict = {}
    for ax, column, title in (
        (axes[0], "worst", "worst cross-lingual pair, mAP"),
        (axes[1], "std", "std of pair mAP (lower is better)"),
    ):
        _stratified(ax, f, f.robust, column, legend)
        _alpha_axis(ax)
        ax.set_title(title)
        ax.set_ylabel("mAP")
    _outside_legend(fig, axes)
    fig.suptitle(f"{f.sweep.name}: robustness across cross-lingual pairs ({f.robust_source} evaluation; mean ± 95% CI)")
    return fig


def hr_deltas(f: Findings) -> Figure | None:
    d = f.hr_deltas
    if d.empty:
        return None
    d = d.sort_values("delta")
    fig = figure(SINGLE, 0.9 + 0.11 * len(d))
    ax = fig.subplots()
    half = d["half"].to_numpy(float)
    colors = [
        "tab:red" if x.significant and x.mean < 0 else "tab:green" if x.significant else "tab:gray" for x in d["diff"]
    ]
    ax.barh(
        d["pair"],
        d["delta"],
        color=colors,
        xerr=np.where(np.isfinite(half), half, 0),
        capsize=1.5,
        error_kw={"lw": 0.6},
    )
    ax.axvline(0, color="black", lw=0.6)
    ax.tick_params(axis="y", labelsize=5)
    ax.set_xlabel("difference in mAP (95% CI)")
    ax.set_title(f"{alpha_label(f.hybrid)} minus {ALPHA}=1,\nhigh-resource pairs (red: worse, green: better)")
    return fig


def languages(f: Findings) -> Figure | None:
    if f.lang_effect.empty:
        return None
    done = _done(f).copy()
    done["k"] = done["num_train_languages"].fillna(len(f.sweep.train_languages))
    fig = figure(SINGLE, 2.6)
    ax = fig.subplots()
    points = ax.scatter(done["k"], done[f.objective], c=done["mono_ratio"], cmap="coolwarm", vmin=0, vmax=1, s=12)
    _curve(ax, f.lang_effect, f.objective, "black", "best per k (other knobs may differ)", x="k")
    fig.colorbar(points, ax=ax, label=ALPHA, shrink=0.8)
    ax.set_xticks(sorted(done["k"].dropna().unique()))
    ax.set_xlabel("k (number of training languages)")
    ax.set_ylabel(name(f.objective))
    _outside_legend(fig, [ax])
    ax.set_title(f"{f.sweep.name}: {name(f.objective)} against k")
    return fig


def compare_sweeps(findings: list[Findings]) -> Figure | None:
    """Several sweeps side by side: the objective and the worst pair against alpha, a line per stratum."""
    if len(findings) < 2:
        return None
    fig = figure(DOUBLE, 2.6)
    axes = list(fig.subplots(1, 2))
    for i, f in enumerate(findings):
        for ax, frame, column in ((axes[0], _done(f), f.objective), (axes[1], f.robust, "worst")):
            for j, (label, group) in enumerate(strata(frame, f.ref0)):
                _curve(ax, group, column, f"C{i}", f"{f.sweep.name}" if j == 0 else None)
    axes[0].set_title(f"objective against {ALPHA}")
    axes[1].set_title(f"worst cross-lingual pair mAP against {ALPHA}")
    for ax in axes:
        _alpha_axis(ax)
    _outside_legend(fig, axes)
    fig.suptitle("Sweeps side by side (a line per sweep and stratum; mean ± 95% CI)")
    return fig


def gap_curves(f: Findings) -> Figure | None:
    """The references' gap and the best hybrid's against each, by training step, mean ± 95% CI over seeds:
    where the gap opens or closes."""
    gaps = gaps_by_step(f)
    if not gaps or max(len(by) for by in gaps.values()) < 2:
        return None
    fig = figure(SINGLE, 2.6)
    ax = fig.subplots()
    for (label, by), color in zip(gaps.items(), ("tab:purple", "tab:green", "tab:orange")):
        steps = sorted(by)
        means = [by[s][0].mean for s in steps]
        halves = [by[s][0].half if np.isfinite(by[s][0].half) else 0.0 for s in steps]
        ax.errorbar(steps, means, yerr=halves, label=label, color=color, marker="o", capsize=2)
    ax.axhline(0, color="gray", lw=0.6)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"difference in {name(f.objective)}")
    _outside_legend(fig, [ax])
    ax.set_title(f"{f.sweep.name}: differences by step (proxy evaluation)")
    return fig


FIGURES = {
    "alpha_curves": alpha_curves,
    "best_alpha": best_alpha,
    "gaps_by_step": gap_curves,
    "heatmaps": heatmaps,
    "pareto": pareto,
    "search": search,
    "calibration": calibration,
    "robustness": robustness,
    "hr_deltas": hr_deltas,
    "languages": languages,
}


def render(f: Findings) -> dict[str, dict[str, bytes]]:
    """Every figure the sweep supports, by name, as {"png": bytes, "pdf": bytes}, in the paper style."""
    with matplotlib.rc_context(STYLE):
        return {key: export(fig) for key, draw in FIGURES.items() if (fig := draw(f)) is not None}


def render_comparison(findings: list[Findings]) -> dict[str, bytes] | None:
    """`compare_sweeps` as {"png", "pdf"} bytes, or None for a single sweep."""
    with matplotlib.rc_context(STYLE):
        fig = compare_sweeps(findings)
        return export(fig) if fig is not None else None
