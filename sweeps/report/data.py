"""Load one sweep from MLflow into tidy DataFrames: the only module of the report that talks to MLflow.

The layout read (written by sweeps.tracking, sweeps.trial, sweeps.phases and evaluation.tracking):
- the runs as `sweeps.records` tags them: experiment = sweep name; a parent run with the resolved
  configuration as an artifact (read back here), the flattened preset as params, the base model's
  evaluation at step 0; a child run per trial with params: the knobs of its configuration (sweeps.knobs:
  those searched or fixed), seed, config key; a child run per merge, with its weight.
- each run's evaluations as `evaluation.mlflow_layout` names them: metric keys at the checkpoint's step, and the
  CSVs (matrices, reliability table) of its artifact folders, found by listing each run recursively.
"""

from __future__ import annotations

import ast
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from evaluation.mlflow_layout import parse_artifact_path, parse_metric_key
from sweeps.config import LOWER_IS_BETTER, SweepConfig, flatten
from sweeps.knobs import KNOBS, MERGE_WEIGHT
from sweeps.records import (
    CONFIG_FOLDER,
    CONFIG_KEY,
    MERGE,
    NAME_TAG,
    PARENT,
    PARENT_RUN,
    RESOLVED,
    ROLE_TAG,
    TRIAL,
    TRIAL_TAG,
)

MATRIX_METRICS = ("map", "mrr@10")  # L x L matrices downloaded (at each run's last evaluated step)


def literal(text: str | None):
    """A logged param back as a Python value ("['en', 'de']" -> list, "inf" -> inf); the text if unparseable."""
    if text is None:
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        try:
            return float(text)  # inf, nan
        except ValueError:
            return text


@dataclass
class Sweep:
    """One sweep as tidy frames. `metrics` / `per_language` are long (one value per row) and hold the parent
    (base model, step 0) too; `runs` holds the trials only."""

    name: str
    experiment_id: str
    parent_id: str
    params: dict[str, str]
    config: dict  # the parent's resolved configuration (records.RESOLVED) as flat `section.key` values
    parent_metrics: dict[str, float]
    runs: pd.DataFrame  # run_id, trial_id, run_name, status, config_key, mono_ratio, temperature, ...
    metrics: pd.DataFrame  # run_id, source, dataset, split, setting, metric, value, step
    per_language: pd.DataFrame  # run_id, source, dataset, split, lang, metric, value, step
    matrices: dict[tuple[str, str, str, str], pd.DataFrame] = field(
        default_factory=dict
    )  # run, dataset, source, metric
    reliability: dict[tuple[str, str, str], pd.DataFrame] = field(default_factory=dict)  # run, dataset, source
    # The objective at every step it was logged (metrics holds the last): run_id, source, dataset, step, value
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    # The merges of the references (sweeps.merges), as `runs` with their weight: not trials, so no
    # question about the ratio reads them; the report's merge comparison does.
    merges: pd.DataFrame = field(default_factory=pd.DataFrame)

    def param(self, *keys: str, default=None):
        """The first of `keys` in the resolved configuration, else among the parent's params (parsed)."""
        for key in keys:
            if key in self.config:
                return self.config[key]
        for key in keys:
            if key in self.params:
                return literal(self.params[key])
        return default

    @property
    def objectives(self) -> list[str]:
        objectives = self.param("sweep.objectives", default=None) or SweepConfig().objectives
        return [objectives] if isinstance(objectives, str) else list(objectives)

    @property
    def objective(self) -> str:
        return self.objectives[0]

    @property
    def lower_is_better(self) -> bool:
        return self.objective.split("/")[-1] in LOWER_IS_BETTER

    @property
    def main_dataset(self) -> str:
        return str(self.param("eval.dataset", default="xquad-r"))

    @property
    def train_languages(self) -> list[str]:
        return list(self.param("data.train_languages", default=[]) or [])

    @property
    def final_step(self) -> int | None:
        """The step every completed trial reaches (optim.steps), else the largest step evaluated."""
        steps = self.param("optim.steps")
        if isinstance(steps, (int, float)):
            return int(steps)
        trial_steps = self.metrics.loc[self.metrics["run_id"].isin(self.runs["run_id"]), "step"]
        return int(trial_steps.max()) if len(trial_steps) else None

    @property
    def zero_shot_datasets(self) -> list[str]:
        return sorted(set(self.metrics["dataset"]) - {self.main_dataset})


TRIAL_PARAMS = {**{k.name: k.cast for k in KNOBS}, "seed": int}


def _list_files(client, run_id: str, path: str | None = None) -> list[str]:
    files = []
    for info in client.list_artifacts(run_id, path):
        if info.is_dir and info.path.split("/")[0] != "report":  # the report's own artifacts
            files += _list_files(client, run_id, info.path)
        elif not info.is_dir:
            files.append(info.path)
    return files


def _evaluations(client, run) -> tuple[list[dict], list[dict], dict[tuple, int]]:
    """(setting rows, per-language rows, the step of each evaluation (source, dataset, split)) of one run, as
    the driver logged them; the step is read once per evaluation."""
    parsed = [(k, v, parse_metric_key(k)) for k, v in run.data.metrics.items()]
    parsed = [(k, v, p) for k, v, p in parsed if p is not None]
    steps: dict[tuple, int] = {}
    settings, languages = [], []
    for key, value, p in parsed:
        group = (p.source, p.dataset, p.split)
        if group not in steps:  # run.data.metrics holds the value at the largest step: find that step
            steps[group] = max(m.step for m in client.get_metric_history(run.info.run_id, key))
        row = {
            "run_id": run.info.run_id,
            "source": p.source,
            "dataset": p.dataset,
            "split": p.split,
            "metric": p.metric,
            "value": float(value),
            "step": steps[group],
        }
        if p.scope == "setting":
            settings.append(row | {"setting": p.group})
        else:
            languages.append(row | {"lang": p.group})
    return settings, languages, steps


def _read_matrix(path: str) -> pd.DataFrame:
    frame = pd.read_csv(path, index_col=0)
    frame.index, frame.columns = frame.index.astype(str), frame.columns.astype(str)
    frame.index.name = frame.columns.name = None
    return frame.astype(float)


def _artifacts(client, run_id: str, tmp: Path, logged: dict[tuple, int]) -> tuple[dict, dict]:
    """The matrices (MATRIX_METRICS) and reliability table of each evaluation at the step its metrics were
    logged at (`logged`, from `_evaluations`), never the highest step found among the artifact folders: a
    folder planted in the artifact store under another step is not read."""
    found = [(p, a) for p in _list_files(client, run_id) if (a := parse_artifact_path(p)) is not None]
    matrices, reliability = {}, {}
    for path, a in found:
        if a.step != logged.get((a.source, a.dataset, a.split)) or (
            a.kind == "matrix" and a.metric not in MATRIX_METRICS
        ):
            continue
        local = client.download_artifacts(run_id, path, str(tmp))
        if a.kind == "matrix":
            matrices[(run_id, a.dataset, a.source, a.metric)] = _read_matrix(local)
        else:
            reliability[(run_id, a.dataset, a.source)] = pd.read_csv(local)
    return matrices, reliability


def _trial_row(run) -> dict:
    p = run.data.params
    row = {
        "run_id": run.info.run_id,
        "trial_id": run.data.tags.get(TRIAL_TAG, run.info.run_name),
        "run_name": run.info.run_name,
        "status": run.info.status,
        "config_key": p.get(CONFIG_KEY),
    }
    for name, cast in TRIAL_PARAMS.items():
        if cast is str:
            row[name] = p.get(name, math.nan)
            continue
        value = literal(p.get(name))
        if cast is bool:
            row[name] = value if isinstance(value, bool) else math.nan
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            value = math.nan  # absent (the knob was not searched) or unreadable
        row[name] = cast(value) if math.isfinite(value) else float(value)  # T = inf stays inf
    return row


def load_sweep(client, experiment: str, tables: bool = True) -> Sweep:
    """Read the sweep `experiment` (its name in MLflow) through `client` (an MlflowClient). `tables=False`
    reads the metrics only, without the matrices, reliability tables and the objective's history (the
    figures'): what the driver's end-of-sweep lines need."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ValueError(
            f"no MLflow experiment {experiment!r}; the store has: {', '.join(names) or 'none'}. "
            "Pass --experiment NAME (the sweep.name) and --tracking-uri."
        )
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per CSV otherwise
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            break
    parent = next(
        (r for r in runs if r.data.tags.get(ROLE_TAG) == PARENT and r.data.tags.get(NAME_TAG) == experiment), None
    )
    if parent is None:
        raise ValueError(
            f"MLflow experiment {experiment!r} holds no sweep: no run tagged {ROLE_TAG}={PARENT} and "
            f"{NAME_TAG}={experiment}, as `python sweeps/ratio_search.py` logs one. Pass --experiment "
            "the sweep.name of a sweep."
        )
    ours = [r for r in runs if r.data.tags.get(PARENT_RUN) == parent.info.run_id]
    trials = [r for r in ours if r.data.tags.get(ROLE_TAG) == TRIAL]
    merged = [r for r in ours if r.data.tags.get(ROLE_TAG) == MERGE]
    params = dict(parent.data.params)
    settings, languages, matrices, reliability = [], [], {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        config = _resolved_config(client, parent.info.run_id, Path(tmp))
        for run in [parent] + trials + merged:
            s, lang, logged = _evaluations(client, run)
            settings += s
            languages += lang
            if tables:
                m, r = _artifacts(client, run.info.run_id, Path(tmp), logged)
                matrices |= m
                reliability |= r
    metric_cols = ["run_id", "source", "dataset", "split", "setting", "metric", "value", "step"]
    lang_cols = ["run_id", "source", "dataset", "split", "lang", "metric", "value", "step"]
    columns = ["run_id", "trial_id", "run_name", "status", "config_key", *TRIAL_PARAMS]
    trial_frame = pd.DataFrame([_trial_row(r) for r in trials], columns=columns)
    merge_frame = pd.DataFrame(
        [_trial_row(r) | {MERGE_WEIGHT: float(r.data.params[MERGE_WEIGHT])} for r in merged],
        columns=[*columns, MERGE_WEIGHT],
    )
    sweep = Sweep(
        experiment,
        exp.experiment_id,
        parent.info.run_id,
        params,
        config,
        dict(parent.data.metrics),
        trial_frame,
        pd.DataFrame(settings, columns=metric_cols),
        pd.DataFrame(languages, columns=lang_cols),
        matrices,
        reliability,
    )
    sweep.history = _history(client, trials if tables else [], sweep.objective)
    sweep.merges = merge_frame
    return sweep


def _history(client, trials: list, objective: str) -> pd.DataFrame:
    """Every logged value of `objective` ("multi/map") in each trial, per evaluation (source, dataset)."""
    rows = []
    for run in trials:
        for key in run.data.metrics:
            p = parse_metric_key(key)
            if p is not None and p.scope == "setting" and f"{p.group}/{p.metric}" == objective:
                rows += [
                    {
                        "run_id": run.info.run_id,
                        "source": p.source,
                        "dataset": p.dataset,
                        "step": m.step,
                        "value": m.value,
                    }
                    for m in client.get_metric_history(run.info.run_id, key)
                ]
    return pd.DataFrame(rows, columns=["run_id", "source", "dataset", "step", "value"])


def _resolved_config(client, parent_id: str, tmp: Path) -> dict:
    """The parent run's resolved configuration (every setting the sweep ran with, as YAML types) flattened
    to `section.key`; {} while it is missing (a driver killed between creating the parent run and logging it,
    which its `--resume` does): the preset's params are read instead."""
    if RESOLVED not in {Path(f.path).name for f in client.list_artifacts(parent_id, CONFIG_FOLDER)}:
        return {}
    text = Path(client.download_artifacts(parent_id, f"{CONFIG_FOLDER}/{RESOLVED}", str(tmp))).read_text()
    return flatten(yaml.safe_load(text) or {})


def log_report_artifacts(client, sweep: Sweep, files: list[Path], folder: str = "report") -> None:
    """Attach the report's files (PNGs, the HTML) to the sweep's parent run under `folder/`."""
    for path in files:
        client.log_artifact(sweep.parent_id, str(path), folder)
