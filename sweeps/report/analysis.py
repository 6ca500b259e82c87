"""Pure computations on a loaded sweep: per-run tables, per-configuration means with 95% intervals,
differences between configurations, the Pareto front, per-pair statistics, importances.

Conventions:
- A configuration is a `config_key` (every knob but the seed); its value is the mean over its seeds with
  the Student-t half-width of `sweeps.stats.mean_ci` (NaN with one seed: "CI unavailable").
- Differences between two configurations pair their runs by seed (`diff_ci`); against a configuration run
  with one seed (usually the alpha = 0 / 1 references) the interval covers the other side's seeds only.
- Only trials that reached the final step enter comparisons; pruned trials are listed, not compared.
- A comparison reads one evaluation source for all its runs: the full evaluation when every run has it,
  else the proxy (sweep-time) evaluation; "mixed" says a run had to fall back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from evaluation.metrics import table_ece
from evaluation.mlflow_layout import FULL, PROXY
from sweeps.knobs import BY_NAME, NAMES
from sweeps.stats import mean_ci, mean_pm, seed_summary

KNOBS = NAMES
# Fewer completed configurations than this: parameter importances (a random forest over them) and an
# interpolated alpha x tau surface would be noise, so the report draws the points and says so instead.
MIN_IMPORTANCE_CONFIGS = 20


EXACT_TREND_MAX_N = 8  # up to 8! = 40,320 orderings: the exact test is instant


def rank_trend(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman's rho and its two-sided p-value, exact (over all orderings) for up to 8 points: sweeps
    have few configurations, and `spearmanr`'s t approximation gives p = 0 for 3 points in perfect rank
    order, whose exact p is 1/3."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    rho = float(stats.spearmanr(x, y).statistic)
    if len(x) > EXACT_TREND_MAX_N:
        return rho, float(stats.spearmanr(x, y).pvalue)
    test = stats.permutation_test(
        (x,),
        lambda a: stats.spearmanr(a, y).statistic,
        permutation_type="pairings",
        n_resamples=np.inf,
        alternative="two-sided",
    )
    return rho, float(test.pvalue)


@dataclass(frozen=True)
class Selection:
    table: pd.DataFrame  # one row per run: params, step, complete, source, and "{setting}/{metric}" columns
    source: str  # FULL, PROXY, "mixed" or "none"


def _pick_source(available: dict[str, set[str]]) -> tuple[dict[str, str], str]:
    """One source for every run when possible: full if all have it, else proxy; else per-run fallback."""
    if not available:
        return {}, "none"
    for source in (FULL, PROXY):
        if all(source in s for s in available.values()):
            return {r: source for r in available}, source
    return {r: FULL if FULL in s else PROXY for r, s in available.items()}, "mixed"


def run_table(
    metrics: pd.DataFrame, runs: pd.DataFrame, dataset: str, final_step: int | None, run_ids: list[str] | None = None
) -> Selection:
    """Each run's metrics on `dataset` at its last evaluated step, wide ("multi/map", ...), with its params."""
    wanted = runs if run_ids is None else runs[runs["run_id"].isin(run_ids)]
    rows = metrics[(metrics["dataset"] == dataset) & metrics["run_id"].isin(wanted["run_id"])]
    if rows.empty:
        return Selection(wanted.iloc[0:0].assign(step=[], complete=[], source=[]), "none")
    last = rows.groupby(["run_id", "source"])["step"].transform("max")
    rows = rows[rows["step"] == last]
    chosen, label = _pick_source(rows.groupby("run_id")["source"].agg(set).to_dict())
    rows = rows[rows["source"] == rows["run_id"].map(chosen)]
    wide = rows.assign(column=rows["setting"] + "/" + rows["metric"]).pivot_table(
        index="run_id", columns="column", values="value", aggfunc="last"
    )
    info = rows.groupby("run_id").agg(step=("step", "max"), source=("source", "first"))
    table = wanted.merge(info, left_on="run_id", right_index=True).merge(wide, left_on="run_id", right_index=True)
    table["complete"] = table["step"] >= (final_step if final_step is not None else table["step"].max())
    return Selection(table.reset_index(drop=True), label)


def config_summary(table: pd.DataFrame, columns: list[str], objective: str, lower_is_better: bool) -> pd.DataFrame:
    """One row per config_key: knobs, seeds, and `col` (mean) + `col ±` (95% half-width) per column.
    A configuration with a completed run uses its completed runs only (complete=True); ranked by objective."""
    out = []
    for key, group in table.groupby("config_key", dropna=False):
        done = group[group["complete"]]
        use = done if len(done) else group
        out.append(
            {
                "config_key": key,
                **seed_summary(use, KNOBS, columns, " ±"),
                "seed_list": sorted(int(s) for s in use["seed"] if pd.notna(s)),
                "step": int(use["step"].max()),
                "complete": bool(len(done)),
                "source": ",".join(sorted(set(use["source"]))),
            }
        )
    frame = pd.DataFrame(out)
    if frame.empty:
        return frame
    order = frame[objective] if objective in frame else pd.Series(0.0, index=frame.index)
    frame = frame.assign(_o=-order if lower_is_better else order, _c=frame["complete"])
    return frame.sort_values(["_c", "_o", "seeds"], ascending=False).drop(columns=["_o", "_c"]).reset_index(drop=True)


def best_config(summary: pd.DataFrame) -> pd.Series | None:
    """The top completed configuration (summary is ranked by the objective)."""
    done = summary[summary["complete"]] if len(summary) else summary
    return done.iloc[0] if len(done) else None


def reference_config(summary: pd.DataFrame, alpha: float) -> pd.Series | None:
    """The completed configuration at `alpha` (0 or 1) with the most seeds, ties to the better objective."""
    if summary.empty:
        return None
    hits = summary[summary["complete"] & np.isclose(summary["mono_ratio"].astype(float), alpha)]
    return hits.sort_values("seeds", ascending=False, kind="stable").iloc[0] if len(hits) else None


def same_knobs(frame: pd.DataFrame, knobs: list[str]) -> pd.Series:
    """A key per row, equal where the rows agree on every one of `knobs` (NaN, an unsearched lr, included)."""
    return frame[knobs].map(repr).agg("|".join, axis=1)


def stratum_key(frame: pd.DataFrame) -> pd.Series:
    """A key per row, equal where the rows agree on every knob but alpha: a ratio curve joins only rows of
    one stratum, or it would draw tau's (or k's) effect as alpha's."""
    return same_knobs(frame, [k for k in KNOBS if k != "mono_ratio" and k in frame])


def stratum_label(row: pd.Series) -> str:
    """What a configuration fixes besides alpha ("tau=0.01, k=5, cross_first"), for a stratum's name."""
    parts = [f"{BY_NAME['temperature'].short}={row['temperature']:.3g}"] if pd.notna(row.get("temperature")) else []
    if pd.notna(row.get("num_train_languages", np.nan)):
        parts.append(f"k={int(row['num_train_languages'])}")
    if isinstance(row.get("alpha_schedule"), str) and row["alpha_schedule"] != "constant":
        parts.append(row["alpha_schedule"])
    return ", ".join(parts)


def reference_pair(summary: pd.DataFrame) -> tuple[pd.Series | None, pd.Series | None]:
    """(alpha = 0, alpha = 1): the pair the sweep enqueued, equal in every other knob (tau, T, lr, k), so
    their difference is alpha's alone; the best-seeded such pair. A searched alpha = 0 at another tau (the
    sampler may pick the boundary) is not a reference. Without an equal pair, each side by `reference_config`."""
    ref0, ref1 = reference_config(summary, 0.0), reference_config(summary, 1.0)
    if ref0 is None or ref1 is None:
        return ref0, ref1
    done = summary[summary["complete"]]
    same = same_knobs(done, [k for k in KNOBS if k != "mono_ratio" and k in done])
    alpha = done["mono_ratio"].astype(float)
    pairs = [
        (done.loc[i], done.loc[j])
        for i in done.index[np.isclose(alpha, 0.0)]
        for j in done.index[np.isclose(alpha, 1.0)]
        if same[i] == same[j]
    ]
    if not pairs:
        return ref0, ref1
    return max(pairs, key=lambda p: min(p[0]["seeds"], p[1]["seeds"]))  # first (best objective) among equals


def by_seed(table: pd.DataFrame, config_key: str, column: str) -> dict[int, float]:
    rows = table[(table["config_key"] == config_key) & table["complete"]].dropna(subset=[column])
    return {int(s): float(v) for s, v in zip(rows["seed"], rows[column])}


@dataclass(frozen=True)
class Diff:
    """mean(A) - mean(B) with a 95% half-width (NaN: unavailable) and how the interval was formed."""

    mean: float
    half: float
    n: int  # values the interval rests on
    kind: str  # "paired", "one-run", "unpaired" or "single"
    n_a: int = 0
    n_b: int = 0

    def text(self, digits: int = 3) -> str:
        if self.kind == "paired":
            return f"{mean_pm(self.mean, self.half, digits, signed=True)} (95% CI, paired over {self.n} seeds)"
        if self.kind == "one-run":
            return (
                f"{mean_pm(self.mean, self.half, digits, signed=True)} (95% CI over {self.n} seeds of one side "
                "against a single run of the other; that run's seed noise is not in the interval)"
            )
        value = f"{self.mean:+.{digits}f}"
        if self.kind == "unpaired":
            return f"{value} (CI unavailable: no seeds in common, {self.n_a} vs {self.n_b} runs)"
        return f"{value} (CI unavailable: {self.n_a} vs {self.n_b} seed(s))"

    @property
    def significant(self) -> bool:
        return math.isfinite(self.half) and abs(self.mean) > self.half


def diff_ci(a: dict[int, float], b: dict[int, float]) -> Diff:
    """A - B. Paired by seed when at least two seeds are shared; against one run of B (or A), the seeds of
    the other side; otherwise the difference of means without an interval."""
    if not a or not b:
        return Diff(math.nan, math.nan, 0, "single", len(a), len(b))
    common = sorted(set(a) & set(b))
    if len(common) >= 2:
        mean, half = mean_ci([a[s] - b[s] for s in common])
        return Diff(mean, half, len(common), "paired", len(a), len(b))
    if len(b) == 1 and len(a) >= 2:
        (ref,) = b.values()
        mean, half = mean_ci([v - ref for v in a.values()])
        return Diff(mean, half, len(a), "one-run", len(a), len(b))
    if len(a) == 1 and len(b) >= 2:
        (ref,) = a.values()
        mean, half = mean_ci([ref - v for v in b.values()])
        return Diff(mean, half, len(b), "one-run", len(a), len(b))
    mean = float(np.mean(list(a.values())) - np.mean(list(b.values())))
    return Diff(mean, math.nan, 1, "single" if len(a) == 1 or len(b) == 1 else "unpaired", len(a), len(b))


def pareto_front(points: pd.DataFrame, x: str, y: str) -> pd.Series:
    """True for the points no other point beats on both x and y (both maximised; ties do not dominate)."""
    xs, ys = points[x].to_numpy(float), points[y].to_numpy(float)
    front = []
    for i in range(len(points)):
        dominated = (xs >= xs[i]) & (ys >= ys[i]) & ((xs > xs[i]) | (ys > ys[i]))
        front.append(bool(np.isfinite(xs[i]) and np.isfinite(ys[i]) and not dominated.any()))
    return pd.Series(front, index=points.index)


def off_diagonal(matrix: pd.DataFrame) -> pd.Series:
    """The cross-lingual cells (query language != candidate language) that hold a value, indexed by pair."""
    cells = matrix.stack(future_stack=True)
    cells = cells[[q != c for q, c in cells.index]]
    return cells.dropna()


def pair_stats(matrix: pd.DataFrame) -> dict[str, float | str]:
    """Worst off-diagonal pair, its value, the spread across off-diagonal pairs (population std, max - min)."""
    cells = off_diagonal(matrix)
    languages = ",".join(matrix.index)
    if cells.empty:
        return {
            "worst": math.nan,
            "worst_pair": "",
            "std": math.nan,
            "range": math.nan,
            "mean": math.nan,
            "pairs": 0,
            "languages": languages,
        }
    q, c = cells.idxmin()
    return {
        "worst": float(cells.min()),
        "worst_pair": f"{q}→{c}",
        "std": float(cells.std(ddof=0)),
        "range": float(cells.max() - cells.min()),
        "mean": float(cells.mean()),
        "pairs": len(cells),
        "languages": languages,
    }


def choose(store: dict, run_ids: list[str], dataset: str, *rest: str) -> tuple[dict[str, object], str]:
    """From a dict keyed (run_id, dataset, source, *rest), each run's entry, one source for all runs where
    possible (the rule of `run_table`)."""
    available = {r: {k[2] for k in store if k[0] == r and k[1] == dataset and tuple(k[3:]) == rest} for r in run_ids}
    chosen, label = _pick_source({r: s for r, s in available.items() if s})
    return {r: store[(r, dataset, s, *rest)] for r, s in chosen.items()}, label


def matrices_for(matrices: dict, run_ids: list[str], dataset: str, metric: str) -> tuple[dict[str, pd.DataFrame], str]:
    """Each run's L x L matrix of `metric`, one source for all runs where possible."""
    return choose(matrices, run_ids, dataset, metric)


def robustness(table: pd.DataFrame, matrices: dict, dataset: str, metric: str = "map") -> tuple[pd.DataFrame, str]:
    """Per completed run: worst pair, std and range across off-diagonal pairs of its `metric` matrix."""
    done = table[table["complete"]]
    found, label = matrices_for(matrices, list(done["run_id"]), dataset, metric)
    rows = [{"run_id": r, **pair_stats(m)} for r, m in found.items()]
    stats = pd.DataFrame(rows, columns=["run_id", "worst", "worst_pair", "std", "range", "mean", "pairs", "languages"])
    return done.merge(stats, on="run_id"), label


def mean_matrix(mats: list[pd.DataFrame]) -> pd.DataFrame:
    """Cell-wise mean over seeds (aligned on languages)."""
    stacked = pd.concat(mats, keys=range(len(mats)))
    return stacked.groupby(level=1, sort=False).mean().reindex(index=mats[0].index, columns=mats[0].columns)


def pair_deltas(a: dict[int, pd.DataFrame], b: dict[int, pd.DataFrame], languages: list[str]) -> pd.DataFrame:
    """Per ordered pair of `languages` (mono pairs included): A - B with `diff_ci` over seeds."""
    rows = []
    for q in languages:
        for c in languages:
            va = {
                s: float(m.loc[q, c]) for s, m in a.items() if q in m.index and c in m.columns and pd.notna(m.loc[q, c])
            }
            vb = {
                s: float(m.loc[q, c]) for s, m in b.items() if q in m.index and c in m.columns and pd.notna(m.loc[q, c])
            }
            if va and vb:
                d = diff_ci(va, vb)
                rows.append(
                    {
                        "pair": f"{q}→{c}",
                        "query": q,
                        "candidate": c,
                        "a": np.mean(list(va.values())),
                        "b": np.mean(list(vb.values())),
                        "delta": d.mean,
                        "half": d.half,
                        "diff": d,
                    }
                )
    return pd.DataFrame(rows, columns=["pair", "query", "candidate", "a", "b", "delta", "half", "diff"])


def cells_mean(mats: dict[int, pd.DataFrame], pairs: list[tuple[str, str]]) -> dict[int, float]:
    """Per seed, the mean of the given (query, candidate) cells that hold a value."""
    out = {}
    for seed, m in mats.items():
        values = [m.loc[q, c] for q, c in pairs if q in m.index and c in m.columns and pd.notna(m.loc[q, c])]
        if values:
            out[seed] = float(np.mean(values))
    return out


def high_resource(languages: list[str], configured: tuple[str, ...]) -> list[str]:
    return [lang for lang in languages if lang in configured]


def pooled_reliability(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Reliability tables of several runs (same bins) merged: counts summed, confidence/accuracy weighted."""
    first = tables[0][["lower", "upper"]].copy()
    count = sum(t["count"].to_numpy(float) for t in tables)
    conf = sum(np.nan_to_num(t["confidence"].to_numpy(float)) * t["count"].to_numpy(float) for t in tables)
    acc = sum(np.nan_to_num(t["accuracy"].to_numpy(float)) * t["count"].to_numpy(float) for t in tables)
    with np.errstate(invalid="ignore", divide="ignore"):
        return first.assign(count=count, confidence=conf / count, accuracy=acc / count)


def ece_of(table: pd.DataFrame) -> float:
    """The ECE of a reliability table read back from MLflow (`evaluation.metrics.table_ece`)."""
    return table_ece(table["count"], table["confidence"], table["accuracy"])


def varying_knobs(summary: pd.DataFrame) -> list[str]:
    done = summary[summary["complete"]]
    return [k for k in KNOBS if k in done and done[k].dropna().nunique() > 1]


def importances(summary: pd.DataFrame, objective: str, lower_is_better: bool) -> tuple[dict[str, float] | None, str]:
    """Optuna parameter importances over the completed configurations (seed means), or None and why not.
    The study is rebuilt in memory: one FrozenTrial per configuration with the observed ranges."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    done = summary[summary["complete"]].dropna(subset=[objective])
    knobs = varying_knobs(summary)
    if not knobs:
        return None, "no searched parameter varied across the completed configurations"
    if len(done) < MIN_IMPORTANCE_CONFIGS:
        return None, (
            f"too few completed configurations ({len(done)} < {MIN_IMPORTANCE_CONFIGS}) for parameter "
            "importances; run more trials, e.g. --set sweep.trials=20"
        )
    dists = {}
    for k in knobs:
        values = done[k].dropna()
        knob = BY_NAME[k]
        if knob.is_range:
            dists[k] = FloatDistribution(float(values.min()), float(values.max()), log=knob.kind == "log")
        else:
            dists[k] = CategoricalDistribution(sorted(set(values.tolist())))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize" if lower_is_better else "maximize")
    for _, row in done.iterrows():
        params = {k: row[k] for k in knobs if pd.notna(row[k])}
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions={k: dists[k] for k in params}, value=float(row[objective])
            )
        )
    if len(knobs) == 1:
        return {knobs[0]: 1.0}, f"only {knobs[0]} varied: its importance is 1 by construction"
    try:  # fANOVA (a random forest; scikit-learn comes with mlflow) is steadier than Optuna's default PED-ANOVA
        # at sweep sizes: PED-ANOVA contrasts the top 10% of trials, one or two configurations here
        import sklearn  # noqa: F401

        evaluator, how = optuna.importance.FanovaImportanceEvaluator(seed=0), "fANOVA"
    except ImportError:
        evaluator, how = None, "PED-ANOVA"
    found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    return {k: float(v) for k, v in found.items()}, f"Optuna {how} over {len(done)} configurations (seed means)"


def languages_effect(summary: pd.DataFrame, objective: str, default_k: int) -> pd.DataFrame:
    """Per number of training languages, its best completed configuration (empty when k did not vary)."""
    done = summary[summary["complete"]].copy()
    if done.empty:
        return done
    done["k"] = done["num_train_languages"].fillna(default_k) if "num_train_languages" in done else default_k
    if done["k"].nunique() < 2:
        return done.iloc[0:0]
    return done.groupby("k", sort=True).head(1).sort_values("k").reset_index(drop=True)  # summary is ranked
