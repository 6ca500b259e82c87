"""MLflow layout of a sweep: one experiment per sweep name, one parent run, one child run per trial.

Only the sweep driver writes MLflow: trials and Train controllers run on worker nodes, where the
driver's tracking store (a SQLite file on the head, a server on the head's 127.0.0.1) is out of reach;
they report to Tune, and `TrialLogger`, a Tune callback in the driver, logs what arrives. Runs are found
again by tags (`sweep.name`, `tune.trial_id`) before any is created, so a resumed or retried sweep
reuses its runs instead of duplicating them.
"""

from __future__ import annotations

import functools
import getpass
import json
import math
import subprocess
import time
from pathlib import Path
from typing import Any

from ray import tune

from evaluation.results import EvalResult
from evaluation.tracking import dataset_input, log_result, mlflow_name
from hybrid import storage
from hybrid.config import DataConfig
from hybrid.data.sources import origin
from hybrid.splits import training_digest
from sweeps.knobs import KNOBS
from sweeps.trial import EVAL_RESULT, TRAIN_HISTORY, UNREPORTED, config_key, trial_run_config
from trainers.config import TrainRunConfig

PARENT_TAG, TRIAL_TAG = "sweep.name", "tune.trial_id"
ROOT = Path(__file__).resolve().parents[1]


def client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"  # MLflow 3's UI then opens the runs, not GenAI traces


def experiment_id(tracking_uri: str, name: str, artifact_location: str) -> str:
    """Get or create the sweep's experiment (artifacts under an explicit, absolute location), tagged as
    model development so MLflow 3's UI opens it on its runs table."""
    c = client(tracking_uri)
    found = c.get_experiment_by_name(name)
    if found is not None:
        if found.tags.get(KIND_TAG) != KIND:
            c.set_experiment_tag(found.experiment_id, KIND_TAG, KIND)
        return found.experiment_id
    location = artifact_location if "://" in artifact_location else Path(artifact_location).as_uri()
    return c.create_experiment(name, artifact_location=location, tags={KIND_TAG: KIND})


def _find_run(tracking_uri: str, exp_id: str, tags: dict[str, str]) -> str | None:
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client(tracking_uri).search_runs([exp_id], filter_string=query, max_results=1)
    return runs[0].info.run_id if runs else None


@functools.lru_cache(maxsize=1)
def source_tags() -> dict[str, str]:
    """Where a run came from, in MLflow's own tags (the UI's Source and User columns): the entry point,
    the user, and the git commit when the project is a git checkout."""
    tags = {"mlflow.source.type": "LOCAL", "mlflow.source.name": "sweeps/ratio_search.py",
            "mlflow.user": getpass.getuser()}
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return tags
    return tags | ({"mlflow.source.git.commit": head.stdout.strip()} if head.returncode == 0 else {})


def parent_run(tracking_uri: str, exp_id: str, sweep_name: str, params: dict[str, Any],
               configs: dict[str, str]) -> str:
    """The sweep's parent run: reused when it exists (resume), else created with the sweep's params and
    `configs` ({artifact name: YAML text}: the preset and the resolved configuration, readable as files)."""
    found = _find_run(tracking_uri, exp_id, {PARENT_TAG: sweep_name, "sweep.role": "parent"})
    if found:
        client(tracking_uri).update_run(found, status="RUNNING")
        return found
    c = client(tracking_uri)
    run = c.create_run(exp_id, run_name=sweep_name,
                       tags={PARENT_TAG: sweep_name, "sweep.role": "parent"} | source_tags())
    for key, value in params.items():
        c.log_param(run.info.run_id, key, value)
    for name, text in configs.items():
        c.log_text(run.info.run_id, text, f"config/{name}")
    return run.info.run_id


def trial_run_id(tracking_uri: str, exp_id: str, trial_id: str) -> str | None:
    return _find_run(tracking_uri, exp_id, {TRIAL_TAG: trial_id})


def child_run(tracking_uri: str, exp_id: str, parent_id: str, trial_id: str, run_name: str,
              params: dict[str, Any]) -> str:
    """The trial's child run (nested under the parent), reused (and marked running again) when the trial
    restarts."""
    found = trial_run_id(tracking_uri, exp_id, trial_id)
    if found:
        client(tracking_uri).update_run(found, status="RUNNING")
        return found
    c = client(tracking_uri)
    run = c.create_run(exp_id, run_name=run_name, tags={TRIAL_TAG: trial_id, "mlflow.parentRunId": parent_id,
                                                        "sweep.role": "trial"} | source_tags())
    for key, value in params.items():
        c.log_param(run.info.run_id, key, value)
    return run.info.run_id


def log_training_data(tracking_uri: str, run_id: str, data: DataConfig) -> None:
    """The trial's training pairs as the run's `training` dataset input (digest of the pairs themselves;
    MLflow keeps one input per name and digest, so a restarted trial logs it once)."""
    name = f"{data.train_data or data.dataset}/train/{'+'.join(data.train_languages)}"
    source = data.train_data or data.data_dir or origin(data.dataset)
    client(tracking_uri).log_inputs(run_id, datasets=[dataset_input(name, _digest(data), source, "training")])


@functools.lru_cache(maxsize=16)
def _digest(data: DataConfig) -> str:
    return training_digest(data)


def log_metrics(tracking_uri: str, run_id: str, metrics: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(mlflow_name(k), float(v), now, step) for k, v in metrics.items()
             if isinstance(v, (int, float)) and math.isfinite(v)]
    client(tracking_uri).log_batch(run_id, metrics=batch)


def end_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Close a run (FINISHED, KILLED for a pruned trial, FAILED) so MLflow stops showing it as running.
    A crashed driver leaves its runs RUNNING, which is what they are: `--resume` continues them."""
    client(tracking_uri).set_terminated(run_id, status=status)


def kill_running_trials(tracking_uri: str, exp_id: str) -> None:
    """Mark the trial runs still RUNNING as KILLED: trials an interrupted sweep stopped (Ctrl-C). `--resume`
    marks them RUNNING again when they restart."""
    c = client(tracking_uri)
    for run in c.search_runs([exp_id], filter_string="tags.`sweep.role` = 'trial' and attributes.status = 'RUNNING'",
                             max_results=10000):
        c.set_terminated(run.info.run_id, status="KILLED")


class TrialLogger(tune.Callback):
    """The driver's side of a trial, in MLflow: its child run at its start (reused when it restarts),
    each result's training history and evaluation (metrics, L x L matrices and heatmaps) as it arrives,
    its wall time and status at its end: FINISHED (every step), KILLED (pruned), FAILED.

    With `progress` (the default terminal, Tune itself silent) it also prints one line per result and
    per trial end: the progress view.

    Tune pickles its callbacks into the experiment state (in storage) and restores them on `--resume`:
    only names, ids and the base configuration are kept here, never a client or a connection."""

    def __init__(self, tracking_uri: str, exp_id: str, parent_id: str, base: TrainRunConfig, train_storage: str,
                 objective: str, progress: bool):
        self.uri, self.exp_id, self.parent_id, self.base = tracking_uri, exp_id, parent_id, base
        self.steps = base.optim.steps
        self.train_storage = train_storage  # where a failed trial's Train run leaves its unsent reports
        self.objective, self.progress = objective, progress
        self.started: dict[str, float] = {}
        self.runs: dict[str, str] = {}  # trial id -> run id

    def _run_id(self, trial) -> str:
        if trial.trial_id not in self.runs:
            self.runs[trial.trial_id] = self._start_run(trial)
        return self.runs[trial.trial_id]

    def _start_run(self, trial) -> str:
        params = dict(trial.config)
        run_id = child_run(self.uri, self.exp_id, self.parent_id, trial.trial_id,
                           run_name=f"{trial.trial_id} a={params.get('mono_ratio', 0):.2f} "
                                    f"t={params.get('temperature', 0):.3f} s={params.get('seed', 0)}",
                           params=params | {"config_key": config_key(params)})
        log_training_data(self.uri, run_id, trial_run_config(self.base, params).data)
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.started[trial.trial_id] = time.time()
        self.runs[trial.trial_id] = self._start_run(trial)  # marked RUNNING again when it restarts

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        run_id = self._run_id(trial)
        history = json.loads(result.get(TRAIN_HISTORY, "[]"))
        self._log_history(run_id, history)
        step = int(result.get("step", 0))
        if self.progress:
            loss = next((h["loss"] for h in reversed(history) if "loss" in h), float("nan"))
            self._say(trial, f"step {step}/{self.steps}, loss {loss:.4f}, "
                             f"{self.objective} {result.get(self.objective, float('nan')):.4f}"
                             f"{self._eta(step, result.get('trial/active_s'))}")
        log_metrics(self.uri, run_id, {k: v for k, v in result.items() if k.startswith("trial/")}, step)
        if EVAL_RESULT in result:
            log_result(EvalResult.from_json(result[EVAL_RESULT]), run_id, client(self.uri))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        done = (trial.last_result or {}).get("step") == self.steps
        self._end(trial, "FINISHED" if done else "KILLED")
        if self.progress:
            self._say(trial, "finished" if done else "stopped early (pruned)")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        unreported = storage.join(self.train_storage, trial.trial_id, UNREPORTED)
        if storage.exists(unreported):  # the reports since its last checkpoint, up to the failure
            self._log_history(self._run_id(trial), json.loads(storage.read_text(unreported)))
            storage.delete(unreported)
        self._end(trial, "FAILED")
        if self.progress:
            self._say(trial, f"FAILED ({trial.error_file or 'see Ray logs'})")

    def _eta(self, step: int, active_s: float | None) -> str:
        """", about N min left" from the trial's pace since its step-0 report (`trial/active_s`: training,
        checkpoints and proxy evaluations; its start-up excluded)."""
        if not active_s or not 0 < step < self.steps:
            return ""
        left = active_s / step * (self.steps - step)
        return f", about {left / 60:.1f} min left" if left >= 60 else f", about {left:.0f} s left"

    def _say(self, trial, what: str) -> None:
        c = trial.config  # alpha, tau, and every other knob where it differs from the base run
        shown = [k.text(c[k.name]) for k in KNOBS
                 if k.name in c and (k.shown_always or c[k.name] != k.base_value(self.base))]
        print(f"{time.strftime('%H:%M:%S')} trial {trial.trial_id} ({', '.join(shown)}, seed {c.get('seed', 0)}): "
              f"{what}", flush=True)

    def _log_history(self, run_id: str, reports: list[dict[str, Any]]) -> None:
        for report in reports:
            log_metrics(self.uri, run_id, {f"train/{k}": v for k, v in report.items() if k != "step"},
                        int(report.get("step", 0)))

    def _end(self, trial, status: str) -> None:
        run_id = self._run_id(trial)
        if trial.trial_id in self.started:
            log_metrics(self.uri, run_id, {"trial/wall_s": time.time() - self.started.pop(trial.trial_id)},
                        int((trial.last_result or {}).get("step", 0)))
        end_run(self.uri, run_id, status)


def trial_overhead(tracking_uri: str, exp_id: str) -> dict[str, float]:
    """Mean per-trial time outside training and evaluation (start-up before the first report plus
    teardown after the last), and the start-up's split by stage (`sweep/startup/{stage}_s`), over the
    sweep's trials that logged a wall time; {} when none did."""
    runs = client(tracking_uri).search_runs([exp_id], filter_string="tags.`sweep.role` = 'trial'", max_results=10000)
    timed = [r.data.metrics for r in runs if {"trial/wall_s", "trial/active_s", "trial/startup_s"} <= set(r.data.metrics)]
    if not timed:
        return {}
    wall = sum(m["trial/wall_s"] for m in timed) / len(timed)
    startup = sum(m["trial/startup_s"] for m in timed) / len(timed)
    overhead = sum(m["trial/wall_s"] - m["trial/active_s"] for m in timed) / len(timed)
    stages = sorted({k for m in timed for k in m if k.startswith("trial/startup/")})
    split = {f"sweep/{k[len('trial/'):]}": sum(m.get(k, 0.0) for m in timed) / len(timed) for k in stages}
    return {"sweep/trial_wall_s": wall, "sweep/trial_startup_s": startup, "sweep/trial_overhead_s": overhead,
            "sweep/trial_overhead_fraction": overhead / wall} | split
