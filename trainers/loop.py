"""The Ray Train worker loop: hybrid batches, InfoNCE with gathered negatives, checkpoints, resume.

Runs in every worker (it must live in an importable module: a loop defined in `__main__` fails to pickle
once deepspeed is imported). Each checkpoint directory holds, after Ray merges the ranks' files:

    deepspeed/ or ddp/   optimizer (and, for DeepSpeed, sharded model) state, for exact resume
    encoder/             the consolidated model: safetensors + tokenizer + sentence-transformers config
    trainer_state.json   step, sampler state, batch mix so far, the run's config
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import torch

from hybrid.config import from_dict, to_dict
from hybrid.loss import InfoNCELoss
from hybrid.model import load_encoder
from hybrid.sampler import MONO, HybridBatch, HybridBatchSampler
from trainers.config import TrainRunConfig
from hybrid.splits import training_pairs
from trainers.engine import make_engine

STATE_FILE = "trainer_state.json"
VAL_SEED = 1_000_003  # fixed: every checkpoint is validated on the same held-out batches


def forward_batch(engine, loss_fn: InfoNCELoss, batch: HybridBatch, hard_negatives: bool,
                  pad_group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward call over queries, positives and hard negatives, each side sorted by length and padded
    in groups of `pad_group` (`Encoder.tokenize_groups`); returns (loss, accuracy).

    `hard_negatives` is global (from the config), never per batch: every rank must make the same
    all-gather calls in the loss, even a rank whose items happen to have no negative."""
    b = len(batch.queries)
    negs = [n for n in batch.negatives if n is not None] if hard_negatives else []
    q_groups, q_order = engine.encoder.tokenize_groups(batch.queries, "query", pad_group)
    p_groups, p_order = engine.encoder.tokenize_groups(batch.positives + negs, "passage", pad_group)
    emb = engine(*q_groups, *p_groups)  # rows in group order
    emb = emb[torch.argsort(torch.tensor(q_order + [b + i for i in p_order], device=emb.device))]  # (2B + M, d)
    q, p = emb[:b], emb[b:2 * b]
    if not hard_negatives:
        return loss_fn(q, p)
    mask = torch.tensor([n is not None for n in batch.negatives], device=emb.device)
    negatives = torch.zeros_like(q)
    negatives[mask] = emb[2 * b:]  # aligned (B, d): the all-gather needs equal shapes on every rank
    return loss_fn(q, p, negatives, mask)


class NonFiniteLoss(FloatingPointError):
    """Training diverged: raised before the step's update, so no checkpoint after it is ever written."""


def check_finite(loss: torch.Tensor, batch: HybridBatch, lr: float) -> None:
    """Stop at the first non-finite loss, naming the step and the batch. A rank that stops takes its run
    down with it (Ray Train stops the other workers), which then resumes or fails per trainer.max_failures."""
    if not torch.isfinite(loss):
        pairs = sorted({f"{q}-{p}" for q, p in zip(batch.query_langs, batch.passage_langs)})
        raise NonFiniteLoss(f"non-finite training loss ({loss.item()}) at step {batch.step + 1}, lr {lr:g}, a "
                            f"{batch.kind} batch of {', '.join(pairs)}: lower optim.lr or raise method.temperature. "
                            "The checkpoints before this step are kept.")


def _all_mean(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
        t /= torch.distributed.get_world_size()
    return t.tolist()


@torch.no_grad()
def validate(engine, loss_fn: InfoNCELoss, sampler: HybridBatchSampler, config: TrainRunConfig) -> dict[str, float]:
    """Held-out in-batch retrieval: loss and top-1 accuracy over fixed X-X and X-Y batches."""
    engine.encoder.eval()
    n_batches = config.trainer.val_batches
    results = [forward_batch(engine, loss_fn, sampler.batch(i), config.data.hard_negatives, config.trainer.pad_group)
               for i in range(n_batches)]
    engine.encoder.train()
    loss, acc = _all_mean([sum(float(r[k]) for r in results) / n_batches for k in (0, 1)])
    return {"val_loss": loss, "val_accuracy": acc}


def save_checkpoint(engine, directory: Path, rank: int, state: dict[str, Any]) -> None:
    engine.save(directory)
    with engine.gathered_params():  # ZeRO-3: full weights on every rank while inside
        if rank == 0:
            engine.encoder.save(directory / "encoder")
    if rank == 0:
        (directory / STATE_FILE).write_text(json.dumps(state, indent=2))


def train_loop_per_worker(config_dict: dict[str, Any]) -> None:
    config = from_dict(TrainRunConfig, config_dict)  # rebuilt and re-validated inside the worker
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, round(config.trainer.cpus_per_worker)))
    torch.manual_seed(config.method.seed)

    train_pairs, val_pairs = training_pairs(config.data)
    m = config.method
    sampler = HybridBatchSampler(train_pairs, m.batch_size, m.mono_ratio, m.lang_temperature, m.seed, rank, world)
    val_sampler = HybridBatchSampler(val_pairs, m.batch_size, 0.5, m.lang_temperature, VAL_SEED, rank, world)

    encoder = load_encoder(config.model.name, config.model.spec)
    if config.model.freeze_embeddings:
        encoder.backbone.get_input_embeddings().requires_grad_(False)
    engine = make_engine(encoder, config, world)
    loss_fn = InfoNCELoss(m.temperature, m.symmetric)

    mono_steps = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            engine.load(Path(d))
            state = json.loads((Path(d) / STATE_FILE).read_text())
        sampler.load_state_dict(state["sampler"])
        mono_steps = state["mono_steps"]
    start = sampler.step
    if start >= config.optim.steps:  # finished before, but its last report may never have reached Tune
        ray.train.report(state["metrics"] | {"resumed_from_step": start, "checkpoint_path": checkpoint.path})
        return  # (a killed sweep driver): report the final checkpoint again, train no step past the last
    if start == 0:  # the base model's held-out figures, so every run carries its own baseline
        ray.train.report({"step": 0, **validate(engine, loss_fn, val_sampler, config)})

    window = {"loss": 0.0, "accuracy": 0.0, "n": 0, "t0": time.perf_counter()}
    for batch in sampler:
        step = batch.step + 1  # steps done after this one
        loss, acc = forward_batch(engine, loss_fn, batch, config.data.hard_negatives, config.trainer.pad_group)
        check_finite(loss, batch, engine.lr)
        engine.step(loss)
        mono_steps += batch.kind == MONO
        window["loss"] += loss.item()
        window["accuracy"] += acc.item()
        window["n"] += 1

        last = step >= config.optim.steps
        if step % config.trainer.log_every and step % config.trainer.checkpoint_every and not last:
            continue
        elapsed = time.perf_counter() - window["t0"]
        metrics = {
            "step": step, "loss": window["loss"] / window["n"], "accuracy": window["accuracy"] / window["n"],
            "lr": engine.lr, "samples_per_s": window["n"] * sampler.global_batch_size / elapsed,
            "mono_fraction": mono_steps / step, "resumed_from_step": start,
        }
        window = {"loss": 0.0, "accuracy": 0.0, "n": 0, "t0": time.perf_counter()}
        if step % config.trainer.checkpoint_every and not last:
            ray.train.report(metrics)
            continue
        metrics |= validate(engine, loss_fn, val_sampler, config)
        state = {"step": step, "sampler": sampler.state_dict(), "mono_steps": mono_steps,
                 "metrics": metrics, "config": to_dict(config)}
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(engine, Path(tmp), rank, state)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"checkpoint_{step:06d}")
        window["t0"] = time.perf_counter()  # validation and saving are not training throughput
        if last:
            break
