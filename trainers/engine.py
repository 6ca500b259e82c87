"""Two ways to run the optimisation step across workers, with one small interface.

`DeepSpeedEngine` (ZeRO 0-3, config generated from ours, never hand-kept JSON) and `DDPEngine` (plain
PyTorch DDP through Ray's `prepare_model`) both expose: `__call__(*token_groups)`, `step(loss) -> grad norm`, `lr`,
`save(dir)`, `load(dir)` and `gathered_params()` (full weights for an export, even under ZeRO-3).
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from hybrid.layout import ENCODER_DIR
from hybrid.model import Encoder, load_encoder
from trainers.config import TrainRunConfig

DS_TAG = "state"


class Engine(Protocol):
    """What the worker loop needs of a distributed engine (DeepSpeed ZeRO or DDP): embed, update, save
    and load its state; `gathered_params` holds the full weights on every rank while open (ZeRO-3)."""

    encoder: Encoder

    def __call__(self, *groups: dict[str, Tensor]) -> Tensor: ...

    def step(self, loss: Tensor) -> float | None: ...

    @property
    def lr(self) -> float: ...

    def save(self, directory: Path) -> None: ...

    def load(self, directory: Path) -> None: ...

    def gathered_params(self) -> contextlib.AbstractContextManager: ...


def trainable_encoder(config: TrainRunConfig) -> Encoder:
    """The run's encoder as it trains: dropout on (`from_pretrained` gives the backbone in eval mode; only
    validation leaves it), the embedding table frozen with `model.freeze_embeddings`."""
    encoder = load_encoder(config.model.name, config.model.spec)
    encoder.train()
    if config.model.freeze_embeddings:
        encoder.backbone.get_input_embeddings().requires_grad_(False)
    return encoder


def clipped_step(encoder: Encoder, optimizer: torch.optim.Optimizer, loss: Tensor, grad_clip: float) -> float:
    """The plain-PyTorch update (DDP, and the calibration's timed steps): zero, backward, clip the trainable
    weights' norm, step; returns the norm before clipping."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_([p for p in encoder.parameters() if p.requires_grad], grad_clip)
    optimizer.step()
    return float(norm)


def make_optimizer(encoder: Encoder, config: TrainRunConfig) -> tuple[torch.optim.Optimizer, Any]:
    """Fused AdamW (about 27% faster than the default on CPU with the big embedding table) and a linear
    warmup then linear decay schedule."""
    params = [p for p in encoder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.optim.lr, weight_decay=config.optim.weight_decay, fused=True)
    warmup, total = config.optim.warmup_steps, config.optim.steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def deepspeed_config(config: TrainRunConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON, derived from our config so the two cannot drift."""
    t = config.trainer
    return {
        "train_micro_batch_size_per_gpu": config.method.batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": config.method.batch_size * world_size,
        "gradient_clipping": t.grad_clip,
        "zero_optimization": {"stage": t.zero_stage},
        "bf16": {"enabled": t.dtype_name == "bf16"},
        "zero_allow_untested_optimizer": True,  # our fused torch AdamW, not DeepSpeed's C++ ones
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def forward_args(groups: tuple[dict[str, Tensor], ...], device: torch.device) -> tuple[Tensor, ...]:
    """Token groups (each padded to its own length) as `Encoder.forward`'s flat (ids, mask, ids, mask, ...)."""
    return tuple(g[k].to(device) for g in groups for k in ("input_ids", "attention_mask"))


def import_deepspeed():
    """`import deepspeed`, with MLflow hidden from it: DeepSpeed's autotuner imports MLflow at import time
    (about 1.2 s of DeepSpeed's 1.4 s import, in every worker of every trial) for autotuning experiments
    this project never starts. MLflow is importable again afterwards."""
    if "deepspeed" in sys.modules:
        return sys.modules["deepspeed"]
    hide = "mlflow" not in sys.modules
    if hide:
        sys.modules["mlflow"] = None  # `import mlflow` raises ImportError while this is set
    try:
        import deepspeed
    finally:
        if hide:
            del sys.modules["mlflow"]
    return deepspeed


@contextlib.contextmanager
def weights_only_loads(engine):
    """DeepSpeed 0.19 loads every file of a ZeRO 0-3 resume through its checkpoint engine's `load`, with
    `weights_only=False` hard-coded and no setting to change it: this engine's `load` is swapped for one
    that unpickles tensors and plain data only. Besides tensors, its optimizer state holds three DeepSpeed
    classes of plain data (a static loss scaler, the ZeRO stage enum, a two-int dataclass): allowed by name.
    Restored state is bit-identical (measured for stages 0-3, fp32 and bf16)."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    checkpoint_engine = engine.checkpoint_engine
    if type(checkpoint_engine) is not TorchCheckpointEngine:  # another writer would need its own review
        raise TypeError(f"unexpected DeepSpeed checkpoint engine {type(checkpoint_engine).__name__}")

    def load(path, map_location=None):
        with torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address]):
            return torch.load(path, map_location=map_location, weights_only=True)

    checkpoint_engine.load = load  # this engine only: the instance attribute shadows the method
    try:
        yield
    finally:
        del checkpoint_engine.load


class DeepSpeedEngine:
    def __init__(self, encoder: Encoder, config: TrainRunConfig, world_size: int):
        deepspeed = import_deepspeed()

        opt, sched = make_optimizer(encoder, config)
        self.encoder, self.stage = encoder, config.trainer.zero_stage
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=encoder,
            optimizer=opt,
            lr_scheduler=sched,
            config=deepspeed_config(config, world_size),
            dist_init_required=False,
        )

    def __call__(self, *groups: dict[str, Tensor]) -> Tensor:
        """The embeddings in fp32, as `DDPEngine`'s: in bf16 the loss's logits (s / tau) would keep 8 bits
        (0.5 apart near 100 at tau 0.01) and the loss itself 2^-8 of its size (bf16 vs fp32 at step 0, tiny
        encoder: 0.76% with the loss in bf16, 0.05% with it in fp32). On CPU (fp32) nothing changes."""
        return self.engine(*forward_args(groups, self.engine.device)).float()

    def step(self, loss: Tensor) -> float | None:
        """Backward, clip, update, schedule; returns the gradient norm before clipping (None where
        DeepSpeed does not compute it)."""
        self.engine.backward(loss)
        self.engine.step()  # optimizer, clipping, scheduler
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def save(self, directory: Path) -> None:
        """Every rank writes its shard (Ray merges the ranks' directories into one checkpoint)."""
        self.engine.save_checkpoint(str(directory / "deepspeed"), tag=DS_TAG)

    def load(self, directory: Path) -> None:
        """DeepSpeed's own format is pickled: loaded only once the checkpoint's signed manifests matched
        (`trainers.loop.restore`), and then with `weights_only=True` all the same."""
        with weights_only_loads(self.engine):
            self.engine.load_checkpoint(str(directory / "deepspeed"), tag=DS_TAG)

    def gathered_params(self) -> contextlib.AbstractContextManager:
        if self.stage < 3:
            return contextlib.nullcontext()
        return import_deepspeed().zero.GatheredParameters(list(self.encoder.parameters()), modifier_rank=None)


class DDPEngine:
    def __init__(self, encoder: Encoder, config: TrainRunConfig):
        import ray.train.torch

        self.encoder, self.grad_clip = encoder, config.trainer.grad_clip
        self.autocast = config.trainer.dtype_name == "bf16"
        self.model = ray.train.torch.prepare_model(encoder)  # moves to the device, wraps in DDP if W > 1
        self.optimizer, self.scheduler = make_optimizer(encoder, config)

    def __call__(self, *groups: dict[str, Tensor]) -> Tensor:
        device = next(self.encoder.parameters()).device
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self.model(*forward_args(groups, device)).float()

    def step(self, loss: Tensor) -> float:
        norm = clipped_step(self.encoder, self.optimizer, loss, self.grad_clip)
        self.scheduler.step()
        return norm

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def save(self, directory: Path) -> None:
        """Rank 0 only (weights are replicated): optimizer and schedule; weights live in the export."""
        if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
            return
        (directory / "ddp").mkdir(exist_ok=True)
        torch.save(self.optimizer.state_dict(), directory / "ddp" / "optimizer.pt")
        (directory / "ddp" / "scheduler.json").write_text(json.dumps(self.scheduler.state_dict()))

    def load(self, directory: Path) -> None:
        from safetensors.torch import load_file

        weights = load_file(directory / ENCODER_DIR / "model.safetensors")
        self.encoder.backbone.load_state_dict(weights)
        self.optimizer.load_state_dict(torch.load(directory / "ddp" / "optimizer.pt", weights_only=True))
        self.scheduler.load_state_dict(json.loads((directory / "ddp" / "scheduler.json").read_text()))

    def gathered_params(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


def make_engine(encoder: Encoder, config: TrainRunConfig, world_size: int) -> Engine:
    if config.trainer.strategy == "deepspeed":
        return DeepSpeedEngine(encoder, config, world_size)
    return DDPEngine(encoder, config)
