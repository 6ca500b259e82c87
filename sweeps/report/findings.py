"""Everything the report states about one sweep, computed once: the tables behind the figures and, per
research question, the answer with its numbers and intervals (or what would cover the question).

Pure: reads a loaded `data.Sweep`, never MLflow. The same lines feed the terminal summary and the HTML.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from evaluation.mlflow_layout import FULL, PROXY, SETTINGS
from hybrid.languages import HIGH_RESOURCE
from sweeps.knobs import BY_NAME
from sweeps.knobs import NAMES as KNOBS
from sweeps.report import analysis as A
from sweeps.report import best_alpha as B
from sweeps.report.data import Sweep
from sweeps.report.questions import SOURCES
from sweeps.stats import mean_pm

RETRIEVAL = [f"{s}/{m}" for m in ("map", "mrr@10") for s in SETTINGS]
TABLED = ("mono_ratio", "temperature", "lang_temperature", "num_train_languages", "lr")  # own columns below
ALPHA, TAU, LANG_T, LANGUAGES, LR = (BY_NAME[k].short for k in TABLED)  # the knobs' labels (`sweeps.knobs`)
COLUMNS = RETRIEVAL + ["multi/rank_distance"] + [f"{s}/ece" for s in SETTINGS]
# Where a side of a comparison was chosen as the best on the data it is then judged on (winner's curse).
PICKED = "picked as the best on this held-out set, so differences lean in its favour"
NAMES = {"map": "mAP", "mrr@10": "MRR@10", "rank_distance": "rank distance", "ece": "ECE", "map@20": "mAP@20"}


def name(column: str) -> str:
    setting, _, metric = column.partition("/")
    return f"{setting} {NAMES.get(metric, metric)}" if metric else NAMES.get(setting, setting)


def ci_text(mean: float, half: float, n: int, digits: int = 3) -> str:
    if not math.isfinite(mean):
        return "n/a"
    if n < 2 or not math.isfinite(half):
        return f"{mean:.{digits}f} ({n} seed: CI unavailable)"
    return f"{mean_pm(mean, half, digits)} (95% CI, {n} seeds)"


def alpha_label(row: pd.Series | None) -> str:
    if row is None:
        return "-"
    rest = A.stratum_label(row)
    return f"{ALPHA}={row['mono_ratio']:.2f}" + (f", {rest}" if rest else "")


def spearman_line(frame: pd.DataFrame, column: str, what: str) -> str | None:
    data = frame[["mono_ratio", column]].dropna()
    if len(data) < 3 or data["mono_ratio"].nunique() < 2 or data[column].nunique() < 2:
        return None
    rho, p = A.rank_trend(data["mono_ratio"], data[column])
    return (
        f"Trend over the {len(data)} completed configurations (seed means): Spearman rho(alpha, {what}) = "
        f"{rho:+.2f} ({'p < 0.001' if p < 1e-3 else f'p = {p:.2g}'}); a rank trend without an interval; tau "
        "can differ between configurations (see the table)."
    )


@dataclass
class Findings:
    sweep: Sweep
    dataset: str
    selection: A.Selection
    summary: pd.DataFrame
    best: pd.Series | None
    hybrid: pd.Series | None  # best completed configuration with 0 < alpha < 1
    ref0: pd.Series | None
    ref1: pd.Series | None
    pruned: int
    robust: pd.DataFrame  # per config: worst / std / range means and half-widths
    robust_runs: pd.DataFrame  # per completed run: worst, worst_pair, std, range
    worst_pair: pd.Series  # per config: its runs' most frequent worst pair
    robust_source: str
    pareto: pd.DataFrame
    importance: dict[str, float] | None
    importance_note: str
    lang_effect: pd.DataFrame
    high_resource: list[str]
    hr_deltas: pd.DataFrame
    hr_summary: dict[str, A.Diff]  # "all", "mono", "cross": mean over the high-resource pairs, A - alpha=1
    heatmaps: dict[str, pd.DataFrame]  # "best", "best - alpha=0", "best - alpha=1"
    heatmap_source: str
    reliability: dict[str, pd.DataFrame]  # label -> pooled reliability table
    compare: dict[str, Comparison] = field(default_factory=dict)  # eval set -> best vs the references
    base: dict[str, float] = field(default_factory=dict)  # the base model on the held-out set, "multi/map" -> value
    best_alpha: list[B.BestAlpha] = field(default_factory=list)  # per evaluation set and objective (`best_alpha`)

    @property
    def objective(self) -> str:
        return self.sweep.objective

    @functools.cached_property
    def answers(self) -> dict[str, list[str]]:
        """Per research question (`questions.QUESTIONS`), the lines that answer it."""
        return {
            "q1": answer_q1(self),
            "q2": answer_q2(self),
            "q3": answer_q3(self),
            "q4": answer_q4(self),
            "q5": answer_q5(self),
        }


def _value(summary_row: pd.Series | None, column: str) -> str:
    if summary_row is None or column not in summary_row:
        return "-"
    return ci_text(summary_row[column], summary_row[f"{column} ±"], int(summary_row["seeds"]))


@dataclass
class Comparison:
    """The best configuration against the alpha = 0 / 1 references on one evaluation set, read from one source
    (the full evaluation when all their runs have it)."""

    dataset: str
    source: str
    table: pd.DataFrame  # per run (the three configurations only)
    rows: dict[str, pd.Series | None]  # "alpha=0", "best", "alpha=1": their seed means on this set
    frame: pd.DataFrame  # the rendered table: metric x (base, alpha=0, best, alpha=1, differences)

    def diff(self, a: str, b: str, column: str) -> A.Diff | None:
        ra, rb = self.rows.get(a), self.rows.get(b)
        if ra is None or rb is None or ra["config_key"] == rb["config_key"]:
            return None
        return A.diff_ci(
            A.by_seed(self.table, ra["config_key"], column), A.by_seed(self.table, rb["config_key"], column)
        )


def compare_on(
    sweep: Sweep, dataset: str, configs: dict[str, pd.Series | None], columns: list[str], base: dict[str, float]
) -> Comparison | None:
    keys = {r["config_key"] for r in configs.values() if r is not None}
    ids = list(sweep.runs[sweep.runs["config_key"].isin(keys)]["run_id"])
    sel = A.run_table(sweep.metrics, sweep.runs, dataset, sweep.final_step, ids)
    cols = [c for c in columns if c in sel.table]
    if sel.table.empty or not cols:
        return None
    summary = A.config_summary(sel.table, cols, cols[0], False).set_index("config_key", drop=False)
    rows = {
        label: summary.loc[r["config_key"]] if r is not None and r["config_key"] in summary.index else None
        for label, r in configs.items()
    }
    comp = Comparison(dataset, sel.source, sel.table, rows, pd.DataFrame())
    out = []
    for col in cols:
        row = {"metric": name(col), "base model": f"{base[col]:.3f}" if col in base else "-"}
        row |= {label: _value(r, col) for label, r in rows.items()}
        for ref in ("alpha=0", "alpha=1"):
            d = comp.diff("best", ref, col)
            row[f"best - {ref}"] = "-" if d is None else d.text()
        out.append(row)
    comp.frame = pd.DataFrame(out)
    return comp


def _base(sweep: Sweep, dataset: str, source: str = FULL) -> dict[str, float]:
    """The base model's figures on `dataset`, from `source` (FULL or PROXY) where it has them, else the other."""
    rows = sweep.metrics[(sweep.metrics["run_id"] == sweep.parent_id) & (sweep.metrics["dataset"] == dataset)]
    wanted = source if source in (FULL, PROXY) else FULL
    rows = rows[rows["source"] == (wanted if (rows["source"] == wanted).any() else ({FULL, PROXY} - {wanted}).pop())]
    return {f"{s}/{m}": v for s, m, v in zip(rows["setting"], rows["metric"], rows["value"])}


def _runs(table: pd.DataFrame, row: pd.Series | None) -> list[str]:
    if row is None:
        return []
    return list(table[(table["config_key"] == row["config_key"]) & table["complete"]]["run_id"])


def _seed_mats(table: pd.DataFrame, mats: dict[str, pd.DataFrame], row) -> dict[int, pd.DataFrame]:
    seeds = dict(zip(table["run_id"], table["seed"]))
    return {int(seeds[r]): mats[r] for r in _runs(table, row) if r in mats}


def analyse(sweep: Sweep, high_resource: tuple[str, ...] = HIGH_RESOURCE) -> Findings:
    """Every comparison of the report, each computed once by the small function that owns it."""
    dataset = sweep.main_dataset
    sel = A.run_table(sweep.metrics, sweep.runs, dataset, sweep.final_step)
    configs = _configurations(sel.table, sweep)
    focus = configs["hybrid"] if configs["hybrid"] is not None else configs["best"]
    ref0, ref1 = configs["ref0"], configs["ref1"]
    return Findings(
        sweep=sweep,
        dataset=dataset,
        selection=sel,
        **configs,
        pruned=int((~sel.table["complete"]).sum()) if len(sel.table) else 0,
        **_robustness(sel.table, sweep, dataset),
        pareto=_pareto(configs["summary"]),
        **_importance(configs["summary"], sweep),
        lang_effect=A.languages_effect(configs["summary"], sweep.objective, len(sweep.train_languages))
        if len(configs["summary"])
        else pd.DataFrame(),
        **_pair_matrices(sel.table, sweep, dataset, focus, ref0, ref1, configs["hybrid"] is not None, high_resource),
        reliability=_reliability(sel.table, sweep, dataset, focus, ref0, ref1),
        compare=_comparisons(sweep, dataset, {"alpha=0": ref0, "best": configs["best"], "alpha=1": ref1}),
        base=_base(sweep, dataset, sel.source),
        best_alpha=B.estimates(sweep),
    )


def _configurations(table: pd.DataFrame, sweep: Sweep) -> dict:
    """The per-configuration summary, the best, the best hybrid (0 < alpha < 1) and the references."""
    columns = [c for c in dict.fromkeys([sweep.objective, *COLUMNS]) if c in table]
    summary = A.config_summary(table, columns, sweep.objective, sweep.lower_is_better)
    done = summary[summary["complete"]] if len(summary) else summary
    hybrids = done[(done["mono_ratio"] > 0) & (done["mono_ratio"] < 1)] if len(done) else done
    ref0, ref1 = A.reference_pair(summary)
    return {
        "summary": summary,
        "best": A.best_config(summary),
        "hybrid": hybrids.iloc[0] if len(hybrids) else None,
        "ref0": ref0,
        "ref1": ref1,
    }


def _robustness(table: pd.DataFrame, sweep: Sweep, dataset: str) -> dict:
    """Worst cross-lingual pair and spread per run, per configuration, and each configuration's worst pair."""
    per_run, source = A.robustness(table, sweep.matrices, dataset) if len(table) else (pd.DataFrame(), "none")
    if per_run.empty:
        return {
            "robust": pd.DataFrame(),
            "robust_runs": per_run,
            "worst_pair": pd.Series(dtype=str),
            "robust_source": source,
        }
    return {
        "robust": A.config_summary(per_run, ["worst", "std", "range", "mean"], "worst", False),
        "robust_runs": per_run,
        "robust_source": source,
        "worst_pair": per_run.groupby("config_key", dropna=False)["worst_pair"].agg(lambda s: s.mode().iloc[0]),
    }


def _pareto(summary: pd.DataFrame) -> pd.DataFrame:
    pareto = (summary[summary["complete"]] if len(summary) else summary).copy()
    if {"mono/map", "cross/map"} <= set(pareto.columns):
        pareto["front"] = A.pareto_front(pareto, "mono/map", "cross/map")
    return pareto


def _importance(summary: pd.DataFrame, sweep: Sweep) -> dict:
    importance, note = (
        A.importances(summary, sweep.objective, sweep.lower_is_better)
        if len(summary)
        else (None, "no completed trials")
    )
    return {"importance": importance, "importance_note": note}


def _pair_matrices(
    table: pd.DataFrame, sweep: Sweep, dataset: str, focus, ref0, ref1, hybrid: bool, high_resource: tuple[str, ...]
) -> dict:
    """L x L mAP of the focus configuration (the best hybrid, else the best) and the references: the heatmaps
    and the high-resource pairs against alpha = 1."""
    ids = _runs(table, focus) + _runs(table, ref0) + _runs(table, ref1)
    mats, source = A.matrices_for(sweep.matrices, ids, dataset, "map")
    heatmaps = {}
    focus_m, m0, m1 = (_seed_mats(table, mats, r) for r in (focus, ref0, ref1))
    if focus_m:
        title = f"{alpha_label(focus)}: mAP (mean of {len(focus_m)} seeds)"
        heatmaps[title] = A.mean_matrix(list(focus_m.values()))
        for label, other, ref in (("alpha=0", m0, ref0), ("alpha=1", m1, ref1)):
            if other and ref["config_key"] != focus["config_key"]:
                heatmaps[f"{alpha_label(focus)} minus {label}"] = heatmaps[title] - A.mean_matrix(list(other.values()))
    languages = list(next(iter(mats.values())).index) if mats else []
    hr = A.high_resource(languages, high_resource)
    hr_summary = {}
    for part, keep in (("all", lambda q, c: True), ("mono", lambda q, c: q == c), ("cross", lambda q, c: q != c)):
        pairs = [(q, c) for q in hr for c in hr if keep(q, c)]
        hr_summary[part] = A.diff_ci(A.cells_mean(focus_m, pairs), A.cells_mean(m1, pairs))
    return {
        "high_resource": hr,
        "hr_summary": hr_summary,
        "heatmaps": heatmaps,
        "heatmap_source": source,
        "hr_deltas": A.pair_deltas(focus_m, m1, hr) if hybrid and focus_m and m1 else pd.DataFrame(),
    }


def _reliability(table: pd.DataFrame, sweep: Sweep, dataset: str, focus, ref0, ref1) -> dict[str, pd.DataFrame]:
    """Pooled reliability tables of alpha = 0, the focus configuration and alpha = 1 (each once)."""
    out = {}
    for label, row in (("alpha=0", ref0), (alpha_label(focus), focus), ("alpha=1", ref1)):
        found, _ = A.choose(sweep.reliability, _runs(table, row), dataset)
        if found and not any(
            row["config_key"] == r["config_key"] for r in (ref0, ref1) if r is not None and r is not row
        ):
            out[label] = A.pooled_reliability(list(found.values()))
    return out


def _comparisons(sweep: Sweep, dataset: str, configs: dict[str, pd.Series | None]) -> dict[str, Comparison]:
    """The best configuration against the references on the held-out set and on each zero-shot set."""
    out = {}
    for ds in [dataset, *sweep.zero_shot_datasets]:
        comp = compare_on(sweep, ds, configs, COLUMNS if ds == dataset else RETRIEVAL, _base(sweep, ds))
        if comp is not None:
            out[ds] = comp
    return out


def _diff(table: pd.DataFrame, a, b, column: str) -> str:
    return A.diff_ci(A.by_seed(table, a["config_key"], column), A.by_seed(table, b["config_key"], column)).text()


def _versus(f: Findings, column: str) -> list[str]:
    """'best vs alpha=0 / alpha=1' lines for `column` on the held-out comparison (full evaluation when present)."""
    comp = f.compare.get(f.dataset)
    if comp is None or comp.rows.get("best") is None:
        return []
    lines = []
    for ref in ("alpha=0", "alpha=1"):
        if comp.rows.get(ref) is not None and (d := comp.diff("best", ref, column)) is not None:
            lines.append(f"{alpha_label(comp.rows['best'])} vs {ref}: {name(column)} {d.text()}")
    return lines


def missing_references(f: Findings) -> list[str]:
    """One line per reference (alpha = 0, alpha = 1) without a completed trial, saying what happened to it."""
    lines = []
    for alpha, row in ((0.0, f.ref0), (1.0, f.ref1)):
        if row is not None:
            continue
        runs = f.selection.table
        hit = runs[np.isclose(runs["mono_ratio"].astype(float), alpha)] if len(runs) else runs
        why = (
            (
                f"it was pruned at step {int(hit['step'].max())} of {f.sweep.final_step} (the scheduler stops "
                "references too; --set sweep.scheduler=none keeps them)"
            )
            if len(hit)
            else "no evaluated trial at it"
        )
        lines.append(f"No completed alpha = {alpha:g} reference to compare with: {why}.")
    return lines


def unevaluated(f: Findings) -> list[str]:
    n = len(f.sweep.runs) - len(f.selection.table)
    return [f"{n} trial run(s) logged no evaluation on {f.dataset} (failed, killed or still running)."] if n else []


def answer_q1(f: Findings) -> list[str]:
    if f.best is None:
        return [f"Not answerable: no trial completed on {f.dataset}."]
    lines = [
        f"Held-out {f.dataset}: {int(f.summary['complete'].sum())} completed configurations ranked on the "
        f"{SOURCES.get(f.selection.source, f.selection.source)}"
        + (f"; {f.pruned} pruned trial(s) listed, not compared" if f.pruned else "")
        + ".",
        f"Best by {f.objective}: {alpha_label(f.best)} ({f.best['config_key']}): {name(f.objective)} "
        f"{ci_text(f.best[f.objective], f.best[f.objective + ' ±'], int(f.best['seeds']))}.",
    ]
    lines += unevaluated(f) + missing_references(f)
    comp = f.compare.get(f.dataset)
    versus = [
        line
        for column in ("multi/map", "multi/mrr@10", "mono/map", "cross/map", "mono/mrr@10", "cross/mrr@10")
        for line in _versus(f, column)
    ]
    if versus:
        lines += [
            f"Best vs the references on the {SOURCES.get(comp.source, comp.source)} (the best {PICKED}):",
            *versus,
        ]
    if trend := spearman_line(f.summary[f.summary["complete"]], "multi/map", "multi mAP"):
        lines.append(trend)
    for zs, comp in f.compare.items():
        if zs == f.dataset or comp.rows.get("best") is None:
            continue
        for column in ("multi/map", "multi/mrr@10"):
            row = comp.frame[comp.frame["metric"] == name(column)]
            if len(row):
                r = row.iloc[0]
                lines.append(
                    f"Out-of-domain {zs} ({SOURCES.get(comp.source, comp.source)}, never selected on): "
                    f"{name(column)} best {r['best']}; best - alpha=0 {r['best - alpha=0']}; best - alpha=1 "
                    f"{r['best - alpha=1']}; base model {r['base model']}."
                )
    if not f.sweep.zero_shot_datasets:
        lines.append(
            "Out-of-domain: not covered by this sweep (no zero-shot evaluation logged). Cover it with "
            "--set sweep.zero_shot_datasets=[mlqa-r] (MLQA-R, CC BY-NC 4.0; evaluated once after "
            "selection, on the best configuration and the alpha = 0 / 1 references)."
        )
    return lines


def answer_q2(f: Findings) -> list[str]:
    if f.hybrid is None:
        return ["Not covered by this sweep: no completed trial with 0 < alpha < 1 (--set sweep.trials=8)."]
    if f.ref1 is None:
        return ["Not covered by this sweep: no completed alpha = 1 reference trial."]
    if f.hr_deltas.empty:
        return [
            "Not answerable: no L x L mAP matrices for the high-resource languages among the evaluated ones "
            "(set them with --high-resource)."
        ]
    d = f.hr_deltas
    lower = d[[x.significant and x.mean < 0 for x in d["diff"]]]
    higher = d[[x.significant and x.mean > 0 for x in d["diff"]]]
    worst = d.sort_values("delta").iloc[0]
    lines = [
        f"{alpha_label(f.hybrid)} vs alpha=1, mAP on the {len(d)} ordered pairs of high-resource languages "
        f"({', '.join(f.high_resource)}), {SOURCES.get(f.heatmap_source, f.heatmap_source)}, "
        f"{f.hybrid['seeds']} vs {f.ref1['seeds']} seeds.",
        f"Mean over these pairs: {f.hr_summary['all'].text()}; monolingual pairs only: "
        f"{f.hr_summary['mono'].text()}; cross-lingual pairs only: {f.hr_summary['cross'].text()}.",
        f"Largest loss: {worst['pair']} {worst['diff'].text()} (pairs range {d['delta'].min():+.3f} to "
        f"{d['delta'].max():+.3f}).",
    ]
    if math.isfinite(d["diff"].iloc[0].half):
        lines.append(
            f"Pairs whose 95% CI lies below 0 (hybrid loses): {len(lower)} of {len(d)}"
            + (f" ({', '.join(lower['pair'])})" if len(lower) else "")
            + f"; above 0 (hybrid gains): "
            f"{len(higher)}" + (f" ({', '.join(higher['pair'])})" if len(higher) else "") + "."
        )
    else:
        lines.append(
            "Per-pair CIs unavailable (one seed on both sides): more seeds with --set sweep.seeds=3, and "
            "the references re-seeded too with --set sweep.reseed_references=true."
        )
    return lines


def answer_q3(f: Findings) -> list[str]:
    k = len(f.sweep.train_languages)
    if f.best is None:
        return [f"Not answerable: no trial completed on {f.dataset}."]
    if f.lang_effect.empty:
        return [
            f"Not covered by this sweep: every trial trained on the same {k or 'set of'} languages "
            f"({', '.join(f.sweep.train_languages) or 'unknown'}). Cover it with "
            "--set sweep.search.num_train_languages=[2,5,9] (the first k of data.train_languages)."
        ]
    lines = [
        f"Best configuration per number of training languages ({name(f.objective)}, "
        f"{SOURCES.get(f.selection.source, f.selection.source)}):"
    ]
    for _, row in f.lang_effect.iterrows():
        lines.append(
            f"k={int(row['k'])}: {alpha_label(row)}: "
            f"{ci_text(row[f.objective], row[f.objective + ' ±'], int(row['seeds']))}"
        )
    lo, hi = f.lang_effect.iloc[0], f.lang_effect.iloc[-1]
    lines.append(
        f"k={int(hi['k'])} vs k={int(lo['k'])} (their best configurations, each {PICKED}): {name(f.objective)} "
        f"{_diff(f.selection.table, hi, lo, f.objective)}."
    )
    return lines


def answer_q4(f: Findings) -> list[str]:
    comp = f.compare.get(f.dataset)
    if comp is None or comp.rows.get("best") is None or "multi/ece" not in comp.table:
        return ["Not answerable: no ECE logged for completed trials."]
    best = comp.rows["best"]
    lines = [
        f"ECE (lower is better; {SOURCES.get(comp.source, comp.source)}) is computed at each trial's own tau "
        "(softmax temperature = trained tau), so tau moves it as well as alpha."
    ]
    lines += missing_references(f)
    for column in ("multi/ece", "mono/ece", "cross/ece"):
        if column in best:
            lines.append(
                f"{alpha_label(best)} (best by {name(f.objective)}, {PICKED}): {name(column)} {_value(best, column)}"
            )
            lines += _versus(f, column)
    if trend := spearman_line(f.summary[f.summary["complete"]], "multi/ece", "multi ECE"):
        lines.append(trend)
    if f.reliability:
        lines.append(
            "Reliability diagram (all queries, seeds pooled; micro ECE, which can differ slightly from the "
            "macro ECE above): " + "; ".join(f"{label} {A.ece_of(t):.3f}" for label, t in f.reliability.items()) + "."
        )
    return lines


def answer_q5(f: Findings) -> list[str]:
    if f.robust.empty:
        return ["Not answerable: no L x L matrices for completed trials."]
    r = f.robust.set_index("config_key")
    runs = f.robust_runs
    langs = runs["languages"].mode().iloc[0]
    lines = [
        f"Off-diagonal (cross-lingual) mAP pairs, {SOURCES.get(f.robust_source, f.robust_source)}: "
        f"{int(runs['pairs'].max())} ordered pairs of {langs.replace(',', ', ')}; spread = std (population) "
        "and max - min across the pairs of a run, then mean over seeds."
    ]
    shown = set()
    for label, row in (("alpha=0", f.ref0), (alpha_label(f.best) + " (best)", f.best), ("alpha=1", f.ref1)):
        if row is not None and row["config_key"] in r.index and row["config_key"] not in shown:
            shown.add(row["config_key"])
            x = r.loc[row["config_key"]]
            lines.append(
                f"{label}: worst pair ({f.worst_pair[row['config_key']]}) "
                f"{ci_text(x['worst'], x['worst ±'], int(x['seeds']))}; std "
                f"{ci_text(x['std'], x['std ±'], int(x['seeds']))}; max - min "
                f"{ci_text(x['range'], x['range ±'], int(x['seeds']))}."
            )
    for ref, label in ((f.ref0, "alpha=0"), (f.ref1, "alpha=1")):
        if f.best is not None and ref is not None and ref["config_key"] != f.best["config_key"]:
            t = f.robust_runs
            lines.append(
                f"{alpha_label(f.best)} (best, {PICKED}) vs {label}: worst pair {_diff(t, f.best, ref, 'worst')}; "
                f"std {_diff(t, f.best, ref, 'std')}"
            )
    if trend := spearman_line(f.robust, "worst", "worst-pair mAP"):
        lines.append(trend)
    return lines


def trials_table(f: Findings) -> pd.DataFrame:
    """The per-configuration table: knobs, seeds, steps, metrics as mean ± 95% CI."""
    if f.summary.empty:
        return f.summary
    k = len(f.sweep.train_languages)
    rows = []
    for _, row in f.summary.iterrows():
        out = {
            "config_key": row["config_key"],
            ALPHA: f"{row['mono_ratio']:.3f}",
            TAU: f"{row['temperature']:.4g}",
            LANG_T: f"{row.get('lang_temperature', np.nan):g}",
            LANGUAGES: int(row["num_train_languages"]) if pd.notna(row.get("num_train_languages", np.nan)) else k,
            "seeds": int(row["seeds"]),
            "step": f"{row['step']}" + ("" if row["complete"] else " (pruned)"),
        }
        if "lr" in row and pd.notna(row["lr"]):
            out[LR] = f"{row['lr']:.2g}"
        out |= {k: str(row[k]) for k in KNOBS if k not in TABLED and k in row and pd.notna(row[k])}
        for col in [c for c in COLUMNS if c in f.summary]:
            mean, half = row[col], row[f"{col} ±"]
            digits = 1 if col.endswith("rank_distance") else 3
            out[name(col)] = mean_pm(mean, half, digits) if math.isfinite(mean) else "n/a"
        rows.append(out)
    return pd.DataFrame(rows)


def best_alpha_table(found: list[B.BestAlpha], held_out: str) -> pd.DataFrame:
    """Objectives as rows, evaluation sets as columns, each cell the best alpha [95% interval] with its
    caveats or why there is none; a last row says what each column's estimates rest on."""

    def column(dataset: str) -> str:
        return f"{dataset} ({'held-out' if dataset == held_out else 'out-of-domain'})"

    cells: dict[str, dict[str, str]] = {}
    for b in found:
        cells.setdefault(column(b.dataset), {})[name(b.objective)] = b.text()
    for dataset in dict.fromkeys(b.dataset for b in found):
        bases = dict.fromkeys(b.basis() for b in found if b.dataset == dataset and b.trials)
        cells[column(dataset)]["fitted on"] = " / ".join(bases) or "-"
    return pd.DataFrame(cells).rename_axis("best alpha (95% interval)").reset_index()


def best_alpha_lines(found: list[B.BestAlpha], held_out: str) -> list[str]:
    """`best_alpha_table` as terminal lines, left-aligned, under the method in one sentence; one line when no
    evaluation set has an estimate (the first reason)."""
    if not found:
        return []
    if all(b.fit is None for b in found):
        return [f"Best alpha with a 95% interval: no estimate ({found[0].reason})."]
    frame = best_alpha_table(found, held_out)
    rows = [list(frame.columns), *frame.astype(str).to_numpy().tolist()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(frame.columns))]
    return [B.METHOD, *("  " + "   ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows)]
