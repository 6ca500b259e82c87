"""MLflow layout of a sweep: one experiment per sweep name, one parent run, one child run per trial.

Runs are found again by tags (`sweep.name`, `tune.trial_id`) before any is created, so a resumed or
retried sweep reuses its runs instead of duplicating them.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from evaluation.tracking import mlflow_name

PARENT_TAG, TRIAL_TAG = "sweep.name", "tune.trial_id"


def absolute_tracking_uri(uri: str) -> str:
    """A SQLite URI made absolute, so Ray actors (other working directories) write to the same file."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def experiment_id(tracking_uri: str, name: str, artifact_location: str) -> str:
    """Get or create the sweep's experiment (artifacts under an explicit, absolute location)."""
    c = client(tracking_uri)
    found = c.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = artifact_location if "://" in artifact_location else Path(artifact_location).as_uri()
    return c.create_experiment(name, artifact_location=location)


def _find_run(tracking_uri: str, exp_id: str, tags: dict[str, str]) -> str | None:
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client(tracking_uri).search_runs([exp_id], filter_string=query, max_results=1)
    return runs[0].info.run_id if runs else None


def parent_run(tracking_uri: str, exp_id: str, sweep_name: str, params: dict[str, Any]) -> str:
    """The sweep's parent run: reused when it exists (resume), else created with the sweep's params."""
    found = _find_run(tracking_uri, exp_id, {PARENT_TAG: sweep_name, "sweep.role": "parent"})
    if found:
        client(tracking_uri).update_run(found, status="RUNNING")
        return found
    c = client(tracking_uri)
    run = c.create_run(exp_id, run_name=sweep_name, tags={PARENT_TAG: sweep_name, "sweep.role": "parent"})
    for key, value in params.items():
        c.log_param(run.info.run_id, key, value)
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
    run = c.create_run(exp_id, run_name=run_name,
                       tags={TRIAL_TAG: trial_id, "mlflow.parentRunId": parent_id, "sweep.role": "trial"})
    for key, value in params.items():
        c.log_param(run.info.run_id, key, value)
    return run.info.run_id


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




def trial_overhead(tracking_uri: str, exp_id: str) -> dict[str, float]:
    """Mean per-trial time outside training and evaluation (start-up before the first report plus
    teardown after the last), over the sweep's trials that logged a wall time; {} when none did."""
    runs = client(tracking_uri).search_runs([exp_id], filter_string="tags.`sweep.role` = 'trial'", max_results=10000)
    timed = [r.data.metrics for r in runs if {"trial/wall_s", "trial/active_s", "trial/startup_s"} <= set(r.data.metrics)]
    if not timed:
        return {}
    wall = sum(m["trial/wall_s"] for m in timed) / len(timed)
    startup = sum(m["trial/startup_s"] for m in timed) / len(timed)
    overhead = sum(m["trial/wall_s"] - m["trial/active_s"] for m in timed) / len(timed)
    return {"sweep/trial_wall_s": wall, "sweep/trial_startup_s": startup, "sweep/trial_overhead_s": overhead,
            "sweep/trial_overhead_fraction": overhead / wall}
