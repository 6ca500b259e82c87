"""MLflow layout of a sweep: one experiment per sweep name, one parent run, one child run per trial.

Only the sweep driver writes MLflow: trials and Train controllers run on worker nodes, where the
driver's tracking store (a SQLite file on the head, a server on the head's 127.0.0.1) is out of reach;
they report to Tune, and `TrialLogger`, a Tune callback in the driver, logs what arrives. Runs are found
again by their tags (`sweeps.records`: the sweep's name, the trial's Tune id) before any is created, so a
resumed or retried sweep reuses its runs instead of duplicating them.
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

from evaluation.mlflow_layout import mlflow_name
from evaluation.results import EvalResult
from evaluation.tracking import dataset_input, log_result
from hybrid import locations, signing, storage
from hybrid.config import DataConfig
from hybrid.data.sources import origin
from hybrid.splits import training_digest
from sweeps.progress import describe, knob_text, pace_left
from sweeps.records import (
    ACTIVE_S,
    CONFIG_FOLDER,
    CONFIG_KEY,
    ID_TAG,
    MERGE,
    MERGE_TAG,
    NAME_TAG,
    PARENT,
    PARENT_RUN,
    REPORTS,
    ROLE_TAG,
    STARTUP_S,
    STARTUP_STAGE,
    TIMING,
    TRIAL,
    TRIAL_TAG,
    UNREPORTED,
    WALL_S,
    TrialReport,
    report_purpose,
    unreported_purpose,
)
from sweeps.tracking_queue import TrackingQueue
from sweeps.trial import config_key, trial_run_config
from trainers.config import TrainRunConfig

ROOT = Path(__file__).resolve().parents[1]


KIND_TAG, KIND = (
    "mlflow.experimentKind",
    "custom_model_development",
)  # MLflow 3's UI then opens the runs, not GenAI traces


@functools.lru_cache(maxsize=1)
def source_tags() -> dict[str, str]:
    """Where a run came from, in MLflow's own tags (the UI's Source and User columns): the entry point,
    the user, and the git commit when the project is a git checkout."""
    tags = {
        "mlflow.source.type": "LOCAL",
        "mlflow.source.name": "sweeps/ratio_search.py",
        "mlflow.user": getpass.getuser(),
    }
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return tags
    return tags | ({"mlflow.source.git.commit": head.stdout.strip()} if head.returncode == 0 else {})


_OPEN: dict[str, SweepRuns] = {}  # sweep id -> this driver's SweepRuns


class SweepRuns:
    """A sweep's MLflow runs through one client: its experiment, its parent run, a child run per trial, each
    found by tag before it is created, so a resumed or retried sweep reuses them. Only the sweep driver
    makes one. It pickles as its sweep's id (Tune keeps `TrialLogger` in the experiment state, in storage):
    restored by `--resume`, on this head or a new one, it is the SweepRuns this driver opened by the sweep's
    name and id (`sweeps.identity`), never a client, a connection or a store a lost head had."""

    def __init__(self, tracking_uri: str, exp_id: str, parent_id: str = "", sweep_id: str = ""):
        self.uri, self.exp_id, self.parent_id, self.sweep_id = tracking_uri, exp_id, parent_id, sweep_id

    @classmethod
    def open(
        cls,
        tracking_uri: str,
        name: str,
        sweep_id: str,
        artifact_location: str,
        params: dict[str, Any],
        configs: dict[str, str],
    ) -> SweepRuns:
        """The sweep `name`'s experiment (artifacts under `artifact_location`, "" for the tracking server's
        own; tagged with the sweep's id and as model development, so MLflow 3's UI opens it on its runs
        table) and its parent run, found or created with the sweep's params and `configs` ({artifact name:
        YAML text}: readable as files)."""
        runs = cls(tracking_uri, "", "", sweep_id)
        tags = {KIND_TAG: KIND, ID_TAG: sweep_id}
        found = runs.client.get_experiment_by_name(name)
        if found is None:
            location = None  # "": the tracking server's own artifact store
            if artifact_location:
                location = (
                    artifact_location if locations.is_uri(artifact_location) else Path(artifact_location).as_uri()
                )
            runs.exp_id = runs.client.create_experiment(name, artifact_location=location, tags=tags)
        else:
            runs.exp_id = found.experiment_id
            for key, value in tags.items():
                if found.tags.get(key) != value:
                    runs.client.set_experiment_tag(runs.exp_id, key, value)
        parent, created = runs._find_or_create({NAME_TAG: name, ROLE_TAG: PARENT}, name, params, {ID_TAG: sweep_id})
        logged = set() if created else {Path(a.path).name for a in runs.client.list_artifacts(parent, CONFIG_FOLDER)}
        for artifact, text in configs.items():  # all, or those a driver killed right after creating the run missed
            if artifact not in logged:
                runs.client.log_text(parent, text, f"{CONFIG_FOLDER}/{artifact}")
        runs.parent_id = parent
        _OPEN[sweep_id] = runs
        return runs

    def __reduce__(self):
        return _reopened, (self.uri, self.exp_id, self.parent_id, self.sweep_id)

    @functools.cached_property
    def queue(self) -> TrackingQueue:
        """Writes of Tune's callbacks, off Tune's loop (`sweeps.tracking_queue`); `flush` after a phase."""
        return TrackingQueue()

    def flush(self) -> None:
        if "queue" in self.__dict__:
            self.queue.flush()

    @functools.cached_property
    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    def _find(self, tags: dict[str, str]) -> str | None:
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        found = self.client.search_runs([self.exp_id], filter_string=query, max_results=1)
        return found[0].info.run_id if found else None

    def _find_or_create(
        self,
        tags: dict[str, str],
        run_name: str,
        params: dict[str, Any],
        more_tags: dict[str, str] | None = None,
        reopen: bool = True,
    ) -> tuple[str, bool]:
        """(run id, created): the run with `tags`, marked RUNNING again (unless not `reopen`), or a new one with
        them and `params`. A found run gets the params it lacks: a driver killed between creating a run and
        logging its params left it without them (and the report without the trial's configuration)."""
        from mlflow.entities import Param

        found = self._find(tags)
        if found:
            logged = self.client.get_run(found).data.params
            self._log_params(found, [Param(k, str(v)) for k, v in params.items() if k not in logged])
            if reopen:
                self.client.update_run(found, status="RUNNING")
            return found, False
        run = self.client.create_run(self.exp_id, run_name=run_name, tags=tags | (more_tags or {}) | source_tags())
        self._log_params(run.info.run_id, [Param(k, str(v)) for k, v in params.items()])
        return run.info.run_id, True

    def _log_params(self, run_id: str, params: list) -> None:
        for start in range(0, len(params), 100):  # MLflow's limit per batch
            self.client.log_batch(run_id, params=params[start : start + 100])

    def trial(self, trial_id: str, run_name: str, params: dict[str, Any], reopen: bool = True) -> str:
        """The trial's child run (nested under the parent), reused (RUNNING again if `reopen`) when the trial
        restarts."""
        run_id, _ = self._find_or_create(
            {TRIAL_TAG: trial_id}, run_name, params, {PARENT_RUN: self.parent_id, ROLE_TAG: TRIAL}, reopen
        )
        return run_id

    def merge(self, name: str, params: dict[str, Any]) -> str:
        """A merge's run (`sweeps.merges`), nested under the parent beside the trials, reused on `--resume`."""
        run_id, _ = self._find_or_create({MERGE_TAG: name}, name, params, {PARENT_RUN: self.parent_id, ROLE_TAG: MERGE})
        return run_id

    def trial_run(self, trial_id: str) -> str | None:
        return self._find({TRIAL_TAG: trial_id})

    def log_training_data(self, run_id: str, data: DataConfig) -> None:
        """The trial's training pairs as the run's `training` dataset input (digest of the pairs themselves;
        MLflow keeps one input per name and digest, so a restarted trial logs it once)."""
        name = f"{data.train_data or data.dataset}/train/{'+'.join(data.train_languages)}"
        source = data.train_data or data.data_dir or origin(data.dataset)
        self.client.log_inputs(run_id, datasets=[dataset_input(name, training_digest(data), source, "training")])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int, timestamp_ms: int | None = None) -> None:
        """A batch of metrics at `step`. With `timestamp_ms` fixed by the caller a retried write is idempotent:
        MLflow keeps one point per (key, step, value, timestamp)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        batch = [
            Metric(mlflow_name(k), float(v), now, step)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and math.isfinite(v)
        ]
        self.client.log_batch(run_id, metrics=batch)

    def log_result(self, result: EvalResult, run_id: str) -> None:
        log_result(result, run_id, self.client)

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        """Close a run (FINISHED, KILLED for a pruned trial, FAILED) so MLflow stops showing it as running.
        A crashed driver leaves its runs RUNNING, which is what they are: `--resume` continues them."""
        self.client.set_terminated(run_id, status=status)

    def _trials(self, where: str = "") -> list:
        query = f"tags.`{ROLE_TAG}` = '{TRIAL}'" + (f" and {where}" if where else "")
        return self.client.search_runs([self.exp_id], filter_string=query, max_results=10000)

    def kill_running_trials(self) -> None:
        """Mark the trial runs still RUNNING as KILLED: trials an interrupted sweep stopped (Ctrl-C).
        `--resume` marks them RUNNING again when they restart."""
        for run in self._trials("attributes.status = 'RUNNING'"):
            self.end(run.info.run_id, "KILLED")

    def trial_overhead(self) -> dict[str, float]:
        """Mean per-trial time outside training and evaluation (start-up before the first report plus
        teardown after the last), and the start-up's split by stage (`sweep/startup/{stage}_s`), over the
        sweep's trials that logged a wall time; {} when none did."""
        timed = [r.data.metrics for r in self._trials() if {WALL_S, ACTIVE_S, STARTUP_S} <= set(r.data.metrics)]
        if not timed:
            return {}
        wall = sum(m[WALL_S] for m in timed) / len(timed)
        startup = sum(m[STARTUP_S] for m in timed) / len(timed)
        overhead = sum(m[WALL_S] - m[ACTIVE_S] for m in timed) / len(timed)
        stages = sorted({k for m in timed for k in m if k.startswith(STARTUP_STAGE)})
        split = {f"sweep/{k[len(TIMING) :]}": sum(m.get(k, 0.0) for m in timed) / len(timed) for k in stages}
        return {
            "sweep/trial_wall_s": wall,
            "sweep/trial_startup_s": startup,
            "sweep/trial_overhead_s": overhead,
            "sweep/trial_overhead_fraction": overhead / wall,
        } | split


def reported(result: tune.Result, train_storage: str) -> list[TrialReport]:
    """Every report of a trial, in order: those it signed into its Train run's folder (`report_file`;
    never Tune's `result.json`, which anyone who can write to the bucket could change), ending with its
    last as the signed experiment state keeps it. A kept report not signed for this trial is skipped, said."""
    last = TrialReport.from_tune(result.metrics or {})
    trial = str((result.metrics or {}).get("trial_id"))
    folder = storage.join(train_storage, trial, REPORTS)
    earlier = []
    for name in storage.names(folder):
        location = storage.join(folder, name)
        try:
            kept = signing.verified(json.loads(storage.read_text(location)), report_purpose(trial), location)
        except (ValueError, OSError) as e:  # BadSignature among them
            print(f"[hybrid-sweep] trial {trial}: a kept report not logged: {e}", flush=True)
            continue
        earlier.append(TrialReport.from_tune(kept))
    return sorted((r for r in earlier if r.step < last.step), key=lambda r: r.step) + [last]


def _reopened(uri: str, exp_id: str, parent_id: str, sweep_id: str) -> SweepRuns:
    """A SweepRuns unpickled: the one this driver opened for the same sweep, else the pickled ids."""
    return _OPEN.get(sweep_id) or SweepRuns(uri, exp_id, parent_id, sweep_id)


class TrialLogger(tune.Callback):
    """The driver's side of a trial, in MLflow: its child run at its start (reused when it restarts),
    each result's training history and evaluation (metrics, L x L matrices and heatmaps) as it arrives,
    its wall time and status at its end: FINISHED (every step), KILLED (pruned), FAILED.

    With `progress` (the default terminal, Tune itself silent) it also prints one line per result and
    per trial end: the progress view.

    Tune pickles its callbacks into the experiment state (in storage) and restores them on `--resume`:
    only names, ids and the base configuration are kept here, never a client or a connection."""

    def __init__(self, runs: SweepRuns, base: TrainRunConfig, train_storage: str, objective: str, progress: bool):
        self.mlflow, self.base = runs, base
        self.steps = base.optim.steps
        self.train_storage = train_storage  # where a failed trial's Train run leaves its unsent reports
        self.objective, self.progress = objective, progress
        self.started: dict[str, float] = {}
        self.runs: dict[str, str] = {}  # trial id -> run id

    def __getstate__(self) -> dict[str, Any]:
        """Run ids are not kept in Tune's state: a restored logger finds each trial's run again by its tag."""
        return self.__dict__ | {"runs": {}, "started": {}}

    def _run_id(self, trial_id: str, config: dict[str, Any]) -> str:
        if trial_id not in self.runs:
            self.runs[trial_id] = self._start_run(trial_id, config)
        return self.runs[trial_id]

    def _start_run(self, trial_id: str, params: dict[str, Any], reopen: bool = True) -> str:
        name = f"{trial_id} {knob_text(params, self.base)}"  # "fc7365d8 alpha 0.50, tau 0.050, seed 0"
        run_id = self.mlflow.trial(trial_id, name, params | {CONFIG_KEY: config_key(params)}, reopen)
        self.mlflow.log_training_data(run_id, trial_run_config(self.base, params).data)
        self.runs[trial_id] = run_id
        return run_id

    # Tune's loop: progress lines here, MLflow writes queued (`sweeps.tracking_queue`: in order, retried).
    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.started[trial.trial_id] = time.time()
        self.mlflow.queue.submit(self._start_run, trial.trial_id, dict(trial.config))  # RUNNING again on a restart

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        report = TrialReport.from_tune(result)
        if self.progress:
            self._say(
                trial,
                f"step {report.step}/{self.steps}, loss {report.loss:.4f}, "
                f"{self.objective} {result.get(self.objective, float('nan')):.4f}"
                f"{pace_left(report.timings.get(ACTIVE_S, 0.0), report.step, self.steps)}",
            )  # start-up excluded
        self.mlflow.queue.submit(self._log_report, trial.trial_id, dict(trial.config), report)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        done = (trial.last_result or {}).get("step") == self.steps
        self._end(trial, "FINISHED" if done else "KILLED")
        if self.progress:
            self._say(trial, "finished" if done else "stopped early (pruned)")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.mlflow.queue.submit(self._log_unreported, trial.trial_id, dict(trial.config), int(time.time() * 1000))
        self._end(trial, "FAILED")
        if self.progress:
            self._say(trial, f"FAILED ({trial.error_file or 'see Ray logs'})")

    def _end(self, trial, status: str) -> None:
        started = self.started.pop(trial.trial_id, None)
        wall = {WALL_S: time.time() - started} if started is not None else {}
        self.mlflow.queue.submit(
            self._log_end,
            trial.trial_id,
            dict(trial.config),
            wall,
            int((trial.last_result or {}).get("step", 0)),
            status,
            int(time.time() * 1000),
        )

    # The writer thread: MLflow.
    def _log_report(self, trial_id: str, config: dict[str, Any], report: TrialReport) -> None:
        run_id = self._run_id(trial_id, config)
        self._log_history(run_id, report.history, report.time_ms)
        if report.evaluation is not None:
            self.mlflow.log_result(report.evaluation, run_id)
        # Last: `catch_up` reads a step's timings (trial/active_s) as "this report is logged whole", so a driver
        # killed before them has the whole report logged again (each write lands once: fixed timestamps).
        self.mlflow.log_metrics(run_id, report.timings, report.step, report.time_ms)

    def _log_unreported(self, trial_id: str, config: dict[str, Any], at_ms: int) -> None:
        unreported = storage.join(self.train_storage, trial_id, UNREPORTED)
        if not storage.exists(unreported):
            return
        try:  # the reports since its last checkpoint, up to the failure
            reports = signing.verified(
                json.loads(storage.read_text(unreported)), unreported_purpose(trial_id), unreported
            )["reports"]
        except (signing.BadSignature, ValueError, KeyError) as e:
            print(f"[hybrid-sweep] trial {trial_id}: its last training reports not logged: {e}", flush=True)
        else:
            self._log_history(self._run_id(trial_id, config), reports, at_ms)
        storage.delete(unreported)

    def _log_end(
        self, trial_id: str, config: dict[str, Any], wall: dict[str, float], step: int, status: str, at_ms: int
    ) -> None:
        run_id = self._run_id(trial_id, config)
        self.mlflow.log_metrics(run_id, wall, step, at_ms)
        self.mlflow.end(run_id, status)

    def catch_up(self, grid: tune.ResultGrid) -> None:
        """Queue what a killed driver left out: Tune saves a trial's reports and its end with its state while
        this logger's MLflow writes wait in the queue, so a driver killed in between loses them (seen on a
        tracking server, whose writes lag the trials by seconds). For each trial of a phase, every reported
        result its run lacks (by step) is logged from Tune's record, and its run gets the status of how it
        ended: FINISHED (every step), KILLED (pruned), FAILED. For a phase all of whose trials ended, restored
        or not; `flush` after it."""
        for result in grid:
            metrics = result.metrics or {}
            if metrics.get("trial_id") and "step" in metrics:  # one that never reported has nothing to log
                status = "FAILED" if result.error else "FINISHED" if metrics["step"] == self.steps else "KILLED"
                self.mlflow.queue.submit(
                    self._catch_up,
                    metrics["trial_id"],
                    dict(result.config or {}),
                    reported(result, self.train_storage),
                    status,
                )

    def _catch_up(self, trial_id: str, config: dict[str, Any], reports: list[TrialReport], status: str) -> None:
        # Found as it is: reopened (RUNNING), an ended run looked unended, and every `--resume` ended it again
        # and said a killed driver had not (seen in the out-of-domain study, resumed after a clean Ctrl-C).
        run_id = self.runs.get(trial_id) or self._start_run(trial_id, config, reopen=False)
        logged = {m.step for m in self.mlflow.client.get_metric_history(run_id, ACTIVE_S)}
        missing = [r for r in reports if r.step not in logged]
        for report in missing:
            self._log_report(trial_id, config, report)
        ended = self.mlflow.client.get_run(run_id).info.status != status
        if ended:
            self.mlflow.end(run_id, status)
        said = [f"{len(missing)} report(s)"] if missing else []
        said += [f"its end ({status})"] if ended else []
        if said:
            print(
                f"[hybrid-sweep] trial {trial_id}: {' and '.join(said)}, which a killed driver had not logged, logged now",
                flush=True,
            )

    def _say(self, trial, what: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {describe(trial.trial_id, trial.config, self.base)}: {what}", flush=True)

    def _log_history(self, run_id: str, reports: list[dict[str, Any]], at_ms: int) -> None:
        """Each training report at its step, all at `at_ms` (when the trial's report reached Tune): logged again
        after a retry or a catch-up, MLflow keeps one point each."""
        for report in reports:
            self.mlflow.log_metrics(
                run_id, {f"train/{k}": v for k, v in report.items() if k != "step"}, int(report.get("step", 0)), at_ms
            )
