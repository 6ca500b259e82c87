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
from trainers.config import TrainRunConfig


def param_space(sweep: SweepConfig, base: TrainRunConfig) -> dict[str, Any]:
    s = sweep.search
    space: dict[str, Any] = {
        "mono_ratio": tune.uniform(*s.mono_ratio) if s.mono_ratio[0] < s.mono_ratio[1] else s.mono_ratio[0],
        "temperature": tune.loguniform(*s.temperature) if s.temperature[0] < s.temperature[1] else s.temperature[0],
        "lang_temperature": tune.choice(list(s.lang_temperature)) if len(s.lang_temperature) > 1 else s.lang_temperature[0],
        "seed": base.method.seed,
    }
    if s.lr:
        space["lr"] = tune.loguniform(*s.lr)
    if s.num_train_languages:
        space["num_train_languages"] = tune.choice(list(s.num_train_languages))
    return space


def reference_points(sweep: SweepConfig, base: TrainRunConfig) -> list[dict[str, Any]]:
    """alpha = 0 and alpha = 1 (clipped to the range) at the base config's other values."""
    s = sweep.search
    lo, hi = s.temperature
    point: dict[str, Any] = {"temperature": min(max(base.method.temperature, lo), hi)}
    if len(s.lang_temperature) > 1:
        point["lang_temperature"] = base.method.lang_temperature if base.method.lang_temperature in s.lang_temperature \
            else s.lang_temperature[0]
    if s.lr:
        point["lr"] = min(max(base.optim.lr, s.lr[0]), s.lr[1])
    if s.num_train_languages:
        point["num_train_languages"] = max(s.num_train_languages)
    alphas = sorted({s.mono_ratio[0], s.mono_ratio[1]})
    return [point | {"mono_ratio": a} for a in alphas] if s.mono_ratio[0] < s.mono_ratio[1] else []


def sampler(sweep: SweepConfig, references: int) -> optuna.samplers.BaseSampler:
    """One objective: `GPSampler` (few continuous knobs, few trials: it finds the synthetic optimum of
    tests/test_search.py in 8 trials where TPE's random start does not); several: multivariate TPE. Both
    seeded, and both model the objective once the `references` (the only points not chosen) are in."""
    startup = max(1, references)
    if len(sweep.objectives) == 1:
        return optuna.samplers.GPSampler(seed=sweep.seed, n_startup_trials=startup)
    return optuna.samplers.TPESampler(seed=sweep.seed, n_startup_trials=max(startup, sweep.trials // 4),
                                      multivariate=True)


def tune_config(sweep: SweepConfig, base: TrainRunConfig, trials: int | None = None,
                evaluated: tuple[list[dict[str, Any]], list[Any]] | None = None) -> tune.TuneConfig:
    """The sampler over the space, references first; one objective goes through TuneConfig (so the progress
    table shows it and the scheduler prunes on it), several go to Optuna (a Pareto front, no pruning).

    `trials` (default `sweep.trials`) and `evaluated` (points and their objectives) are for a later search
    round: its searcher starts from the earlier rounds' results, and the references are not run again."""
    trials = sweep.trials if trials is None else trials
    points, rewards = evaluated if evaluated else (reference_points(sweep, base), None)
    if len(sweep.objectives) > 1:
        searcher = OptunaSearch(metric=list(sweep.objectives), mode=sweep.modes, points_to_evaluate=points or None,
                                evaluated_rewards=rewards or None, sampler=sampler(sweep, len(points)))
        return tune.TuneConfig(search_alg=searcher, num_samples=trials, max_concurrent_trials=sweep.max_concurrent)
    grace = sweep.grace_period * base.trainer.checkpoint_every
    if sweep.scheduler == "asha":
        # max_t past the last step: a finished trial ends by itself; Tune stops only pruned ones.
        scheduler = ASHAScheduler(time_attr="step", grace_period=grace, max_t=base.optim.steps + 1)
    elif sweep.scheduler == "median":
        scheduler = MedianStoppingRule(time_attr="step", grace_period=grace)
    else:
        scheduler = FIFOScheduler()
    searcher = OptunaSearch(points_to_evaluate=points or None, evaluated_rewards=rewards or None,
                            sampler=sampler(sweep, len(points)))
    return tune.TuneConfig(metric=sweep.objectives[0], mode=sweep.modes[0], scheduler=scheduler, search_alg=searcher,
                           num_samples=trials, max_concurrent_trials=sweep.max_concurrent)


def is_reference(mono_ratio: float) -> bool:
    return math.isclose(mono_ratio, 0.0) or math.isclose(mono_ratio, 1.0)
