"""One Tune trial: build the trial's training run, train it with Ray Train, evaluate every checkpoint.

Train V2 composition: Tune runs `run_trial`, which builds a `TorchTrainer` and calls `fit()`. The
`EvaluateAndReport` callback runs on the Train controller: it logs each training report to the trial's
MLflow child run, evaluates each checkpoint as it appears (proxy evaluation, Ray tasks), and passes the
evaluation metrics up to Tune, so ASHA prunes on held-out retrieval, not on training loss.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from evaluation.runner import CheckpointRef, evaluate_checkpoints, load_eval_set
from evaluation.tracking import log_result
from sweeps import tracking
from sweeps.config import SweepSetup
from trainers.config import TrainRunConfig
from trainers.train import build_trainer


def config_key(params: dict[str, Any]) -> str:
    """A short id of a configuration, the seed left out: trials that differ only by seed share it.
    NumPy scalars (a configuration read back from a DataFrame) hash as the Python numbers they are."""
    knobs = {k: v.item() if hasattr(v, "item") else v for k, v in sorted(params.items()) if k != "seed"}
    return hashlib.sha256(json.dumps(knobs, default=str).encode()).hexdigest()[:10]


def trial_run_config(base: TrainRunConfig, params: dict[str, Any]) -> TrainRunConfig:
    """The base run with the trial's searched values applied (and re-validated)."""
    method = replace(base.method, **{k: params[k] for k in ("mono_ratio", "temperature", "lang_temperature", "seed")
                                     if k in params})
    optim = replace(base.optim, lr=params["lr"]) if "lr" in params else base.optim
    data = base.data
    if "num_train_languages" in params:
        data = replace(data, train_languages=data.train_languages[: params["num_train_languages"]])
    return replace(base, method=method, optim=optim, data=data)


class EvaluateAndReport(TuneReportCallback):
    """Per training report: log to MLflow; per checkpoint: evaluate, log, and report to Tune.

    Also the trial's time split, in MLflow: `trial/startup_s` (trial start to the first report: Train's
    worker group, imports, model load, DeepSpeed init) and `trial/active_s` (first report to the last
    report handled: training, checkpoints, proxy evaluations); `run_trial` adds `trial/wall_s`."""

    def __init__(self, setup: SweepSetup, config: TrainRunConfig, run_id: str, started_at: float):
        super().__init__()
        self.setup, self.config, self.run_id = setup, config, run_id
        self.uri = setup.sweep.tracking_uri
        self.started_at, self.first_report_at = started_at, None

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        train_metrics = dict(metrics[0])
        step = int(train_metrics.get("step", 0))
        timing = {}
        if self.first_report_at is None:
            self.first_report_at = time.time()
            timing["trial/startup_s"] = self.first_report_at - self.started_at
        tracking.log_metrics(self.uri, self.run_id, timing | {f"train/{k}": v for k, v in train_metrics.items()
                                                              if k != "step"}, step)
        self._evaluate_and_report(train_metrics, step, checkpoint)
        tracking.log_metrics(self.uri, self.run_id, {"trial/active_s": time.time() - self.first_report_at}, step)

    def _evaluate_and_report(self, train_metrics: dict[str, Any], step: int, checkpoint) -> None:
        # A run resumed after its last step reports its final checkpoint's path instead of a checkpoint.
        path = checkpoint.path if checkpoint is not None else train_metrics.pop("checkpoint_path", None)
        if path is None:
            return
        proxy = self.setup.proxy_eval
        eval_set = load_eval_set(proxy, self.config.data)
        ref = CheckpointRef(path=f"{path}/encoder", step=step,
                            temperature=self.config.method.temperature, label=f"step {step}")
        [result] = evaluate_checkpoints([ref], eval_set, proxy)
        log_result(result, self.run_id, tracking.client(self.uri))
        report = train_metrics | result.summary | {"checkpoint_path": path}
        self._training_actor_item_queue.put(report)


def run_trial(params: dict[str, Any], setup: SweepSetup, experiment_id: str, parent_run_id: str) -> None:
    """The Tune trainable. Its run name is the trial id, so a restarted trial resumes its own Train run."""
    started_at = time.time()
    trial_id = tune.get_context().get_trial_id()
    config = trial_run_config(setup.run, params)
    run_params = params | {"config_key": config_key(params)}
    run_id = tracking.child_run(setup.sweep.tracking_uri, experiment_id, parent_run_id, trial_id,
                                run_name=f"{trial_id} a={params.get('mono_ratio', 0):.2f} "
                                         f"t={params.get('temperature', 0):.3f} s={params.get('seed', 0)}",
                                params=run_params)
    trainer = build_trainer(config, name=f"{setup.sweep.name}-{trial_id}",
                            storage_path=f"{setup.sweep.storage_path}/train",
                            callbacks=[EvaluateAndReport(setup, config, run_id, started_at)])
    trainer.fit()
    tracking.log_metrics(setup.sweep.tracking_uri, run_id, {"trial/wall_s": time.time() - started_at},
                         config.optim.steps)
