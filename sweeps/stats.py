"""Confidence intervals over seeds: differences in this method are often below 0.01 mAP, so a single
seed cannot rank configurations; every comparison carries a 95% interval."""

from __future__ import annotations

import math

import numpy as np
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
