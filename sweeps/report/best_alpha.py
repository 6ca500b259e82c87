"""Which alpha to use, with its uncertainty: per evaluation set and objective, the alpha that maximises a
quadratic fitted over the seeds of the full evaluation, and a 95% interval for it. The ranked table answers
"which trial won", whose alpha is wherever the sampler happened to put it; a user asks which alpha to use,
and how sure that answer is.

Method (numpy only, deterministic): the completed trials with a full evaluation on the set, in the stratum
(every knob but alpha equal) with the most alpha levels, ties to the stratum holding the best configuration;
y = b0 + b1 alpha + b2 alpha^2 by least squares over every trial (each seed a point, the seeds the
replicates); the best alpha is the fitted curve's argmax on [0, 1] (argmin where lower is better); its
interval is the 2.5-97.5th percentiles of that argmax over draws of the coefficients from their sampling
distribution (multivariate t, residual covariance, n - 3 degrees of freedom), whose curves also give the
fitted curve's pointwise 95% band. Pure: reads a loaded `data.Sweep`, never MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from evaluation.mlflow_layout import FULL, SETTINGS
from sweeps.report import analysis as A
from sweeps.report.data import Sweep
from sweeps.report.verdicts import lower_is_better

GRID = np.linspace(0.0, 1.0, 201)  # the alphas the fitted curve is maximised (and drawn) over
DRAWS, SEED = 4000, 0  # coefficient draws for the interval and the band; fixed seed: the same report twice
PARAMS, MIN_LEVELS = 3, 3  # a quadratic: three coefficients, fixed by three alpha levels at least
WIDE = 0.5  # an interval wider than half of [0, 1]: the data cannot pick an alpha
HINT = " (a full evaluation of every trial: sweep.final_eval_all=true)"  # where the sweep evaluated a few
METHOD = (
    "Best alpha: the argmax on [0, 1] of a quadratic in alpha fitted by least squares to the completed trials' "
    "full evaluation (each seed a point) in the stratum with the most alpha levels; 95% interval: that argmax's "
    f"2.5-97.5th percentiles over {DRAWS} draws of the coefficients (multivariate t)."
)


@dataclass(frozen=True)
class Fit:
    """The fitted quadratic: its best alpha and 95% interval, and its curve and pointwise 95% band on GRID."""

    best: float
    low: float
    high: float
    curve: np.ndarray
    band_low: np.ndarray
    band_high: np.ndarray

    def at(self, alpha: float) -> float:
        return float(np.interp(alpha, GRID, self.curve))


def fit(alpha: np.ndarray, y: np.ndarray, lower_better: bool = False, draws: int = DRAWS, seed: int = SEED) -> Fit:
    """The quadratic fit of y on alpha and its best alpha (argmin when `lower_better`), with the draws' 95%
    percentiles; needs MIN_LEVELS distinct alphas and more than PARAMS points."""
    x, y = np.asarray(alpha, float), np.asarray(y, float)
    design = np.vander(x, PARAMS, increasing=True)
    coef = np.linalg.lstsq(design, y, rcond=None)[0]
    dof = len(y) - PARAMS
    residual = y - design @ coef
    cov = float(residual @ residual) / dof * np.linalg.inv(design.T @ design)
    rng = np.random.default_rng(seed)
    normal = rng.multivariate_normal(np.zeros(PARAMS), cov, size=draws, method="eigh")  # eigh: a zero cov too
    drawn = coef + normal * np.sqrt(dof / rng.chisquare(dof, size=draws))[:, None]
    basis = np.vander(GRID, PARAMS, increasing=True)
    curves, sign = drawn @ basis.T, -1.0 if lower_better else 1.0
    low, high = np.percentile(GRID[np.argmax(sign * curves, axis=1)], [2.5, 97.5])
    band_low, band_high = np.percentile(curves, [2.5, 97.5], axis=0)
    curve = basis @ coef
    return Fit(float(GRID[np.argmax(sign * curve)]), float(low), float(high), curve, band_low, band_high)


@dataclass(frozen=True)
class BestAlpha:
    """One (evaluation set, objective): the fitted trials, their fit, or why there is none."""

    dataset: str
    objective: str
    lower_better: bool
    stratum: str = ""  # what the fitted trials share besides alpha ("tau=0.05"); "" when none
    points: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["mono_ratio", "seed", "value"]))
    fit: Fit | None = None
    reason: str = ""  # why there is no fit ("" when there is one)

    @property
    def trials(self) -> int:
        return len(self.points)

    @property
    def levels(self) -> int:
        return int(self.points["mono_ratio"].nunique())

    def caveats(self) -> list[str]:
        """What the estimate cannot claim: an interval over most of [0, 1], an optimum on an end of [0, 1]
        (no interior peak), an optimum beyond the alphas the trials sampled."""
        f, x = self.fit, self.points["mono_ratio"]
        if f is None:
            return []
        out = ["the data cannot pick an alpha"] if f.high - f.low > WIDE else []
        if f.best in (0.0, 1.0):
            out.append(f"on the boundary alpha = {f.best:g}, no interior optimum")
        if not x.min() - 1e-9 <= f.best <= x.max() + 1e-9:
            out.append(f"extrapolated beyond the sampled alphas ({x.min():.2f}-{x.max():.2f})")
        return out

    def text(self) -> str:
        """ "0.42 [0.31, 0.55]", with its caveats; or "no estimate: <reason>"."""
        if self.fit is None:
            return f"no estimate: {self.reason}"
        return "; ".join([f"{self.fit.best:.2f} [{self.fit.low:.2f}, {self.fit.high:.2f}]", *self.caveats()])

    def basis(self) -> str:
        """ "tau=0.05: 3 alpha levels, 9 trials": the trials the estimate rests on."""
        return f"{self.stratum or 'all'}: {self.levels} alpha levels, {self.trials} trials" if self.trials else "-"


def full_runs(sweep: Sweep, dataset: str) -> pd.DataFrame:
    """The trials that completed and have a full evaluation on `dataset`, one row per run, read from it only."""
    metrics = sweep.metrics[(sweep.metrics["dataset"] == dataset) & (sweep.metrics["source"] == FULL)]
    table = A.run_table(metrics, sweep.runs, dataset, sweep.final_step, list(metrics["run_id"].unique())).table
    return table[table["complete"]]


def estimate(table: pd.DataFrame, dataset: str, objective: str, hint: str = "") -> BestAlpha:
    """The best alpha for `objective` from the completed full-evaluation runs of one dataset (`full_runs`);
    `hint` follows the reason when too few alpha levels have one."""
    lower = lower_is_better(objective)
    data = table.dropna(subset=[objective]) if objective in table else table.iloc[0:0]
    if data.empty:
        return BestAlpha(dataset, objective, lower, reason=f"no completed trial with a full evaluation of {objective}")
    key = A.stratum_key(data)
    groups = [g for _, g in data.groupby(key, sort=True)]
    means = data.groupby("config_key")[objective].mean()
    best_key = means.idxmin() if lower else means.idxmax()
    group = max(groups, key=lambda g: (g["mono_ratio"].nunique(), best_key in set(g["config_key"])))
    points = pd.DataFrame(
        {"mono_ratio": group["mono_ratio"].astype(float), "seed": group["seed"], "value": group[objective]}
    ).reset_index(drop=True)
    found = BestAlpha(dataset, objective, lower, A.stratum_label(group.iloc[0]), points)
    if found.levels < MIN_LEVELS:
        return replace(found, reason=f"needs {MIN_LEVELS} alpha levels, the sweep has {found.levels}{hint}")
    if found.trials <= PARAMS:
        return replace(found, reason=f"needs more than {PARAMS} trials for {PARAMS} coefficients, has {found.trials}")
    return replace(found, fit=fit(points["mono_ratio"], points["value"], lower))


def objectives(sweep: Sweep) -> list[str]:
    """The settings' main metric (mono, cross, multi mAP), then the sweep's own objectives not among them."""
    return list(dict.fromkeys([*(f"{s}/map" for s in SETTINGS), *sweep.objectives]))


def estimates(sweep: Sweep) -> list[BestAlpha]:
    """Per evaluation set (the held-out one first, then each zero-shot one) and objective, its best alpha."""
    out, hint = [], "" if sweep.param("sweep.final_eval_all", default=False) is True else HINT
    for dataset in [sweep.main_dataset, *sweep.zero_shot_datasets]:
        table = full_runs(sweep, dataset)
        out += [estimate(table, dataset, objective, hint) for objective in objectives(sweep)]
    return out
