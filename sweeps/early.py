"""The final evaluation of the references, started as soon as each finishes, where the cluster has room.

The final phase evaluates the base model and the alpha = 0 / alpha = 1 references on every language and
every held-out question (minutes per model). Those results do not depend on the rest of the search, so
on a cluster with CPUs to spare beside `sweep.max_concurrent` trials, each reference's evaluation (and
the base model's, with the first) starts when its trial finishes and writes into the evaluation cache;
the final phase then reads it instead of computing it after the last trial. Without room (one machine
whose cores the trials fill) or without `sweep.eval_cache`, nothing starts early and nothing changes.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import replace
from typing import Any

import ray
from ray import tune

from evaluation.checkpoints import CheckpointRef
from evaluation.config import EvalConfig
from evaluation.datasets import load_eval_set
from evaluation.runner import evaluate_checkpoints
from hybrid import manifest, storage
from hybrid.config import to_dict
from hybrid.layout import ENCODER_DIR
from sweeps.cluster import spare_cpus
from sweeps.config import SweepSetup
from sweeps.records import CHECKPOINT
from sweeps.search import is_reference
from sweeps.trial import trial_run_config


def full_eval_config(setup: SweepSetup, dataset: str) -> EvalConfig:
    """The final phase's evaluation: every language and every held-out question of `dataset`."""
    return replace(setup.eval, dataset=dataset, languages=None, max_questions=None)


def base_ref(setup: SweepSetup) -> CheckpointRef:
    """The base model embedded as the trials embed (`model.*`: max_length, prefixes, pooling), so "against
    the base model" compares training alone: e5-small's export carries no spec, whose defaults read 128
    tokens where the default trains and evaluates at 64 (base mono mAP 0.800 vs 0.790 on XQuAD-R)."""
    return CheckpointRef(
        path=setup.run.model.name,
        step=0,
        temperature=setup.run.method.temperature,
        label="base",
        model=setup.run.model.name,
        spec=setup.run.model.spec,
    )


def final_ref(setup: SweepSetup, checkpoint_path: str, params: dict[str, Any], trial: str) -> CheckpointRef:
    """A trial's final checkpoint (the trial's `params`: its knobs and seed), as the final phase evaluates it."""
    return CheckpointRef.trained(
        storage.join(checkpoint_path, ENCODER_DIR),
        setup.run.optim.steps,
        to_dict(trial_run_config(setup.run, params)),
        trial,
        run=manifest.bound_run(trial, setup.run.trainer.sweep_id),
    )


class EarlyEvaluation(tune.Callback):
    """A Tune callback on the driver: when a reference trial completes its steps and the cluster has at
    least one encode task's CPUs beyond the trials' share, its final evaluation starts on a daemon thread
    of the driver (Ray tasks, into the cache: an interrupted sweep exits without waiting, and a result
    is only kept whole); `wait` joins them before the final phase. A copy restored with a resumed phase
    (Tune unpickles its callbacks) stays idle: that sweep evaluates at the end."""

    def __init__(self, setup: SweepSetup):
        self.sweep_setup, self.active = setup, setup.sweep.final_eval and setup.sweep.eval_cache
        self.started: list[tuple[str, Future]] = []

    def __getstate__(self) -> dict:
        return {"sweep_setup": self.sweep_setup, "active": False, "started": []}

    def room(self) -> float:
        """CPUs of the cluster beyond what `max_concurrent` trials and their proxy evaluation take."""
        return spare_cpus(self.sweep_setup, ray.cluster_resources().get("CPU", 0.0))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        result = trial.last_result or {}
        if not (
            self.active
            and is_reference(trial.config.get("mono_ratio", 0.5))
            and result.get("step") == self.sweep_setup.run.optim.steps
            and result.get(CHECKPOINT)
        ):
            return
        room = self.room()
        if room < self.sweep_setup.eval.encode_cpus:
            return
        refs = [] if self.started else [base_ref(self.sweep_setup)]
        refs.append(final_ref(self.sweep_setup, result[CHECKPOINT], trial.config, trial.trial_id))
        print(
            f"{time.strftime('%H:%M:%S')} final evaluation of {', '.join(r.label for r in refs)} started now "
            f"(a reference; {room:g} CPUs free beside the trials)",
            flush=True,
        )
        future: Future = Future()
        threading.Thread(target=self._evaluate, args=(refs, future), daemon=True, name="early-evaluation").start()
        self.started.append((trial.trial_id, future))

    def _evaluate(self, refs: list[CheckpointRef], future: Future) -> None:
        s = self.sweep_setup
        try:
            for dataset in (s.eval.dataset, *s.sweep.zero_shot_datasets):
                full = full_eval_config(s, dataset)
                evaluate_checkpoints(refs, load_eval_set(full, s.run.data), full, s.sweep.eval_cache_location)
        except Exception as e:  # noqa: BLE001 - reported by `wait`
            future.set_exception(e)
        else:
            future.set_result(None)

    def wait(self) -> None:
        """Join the early evaluations. One that failed is said in a line and left to the final phase,
        which evaluates whatever the cache does not hold."""
        for trial, future in self.started:
            try:
                future.result()
            except Exception as e:  # noqa: BLE001 - the final phase recomputes it and raises what it raises
                print(
                    f"The early final evaluation of trial {trial} failed ({e}); the final phase evaluates it.",
                    flush=True,
                )
        self.started = []
