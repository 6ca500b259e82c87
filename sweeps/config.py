"""The sweep section of a preset: what to search, how to select, where results go.

Loaded with the trainer's and evaluation's sections from one YAML file and validated together before
Ray starts (`load_sweep_setup`), so a bad range or an unknown objective costs nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, make_dataclass, replace
from pathlib import Path
from typing import Any

from evaluation.config import EvalConfig
from evaluation.mlflow_layout import SETTINGS
from hybrid import locations
from hybrid.config import apply_overrides, from_dict, read_yaml, to_dict
from sweeps.knobs import BY_NAME, KNOBS
from sweeps.uris import absolute_tracking_uri, carries_secret, is_server, redact, study_beside
from trainers.config import TrainRunConfig, run_config_from_raw

SCHEDULERS = ("asha", "median", "none")
# Sweep keys that may change on --resume: they act after the search (or only wait), never on its results.
RESUMABLE_CHANGES = (
    "scale_up_timeout_s",
    "final_eval",
    "final_eval_all",
    "eval_cache",
    "zero_shot_datasets",
    "trials",
    "verbose",
    "lease_heartbeat_s",
    "log_sync_s",
)  # trials: only raised
# Keys that only say where the sweep's record is: they may differ on --resume (a new head, a new driver
# folder) when they lead to the same sweep, which its id then proves (`sweeps.identity`).
WHERE_KEYS = ("tracking_uri", "study_storage", "artifact_location")
# Settings added after sweeps were started, with the value that reads as the behaviour before them: a sweep
# stored without the key resumes as long as the key keeps that value.
ADDED_SINCE = {"eval.precision": "fp32", "trainer.sweep_id": ""}
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # no quotes or slashes: it names folders and MLflow filters
ZERO_SHOT = ("mlqa-r",)  # out-of-domain sets reported as zero-shot: never used for selection
# Metrics where lower is better; every other objective is maximised.
LOWER_IS_BETTER = ("rank_distance", "ece")


def flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`: a config as `section.key` values."""
    out: dict[str, Any] = {}
    for key, value in nested.items():
        out |= flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return out


class _PointMethods:
    def given(self) -> dict[str, Any]:
        """The knobs this point sets."""
        return {k: v for k, v in to_dict(self).items() if v is not None and k != "reseed"}


# A configuration tried before the sampler chooses any (enqueued after the references): a grid of alphas,
# a num_train_languages arm. A knob left out takes the references' value. One field per searched knob.
Point = make_dataclass(
    "Point",
    [
        *((k.name, k.cast | None, None) for k in KNOBS),
        # re-run with sweep.seeds seeds, like the best configurations (acts after the search)
        ("reseed", bool, False),
    ],
    bases=(_PointMethods,),
    frozen=True,
    namespace={"__module__": __name__},
)  # pickled by reference (Tune's state, Ray)


class _SearchChecks:
    """Checks of `SearchSpace`: each knob's values (`Knob.check`), and each point within them."""

    def __post_init__(self) -> None:
        for knob in KNOBS:
            knob.check(getattr(self, knob.name), f"sweep.search.{knob.name}")
        if not self.mono_ratio:
            raise ValueError(
                "sweep.search.mono_ratio=[]: alpha is always searched (the references are its two "
                "ends); give [low, high], e.g. [0, 1]."
            )
        for i, point in enumerate(self.points):
            self._check_point(point, f"sweep.search.points[{i}]")

    def _check_point(self, point: Any, where: str) -> None:
        """Each enqueued value lies in its searched range (Optuna rejects it mid-sweep otherwise)."""
        if not point.given():
            raise ValueError(f"{where} is empty: give at least one knob, e.g. {{mono_ratio: 0.5}}.")
        for name, value in point.given().items():
            knob, values = BY_NAME[name], getattr(self, name)
            if knob.is_range and not (values and values[0] <= value <= values[-1]):
                raise ValueError(
                    f"{where}.{name}={value} lies outside sweep.search.{name}={list(values)}: "
                    f"widen the range or change the point."
                )
            if not knob.is_range and value not in values:
                raise ValueError(
                    f"{where}.{name}={value} is not one of sweep.search.{name}={list(values)}: "
                    "add it to the choices or change the point."
                )


# Ranges and choices of the searched knobs (sweeps.knobs: [] = not searched, one value = fixed), and the
# points enqueued after the references, e.g. [{mono_ratio: 0.5}, ...]. One field per searched knob.
SearchSpace = make_dataclass(
    "SearchSpace",
    [
        *((k.name, tuple[k.cast, ...], field(default=k.default)) for k in KNOBS),
        ("points", tuple[Point, ...], field(default=())),
    ],
    bases=(_SearchChecks,),
    frozen=True,
    namespace={"__module__": __name__},
)


@dataclass(frozen=True)
class SweepConfig:
    name: str = "hybrid-sweep"
    trials: int = 3  # Optuna trials, the two references (alpha = 0 and 1) included
    max_concurrent: int = 1
    seed: int = 0
    objectives: tuple[str, ...] = ("multi/map",)  # one: single objective; several: Pareto front
    scheduler: str = "none"  # asha | median: pruning on the per-checkpoint proxy evaluation (one objective)
    grace_period: int = 1  # checkpoints before ASHA may stop a trial
    top_k: int = 1  # configurations re-run with more seeds
    seeds: int = 3  # seeds per top configuration, the original included
    reseed_references: bool = False  # the alpha = 0 / 1 references get `seeds` seeds too (a study's baselines)
    # Per seed, the two references' final checkpoints averaged with these weights of the alpha = 1 model
    # (e.g. [0.25, 0.5, 0.75]): "merge w=0.5" beside the trained configurations (sweeps/merges.py).
    merge_references: tuple[float, ...] = ()
    # Proxy evaluation of every checkpoint, run beside training (so its tasks must fit in the CPUs the
    # trials leave free): a few languages (trained, distant script, unseen) and a fixed question sample.
    proxy_languages: tuple[str, ...] = ("en", "zh", "el")
    proxy_max_questions: int | None = 100
    proxy_cpus: float = 0.1
    final_eval: bool = True  # full evaluation (all eval languages, all questions) of the best and references
    final_eval_all: bool = False  # ... of every completed trial (a study: every question answered on full data)
    # Reuse an evaluation of the same model files on the same data and settings (the base model's in a
    # second sweep, a checkpoint evaluated again after a restart): figures identical to recomputing them.
    eval_cache: bool = True
    zero_shot_datasets: tuple[str, ...] = ()  # e.g. [mlqa-r]: evaluated at the end only, never selected on
    search: SearchSpace = field(default_factory=SearchSpace)
    # A SQLite file beside the driver (the embedded default), or a tracking server, http(s)://HOST:PORT, that
    # outlives the cluster (its credentials from MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN only).
    tracking_uri: str = "sqlite:///mlflow.db"
    # The Optuna study (named after the sweep), for `optuna.load_study` and optuna-dashboard; "": optuna.db
    # beside a SQLite MLflow store (./optuna.db with a tracking server). A database that outlives the
    # cluster: postgresql+psycopg://USER@HOST:PORT/DB, its password from PGPASSWORD / ~/.pgpass / PGPASSFILE.
    # Only the driver opens it.
    study_storage: str = ""
    # Where MLflow puts artifacts: "" = beside a SQLite store (./mlruns), or the tracking server's own
    # (it proxies them to its object store); an s3://... location to choose one.
    artifact_location: str = ""
    # One driver per sweep: the driver's lease in the sweep's storage is renewed every lease_heartbeat_s;
    # `--resume` takes over a lease not renewed for lease_stale_after heartbeats (a killed driver's).
    lease_heartbeat_s: float = 30
    lease_stale_after: int = 4
    log_sync_s: float = 300  # the head's Ray logs copied into <storage>/<sweep>/logs/ this often
    storage_path: str = "outputs/sweeps"
    trial_cpus: float = 0.1  # the Tune function only drives the Train run
    # A custom resource only the head node declares (cluster.yaml: sweep_trial): each trial's driver (the
    # Tune function and its Train controller) then takes one unit of it instead of trial_cpus, so it runs
    # on the head and a lost (spot) worker node costs only Train workers, restarted from the checkpoint.
    trial_resource: str = ""
    scale_up_timeout_s: float = 900  # an autoscaling cluster: how long to wait for the trials' nodes
    verbose: bool = False  # Ray worker and task output and every trial result in the terminal (--verbose)

    def __post_init__(self) -> None:
        if not SAFE_NAME.fullmatch(self.name):
            raise ValueError(
                f"sweep.name={self.name!r}: use letters, digits, '.', '_' and '-' (it names an MLflow "
                "experiment and a storage folder), e.g. hybrid-sweep-2."
            )
        if not self.objectives:
            raise ValueError("sweep.objectives is empty: name at least one metric, e.g. [multi/map].")
        if self.trials < 2 + len(self.search.points):
            raise ValueError(
                f"sweep.trials={self.trials} leaves no room for the alpha = 0 and alpha = 1 references "
                f"and the {len(self.search.points)} sweep.search.points: raise it to at least "
                f"{2 + len(self.search.points)}."
            )
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"sweep.scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}.")
        for objective in self.objectives:
            setting, _, metric = objective.partition("/")
            if setting not in SETTINGS or not metric:
                raise ValueError(
                    f"sweep objective {objective!r}: use '{{setting}}/{{metric}}' with setting in "
                    f"{SETTINGS}, e.g. multi/map, mono/map, cross/mrr@10."
                )
        if len(self.objectives) > 1 and self.scheduler != "none":
            raise ValueError(
                "multi-objective sweeps cannot prune (ASHA and median need one metric): set sweep.scheduler=none."
            )
        if self.proxy_cpus <= 0 or (self.proxy_max_questions is not None and self.proxy_max_questions < 1):
            raise ValueError("sweep.proxy_cpus must be > 0 and sweep.proxy_max_questions null or >= 1.")
        if self.grace_period < 1:
            raise ValueError(f"sweep.grace_period must be >= 1 checkpoint, got {self.grace_period}.")
        if not self.trial_cpus > 0:
            raise ValueError(f"sweep.trial_cpus must be > 0 (Ray CPUs of a trial's driver), got {self.trial_cpus}.")
        if self.trial_resource and not SAFE_NAME.fullmatch(self.trial_resource):
            raise ValueError(f"sweep.trial_resource={self.trial_resource!r}: a Ray resource name such as sweep_trial.")
        if not self.scale_up_timeout_s > 0:
            raise ValueError(f"sweep.scale_up_timeout_s must be > 0 seconds, got {self.scale_up_timeout_s}.")
        if bad := [w for w in self.merge_references if not 0 < w < 1]:
            raise ValueError(
                f"sweep.merge_references={list(self.merge_references)}: {bad[0]} is not strictly between 0 "
                "and 1 (the alpha = 1 model's share; 0 and 1 are the references themselves), e.g. "
                "[0.25, 0.5, 0.75]."
            )
        if self.merge_references and not self.final_eval:
            raise ValueError(
                "sweep.merge_references needs sweep.final_eval=true: merges are evaluated in the final "
                "phase. Set it, or merge_references: []."
            )
        if self.top_k < 0 or self.seeds < 1 or self.max_concurrent < 1:
            raise ValueError("sweep.top_k must be >= 0, sweep.seeds >= 1, sweep.max_concurrent >= 1.")
        self._check_record()

    def _check_record(self) -> None:
        """Where the record goes: no password in a URI (it would be stored, logged and pickled), and no
        artifacts on this machine's disk behind a tracking server that is meant to outlive it."""
        for key in ("storage_path", "artifact_location"):
            if carries_secret(getattr(self, key)):
                raise ValueError(
                    f"sweep.{key}={redact(getattr(self, key))!r} carries credentials: remove them and give the "
                    "bucket's credentials as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or an instance profile) "
                    "in the environment instead."
                )
        if carries_secret(self.tracking_uri):
            raise ValueError(
                f"sweep.tracking_uri={redact(self.tracking_uri)!r} carries a password: remove it and set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the "
                "environment instead."
            )
        if carries_secret(self.study_storage):
            raise ValueError(
                f"sweep.study_storage={redact(self.study_storage)!r} carries a password: remove it and "
                "set PGPASSWORD (or use ~/.pgpass / PGPASSFILE) in the environment instead."
            )
        if is_server(self.tracking_uri) and self.artifact_location and not locations.is_uri(self.artifact_location):
            raise ValueError(
                f"sweep.artifact_location={self.artifact_location!r} is a folder on this machine, behind "
                f"the tracking server {self.tracking_uri}: artifacts would be lost with this disk. Leave "
                "it empty (the server stores them) or give s3://BUCKET/PREFIX."
            )
        if not (self.lease_heartbeat_s > 0 and self.lease_stale_after >= 2 and self.log_sync_s > 0):
            raise ValueError(
                f"sweep.lease_heartbeat_s={self.lease_heartbeat_s}, sweep.lease_stale_after="
                f"{self.lease_stale_after}, sweep.log_sync_s={self.log_sync_s}: use seconds > 0 and at "
                "least 2 heartbeats, e.g. 30, 4 and 300."
            )

    @property
    def eval_cache_location(self) -> str | None:
        """`<storage_path>/eval-cache`: evaluations kept by key, shared by every sweep on this storage."""
        return locations.join(self.storage_path, "eval-cache") if self.eval_cache else None

    @property
    def validation_cache_location(self) -> str:
        """`<storage_path>/<name>/validation-cache`: the base model's step-0 validation embeddings, shared
        by this sweep's trials (`trainers.validation`); "" without `eval_cache`."""
        return self.location("validation-cache") if self.eval_cache else ""

    def location(self, *parts: str) -> str:
        """`<storage_path>/<name>/<parts>`: where everything of this sweep lives (phases, checkpoints)."""
        return locations.join(self.storage_path, self.name, *parts)

    @property
    def trial_bundle(self) -> dict[str, float]:
        """What one trial's driver (Tune function + Train controller) asks of the cluster."""
        return {"CPU": 0, self.trial_resource: 1} if self.trial_resource else {"CPU": self.trial_cpus}

    @property
    def modes(self) -> list[str]:
        return ["min" if o.split("/")[1] in LOWER_IS_BETTER else "max" for o in self.objectives]


@dataclass(frozen=True)
class SweepSetup:
    """Everything a sweep needs, validated: the base training run, the evaluation, the search."""

    run: TrainRunConfig
    eval: EvalConfig  # the full evaluation (final phase, CLI)
    sweep: SweepConfig
    raw: dict[str, Any]  # the preset as loaded (logged to MLflow as the sweep's params)

    @property
    def proxy_eval(self) -> EvalConfig:
        s = self.sweep
        return replace(
            self.eval,
            languages=s.proxy_languages or None,
            max_questions=s.proxy_max_questions,
            encode_cpus=s.proxy_cpus,
            score_cpus=s.proxy_cpus,
        )

    def resolved(self) -> SweepSetup:
        """Local paths and SQLite URIs made absolute on the driver: Tune runs trials in other directories
        (a hub name or the offline e5-small is left as it is)."""
        s, run = self.sweep, self.run
        sweep = replace(
            s,
            tracking_uri=absolute_tracking_uri(s.tracking_uri),
            study_storage=absolute_tracking_uri(s.study_storage or study_beside(s.tracking_uri)),
            artifact_location=locations.resolve(s.artifact_location or "mlruns")
            if s.artifact_location or not is_server(s.tracking_uri)
            else "",
            storage_path=locations.resolve(s.storage_path),
        )
        run = replace(
            run,
            model=replace(run.model, name=_absolute(run.model.name)),
            data=replace(run.data, train_data=_absolute(run.data.train_data), data_dir=_absolute(run.data.data_dir)),
        )
        return replace(self, run=run, sweep=sweep, eval=replace(self.eval, data_dir=_absolute(self.eval.data_dir)))

    def sections(self) -> dict[str, Any]:
        """Every setting, sections as in a preset: what `--show-config` prints and the parent run keeps."""
        return to_dict(self.run) | {"eval": to_dict(self.eval), "sweep": to_dict(self.sweep)}

    def settings(self) -> dict[str, Any]:
        """The resolved configuration as flat `section.key` values: what a sweep is, for `--resume`."""
        return flatten(self.sections())

    def changed_since(self, started: dict[str, Any]) -> list[str]:
        """Keys whose value differs from the configuration the sweep `started` with, except those that
        act after the search and cannot alter its results (RESUMABLE_CHANGES), and those that only say where
        the record is (WHERE_KEYS: the sweep id proves it is the same sweep) or that a sweep does not use."""
        now = json.loads(json.dumps(self.settings()))  # as stored: lists, not tuples; inf as Infinity
        keys = (
            (set(now) | set(started))
            - {f"sweep.{k}" for k in (*RESUMABLE_CHANGES, *WHERE_KEYS)}
            - {"trainer.storage_path"}
        )  # unused by a sweep (its checkpoints go under sweep.storage_path)
        started = ADDED_SINCE | started
        return sorted(k for k in keys if _searched(now.get(k), k) != _searched(started.get(k), k))


def _searched(value: Any, key: str) -> Any:
    """A setting as the search sees it: enqueued points without their `reseed` flag, which acts after the
    search (so `--resume` may give a finished sweep's points more seeds)."""
    if key != "sweep.search.points" or not isinstance(value, list):
        return value
    return [{k: v for k, v in point.items() if k != "reseed"} for point in value]


def _absolute(path: str | None) -> str | None:
    """An existing local path made absolute; a URI, a name or None as it is."""
    if path is None or locations.is_uri(path) or not Path(path).expanduser().exists():
        return path
    return str(Path(path).expanduser().resolve())


def load_sweep_setup(
    path: Path | str, overrides: list[str] = (), say: Callable[[str], object] | None = None
) -> SweepSetup:
    """The preset at `path` with `overrides`, validated; the model's settings as read go to `say`."""
    raw = apply_overrides(read_yaml(path), list(overrides))
    run = run_config_from_raw(raw, say)
    evaluation = from_dict(EvalConfig, raw.get("eval"), "eval")
    sweep = from_dict(SweepConfig, raw.get("sweep"), "sweep")
    if evaluation.dataset in ZERO_SHOT or evaluation.dataset in sweep.zero_shot_datasets:
        raise ValueError(
            f"eval.dataset={evaluation.dataset!r} would select on a zero-shot set. Select on the "
            f"held-out split (eval.dataset={run.data.dataset!r}) and list zero-shot sets in "
            "sweep.zero_shot_datasets: they are evaluated once, after selection."
        )
    for lang in sweep.proxy_languages:
        if lang not in (evaluation.languages or run.data.eval_languages):
            raise ValueError(
                f"sweep.proxy_languages: {lang!r} is not an evaluation language "
                f"({list(evaluation.languages or run.data.eval_languages)})."
            )
    for dataset in sweep.zero_shot_datasets:
        replace(evaluation, dataset=dataset)  # validates the name now, not after the sweep
    if any(k > len(run.data.train_languages) for k in sweep.search.num_train_languages):
        raise ValueError(
            f"sweep.search.num_train_languages {sweep.search.num_train_languages} exceeds the "
            f"{len(run.data.train_languages)} data.train_languages."
        )
    return SweepSetup(run, evaluation, sweep, raw)
