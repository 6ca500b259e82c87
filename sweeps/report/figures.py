"""The report's figures, one function per figure, each returning a matplotlib `Figure` (object API: no
pyplot, no global backend) or None when the sweep holds nothing to draw. Bands and error bars are 95%
Student-t intervals over seeds; a configuration with one seed is drawn as a point without a band."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from evaluation.plots import annotated
from sweeps.report import analysis as A
from sweeps.report.findings import ALPHA, TAU, Findings, alpha_label, name
from sweeps.report.glance import gaps_by_step

COLORS = {"mono": "tab:blue", "cross": "tab:orange", "multi": "tab:green"}


def to_png(fig: Figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def _done(f: Findings) -> pd.DataFrame:
    return f.summary[f.summary["complete"]].sort_values("mono_ratio") if len(f.summary) else f.summary


def _curve(ax, frame: pd.DataFrame, column: str, label: str, color: str, x: str = "mono_ratio") -> None:
    """Seed means against x, a 95% band where a configuration has >= 2 seeds, error bars on every point."""
    if column not in frame:
        return
    data = frame[[x, column, f"{column} ±"]].dropna(subset=[column]).sort_values(x)
    if data.empty:
        return
    xs, ys, half = data[x].to_numpy(float), data[column].to_numpy(float), data[f"{column} ±"].to_numpy(float)
    ax.plot(xs, ys, "-o", color=color, label=label, markersize=4)
    finite = np.isfinite(half)
    if finite.any():
        ax.errorbar(xs[finite], ys[finite], yerr=half[finite], fmt="none", ecolor=color, capsize=3, alpha=0.8)
        ax.fill_between(xs, ys - np.where(finite, half, 0), ys + np.where(finite, half, 0), color=color, alpha=0.15)


def _refs(ax, f: Findings) -> None:
    """An alpha axis: the whole [0, 1] range, the references marked."""
    ax.set_xlim(-0.05, 1.05)
    for ref in (f.ref0, f.ref1):
        if ref is not None:
            ax.axvline(ref["mono_ratio"], color="gray", lw=0.6, ls=":")


def alpha_curves(f: Findings) -> Figure | None:
    done = _done(f)
    if done.empty:
        return None
    fig = Figure(figsize=(13, 3.8))
    axes = fig.subplots(1, 3)
    for ax, metric in zip(axes, ("map", "mrr@10", "rank_distance")):
        for setting, color in COLORS.items():
            _curve(ax, done, f"{setting}/{metric}", setting, color)
        _refs(ax, f)
        ax.set_xlabel("alpha (P(batch is X-X))")
        ax.set_title(name(f"x/{metric}")[2:] + (" (lower is better)" if metric == "rank_distance" else ""))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(f"{f.sweep.name}: {f.dataset}, {f.selection.source} evaluation, mean ± 95% CI over seeds", fontsize=10)
    return fig


def heatmaps(f: Findings) -> Figure | None:
    if not f.heatmaps:
        return None
    n = len(f.heatmaps)
    side = 2.0 + 0.45 * len(next(iter(f.heatmaps.values())))
    fig = Figure(figsize=(n * (side + 1.0), side))
    axes = np.atleast_1d(fig.subplots(1, n))
    for i, (ax, (title, matrix)) in enumerate(zip(axes, f.heatmaps.items())):
        annotated(ax, fig, matrix.to_numpy(float), list(matrix.index), list(matrix.columns), title, diverging=i > 0)
    fig.suptitle(
        f"mAP, rows = query language, columns = candidate language ({f.heatmap_source} evaluation; "
        "differences of seed means)",
        fontsize=10,
        y=1.04,
    )
    return fig


def pareto(f: Findings) -> Figure | None:
    p = f.pareto
    if p.empty or "front" not in p:
        return None
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    for front, color, label in ((False, "tab:gray", "dominated"), (True, "tab:red", "Pareto front")):
        part = p[p["front"] == front]
        ax.errorbar(
            part["mono/map"],
            part["cross/map"],
            xerr=part["mono/map ±"].fillna(0),
            yerr=part["cross/map ±"].fillna(0),
            fmt="o",
            color=color,
            label=label,
            capsize=3,
        )
    front = p[p["front"]].sort_values("mono/map")
    ax.plot(front["mono/map"], front["cross/map"], "--", color="tab:red", lw=1)
    for _, row in p.iterrows():
        ax.annotate(
            f"a={row['mono_ratio']:.2f}",
            (row["mono/map"], row["cross/map"]),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.set_xlabel("mono mAP")
    ax.set_ylabel("cross mAP")
    ax.set_title("mono vs cross mAP per configuration (seed means ± 95% CI)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def search(f: Findings) -> Figure | None:
    """Optuna importances (when there are enough configurations) and alpha x tau coloured by the objective."""
    done = _done(f)
    if done.empty:
        return None
    fig = Figure(figsize=(12, 4.2) if f.importance else (6.5, 4.2))
    if f.importance:
        left, right = fig.subplots(1, 2)
        items = sorted(f.importance.items(), key=lambda kv: kv[1])
        left.barh([k for k, _ in items], [v for _, v in items], color="tab:purple")
        left.set_xlabel("importance (normalised)")
        left.set_title("Optuna parameter importances: " + f.importance_note, fontsize=8)
    else:
        right = fig.subplots()
    data = done.dropna(subset=["temperature", f.objective])
    if len(data) >= 6 and data["mono_ratio"].nunique() > 2 and data["temperature"].nunique() > 2:
        try:  # a contour needs non-collinear points; fall back to the scatter alone
            right.tricontourf(
                data["mono_ratio"],
                np.log10(data["temperature"]),
                data[f.objective],
                levels=12,
                cmap="viridis",
                alpha=0.35,
            )
        except (ValueError, RuntimeError):
            pass
    points = right.scatter(
        data["mono_ratio"],
        np.log10(data["temperature"]),
        c=data[f.objective],
        cmap="viridis",
        s=30 + 15 * data["seeds"],
        edgecolors="black",
    )
    fig.colorbar(points, ax=right, label=name(f.objective))
    right.set_xlabel(ALPHA)
    right.set_ylabel(f"log10 {TAU}")
    right.set_title(f"{ALPHA} x {TAU}, colour = {name(f.objective)} (seed mean; size = seeds)", fontsize=9)
    return fig


def calibration(f: Findings) -> Figure | None:
    done = _done(f)
    if done.empty or "multi/ece" not in done:
        return None
    fig = Figure(figsize=(12, 4.2))
    left, right = fig.subplots(1, 2)
    for setting, color in COLORS.items():
        _curve(left, done, f"{setting}/ece", setting, color)
    _refs(left, f)
    left.set_xlabel("alpha")
    left.set_ylabel("ECE (lower is better)")
    left.set_title("ECE vs alpha (mean ± 95% CI over seeds)", fontsize=9)
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    right.plot([0, 1], [0, 1], "--", color="gray", lw=1, label="perfect calibration")
    for label, table in f.reliability.items():
        t = table[table["count"] > 0]
        right.plot(t["confidence"], t["accuracy"], "-o", markersize=3, label=f"{label} (ECE {A.ece_of(table):.3f})")
    right.set_xlabel("top-1 confidence")
    right.set_ylabel("top-1 accuracy")
    right.set_title("reliability (all queries, seeds pooled)", fontsize=9)
    right.legend(fontsize=7)
    return fig


def robustness(f: Findings) -> Figure | None:
    if f.robust.empty:
        return None
    frame = f.robust.sort_values("mono_ratio")
    fig = Figure(figsize=(12, 4))
    left, right = fig.subplots(1, 2)
    _curve(left, frame, "worst", "worst off-diagonal pair", "tab:red")
    _curve(left, frame, "mean", "mean off-diagonal pair", "tab:green")
    left.set_ylabel("mAP")
    _curve(right, frame, "std", "std across pairs", "tab:blue")
    _curve(right, frame, "range", "max - min across pairs", "tab:orange")
    right.set_ylabel("mAP spread")
    for ax in (left, right):
        _refs(ax, f)
        ax.set_xlabel("alpha")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"robustness across cross-lingual pairs ({f.robust_source} evaluation, mean ± 95% CI over seeds)", fontsize=10
    )
    return fig


def hr_deltas(f: Findings) -> Figure | None:
    d = f.hr_deltas
    if d.empty:
        return None
    d = d.sort_values("delta")
    fig = Figure(figsize=(7, 1.2 + 0.3 * len(d)))
    ax = fig.subplots()
    half = d["half"].to_numpy(float)
    colors = [
        "tab:red" if x.significant and x.mean < 0 else "tab:green" if x.significant else "tab:gray" for x in d["diff"]
    ]
    ax.barh(
        d["pair"],
        d["delta"],
        color=colors,
        xerr=np.where(np.isfinite(half), half, 0) if np.isfinite(half).any() else None,
        capsize=3,
    )
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel(f"mAP delta, {alpha_label(f.hybrid)} minus alpha=1 (95% CI)")
    ax.set_title("high-resource pairs (red: CI below 0, green: above 0)", fontsize=9)
    return fig


def languages(f: Findings) -> Figure | None:
    if f.lang_effect.empty:
        return None
    done = _done(f).copy()
    done["k"] = done["num_train_languages"]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.scatter(done["k"], done[f.objective], c=done["mono_ratio"], cmap="coolwarm", label="every configuration")
    _curve(ax, f.lang_effect, f.objective, "best per k", "black", x="k")
    ax.set_xlabel("number of training languages")
    ax.set_ylabel(name(f.objective))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def compare_sweeps(findings: list[Findings]) -> Figure | None:
    """Several sweeps side by side: the objective and the worst pair against alpha."""
    if len(findings) < 2:
        return None
    fig = Figure(figsize=(12, 4))
    left, right = fig.subplots(1, 2)
    for i, f in enumerate(findings):
        color = f"C{i}"
        _curve(left, _done(f), f.objective, f.sweep.name, color)
        if not f.robust.empty:
            _curve(right, f.robust, "worst", f.sweep.name, color)
    left.set_title("objective vs alpha, per sweep", fontsize=9)
    right.set_title("worst off-diagonal pair mAP vs alpha, per sweep", fontsize=9)
    for ax in (left, right):
        ax.set_xlabel("alpha")
        ax.set_xlim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    return fig


def gap_curves(f: Findings) -> Figure | None:
    """The references' gap and the best hybrid's against each, by training step, mean ± 95% CI over seeds:
    where the gap opens or closes."""
    gaps = gaps_by_step(f)
    if not gaps or max(len(by) for by in gaps.values()) < 2:
        return None
    fig = Figure(figsize=(6.5, 3.8))
    ax = fig.subplots()
    for (label, by), color in zip(gaps.items(), ("tab:purple", "tab:green", "tab:orange")):
        steps = sorted(by)
        means = [by[s][0].mean for s in steps]
        halves = [by[s][0].half if np.isfinite(by[s][0].half) else 0.0 for s in steps]
        ax.errorbar(steps, means, yerr=halves, label=label, color=color, marker="o", capsize=3)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"difference in {name(f.objective)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{f.sweep.name}: {f.dataset}, proxy evaluation, mean ± 95% CI over seeds", fontsize=10)
    return fig


FIGURES = {
    "alpha_curves": alpha_curves,
    "gaps_by_step": gap_curves,
    "heatmaps": heatmaps,
    "pareto": pareto,
    "search": search,
    "calibration": calibration,
    "robustness": robustness,
    "hr_deltas": hr_deltas,
    "languages": languages,
}


def render(f: Findings) -> dict[str, bytes]:
    """Every figure the sweep supports, as PNG bytes by name."""
    out = {}
    for key, draw in FIGURES.items():
        fig = draw(f)
        if fig is not None:
            out[key] = to_png(fig)
    return out
