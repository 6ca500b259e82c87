"""Confidence intervals over seeds: differences in this method are often below 0.01 mAP, so a single
seed cannot rank configurations; every comparison carries a 95% interval. Used by the driver's ranking
(`sweeps.ranking`) and by the report alike."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats


def mean_ci(values: list[float] | np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """(mean, half-width) of the Student-t interval; half-width is nan with fewer than two values."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("mean_ci needs at least one value.")
    if x.size == 1:
        return float(x[0]), math.nan
    half = stats.t.ppf((1 + confidence) / 2, df=x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean()), float(half)


def seed_summary(runs: pd.DataFrame, columns: list[str], values: list[str], suffix: str) -> dict:
    """One configuration's row from its runs (one per seed): how many (`seeds`), `columns` as its first run
    has them, and per `values` column the mean and, as `{column}{suffix}`, the 95% half-width over the runs
    that have a value (NaN when none has)."""
    row = {"seeds": len(runs), **{k: runs.iloc[0][k] for k in columns if k in runs}}
    for column in values:
        x = runs[column].dropna().to_numpy() if column in runs else np.array([])
        row[column], row[f"{column}{suffix}"] = mean_ci(x) if x.size else (math.nan, math.nan)
    return row


def mean_pm(mean: float, half: float, digits: int = 3, signed: bool = False) -> str:
    """ "0.512 ± 0.010", or the mean alone when there is no interval (a NaN half-width: one seed)."""
    text = f"{mean:{'+' if signed else ''}.{digits}f}"
    return text + (f" ± {half:.{digits}f}" if math.isfinite(half) else "")
