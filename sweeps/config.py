"""The sweep section of a preset: what to search, how to select, where results go.

Loaded with the trainer's and evaluation's sections from one YAML file and validated together before
Ray starts (`load_sweep_setup`), so a bad range or an unknown objective costs nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluation.config import EvalConfig
from hybrid.config import from_dict, read_yaml
from trainers.config import TrainRunConfig, apply_overrides, run_config_from_raw

SCHEDULERS = ("asha", "median", "none")
SETTINGS = ("mono", "cross", "multi")
# Metrics where lower is better; every other objective is maximised.
LOWER_IS_BETTER = ("rank_distance", "ece")


@dataclass(frozen=True)
class SearchSpace:
    """Ranges of the searched knobs; a knob with a single value is fixed, not searched."""

    mono_ratio: tuple[float, float] = (0.0, 1.0)  # alpha, uniform
    temperature: tuple[float, float] = (0.01, 0.2)  # tau, log-uniform
    lang_temperature: tuple[float, ...] = (math.inf,)  # T, a choice
    lr: tuple[float, ...] = ()  # empty: optim.lr; two values: log-uniform range
    num_train_languages: tuple[int, ...] = ()  # empty: all; else a choice of the first k training languages

    def __post_init__(self) -> None:
        a, b = self.mono_ratio
        if not 0.0 <= a <= b <= 1.0:
            raise ValueError(f"sweep.search.mono_ratio must satisfy 0 <= low <= high <= 1, got {self.mono_ratio}.")
        lo, hi = self.temperature
        if not 0.0 < lo <= hi:
            raise ValueError(f"sweep.search.temperature must satisfy 0 < low <= high, got {self.temperature}.")
        if not self.lang_temperature or any(t <= 0 for t in self.lang_temperature):
            raise ValueError(f"sweep.search.lang_temperature needs values > 0 (.inf = uniform), got {self.lang_temperature}.")
        if self.lr and (len(self.lr) != 2 or not 0 < self.lr[0] <= self.lr[1]):
            raise ValueError(f"sweep.search.lr must be [] or [low, high] with 0 < low <= high, got {self.lr}.")
        if any(k < 2 for k in self.num_train_languages):
            raise ValueError(f"sweep.search.num_train_languages values must be >= 2 (X-Y needs two), got "
                             f"{self.num_train_languages}.")


@dataclass(frozen=True)
class SweepConfig:
    name: str = "hybrid-sweep"
    trials: int = 3  # Optuna trials, the two references (alpha = 0 and 1) included
    max_concurrent: int = 1
    seed: int = 0
    objectives: tuple[str, ...] = ("multi/map",)  # one: single objective; several: Pareto front
    scheduler: str = "asha"  # pruning on the per-checkpoint proxy evaluation (single objective only)
    grace_period: int = 1  # checkpoints before ASHA may stop a trial
    top_k: int = 1  # configurations re-run with more seeds
    seeds: int = 3  # seeds per top configuration, the original included
    final_eval: bool = True  # full evaluation (all eval languages, all questions) of the best trial
    search: SearchSpace = field(default_factory=SearchSpace)
    tracking_uri: str = "sqlite:///mlflow.db"
    artifact_location: str = "mlruns"
    storage_path: str = "outputs/sweeps"
    trial_cpus: float = 0.1  # the Tune function only drives the Train run

    def __post_init__(self) -> None:
        if self.trials < 2:
            raise ValueError(f"sweep.trials must be >= 2 (the alpha = 0 and alpha = 1 references), got {self.trials}.")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"sweep.scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}.")
        for objective in self.objectives:
            setting, _, metric = objective.partition("/")
            if setting not in SETTINGS or not metric:
                raise ValueError(f"sweep objective {objective!r}: use '{{setting}}/{{metric}}' with setting in "
                                 f"{SETTINGS}, e.g. multi/map, mono/map, cross/mrr@10.")
        if len(self.objectives) > 1 and self.scheduler != "none":
            raise ValueError("multi-objective sweeps cannot prune (ASHA and median need one metric): "
                             "set sweep.scheduler=none.")
        if self.top_k < 0 or self.seeds < 1 or self.max_concurrent < 1:
            raise ValueError("sweep.top_k must be >= 0, sweep.seeds >= 1, sweep.max_concurrent >= 1.")

    @property
    def modes(self) -> list[str]:
        return ["min" if o.split("/")[1] in LOWER_IS_BETTER else "max" for o in self.objectives]


@dataclass(frozen=True)
class SweepSetup:
    """Everything a sweep needs, validated: the base training run, the evaluation, the search."""

    run: TrainRunConfig
    eval: EvalConfig
    sweep: SweepConfig
    raw: dict[str, Any]  # the preset as loaded (logged to MLflow as the sweep's config artifact)


def load_sweep_setup(path: Path | str, overrides: list[str] = ()) -> SweepSetup:
    raw = apply_overrides(read_yaml(path), list(overrides))
    run = run_config_from_raw(raw)
    evaluation = from_dict(EvalConfig, raw.get("eval"), "eval")
    sweep = from_dict(SweepConfig, raw.get("sweep"), "sweep")
    if any(k > len(run.data.train_languages) for k in sweep.search.num_train_languages):
        raise ValueError(f"sweep.search.num_train_languages {sweep.search.num_train_languages} exceeds the "
                         f"{len(run.data.train_languages)} data.train_languages.")
    return SweepSetup(run, evaluation, sweep, raw)
