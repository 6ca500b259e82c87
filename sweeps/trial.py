"""One Tune trial: build the trial's training run, train it with Ray Train, evaluate every checkpoint.

Train V2 composition: Tune runs `run_trial`, which builds a `TorchTrainer` and calls `fit()`. The
`EvaluateAndReport` callback runs on the Train controller: it evaluates each checkpoint as it appears
(proxy evaluation, Ray tasks) and passes everything up to Tune. Both run on worker nodes of a cluster,
so neither opens the tracking store: the sweep driver alone writes MLflow.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from evaluation.checkpoints import CheckpointRef, verified_state
from evaluation.datasets import load_eval_set
from evaluation.runner import evaluate_checkpoints
from hybrid import manifest, signing, storage
from hybrid.config import to_dict
from hybrid.layout import ENCODER_DIR
from sweeps import progress
from sweeps.config import SweepSetup
from sweeps.knobs import KNOBS
from sweeps.records import (
    ACTIVE_S,
    CHECKPOINT,
    STARTUP_S,
    STARTUP_STAGE,
    UNREPORTED,
    TrialReport,
    report_file,
    report_purpose,
    reported_steps,
    unreported_purpose,
)
from trainers.config import TrainRunConfig
from trainers.loop import checkpoint_step
from trainers.reports import RESUMED_FROM, pop_startup_marks
from trainers.train import build_trainer, check_snapshot


def config_key(params: dict[str, Any]) -> str:
    """A short id of a configuration, the seed left out: trials that differ only by seed share it.
    NumPy scalars (a configuration read back from a DataFrame) hash as the Python numbers they are."""
    knobs = {k: v.item() if hasattr(v, "item") else v for k, v in sorted(params.items()) if k != "seed"}
    return hashlib.sha256(json.dumps(knobs, default=str).encode()).hexdigest()[:10]


def trial_run_config(base: TrainRunConfig, params: dict[str, Any]) -> TrainRunConfig:
    """The base run with the trial's knobs (`sweeps.knobs`) and seed applied (and re-validated)."""
    run = replace(base, method=replace(base.method, seed=params.get("seed", base.method.seed)))
    for knob in KNOBS:
        if knob.name in params:
            run = knob.apply(run, params[knob.name])
    return run


STARTUP_STAGES = {  # mark -> the stage that ends there (rank 0's worker), in order
    "process": "workers",  # Tune's trial start -> the Train worker's process: controller, placement group, spawn
    "entry": "imports",  # the worker process -> the training loop: Ray worker, torch/DeepSpeed imports, process group
    "data": "data",
    "model": "model",
    "engine": "engine",  # data + samplers, the encoder's weights, DeepSpeed init
    "restore": "restore",
    "validation": "validation",  # the resume check, the step-0 held-out validation
}


def startup_split(started_at: float, marks: dict[str, float], reported_at: float) -> dict[str, float]:
    """`trial/startup/{stage}_s` from the worker's marks (a resumed run has no validation stage); `report`
    is the step-0 report's way to the controller. Their sum is `trial/startup_s`."""
    split, last = {}, started_at
    for mark, stage in STARTUP_STAGES.items():
        if mark in marks:
            split[f"{STARTUP_STAGE}{stage}_s"] = marks[mark] - last
            last = marks[mark]
    return split | ({f"{STARTUP_STAGE}report_s": reported_at - last} if split else {})


class EvaluateAndReport(TuneReportCallback):
    """On the Train controller: collect training reports; per checkpoint, evaluate it (proxy evaluation,
    Ray tasks) and pass one result up to Tune: the objective metrics (ASHA prunes on held-out retrieval,
    not on training loss), the checkpoint's URI, the training reports since the last checkpoint, the
    whole evaluation (JSON) and the trial's time split.

    Evaluations run one after the other on a thread of their own: the controller registers each new
    checkpoint as soon as it is written (a node lost mid-trial then costs only the steps after the last
    checkpoint in storage), and only the final checkpoint waits for the evaluations still running.

    Nothing here touches MLflow: the controller runs on any node, where the driver's tracking store is
    out of reach. The driver logs what reaches Tune (`sweeps.tracking.TrialLogger`). Time split:
    `trial/startup_s` (trial start to the first training report: Train's worker group, imports, model
    load, DeepSpeed init), `trial/active_s` (first report to the last one handled: training,
    checkpoints, proxy evaluations)."""

    def __init__(self, setup: SweepSetup, config: TrainRunConfig, train_storage: str, started_at: float, label: str):
        super().__init__()
        self.setup, self.config, self.train_storage, self.label = setup, config, train_storage, label
        self.started_at, self.first_report_at = started_at, None
        self.pace: progress.Pace | None = None  # the time left, from the first report
        self.history: list[dict[str, Any]] = []  # training reports not yet passed to Tune
        self.startup: dict[str, float] = {}  # passed once, with the first result
        self.executor: ThreadPoolExecutor | None = None  # made on the controller (an executor does not pickle)
        self.evaluations: list[Future] = []
        self.evaluated: list[tuple[int, str, float]] = []  # (step, URI, first objective) of checkpoints kept

    def after_exception(self, run_context, worker_exceptions: dict[int, Exception]) -> None:
        """Training reports since the last checkpoint reach Tune only with the next one: a failing run leaves
        them in its folder, where the driver's `TrialLogger` finds them when the trial errors."""
        run_dir = storage.join(self.train_storage, run_context.run_config.name)
        signed = signing.signed({"reports": self.history}, unreported_purpose(run_context.run_config.name))
        storage.write_text(storage.join(run_dir, UNREPORTED), json.dumps(signed))
        self.history = []  # a retry resumes from the last checkpoint and reports those steps again

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        train_metrics = dict(metrics[0])
        marks = pop_startup_marks(train_metrics)
        if self.first_report_at is None:
            self.first_report_at = time.time()
            self.pace = progress.Pace(self.first_report_at)
            self.startup = {STARTUP_S: self.first_report_at - self.started_at} | startup_split(
                self.started_at, marks, self.first_report_at
            )
            split = ", ".join(
                f"{k[len(STARTUP_STAGE) : -2]} {v:.0f} s"
                for k, v in self.startup.items()
                if k.startswith(STARTUP_STAGE)
            )
            self._post(f"workers up, first report after {self.startup[STARTUP_S]:.0f} s ({split})")
        # A run resumed after its last step reports its final checkpoint's path instead of a checkpoint.
        path = checkpoint.path if checkpoint is not None else train_metrics.pop(CHECKPOINT, None)
        self._post_report(train_metrics, path is not None)
        self.history.append(train_metrics)
        for done in [f for f in self.evaluations if f.done()]:
            done.result()  # an evaluation that failed fails the trial here
            self.evaluations.remove(done)
        if path is None:
            return
        if self.executor is None:
            self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evaluate")
        uri = storage.with_path(self.train_storage, path)  # Ray gives `bucket/prefix/...`, no scheme
        self.evaluations.append(
            self.executor.submit(self._evaluate_and_report, run_context, uri, train_metrics, self.history, self.startup)
        )
        self.history, self.startup = [], {}
        if int(train_metrics.get("step", 0)) >= self.config.optim.steps:  # the run ends after this report
            for future in self.evaluations:
                future.result()
            self.evaluations = []

    def _post(self, what: str) -> None:
        progress.post(self.setup.sweep.name, f"{self.label}: {what}")

    def _post_report(self, metrics: dict[str, Any], evaluated: bool) -> None:
        """A training report's line: step, loss, speed, time left at this pace (a checkpoint's: its evaluation
        starts, and its result's line follows from the driver)."""
        step, steps = int(metrics.get("step", 0)), self.config.optim.steps
        if not step:
            return
        line = f"step {step}/{steps}"
        if "loss" in metrics:
            line += f", loss {metrics['loss']:.4f}, {metrics.get('samples_per_s', 0):.1f} samples/s"
        start = int(metrics.get(RESUMED_FROM, step))  # this run's first step (a resumed run's is later)
        line += self.pace.left(step, start, steps, time.time())
        self._post(line + ("; evaluating its checkpoint" if evaluated else ""))

    def _evaluate_and_report(
        self,
        run_context,
        uri: str,
        train_metrics: dict[str, Any],
        history: list[dict[str, Any]],
        startup: dict[str, float],
    ) -> None:
        timings = startup | {ACTIVE_S: time.time() - self.first_report_at}
        trial = run_context.run_config.name  # the trial id (its Train run's name)
        tuned = self._evaluated(trial, uri, train_metrics, history, timings)
        super().after_report(run_context, [tuned], None)
        self._prune()

    def _evaluated(
        self, trial: str, uri: str, train_metrics: dict[str, Any], history: list[dict[str, Any]], timings: dict
    ) -> dict[str, Any]:
        """The checkpoint at `uri` evaluated (proxy): its report for Tune, kept first, signed, in the Train run's
        folder (what a driver catching up logs, and how a restarted trial knows it was reported)."""
        step = int(train_metrics.get("step", 0))
        proxy = self.setup.proxy_eval
        run = manifest.bound_run(trial, self.config.trainer.sweep_id)  # what its checkpoints are bound to
        ref = CheckpointRef.trained(storage.join(uri, ENCODER_DIR), step, to_dict(self.config), trial, run=run)
        [result] = evaluate_checkpoints(
            [ref], load_eval_set(proxy, self.config.data), proxy, self.setup.sweep.eval_cache_location
        )
        report = TrialReport(step, uri, history, timings, result, time_ms=int(time.time() * 1000))
        tuned = json.loads(json.dumps(report.to_tune(train_metrics), default=float))  # numbers as JSON has them
        kept = signing.signed(tuned, report_purpose(trial))
        storage.write_text(report_file(self.train_storage, trial, step), json.dumps(kept))
        self.evaluated.append((step, uri, result.summary[self.setup.sweep.objectives[0]]))
        return tuned

    def report_unreported(self, trial: str) -> None:
        """Before a restarted trial trains on: each checkpoint its lost cluster left unreported
        (`unreported_checkpoints`) is evaluated and reported to Tune, oldest first, with the training reports
        its state keeps: those since the checkpoint before, the step-0 validation with the first (a checkpoint
        written before they were kept has its own report alone)."""
        ours = manifest.bound_run(trial, self.config.trainer.sweep_id)  # what its checkpoints are bound to
        for name, location, state in unreported_checkpoints(
            self.train_storage, trial, ours, self.config.optim.steps, self._post
        ):
            self._post(f"{name}: its report never reached the record (a cluster lost); evaluating it now")
            train_metrics = dict(state["metrics"])
            history = state.get("history") or [train_metrics]
            tune.report(self._evaluated(trial, location, train_metrics, history, {ACTIVE_S: 0.0}))

    def _prune(self) -> None:
        """Retention (`trainer.keep_checkpoints`: the last N and the best by the first objective): applied
        here, once a checkpoint is evaluated, so none is deleted before its evaluation (Ray keeps every
        checkpoint of a sweep's runs, `build_trainer(prune=False)`). The latest is always among the last N."""
        keep = self.config.trainer.keep_checkpoints
        if keep is None:
            return
        sign = -1 if self.setup.sweep.modes[0] == "min" else 1
        best = max(self.evaluated, key=lambda e: (sign * e[2], e[0]))
        kept = sorted(self.evaluated)[-keep:] + [best]
        for entry in [e for e in self.evaluated if e not in kept]:
            storage.delete(entry[1])
            self.evaluated.remove(entry)


def unreported_checkpoints(
    train_storage: str, trial: str, bound_to: str, steps: int, say: Callable[[str], object]
) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, location, verified state) of each checkpoint of the trial's Train run, oldest first, whose report
    never reached the record (its evaluation was in flight when the cluster was lost). Not the run's last
    step: Train reports its final checkpoint again itself. Nor one Train never registered (written, then the
    cluster lost before its report): Train resumes from the latest registered and trains that step again,
    whose report is then its only one (seen in CI: step 6 reported here and by training, its `train/loss`
    logged twice). One cut short or altered is skipped, said."""
    run = storage.join(train_storage, trial)
    reported = reported_steps(train_storage, trial)
    last = min(check_snapshot(train_storage, trial), steps - 1)  # Train reports every step past it
    found = []
    for name in storage.names(run, folders=True):
        if not name.startswith("checkpoint_") or checkpoint_step(name) in reported or checkpoint_step(name) > last:
            continue
        location = storage.join(run, name)
        try:
            state, bound = verified_state(location)
        except (OSError, ValueError) as e:  # cut short, altered, or never finished: training goes on without it
            say(f"{name} not reported again ({e})")
            continue
        if bound == bound_to and int(state["step"]) == checkpoint_step(name):
            found.append((name, location, state))
    return found


def run_trial(params: dict[str, Any], setup: SweepSetup, driver_key: str) -> None:
    """The Tune trainable. Its Train run is named after the trial, so a restarted trial resumes its own
    run from the latest checkpoint in storage (on whichever node it restarts). `driver_key`: the driver's
    key fingerprint, which its node and every worker must hold (a node that joined after the start)."""
    signing.check_same_key(driver_key)
    started_at = time.time()
    trial_id = tune.get_context().get_trial_id()
    config = trial_run_config(setup.run, params)
    config = replace(
        config,
        trainer=replace(config.trainer, validation_cache=setup.sweep.validation_cache_location, resumable_final=False),
    )  # a trial is never trained further
    train_storage = setup.sweep.location("train")
    label = progress.describe(trial_id, params, setup.run)
    progress.post(setup.sweep.name, f"{label}: starting on {ray.util.get_node_ip_address()}")
    reporter = EvaluateAndReport(setup, config, train_storage, started_at, label)
    reporter.report_unreported(trial_id)
    trainer = build_trainer(
        config, name=trial_id, storage_path=train_storage, prune=False, callbacks=[reporter], driver_key=driver_key
    )
    trainer.fit()
