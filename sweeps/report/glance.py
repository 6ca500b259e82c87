"""Answers at a glance: one row per research question, the comparison that answers it, its 95% interval,
and a verdict worded by `verdicts` (better / worse in the metric's direction, equivalent inside the margin
stated in advance, or not separable at this budget), with a caveat where a side was picked as the best on
the same held-out data. The README's study table is copied from it.

The ratio's effect is read as alpha = 0 against alpha = 1 at the same tau (the references), where the
sweep's interval rests on their shared seeds; the best configuration is named beside it. Pure: reads
`Findings`, never MLflow.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from evaluation.mlflow_layout import PROXY
from sweeps.knobs import MERGE_WEIGHT
from sweeps.report import analysis as A
from sweeps.report.findings import Findings, _seed_mats, alpha_label, ci_text, name
from sweeps.report.questions import BEYOND, QUESTIONS, SOURCES
from sweeps.report.verdicts import Contrast, lower_is_better, margin_for, verdict
from sweeps.stats import mean_ci, mean_pm


def finding(contrasts: dict[str, Contrast], head: str) -> str:
    parts = [
        f"{k} {mean_pm(c.diff.mean, c.diff.half, signed=True)}" + ("" if math.isfinite(c.diff.half) else " (no CI)")
        for k, c in contrasts.items()
        if c is not None and math.isfinite(c.diff.mean)
    ]
    return head + "; ".join(parts) if parts else head + "no comparison available"


def answer(contrasts: dict[str, Contrast], head: str, note: str = "") -> tuple[str, str]:
    """(finding, verdict) of one row: the differences under `head`, then `note` (a selection caveat)."""
    return finding(contrasts, head) + "." + note, verdict(list(contrasts.values()))


def picked(f: Findings, *sides: tuple[str, int]) -> str:
    """The caveat of a comparison whose sides (who, out of how many) were chosen as the best on the data
    they are judged on: their values there are optimistic (the winner's curse)."""
    chosen = [(who, n) for who, n in sides if n >= 2]
    if not chosen:
        return ""
    whom = " and ".join(f"{who} (the best of {n})" for who, n in chosen)
    verb, its, be = ("was", "its value", "is") if len(chosen) == 1 else ("were", "their values", "are")
    return f" Selection: {whom} {verb} picked on this held-out set ({f.dataset}), so {its} there {be} optimistic."


def _completed(f: Findings) -> pd.DataFrame:
    return f.summary[f.summary["complete"]] if len(f.summary) else f.summary


def hybrids(f: Findings) -> int:
    """How many completed configurations the best hybrid (0 < alpha < 1) was picked from."""
    done = _completed(f)
    return int(((done["mono_ratio"] > 0) & (done["mono_ratio"] < 1)).sum()) if len(done) else 0


def contrast(a: str, b: str, what: str, diff: A.Diff, column: str) -> Contrast:
    """`a - b` on `what`, judged in `column`'s direction and margin (`verdicts`)."""
    return Contrast(a, b, what, diff, lower_is_better(column), margin_for(column))


def _ref_diffs(f: Findings, columns: list[str]) -> dict[str, Contrast]:
    comp = f.compare.get(f.dataset)
    if comp is None or comp.rows.get("alpha=0") is None or comp.rows.get("alpha=1") is None:
        return {}
    return {
        name(c): contrast("alpha=0", "alpha=1", name(c), comp.diff("alpha=0", "alpha=1", c), c)
        for c in columns
        if c in comp.table
    }


def _unseen_diff(f: Findings) -> dict[str, Contrast]:
    """alpha = 0 - alpha = 1 on the mean mAP of the L x L pairs that involve a language never trained on,
    and on the pairs among trained languages."""
    table = f.selection.table
    if f.ref0 is None or f.ref1 is None or table.empty:
        return {}
    ids = list(table[table["config_key"].isin([f.ref0["config_key"], f.ref1["config_key"]])]["run_id"])
    mats, _ = A.matrices_for(f.sweep.matrices, ids, f.dataset, "map")
    m0, m1 = _seed_mats(table, mats, f.ref0), _seed_mats(table, mats, f.ref1)
    if not m0 or not m1:
        return {}
    langs = list(next(iter(m0.values())).index)
    trained = set(f.sweep.train_languages)
    unseen = [x for x in langs if x not in trained]
    if not unseen:
        return {}
    parts = {
        "mAP on trained-language pairs": [(q, c) for q in langs for c in langs if q in trained and c in trained],
        f"mAP on pairs with an unseen language ({', '.join(unseen)})": [
            (q, c) for q in langs for c in langs if q in unseen or c in unseen
        ],
    }
    return {
        what: contrast("alpha=0", "alpha=1", what, A.diff_ci(A.cells_mean(m0, pairs), A.cells_mean(m1, pairs)), "map")
        for what, pairs in parts.items()
    }


def _best_text(f: Findings) -> str:
    if f.best is None:
        return ""
    return (
        f" Best by {name(f.objective)}: {alpha_label(f.best)} "
        f"({ci_text(f.best[f.objective], f.best[f.objective + ' ±'], int(f.best['seeds']))}; picked on this "
        "held-out set, so its value is optimistic)."
    )


def q1(f: Findings) -> tuple[str, str]:
    contrasts = _ref_diffs(f, ["mono/map", "cross/map", "multi/map"]) | _unseen_diff(f)
    return answer(contrasts, "alpha=0 - alpha=1: ", _best_text(f))


def q2(f: Findings) -> tuple[str, str]:
    if f.hybrid is None or f.ref1 is None or not f.hr_summary:
        return "no hybrid (0 < alpha < 1) and alpha = 1 pair to compare", "not covered"
    contrasts = {
        f"{part} pairs": contrast("hybrid", "alpha=1", f"{part} pairs", f.hr_summary[part], "map")
        for part in ("mono", "cross", "all")
    }
    head = f"{alpha_label(f.hybrid)} (hybrid) - alpha=1, mAP over the pairs of {', '.join(f.high_resource)}: "
    return answer(contrasts, head, picked(f, ("the hybrid", hybrids(f))))


def arm(f: Findings) -> pd.DataFrame:
    """The completed configurations that differ only in num_train_languages: the largest such group."""
    s = f.summary
    if s.empty or "num_train_languages" not in s:
        return s.iloc[0:0]
    done = s[s["complete"]].copy()
    done["k"] = done["num_train_languages"].fillna(len(f.sweep.train_languages))
    knobs = [k for k in A.KNOBS if k != "num_train_languages" and k in done]
    groups = [g for _, g in done.groupby(A.same_knobs(done, knobs)) if g["k"].nunique() > 1]
    return max(groups, key=lambda g: g["k"].nunique()).sort_values("k") if groups else done.iloc[0:0]


def _largest_k_group(f: Findings, *rows: pd.Series) -> int:
    """The most configurations any of `rows`' numbers of training languages had to pick its best from."""
    k = _completed(f)["num_train_languages"].fillna(len(f.sweep.train_languages))
    return max(int((k == row["k"]).sum()) for row in rows)


def q3(f: Findings) -> tuple[str, str]:
    """k against k at otherwise equal knobs (`arm`); else each k's best configuration, other knobs differing."""
    group, same = arm(f), True
    if group.empty:
        group, same = f.lang_effect, False
    if group.empty:
        return "every trial trained on the same languages", "not covered"
    lo, hi = group.iloc[0], group.iloc[-1]
    values = ", ".join(
        f"k={int(r['k'])} {ci_text(r[f.objective], r[f.objective + ' ±'], int(r['seeds']))}"
        for _, r in group.iterrows()
    )
    d = A.diff_ci(
        A.by_seed(f.selection.table, hi["config_key"], f.objective),
        A.by_seed(f.selection.table, lo["config_key"], f.objective),
    )
    high, low = f"k={int(hi['k'])}", f"k={int(lo['k'])}"
    contrasts = {f"{high} - {low}": contrast(high, low, name(f.objective), d, f.objective)}
    head = (
        f"{alpha_label(lo.drop('num_train_languages'))}, {name(f.objective)}: "
        if same
        else f"each k's best configuration (other knobs differ), {name(f.objective)}: "
    )
    note = "" if same else picked(f, (f"each k's configuration ({high}, {low})", _largest_k_group(f, hi, lo)))
    return answer(contrasts, head + values + "; ", note)


def q4(f: Findings) -> tuple[str, str]:
    return answer(_ref_diffs(f, ["mono/ece", "cross/ece", "multi/ece"]), "alpha=0 - alpha=1 (lower ECE is better): ")


def q5(f: Findings) -> tuple[str, str]:
    if f.ref0 is None or f.ref1 is None or f.robust_runs.empty:
        return "no L x L matrices of both references", "not covered"
    t = f.robust_runs
    contrasts = {
        what: contrast(
            "alpha=0",
            "alpha=1",
            what,
            A.diff_ci(A.by_seed(t, f.ref0["config_key"], column), A.by_seed(t, f.ref1["config_key"], column)),
            column,
        )
        for what, column in (("worst-pair mAP", "worst"), ("std of pair mAP", "std"))
    }
    head = f"alpha=0 - alpha=1 across the {int(t['pairs'].max())} cross-lingual pairs (lower std is better): "
    return answer(contrasts, head)


def gaps_by_step(f: Findings) -> dict[str, dict[int, tuple[A.Diff, list[float], list[float]]]]:
    """On the objective at every checkpoint, from the proxy evaluation (the only one logged at every step),
    paired over seeds: alpha = 0 - alpha = 1, and the best hybrid (0 < alpha < 1) against each reference.
    Per comparison and step: (the difference, side A's values, side B's values)."""
    m = f.sweep.history
    if f.ref0 is None or f.ref1 is None or m.empty:
        return {}
    m = m[(m["dataset"] == f.dataset) & (m["source"] == PROXY)]
    seeds = dict(zip(f.selection.table["run_id"], f.selection.table["seed"]))
    done = f.selection.table[f.selection.table["complete"]]
    pairs = {"alpha=0 - alpha=1": (f.ref0, f.ref1)}
    if f.hybrid is not None:
        pairs |= {"hybrid - alpha=0": (f.hybrid, f.ref0), "hybrid - alpha=1": (f.hybrid, f.ref1)}
    gaps: dict[str, dict[int, tuple[A.Diff, list[float], list[float]]]] = {}
    for label, rows in pairs.items():
        sides = [set(done[done["config_key"] == r["config_key"]]["run_id"]) for r in rows]
        for step in sorted(set(m["step"]) - {0}):
            at = m[m["step"] == step]
            values = [{int(seeds[r]): v for r, v in zip(at["run_id"], at["value"]) if r in ids} for ids in sides]
            if values[0] and values[1]:
                gaps.setdefault(label, {})[int(step)] = (
                    A.diff_ci(*values),
                    list(values[0].values()),
                    list(values[1].values()),
                )
    return gaps


def references_by_step(f: Findings) -> pd.DataFrame:
    """`gaps_by_step` as a table: the references' values, each difference and the references' verdict per
    step, so "where does the gap open or close" reads down a column."""
    gaps = gaps_by_step(f)
    rows = []
    for step, (d, ref0, ref1) in gaps.get("alpha=0 - alpha=1", {}).items():
        row = {
            "step": step,
            "alpha=0": ci_text(*mean_ci(ref0), len(ref0)),
            "alpha=1": ci_text(*mean_ci(ref1), len(ref1)),
            "alpha=0 - alpha=1": d.text(),
        }
        row |= {
            label: by[step][0].text() if step in by else "-"
            for label, by in gaps.items()
            if label != "alpha=0 - alpha=1"
        }
        judged = contrast("alpha=0", "alpha=1", name(f.objective), d, f.objective)
        rows.append(row | {"verdict (alpha=0 - alpha=1)": verdict([judged])})
    return pd.DataFrame(rows)


def length(f: Findings) -> tuple[str, str]:
    """The references' gap at the first and the last checkpoint, and the best hybrid against each at the
    last (`gaps_by_step`: proxy evaluation, paired over seeds)."""
    gaps = gaps_by_step(f)
    refs = gaps.get("alpha=0 - alpha=1", {})
    if len(refs) < 2:
        return "the references were not evaluated at two or more checkpoints", "not covered"
    first, last = min(refs), max(refs)
    steps = {
        f"alpha=0 - alpha=1 at step {first}": ("alpha=0 - alpha=1", first),
        f"at step {last}": ("alpha=0 - alpha=1", last),
    }
    steps |= {
        f"{label} at step {last}": (label, last)
        for label, by in gaps.items()
        if label != "alpha=0 - alpha=1" and last in by
    }
    contrasts = {
        key: contrast(*label.split(" - "), f"at step {step}", gaps[label][step][0], f.objective)
        for key, (label, step) in steps.items()
    }
    note = picked(f, ("the hybrid", hybrids(f))) if len(contrasts) > 2 else ""
    return answer(contrasts, f"{name(f.objective)}, proxy evaluation: ", note)


def _merge_runs(f: Findings, dataset: str | None = None) -> tuple[pd.DataFrame, str]:
    """Per run on `dataset` (the held-out set by default), one source for all: the merges and what they are
    set against (the references and the best hybrid)."""
    merges = f.sweep.merges
    if merges.empty:
        return pd.DataFrame(), "none"
    keys = [r["config_key"] for r in (f.ref0, f.ref1, f.hybrid) if r is not None]
    ids = [*f.sweep.runs[f.sweep.runs["config_key"].isin(keys)]["run_id"], *merges["run_id"]]
    runs = pd.concat([f.sweep.runs, merges], ignore_index=True)
    selection = A.run_table(f.sweep.metrics, runs, dataset or f.dataset, f.sweep.final_step, ids)
    return selection.table, selection.source


def _merge_keys(f: Findings) -> list[str]:
    return list(f.sweep.merges.sort_values(MERGE_WEIGHT)["config_key"].drop_duplicates())


def merges_table(f: Findings, dataset: str | None = None) -> pd.DataFrame:
    """Each merge weight against the best hybrid and each reference, per retrieval setting (mAP), on `dataset`
    (the held-out set by default)."""
    table, _ = _merge_runs(f, dataset)
    rows = []
    for key in _merge_keys(f) if len(table) else []:
        for column in (c for c in ("multi/map", "mono/map", "cross/map") if c in table):
            mine = A.by_seed(table, key, column)
            if not mine:  # not evaluated on this set
                continue
            row = {"merge": key, "metric": name(column), "value": ci_text(*mean_ci(list(mine.values())), len(mine))}
            for label, other in (("best hybrid", f.hybrid), ("alpha=0", f.ref0), ("alpha=1", f.ref1)):
                row[f"merge - {label}"] = (
                    "-" if other is None else A.diff_ci(mine, A.by_seed(table, other["config_key"], column)).text()
                )
            rows.append(row)
    return pd.DataFrame(rows)


def merge(f: Findings) -> tuple[str, str]:
    """The best merge (by the objective) against the best hybrid, on mono, cross and multi mAP."""
    table, source = _merge_runs(f)
    if table.empty:
        return "no merges of the references (sweep.merge_references, e.g. [0.25, 0.5, 0.75])", "not covered"
    if f.hybrid is None:
        return "no hybrid (0 < alpha < 1) completed to set the merges against", "not covered"
    score = {
        k: float(np.mean(list(values.values()))) for k in _merge_keys(f) if (values := A.by_seed(table, k, f.objective))
    }
    if not score:
        return f"no merge evaluated on {name(f.objective)}", "not covered"
    best = (min if f.sweep.lower_is_better else max)(score, key=score.get)
    contrasts = {
        name(c): contrast(
            best,
            "hybrid",
            name(c),
            A.diff_ci(A.by_seed(table, best, c), A.by_seed(table, f.hybrid["config_key"], c)),
            c,
        )
        for c in ("mono/map", "cross/map", "multi/map")
        if c in table
    }
    head = (
        f"{best} (the best merge by {name(f.objective)}) - {alpha_label(f.hybrid)} (hybrid), "
        f"{SOURCES.get(source, source)}: "
    )
    note = picked(f, ("the merge", len(score)), ("the hybrid", hybrids(f)))
    return answer(contrasts, head, note)


def schedule(f: Findings) -> tuple[str, str]:
    """Each scheduled configuration against the constant one equal in every other knob, on the objective."""
    s = f.summary
    if s.empty or "alpha_schedule" not in s or s["alpha_schedule"].dropna().nunique() < 2:
        return "every trial used one alpha schedule (sweep.search.alpha_schedule)", "not covered"
    done = s[s["complete"]]
    same = A.same_knobs(done, [k for k in A.KNOBS if k != "alpha_schedule" and k in done])
    contrasts, head = {}, ""
    for _, group in done.groupby(same):
        constant = group[group["alpha_schedule"] == "constant"]
        for _, row in group[group["alpha_schedule"].notna() & (group["alpha_schedule"] != "constant")].iterrows():
            if len(constant):
                head = head or f"{alpha_label(constant.iloc[0])}, {name(f.objective)}: "
                d = A.diff_ci(
                    A.by_seed(f.selection.table, row["config_key"], f.objective),
                    A.by_seed(f.selection.table, constant.iloc[0]["config_key"], f.objective),
                )
                label = f"{row['alpha_schedule']} - constant"
                contrasts[label] = contrast(row["alpha_schedule"], "constant", name(f.objective), d, f.objective)
    if not contrasts:
        return "no scheduled configuration with a constant one at the same knobs", "not covered"
    return answer(contrasts, head)


def glance(f: Findings) -> pd.DataFrame:
    rows = []
    questions = [(QUESTIONS[k], q) for k, q in (("q1", q1), ("q2", q2), ("q3", q3), ("q4", q4), ("q5", q5))]
    questions += [(BEYOND[k], q) for k, q in (("length", length), ("merge", merge), ("schedule", schedule))]
    for question, row in questions:
        text, call = row(f)
        rows.append({"question": question, "finding (95% CI over seeds)": text, "verdict": call})
    return pd.DataFrame(rows)
