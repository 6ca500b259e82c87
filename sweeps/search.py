"""The search: Tune's param space, an Optuna sampler fitted to small budgets with the alpha = 0 /
alpha = 1 references enqueued, pruning.

Every sweep evaluates X-Y only (alpha = 0) and X-X-mono only (alpha = 1) first, through Optuna's
points to evaluate, so each result sits between its two baselines. Sweeps are small (3 trials in the
default, 24 in the GPU presets): Optuna's default TPE draws its first 10 trials at random, so every
"Optuna pick" of the default would be a random draw. A Gaussian-process sampler models the objective
from the references on (`sampler`).
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule
from ray.tune.search.optuna import OptunaSearch

from sweeps.config import SweepConfig
from sweeps.knobs import ALPHA, KNOBS, Knob
from trainers.config import TrainRunConfig


def param_space(sweep: SweepConfig, base: TrainRunConfig) -> dict[str, Any]:
    """Tune's space: a distribution per searched knob, a constant per fixed one, the base run's seed."""
    space: dict[str, Any] = {}
    for knob in KNOBS:
        values = getattr(sweep.search, knob.name)
        if not knob.searched(values):
            space |= {knob.name: values[0]} if values else {}
        elif knob.kind == "uniform":
            space[knob.name] = tune.uniform(*values)
        elif knob.kind == "log":
            space[knob.name] = tune.loguniform(*values)
        else:
            space[knob.name] = tune.choice(list(values))
    return space | {"seed": base.method.seed}


def reference_points(sweep: SweepConfig, base: TrainRunConfig) -> list[dict[str, Any]]:
    """alpha = 0 and alpha = 1 (clipped to the range) at the base config's other values."""
    low, high = sweep.search.mono_ratio
    if low == high:
        return []
    return [base_point(sweep, base) | {"mono_ratio": alpha} for alpha in (low, high)]


def enqueued_points(sweep: SweepConfig, base: TrainRunConfig) -> list[dict[str, Any]]:
    """The references, then `sweep.search.points` (each completed with the references' values): every
    configuration the first search round runs before the sampler chooses; duplicates run once."""
    points = reference_points(sweep, base)
    for point in sweep.search.points:
        full = filled(sweep, base, point)
        if full not in points:
            points.append(full)
    return points


def filled(sweep: SweepConfig, base: TrainRunConfig, point: Any) -> dict[str, Any]:
    """`point` (a `sweeps.config.Point`) with every searched knob it leaves out at the references' value
    (alpha at the base config's)."""
    return base_point(sweep, base) | {"mono_ratio": _nearest(ALPHA, sweep.search.mono_ratio, base)} | point.given()


def base_point(sweep: SweepConfig, base: TrainRunConfig) -> dict[str, Any]:
    """The searched knobs other than alpha at the base config's values, brought into their ranges or
    choices: the references' configuration."""
    return {
        k.name: _nearest(k, values, base)
        for k in KNOBS
        if k is not ALPHA and k.searched(values := getattr(sweep.search, k.name))
    }


def _nearest(knob: Knob, values: tuple, base: TrainRunConfig) -> Any:
    """The base run's value of `knob`, clipped into a range, or the nearest choice (the first when all
    are as far: T = inf among finite choices)."""
    value = knob.base_value(base)
    if knob.is_range:
        return min(max(value, values[0]), values[1])
    return value if value in values else min(values, key=lambda c: abs(c - value))


def sampler(sweep: SweepConfig, references: int) -> optuna.samplers.BaseSampler:
    """One objective: `GPSampler` (few continuous knobs, few trials: it finds the synthetic optimum of
    tests/test_search.py in 8 trials where TPE's random start does not); several: multivariate TPE. Both
    seeded, and both model the objective once the `references` (the only points not chosen) are in."""
    startup = max(1, references)
    if len(sweep.objectives) == 1:
        return optuna.samplers.GPSampler(seed=sweep.seed, n_startup_trials=startup)
    return optuna.samplers.TPESampler(
        seed=sweep.seed, n_startup_trials=max(startup, sweep.trials // 4), multivariate=True
    )


_ACTIVE_STUDY_STORAGE: dict[str, str] = {}  # sweep name -> this driver's sweep.study_storage


class StudyStorage(optuna.storages.RDBStorage):
    """The sweep's study database. Tune pickles the Optuna searcher (and its study) into its state in the
    sweep's storage; restored by `--resume` on another head, a plain RDBStorage would reconnect to the URL
    it was pickled with. This one pickles as the sweep's name and reopens the study storage this driver
    was given (the same study: `sweeps.identity` checked its id), or the pickled URL outside a driver."""

    def __init__(self, url: str, sweep_name: str):
        super().__init__(url)
        self.sweep_name = sweep_name

    def __reduce__(self):
        return _reopen_study_storage, (self.url, self.sweep_name)


def _reopen_study_storage(url: str, sweep_name: str) -> StudyStorage:
    return StudyStorage(_ACTIVE_STUDY_STORAGE.get(sweep_name, url), sweep_name)


def study_storage(sweep: SweepConfig) -> StudyStorage:
    """The sweep's study storage, opened as this driver's (what a restored searcher reconnects to)."""
    _ACTIVE_STUDY_STORAGE[sweep.name] = sweep.study_storage
    return StudyStorage(sweep.study_storage, sweep.name)


def tune_config(
    sweep: SweepConfig, base: TrainRunConfig, trials: int | None = None, first_round: bool = True
) -> tune.TuneConfig:
    """The sampler over the space, references first; one objective goes through TuneConfig (so the progress
    table shows it and the scheduler prunes on it), several go to Optuna (a Pareto front, no pruning).

    The study is stored (`sweep.study_storage`, named after the sweep), so a later search round
    (`sweep.trials` raised on `--resume`: `trials` new ones, not `first_round`) continues it: its sampler
    starts from every earlier trial, and the references and points are not enqueued again."""
    trials = sweep.trials if trials is None else trials
    points = enqueued_points(sweep, base)
    study = {
        "study_name": sweep.name,
        "storage": study_storage(sweep),
        "points_to_evaluate": points if first_round and points else None,
        "sampler": sampler(sweep, len(points)),
    }
    if len(sweep.objectives) > 1:
        searcher = OptunaSearch(metric=list(sweep.objectives), mode=sweep.modes, **study)
        return tune.TuneConfig(search_alg=searcher, num_samples=trials, max_concurrent_trials=sweep.max_concurrent)
    grace = sweep.grace_period * base.trainer.checkpoint_every
    if sweep.scheduler == "asha":
        # max_t past the last step: a finished trial ends by itself; Tune stops only pruned ones.
        scheduler = ASHAScheduler(time_attr="step", grace_period=grace, max_t=base.optim.steps + 1)
    elif sweep.scheduler == "median":
        scheduler = MedianStoppingRule(time_attr="step", grace_period=grace)
    else:
        scheduler = FIFOScheduler()
    return tune.TuneConfig(
        metric=sweep.objectives[0],
        mode=sweep.modes[0],
        scheduler=scheduler,
        search_alg=OptunaSearch(**study),
        num_samples=trials,
        max_concurrent_trials=sweep.max_concurrent,
    )


def is_reference(mono_ratio: float) -> bool:
    return math.isclose(mono_ratio, 0.0) or math.isclose(mono_ratio, 1.0)
