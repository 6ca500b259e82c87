"""Held-out validation: in-batch retrieval loss and top-1 accuracy over fixed X-X and X-Y batches, at
step 0 (the base model) and at every checkpoint.

Step 0 is the same work in every trial that shares the base model, the validation data, the batch layout
and the workers: those batches' embeddings do not depend on alpha, tau or the training seed. With
`trainer.validation_cache` (a sweep sets `<sweep>/validation-cache`) each rank keeps them as safetensors
under a key of everything they depend on, and a later trial computes only its loss from them, with its
own tau: the same figures, bit for bit, without the forward passes.
"""

from __future__ import annotations

import hashlib
import json

import safetensors
import safetensors.torch
import torch
from torch import Tensor

from hybrid import signing, storage
from hybrid.config import to_dict
from hybrid.loss import InfoNCELoss
from hybrid.sampler import HybridBatchSampler
from trainers.batches import VAL_SEED
from trainers.config import TrainRunConfig
from trainers.forward import batch_loss, embed_batch

CACHE_FORMAT = 2  # part of the key: a change to what is embedded, or how, never reads old files (2: sealed)
NOT_EMBEDDED = {  # run settings the base model's validation embeddings cannot depend on
    # training batches and the loss (seed: see key)
    "method": ("mono_ratio", "alpha_schedule", "temperature", "symmetric", "seed"),
    "optim": ("lr", "weight_decay", "warmup_steps", "steps"),
    "trainer": (
        "grad_clip",
        "checkpoint_every",
        "keep_checkpoints",
        "resumable_final",
        "max_failures",
        "log_every",
        "cpus_per_worker",
        "storage_path",
        "validation_cache",
        "sweep_id",
    ),
}


def _device(engine) -> torch.device:
    return next(engine.encoder.parameters()).device


def _all_reduce(values: list[float], device: torch.device, op=None) -> list[float]:
    """`values` reduced over the ranks (sum by default), on the engine's device (NCCL has no CPU tensors)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(t, op=op or torch.distributed.ReduceOp.SUM)
    return t.tolist()


def embeddings(engine, sampler: HybridBatchSampler, config: TrainRunConfig) -> list[Tensor]:
    """Each validation batch's `embed_batch` rows, in eval mode."""
    engine.encoder.eval()
    out = [
        embed_batch(engine, sampler.batch(i), config.data.hard_negatives, config.trainer.pad_group)
        for i in range(config.trainer.val_batches)
    ]
    engine.encoder.train()
    return out


def figures(
    loss_fn: InfoNCELoss, sampler: HybridBatchSampler, config: TrainRunConfig, embedded: list[Tensor]
) -> dict[str, float]:
    """Loss and accuracy from the batches' embeddings, averaged over the batches and the ranks."""
    results = [batch_loss(loss_fn, sampler.batch(i), emb, config.data.hard_negatives) for i, emb in enumerate(embedded)]
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    loss, acc = (
        v / world
        for v in _all_reduce([sum(float(r[k]) for r in results) / len(results) for k in (0, 1)], embedded[0].device)
    )
    return {"val_loss": loss, "val_accuracy": acc}


@torch.no_grad()
def validate(engine, loss_fn: InfoNCELoss, sampler: HybridBatchSampler, config: TrainRunConfig) -> dict[str, float]:
    """The held-out figures of the model as it is now (every checkpoint)."""
    return figures(loss_fn, sampler, config, embeddings(engine, sampler, config))


def cache_key(config: TrainRunConfig, world: int, initialised: tuple[str, ...]) -> str:
    """What the base model's validation embeddings depend on: the run's settings less `NOT_EMBEDDED`, the
    number of workers (each rank embeds its slice) and, for a model with randomly initialised weights
    (`initialised`), the seed. Within a sweep the model's files do not change, so its name stands for them."""
    settings = to_dict(config)
    for section, keys in NOT_EMBEDDED.items():
        for key in keys:
            settings[section].pop(key)
    if initialised:
        settings["method"]["seed"] = config.method.seed
    payload = {"format": CACHE_FORMAT, "settings": settings, "world": world, "val_seed": VAL_SEED}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _read(location: str, purpose: str, n_batches: int, device: torch.device) -> list[Tensor] | None:
    """A rank's kept embeddings, or None: absent, cut short (a crash while writing), unreadable, or not
    sealed by this deployment for this key (said in one line: altered embeddings would change every
    trial's baseline)."""
    try:
        tensors = safetensors.torch.load(signing.unseal(storage.read_bytes(location), purpose, location))
        return [tensors[str(i)].to(device) for i in range(n_batches)]
    except signing.BadSignature as e:
        print(f"[hybrid-sweep] validation cache: {e} Ignored; embedding again.", flush=True)
        return None
    except (OSError, KeyError, safetensors.SafetensorError):
        return None


@torch.no_grad()
def validate_base(
    engine, loss_fn: InfoNCELoss, sampler: HybridBatchSampler, config: TrainRunConfig, rank: int, world: int
) -> dict[str, float]:
    """Step 0: `validate`, its embeddings read from (or else written to) `trainer.validation_cache`. The
    ranks agree first: a rank that embeds makes the engine's collective calls (ZeRO-3), so all or none do."""
    if not config.trainer.validation_cache:
        return validate(engine, loss_fn, sampler, config)
    key = cache_key(config, world, engine.encoder.initialised)
    name = f"{key}/rank{rank}-of-{world}.safetensors"
    location, purpose = storage.join(config.trainer.validation_cache, name), f"validation-cache:{name}"
    device = _device(engine)
    cached = _read(location, purpose, config.trainer.val_batches, device)
    if _all_reduce([cached is not None], device, torch.distributed.ReduceOp.MIN)[0]:
        return figures(loss_fn, sampler, config, cached)
    embedded = embeddings(engine, sampler, config)
    try:
        tensors = safetensors.torch.save({str(i): e.cpu().contiguous() for i, e in enumerate(embedded)})
        storage.write_bytes(location, signing.seal(tensors, purpose))
    except OSError as e:  # a cache only: the trial goes on, the next one embeds again
        print(f"[hybrid-sweep] validation cache: could not write {location}: {e}", flush=True)
    return figures(loss_fn, sampler, config, embedded)
