"""The Ray Train worker loop: hybrid batches, InfoNCE with gathered negatives, checkpoints, resume.

Runs in every worker (it must live in an importable module: a loop defined in `__main__` fails to pickle
once deepspeed is imported). Each checkpoint directory holds, after Ray merges the ranks' files:

    deepspeed/ or ddp/   optimizer (and, for DeepSpeed, sharded model) state, for exact resume (not in
                         the last checkpoint with `trainer.resumable_final: false`, as in a sweep)
    encoder/             the consolidated model: safetensors + tokenizer + sentence-transformers config,
                         its model card (README.md) and manifest
    trainer_state.json   step, sampler state, batch mix so far, the run's config
    manifest.rank<r>.json  each rank's files (size, sha256), written last: a resume checks them and
                         falls back to the previous complete checkpoint (`restore`)
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow.fs as pafs
import ray.train
import torch

from hybrid import manifest, signing
from hybrid.config import from_dict, to_dict
from hybrid.layout import ENCODER_DIR, STATE_FILE
from hybrid.loss import InfoNCELoss
from hybrid.sampler import MONO, HybridBatch
from trainers.batches import samplers
from trainers.card import model_card
from trainers.config import TrainRunConfig
from trainers.engine import Engine, make_engine, trainable_encoder
from trainers.forward import forward_batch
from trainers.reports import CHECKPOINT, RESUMED_FROM, with_startup_marks
from trainers.validation import validate, validate_base


class NonFiniteLoss(FloatingPointError):
    """Training diverged (a non-finite loss or gradient norm): raised before any checkpoint after that
    step is written, so a resumed run starts from the last finite state."""


def check_finite(batch: HybridBatch, lr: float, **values: float | torch.Tensor | None) -> None:
    """Stop at the first non-finite loss or gradient norm, naming the step, the value and the batch.
    A rank that stops takes its run down with it (`trainers.train.StopOnDivergence`: not retried)."""
    for name, value in values.items():
        if value is not None and not math.isfinite(float(value)):
            pairs = sorted({f"{q}-{p}" for q, p in zip(batch.query_langs, batch.passage_langs)})
            raise NonFiniteLoss(
                f"non-finite training {name.replace('_', ' ')} ({float(value)}) at step "
                f"{batch.step + 1}, lr {lr:g}, a {batch.kind} batch of {', '.join(pairs)}: lower "
                "optim.lr or raise method.temperature. The checkpoints before this step are kept."
            )


@dataclass
class Meter:
    """The training figures since the last report, averaged when reported."""

    steps: int = 0
    loss: float = 0.0
    accuracy: float = 0.0
    grad_norm: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def add(self, loss: float, accuracy: float, grad_norm: float | None) -> None:
        self.steps += 1
        self.loss, self.accuracy = self.loss + loss, self.accuracy + accuracy
        self.grad_norm += grad_norm or 0.0  # None: DeepSpeed computed no norm

    def averages(self, global_batch_size: int) -> dict[str, float]:
        n = max(1, self.steps)
        return {
            "loss": self.loss / n,
            "accuracy": self.accuracy / n,
            "grad_norm": self.grad_norm / n,
            "samples_per_s": self.steps * global_batch_size / (time.perf_counter() - self.started),
        }


def save_checkpoint(
    engine: Engine, directory: Path, run: str, rank: int, world: int, state: dict[str, Any], card: str, resumable: bool
) -> None:
    """This rank's part of a checkpoint of `run` at `state["step"]`, its manifest last (Ray merges the
    ranks' folders), every manifest bound to the run and step; the export gets its model `card`
    (README.md) and pins the state. `resumable`: with the engine's optimizer state (`state["resumable"]`
    says which), needed only to train on from it."""
    if resumable:
        engine.save(directory)
    text = json.dumps(state, indent=2)
    with engine.gathered_params():  # ZeRO-3: full weights on every rank while inside
        if rank == 0:
            (directory / STATE_FILE).write_text(text)
            engine.encoder.save(directory / ENCODER_DIR)
            (directory / ENCODER_DIR / "README.md").write_text(card)
            manifest.write_export(directory / ENCODER_DIR, run, state["step"], text)
    manifest.write(directory, manifest.rank_manifest(rank), world_size=world, run=run, step=state["step"])


def restore(
    checkpoint: ray.train.Checkpoint | None, engine: Engine, steps: int, run: str
) -> tuple[dict[str, Any] | None, str | None]:
    """Load the latest complete checkpoint of `run` at or before `checkpoint` into `engine`: (its state,
    its path). One at `steps` or beyond (the run finished) is not loaded: the run only reports it again.

    A checkpoint whose files do not match its manifests (a node lost while uploading, a full disk, a
    file altered), or written by another run or at another step than its folder's name says (copied in
    its place), is skipped with a message, for the one before it; none complete: (None, None), step 0."""
    for candidate in _this_and_earlier(checkpoint):
        with candidate.as_directory() as d:
            try:
                manifest.check(Path(d), run=run, step=checkpoint_step(candidate.path))
            except manifest.IncompleteCheckpoint as e:
                print(f"[hybrid-sweep] resume: {e} Falling back to the previous checkpoint.", flush=True)
                continue
            state = json.loads((Path(d) / STATE_FILE).read_text())
            if state["step"] < steps:
                if not state.get("resumable", True):
                    raise ValueError(
                        f"{candidate.path} holds no optimizer state (written as a run's last checkpoint "
                        "with trainer.resumable_final=false): it cannot be trained further. Start a new "
                        "run from its encoder/ (model.name)."
                    )
                engine.load(Path(d))
            return state, candidate.path
    if checkpoint is not None:
        print("[hybrid-sweep] resume: no complete checkpoint; training starts from step 0.", flush=True)
    return None, None


CHECKPOINT_NAME = re.compile(r"checkpoint_\d{6}")  # `checkpoint_name`'s folders


def checkpoint_name(step: int) -> str:
    return f"checkpoint_{step:06d}"


def checkpoint_step(path: str) -> int:
    """The step a checkpoint folder's name says (`checkpoint_000016`: 16, `checkpoint_name`)."""
    return int(path.rstrip("/").rsplit("_", 1)[-1])


def _this_and_earlier(checkpoint: ray.train.Checkpoint | None) -> list[ray.train.Checkpoint]:
    """`checkpoint` and the run's earlier `checkpoint_NNNNNN` folders beside it, newest first."""
    if checkpoint is None:
        return []
    fs, path = checkpoint.filesystem, checkpoint.path.rstrip("/")
    parent, name = path.rsplit("/", 1)
    siblings = fs.get_file_info(pafs.FileSelector(parent))
    earlier = sorted(
        (
            i.path
            for i in siblings
            if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_") and i.base_name < name
        ),
        reverse=True,
    )
    return [checkpoint, *(ray.train.Checkpoint(p, filesystem=fs) for p in earlier)]


def seed_step(seed: int, rank: int, step: int) -> None:
    """Seed torch's generator from (run seed, rank, step) before each step, so its dropout masks depend on
    nothing else: a run resumed from a checkpoint trains every later step exactly as the run that never
    stopped, without the generator's state in the checkpoint (before: other masks after a resume, 1.5% off
    in the loss). Each rank draws its own masks."""
    torch.manual_seed(int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0]))


def train_loop_per_worker(config_dict: dict[str, Any]) -> None:
    # The start-up split (seconds since the epoch, reported with step 0): when this worker's process was
    # created and when each stage ended. `sweeps.trial` turns them into durations.
    marks = {"process": psutil.Process().create_time(), "entry": time.time()}
    signing.check_same_key(os.environ.get(signing.DRIVER_KEY_ENV, ""))  # a node that joined late, another key
    config = from_dict(TrainRunConfig, config_dict)  # rebuilt and re-validated inside the worker
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, round(config.trainer.cpus_per_worker)))
    torch.manual_seed(config.method.seed)

    sampler, val_sampler = samplers(config, rank, world)
    marks["data"] = time.time()

    encoder = trainable_encoder(config)
    marks["model"] = time.time()
    engine = make_engine(encoder, config, world)
    loss_fn = InfoNCELoss(config.method.temperature, config.method.symmetric)
    marks["engine"] = time.time()

    run = manifest.bound_run(ctx.get_experiment_name(), config.trainer.sweep_id)  # what its checkpoints are bound to
    state, restored_path = restore(ray.train.get_checkpoint(), engine, config.optim.steps, run)
    marks["restore"] = time.time()
    mono_steps = 0
    if state:
        sampler.load_state_dict(state["sampler"])
        mono_steps = state["mono_steps"]
        if sampler.step >= config.optim.steps:  # finished before, but its last report may never have reached
            # Tune (a killed sweep driver): report the final checkpoint again, train no step past the last
            ray.train.report(state["metrics"] | {RESUMED_FROM: sampler.step, CHECKPOINT: restored_path})
            return
    start = sampler.step
    since: list[dict[str, Any]] = []  # this run's reports since its last checkpoint, kept in the next one's state
    if start == 0:  # the base model's held-out figures, so every run carries its own baseline
        figures = validate_base(engine, loss_fn, val_sampler, config, rank, world)
        marks["validation"] = time.time()
        since.append({"step": 0, **figures})
        ray.train.report(with_startup_marks({"step": 0, **figures}, marks))

    meter, t = Meter(), config.trainer
    for batch in sampler:
        step = batch.step + 1  # steps done after this one
        seed_step(config.method.seed, rank, batch.step)
        loss, acc = forward_batch(engine, loss_fn, batch, config.data.hard_negatives, t.pad_group)
        check_finite(batch, engine.lr, loss=loss)  # before the update
        grad_norm = engine.step(loss)
        check_finite(batch, engine.lr, gradient_norm=grad_norm)  # before any checkpoint holds the update
        mono_steps += batch.kind == MONO
        meter.add(loss.item(), acc.item(), grad_norm)

        last = step >= config.optim.steps
        checkpoint_now = last or step % t.checkpoint_every == 0
        if not checkpoint_now and step % t.log_every:
            continue
        metrics = {
            "step": step,
            **meter.averages(sampler.global_batch_size),
            "lr": engine.lr,
            "mono_fraction": mono_steps / step,
            RESUMED_FROM: start,
        }
        if not checkpoint_now:
            ray.train.report(metrics)
            since.append(metrics)
            meter = Meter()
            continue
        metrics |= validate(engine, loss_fn, val_sampler, config)
        resumable = not last or t.resumable_final
        state = {
            "step": step,
            "sampler": sampler.state_dict(),
            "mono_steps": mono_steps,
            "metrics": metrics,
            "history": [*since, metrics],  # what a restart reports if this checkpoint's report never reached Tune
            "config": to_dict(config),
            "resumable": resumable,
        }
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(engine, Path(tmp), run, rank, world, state, model_card(config, step), resumable)
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(tmp),
                checkpoint_dir_name=checkpoint_name(step),
            )
        meter, since = Meter(), []  # started after validation and saving: they are not training throughput
        if last:
            break
