"""How the report words a difference between two configurations, so that it says no more than its 95%
interval: better or worse in the metric's own direction (ECE, rank distance and a spread: lower is
better) when the interval excludes 0; equivalent only when the whole interval lies inside a margin fixed
before any sweep ran; otherwise not separable. "(+)" is never used: for ECE it would mean worse.

Pure functions of numbers; `glance` builds the report's verdicts from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sweeps.config import LOWER_IS_BETTER
from sweeps.report.analysis import Diff

# Stated in advance, in the metric's own units (mAP, MRR@10, ECE and spreads of mAP all lie in [0, 1]):
# two configurations are "equivalent" only when the whole 95% interval of their difference is inside
# +/- this margin. Rank distance (hundreds of ranks) has no margin: it is never called equivalent.
EQUIVALENCE_MARGIN = 0.01
NOT_SEPARABLE = "not separable at this budget"
BETTER, WORSE, EQUIVALENT, UNSEPARATED, NO_INTERVAL = "better", "worse", "equivalent", "not separable", "no interval"


def lower_is_better(column: str) -> bool:
    """Whether a report column ("multi/ece", "std", "multi/map") improves downwards."""
    return column.split("/")[-1] in (*LOWER_IS_BETTER, "std", "range")


def margin_for(column: str) -> float | None:
    """The equivalence margin of a column; None where the metric is not on a 0-1 scale."""
    return None if column.split("/")[-1] == "rank_distance" else EQUIVALENCE_MARGIN


def outcome(mean: float, half: float, lower_better: bool, margin: float | None = EQUIVALENCE_MARGIN) -> str:
    """A - B judged from its mean and 95% half-width: BETTER / WORSE for A in the metric's direction when
    the interval excludes 0, EQUIVALENT when it lies wholly inside +/- margin, else UNSEPARATED (NO_INTERVAL
    without a half-width)."""
    if not math.isfinite(half):
        return NO_INTERVAL
    if abs(mean) > half:
        return BETTER if (mean < 0) == lower_better else WORSE
    if margin is not None and abs(mean) + half < margin:
        return EQUIVALENT
    return UNSEPARATED


@dataclass(frozen=True)
class Contrast:
    """One difference `a - b` on `what` (a metric, or a metric at a step), with its direction and margin."""

    a: str
    b: str
    what: str
    diff: Diff
    lower_better: bool = False
    margin: float | None = EQUIVALENCE_MARGIN

    @property
    def outcome(self) -> str:
        return outcome(self.diff.mean, self.diff.half, self.lower_better, self.margin)


def _phrase(a: str, b: str, result: str) -> str:
    return {
        BETTER: f"{a} better than {b}",
        WORSE: f"{a} worse than {b}",
        EQUIVALENT: f"{a} and {b} equivalent (95% CI within ±{EQUIVALENCE_MARGIN:g})",
        UNSEPARATED: f"{a} vs {b} not separable",
        NO_INTERVAL: f"{a} vs {b} without an interval (one seed a side)",
    }[result]


def verdict(contrasts: list[Contrast]) -> str:
    """The comparisons grouped by sides and outcome, in order: "alpha=0 better than alpha=1: cross mAP,
    multi mAP; alpha=0 vs alpha=1 not separable: mono mAP"; NOT_SEPARABLE when nothing is separated or
    equivalent; "not covered" without a comparison."""
    found = [c for c in contrasts if c is not None and math.isfinite(c.diff.mean)]
    if not found:
        return "not covered"
    outcomes = {c.outcome for c in found}
    if outcomes <= {UNSEPARATED, NO_INTERVAL}:
        return NOT_SEPARABLE + ("" if UNSEPARATED in outcomes else " (no interval: one seed a side)")
    groups: dict[tuple[str, str, str], list[str]] = {}
    for c in found:
        groups.setdefault((c.a, c.b, c.outcome), []).append(c.what)
    return "; ".join(f"{_phrase(a, b, result)}: {', '.join(whats)}" for (a, b, result), whats in groups.items())
