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

from sweeps.config import Point, SweepConfig
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
    if s.mono_ratio[0] == s.mono_ratio[1]:
        return []
    point = base_point(sweep, base)
    return [point | {"mono_ratio": a} for a in sorted({s.mono_ratio[0], s.mono_ratio[1]})]


def enqueued_points(sweep: SweepConfig, base: TrainRunConfig) -> list[dict[str, Any]]:
    """The references, then `sweep.search.points` (each completed with the references' values): every
    configuration the first search round runs before the sampler chooses; duplicates run once."""
    points = reference_points(sweep, base)
    for point in sweep.search.points:
        full = filled(sweep, base, point)
        if full not in points:
            points.append(full)
    return points


def filled(sweep: SweepConfig, base: TrainRunConfig, point: Point) -> dict[str, Any]:
    """`point` with every knob it leaves out at the references' value (alpha at the base config's)."""
    alpha = min(max(base.method.mono_ratio, sweep.search.mono_ratio[0]), sweep.search.mono_ratio[1])
    return base_point(sweep, base) | {"mono_ratio": alpha} | point.given()


def base_point(sweep: SweepConfig, base: TrainRunConfig) -> dict[str, Any]:
    """The searched knobs other than alpha at the base config's values, clipped into their ranges."""
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
    return point


def sampler(sweep: SweepConfig, references: int) -> optuna.samplers.BaseSampler:
    """One objective: `GPSampler` (few continuous knobs, few trials: it finds the synthetic optimum of
    tests/test_search.py in 8 trials where TPE's random start does not); several: multivariate TPE. Both
    seeded, and both model the objective once the `references` (the only points not chosen) are in."""
    startup = max(1, references)
    if len(sweep.objectives) == 1:
        return optuna.samplers.GPSampler(seed=sweep.seed, n_startup_trials=startup)
    return optuna.samplers.TPESampler(seed=sweep.seed, n_startup_trials=max(startup, sweep.trials // 4),
                                      multivariate=True)


def study_storage(sweep: SweepConfig) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(sweep.study_storage)


def forget_stale_study(sweep: SweepConfig) -> None:
    """A new sweep whose name has a study already (its storage was deleted, or it crashed before Tune saved
    its state): that study is not this sweep's history, so it is removed, and said so."""
    store = study_storage(sweep)
    if any(s.study_name == sweep.name for s in store.get_all_studies()):
        optuna.delete_study(study_name=sweep.name, storage=store)
        print(f"Optuna study {sweep.name!r} in {sweep.study_storage} was left by an earlier sweep of this name "
              "whose state is gone: removed.", flush=True)


def tune_config(sweep: SweepConfig, base: TrainRunConfig, trials: int | None = None,
                first_round: bool = True) -> tune.TuneConfig:
    """The sampler over the space, references first; one objective goes through TuneConfig (so the progress
    table shows it and the scheduler prunes on it), several go to Optuna (a Pareto front, no pruning).

    The study is stored (`sweep.study_storage`, named after the sweep), so a later search round
    (`sweep.trials` raised on `--resume`: `trials` new ones, not `first_round`) continues it: its sampler
    starts from every earlier trial, and the references and points are not enqueued again."""
    trials = sweep.trials if trials is None else trials
    points = enqueued_points(sweep, base)
    study = {"study_name": sweep.name, "storage": study_storage(sweep),
             "points_to_evaluate": points if first_round and points else None,
             "sampler": sampler(sweep, len(points))}
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
    return tune.TuneConfig(metric=sweep.objectives[0], mode=sweep.modes[0], scheduler=scheduler,
                           search_alg=OptunaSearch(**study), num_samples=trials,
                           max_concurrent_trials=sweep.max_concurrent)


def is_reference(mono_ratio: float) -> bool:
    return math.isclose(mono_ratio, 0.0) or math.isclose(mono_ratio, 1.0)
