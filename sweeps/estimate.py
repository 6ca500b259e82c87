"""The sweep's wall time, estimated before the search from this machine's measured speed
(`trainers.calibrate`, run where a trial's worker would run) and the sweep's plan: how many trials, steps,
checkpoints and evaluated texts. Printed at the start; the end-of-sweep summary sets it beside the actual.

The model is the work of the trials, one after another on a machine their workers fill: start-up (Ray's
worker group, imports, the encoder's load), training steps, and per checkpoint a held-out validation, a
save and a proxy evaluation (one beside training slows it as much: the CPUs are full); then the final
evaluation's encoding over the CPUs. Ray's own costs are seconds measured on 2 cores (`RAY_TRIAL_S`,
`BETWEEN_TRIALS_S`, `FIXED_S`); the rest scales with the calibration. Fitted on the default (2026-12-03,
2 cores of a 2.6 GHz AVX-512 EPYC) and checked on a sweep of another shape (README: -8%).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import ray

from evaluation.datasets import load_eval_set
from evaluation.eval_set import EvalSet
from evaluation.runner import OUTSIDE_TRIAL
from sweeps import interrupts
from sweeps.config import SweepSetup
from sweeps.early import full_eval_config
from trainers.calibrate import Speed, measure

RAY_TRIAL_S = 7.0  # a trial's start-up besides imports and the model: worker group, data, DeepSpeed init
BETWEEN_TRIALS_S = 7.0  # teardown, Tune starting the next trial, the driver's logging
FIXED_S = 15.0  # the MLflow run, a phase's Tuner, the registration
TRAIN_OVERHEAD = 1.3  # a worker's step in a trial / the calibration's: all-reduce, gathered negatives, reports
VALIDATION_STEPS = 1 / 3  # a held-out validation batch (forward only) in training steps
SAVE_S = 4.0  # a checkpoint written, its manifest hashed (e5-small, a local disk)
PER_MODEL_S = 3.0  # an evaluated model's hash and load
# An evaluation's text costs less than the calibration's: its texts are sorted by length over a whole
# language, so its batches pad less than the calibration's few (the default on 2 cores: 24 ms vs 32).
EVAL_TEXT = 0.75
MERGE_S = 10.0  # a merge of the references: two encoders loaded, averaged, saved, hashed and stored


@dataclass(frozen=True)
class Plan:
    """What the sweep will run (upper bounds where the ranking decides: the best is not a reference)."""

    trials: int
    checkpoints: int  # per trial
    proxy_texts: int  # per proxy evaluation
    final_models: int  # the merges included
    final_texts: int  # per final model, every dataset
    merges: int = 0  # of the references (sweep.merge_references): made and proxy-evaluated before the final


@dataclass(frozen=True)
class Estimate:
    total_s: float
    parts: dict[str, float]  # seconds by stage
    speed: Speed

    def line(self) -> str:
        split = ", ".join(f"{name} {s / 60:.1f}" for name, s in self.parts.items())
        return (
            f"this machine ({self.speed.cpu}): a training step {self.speed.step_s:.2f} s per worker, "
            f"{self.speed.encode_s * 1000:.0f} ms per evaluated text; the sweep should take about "
            f"{self.total_s / 60:.0f} min ({split} min)"
        )


def texts(eval_set: EvalSet) -> int:
    return sum(map(len, eval_set.queries.values())) + sum(map(len, eval_set.candidates.values()))


def _restricted(config, data) -> EvalSet:
    """The texts an evaluation with `config` encodes (as `evaluation.runner.evaluate_checkpoints` restricts)."""
    return load_eval_set(config, data).restrict(config.languages, config.max_questions)


def plan(setup: SweepSetup) -> Plan:
    s, run = setup.sweep, setup.run
    extra_seeds = max(0, s.seeds - 1)
    others = min(s.top_k, s.trials - 2)  # top configurations that are not references (at most)
    reseeded_refs = 2 if s.reseed_references else min(s.top_k - others, 2)
    points = sum(p.reseed for p in s.search.points)  # enqueued points marked reseed (an upper bound)
    references = 2 + reseeded_refs * extra_seeds  # reference trials: all evaluated at the end
    trials = s.trials + (reseeded_refs + others + points) * extra_seeds
    final = trials if s.final_eval_all else references + (s.seeds if others else 0)  # + the best's seeds
    merges = len(s.merge_references) * (1 + (extra_seeds if reseeded_refs == 2 else 0))  # seeds with both
    datasets = (setup.eval.dataset, *s.zero_shot_datasets)
    return Plan(
        trials=trials,
        checkpoints=math.ceil(run.optim.steps / run.trainer.checkpoint_every),
        proxy_texts=texts(_restricted(setup.proxy_eval, run.data)),
        merges=merges,
        final_models=(1 + final + merges) if s.final_eval else 0,
        final_texts=sum(texts(_restricted(full_eval_config(setup, d), run.data)) for d in datasets),
    )


def estimate(
    setup: SweepSetup, speed: Speed, cpus: float, spent_s: float = 0.0, bf16_speedup: float | None = None
) -> Estimate:
    """Seconds by stage for `setup` on a cluster of `cpus` CPUs measured at `speed`, `spent_s` already
    spent (Ray's start, the calibration) counted in start-up; `bf16_speedup` (measured by
    `evaluation.precision`) divides an evaluated text's time where the evaluation encodes in bf16."""
    p, run = plan(setup), setup.run
    faster = bf16_speedup if setup.eval.precision == "bf16" and bf16_speedup else 1.0
    text_s = speed.encode_s * EVAL_TEXT / faster
    proxy = p.proxy_texts * text_s + PER_MODEL_S
    trial = {
        "start-up": RAY_TRIAL_S + speed.import_s + speed.load_s,
        "training": run.optim.steps * speed.step_s * TRAIN_OVERHEAD
        + p.checkpoints * (run.trainer.val_batches * VALIDATION_STEPS * speed.step_s + SAVE_S),
        "proxy evaluation": proxy * p.checkpoints,  # beside training too: the workers fill the CPUs
    }
    rounds = math.ceil(p.trials / setup.sweep.max_concurrent)
    parts = {name: seconds * rounds for name, seconds in trial.items()}
    parts["start-up"] += BETWEEN_TRIALS_S * rounds + FIXED_S + spent_s
    lanes = max(1, min(p.final_models, int(cpus // setup.eval.encode_cpus)))
    parts["final evaluation"] = (
        p.final_models * (p.final_texts * text_s + PER_MODEL_S) + p.merges * (MERGE_S + proxy)
    ) / lanes  # + merges' proxy evaluation
    return Estimate(total_s=sum(parts.values()), parts=parts, speed=speed)


def calibrate(setup: SweepSetup) -> Speed:
    """`trainers.calibrate.measure` in a fresh Ray task with a trial worker's CPUs, on a node where one runs."""
    t = setup.run.trainer
    task = ray.remote(max_calls=1)(measure).options(
        num_cpus=t.cpus_per_worker, num_gpus=1 if t.use_gpu else 0, name="calibrate", scheduling_strategy=OUTSIDE_TRIAL
    )
    return ray.get(task.remote(setup.run, setup.eval.batch_size))


def announce(setup: SweepSetup, start: float, bf16_speedup: float | None = None) -> Estimate | None:
    """This machine's speed measured and the sweep's time estimated from it, printed before the search
    (a CPU training only: the calibration times CPU steps)."""
    if setup.run.trainer.use_gpu:
        return None
    interrupts.enter("calibration")
    print(
        f"{time.strftime('%H:%M:%S')} measuring this machine's speed at the sweep's work (a few training steps, "
        "about 20 s)",
        flush=True,
    )
    speed = calibrate(setup)
    cpus = ray.cluster_resources().get("CPU", 1)
    guess = estimate(setup, speed, cpus, time.perf_counter() - start, bf16_speedup)
    print(f"{time.strftime('%H:%M:%S')} {guess.line()}", flush=True)
    return guess
