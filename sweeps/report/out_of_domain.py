"""Out of domain: what the report says about each zero-shot set (`sweep.zero_shot_datasets`, e.g. MLQA-R),
which no trial trained on and nothing was selected on, so a configuration picked in domain is judged here
without a winner's curse.

Per configuration in alpha order: zero-shot MRR@10 and mAP per setting and ECE (means with 95% intervals over
seeds), the base model and the paper's row beside them as context; whether the in-domain ranking of the
configurations holds out of domain (Spearman's rho, exact for few configurations, and the in-domain best's
place); robustness across the set's language pairs (the worst pair, the spread, the pairs with a high-
resource language against those without); and the merges of the references against the hybrid.
Pure: reads `Findings`, never MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from hybrid.languages import HIGH_RESOURCE
from sweeps.report import analysis as A
from sweeps.report.findings import Findings, _base, alpha_label, ci_text, name
from sweeps.report.glance import merges_table
from sweeps.stats import mean_ci

RETRIEVAL = [f"{s}/{m}" for s in ("mono", "cross", "multi") for m in ("mrr@10", "map")]
CALIBRATION = [f"{s}/ece" for s in ("mono", "cross", "multi")]
# Context, not a comparison: another model (XLM-R base) at another scale, trained with hybrid batches.
PAPER = {"mlqa-r": {"mono/map": 0.648, "cross/map": 0.623, "multi/map": 0.512}}
PAPER_LABEL = "paper: XLM-R hybrid (arXiv 2408.10536, Table 1; context only)"


@dataclass
class OutOfDomain:
    dataset: str
    by_alpha: pd.DataFrame  # configuration rows (alpha order), then the base model and the paper's row
    calibration: pd.DataFrame  # ECE per setting by configuration
    agreement: list[str]  # does the in-domain ranking hold here
    robustness: pd.DataFrame  # per configuration: worst pair, spread, high-resource pairs against the others
    merges: pd.DataFrame  # the merges against the best hybrid and the references, on this set


def _summary(f: Findings, dataset: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-run table, per-configuration summary in alpha order) of the completed runs evaluated on `dataset`."""
    table = A.run_table(f.sweep.metrics, f.sweep.runs, dataset, f.sweep.final_step).table
    table = table[table["complete"]] if len(table) else table
    columns = [c for c in [*RETRIEVAL, *CALIBRATION] if c in table]
    if table.empty or not columns:
        return table, pd.DataFrame()
    summary = A.config_summary(table, columns, f.objective, f.sweep.lower_is_better)
    return table, summary.sort_values(["mono_ratio", "config_key"], kind="stable").reset_index(drop=True)


def _rows(summary: pd.DataFrame, columns: list[str]) -> list[dict[str, str]]:
    return [
        {"configuration": alpha_label(row), "seeds": str(int(row["seeds"]))}
        | {name(c): ci_text(row[c], row[f"{c} ±"], int(row["seeds"])) for c in columns if c in row}
        for _, row in summary.iterrows()
    ]


def by_alpha(f: Findings, dataset: str, summary: pd.DataFrame) -> pd.DataFrame:
    rows = _rows(summary, RETRIEVAL)
    base = _base(f.sweep, dataset)
    if base:
        rows.append(
            {"configuration": "base model", "seeds": "-"} | {name(c): f"{base[c]:.3f}" for c in RETRIEVAL if c in base}
        )
    if dataset in PAPER:
        rows.append(
            {"configuration": PAPER_LABEL, "seeds": "-"} | {name(c): f"{v:.3f}" for c, v in PAPER[dataset].items()}
        )
    return pd.DataFrame(rows).fillna("-")


def agreement(f: Findings, dataset: str, summary: pd.DataFrame) -> list[str]:
    """Spearman's rho between the configurations' in-domain and out-of-domain seed means of the objective,
    and where the in-domain best lands out of domain."""
    column = f.objective
    if summary.empty or column not in summary or f.summary.empty or column not in f.summary:
        return [f"no configuration has both evaluations of {name(column)}"]
    both = f.summary[f.summary["complete"]][["config_key", column]].merge(
        summary[["config_key", "mono_ratio", column]], on="config_key", suffixes=(" in", " out")
    )
    if len(both) < 3:
        return [f"{len(both)} configurations with both evaluations: a rank correlation needs 3"]
    rho, p = A.rank_trend(both[f"{column} in"].to_numpy(), both[f"{column} out"].to_numpy())
    order = both.sort_values(f"{column} out", ascending=f.sweep.lower_is_better, kind="stable")["config_key"].tolist()
    lines = [
        f"{name(column)}: Spearman rho (in domain, {dataset}) over {len(both)} configurations = {rho:+.2f} "
        f"({'p < 0.001' if p < 1e-3 else f'p = {p:.2g}'}, exact); a rank agreement without an interval."
    ]
    if f.best is not None and f.best["config_key"] in order:
        place, best = order.index(f.best["config_key"]) + 1, summary.set_index("config_key").loc[order[0]]
        lines.append(
            f"The in-domain best, {alpha_label(f.best)}, is {place} of {len(order)} on {dataset}"
            + ("." if place == 1 else f"; first there: {alpha_label(best)} ({best[column]:.3f}).")
        )
    return lines


def _pairs(languages: list[str], high: set[str]) -> dict[str, list[tuple[str, str]]]:
    every = [(q, c) for q in languages for c in languages]
    return {
        "pairs with a high-resource language": [(q, c) for q, c in every if q in high or c in high],
        "pairs without one": [(q, c) for q, c in every if q not in high and c not in high],
    }


def robustness(
    f: Findings, dataset: str, table: pd.DataFrame, summary: pd.DataFrame, high_resource: tuple[str, ...]
) -> pd.DataFrame:
    """Per configuration over its seeds: the worst cross-lingual pair's mAP, the pair it most often is, the
    spread (std) across cross-lingual pairs, and the mean mAP of the pairs (mono included) with a high-resource
    language against those without."""
    if summary.empty:
        return pd.DataFrame()
    per_run, _ = A.robustness(table, f.sweep.matrices, dataset)
    if per_run.empty:
        return pd.DataFrame()
    mats, _ = A.matrices_for(f.sweep.matrices, list(per_run["run_id"]), dataset, "map")
    languages = list(next(iter(mats.values())).index)
    groups = _pairs(languages, set(high_resource))
    seeds = dict(zip(per_run["run_id"], per_run["seed"]))
    rows = []
    for _, config in summary.iterrows():
        runs = per_run[per_run["config_key"] == config["config_key"]]
        if runs.empty:
            continue
        row = {"configuration": alpha_label(config), "seeds": str(len(runs))}
        for column, label in (("worst", "worst pair mAP"), ("std", "spread (std over pairs)")):
            row[label] = ci_text(*mean_ci(runs[column].dropna().to_numpy()), len(runs))
        row["worst pair (most often)"] = runs["worst_pair"].mode().iloc[0]
        by_seed = {int(seeds[r]): mats[r] for r in runs["run_id"] if r in mats}
        for label, pairs in groups.items():
            values = list(A.cells_mean(by_seed, pairs).values())
            row[f"{label} ({len(pairs)})"] = ci_text(*mean_ci(values), len(values)) if values else "-"
        rows.append(row)
    return pd.DataFrame(rows)


def analyse(f: Findings, high_resource: tuple[str, ...] = HIGH_RESOURCE) -> list[OutOfDomain]:
    """One `OutOfDomain` per zero-shot set the sweep evaluated; `high_resource`: the report's high-resource
    group (its question 2)."""
    out = []
    for dataset in f.sweep.zero_shot_datasets:
        table, summary = _summary(f, dataset)
        if summary.empty:
            continue
        out.append(
            OutOfDomain(
                dataset,
                by_alpha(f, dataset, summary),
                pd.DataFrame(_rows(summary, CALIBRATION)),
                agreement(f, dataset, summary),
                robustness(f, dataset, table, summary, high_resource),
                merges_table(f, dataset) if len(f.sweep.merges) else pd.DataFrame(),
            )
        )
    return out
