"""The trainer's configuration: the method's sections plus how to run them (workers, DeepSpeed, checkpoints).

A preset YAML holds sections data / model / method / optim / trainer (and eval / sweep, read by the
packages that own them). `load_run_config` validates everything before Ray starts, so a bad value costs
nothing; `check_resources` then compares the request with the machine or cluster.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hybrid.config import DataConfig, MethodConfig, ModelConfig, OptimConfig, apply_overrides, from_dict, read_yaml
from hybrid.model_settings import settle

STRATEGIES = ("deepspeed", "ddp")
PRECISIONS = ("auto", "fp32", "bf16")
OTHER_SECTIONS = ("eval", "sweep")  # owned by evaluation/ and sweeps/, ignored here


@dataclass(frozen=True)
class TrainerConfig:
    """Distributed execution: Ray Train workers, DeepSpeed ZeRO or DDP, checkpoints and fault tolerance."""

    workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 0.9  # 2 workers + a Tune driver fit on 2 cores
    strategy: str = "deepspeed"
    zero_stage: int = 2
    precision: str = "auto"  # bf16 on GPU, fp32 on CPU (fp16 is refused by DeepSpeed on CPU)
    grad_clip: float = 1.0
    checkpoint_every: int = 50  # steps; the last step always checkpoints
    # The last N checkpoints kept (in a sweep: and the best; each deleted only once evaluated); a resume
    # falls back to an earlier one when the latest is incomplete. null keeps all (GBs each for large models).
    keep_checkpoints: int | None = 2
    # The optimizer state in the run's last checkpoint too, so that it can be trained further with more
    # optim.steps; a sweep's trials never are (steps cannot change on --resume): a sweep sets false, and its
    # last checkpoints hold the export and the run's state only (e5-small: 0.47 GB instead of 1.2).
    resumable_final: bool = True
    max_failures: int = 2  # worker-group restarts from the latest checkpoint
    log_every: int = 10
    val_batches: int = 4  # held-out in-batch accuracy at each checkpoint
    pad_group: int = 4  # texts per padded group in a training forward, sorted by length (0: one per side; GPUs)
    storage_path: str = "outputs/ray"
    # A folder (local or URI) keeping the base model's step-0 validation embeddings by key, so runs that
    # share model, data and batch layout embed them once (`trainers.validation`); "": every run embeds.
    # A sweep sets `<sweep>/validation-cache`.
    validation_cache: str = ""
    # The sweep this run is a trial of, set by the sweep (never by hand): its checkpoints are then bound to
    # (sweep id, trial id, step), not only to (run name, step) (`hybrid.manifest.bound_run`).
    sweep_id: str = ""

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"trainer.strategy must be one of {STRATEGIES}, got {self.strategy!r}.")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"trainer.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}.")
        if self.precision not in PRECISIONS:
            raise ValueError(f"trainer.precision must be one of {PRECISIONS}, got {self.precision!r}.")
        if self.workers < 1 or self.cpus_per_worker <= 0:
            raise ValueError(
                f"trainer.workers must be >= 1 and cpus_per_worker > 0 (Ray refuses 0), got "
                f"{self.workers} and {self.cpus_per_worker}."
            )
        if self.checkpoint_every < 1 or self.log_every < 1 or self.max_failures < 0 or self.pad_group < 0:
            raise ValueError("trainer.checkpoint_every and log_every must be >= 1, max_failures and pad_group >= 0.")
        if not 0 < self.grad_clip < math.inf:
            raise ValueError(f"trainer.grad_clip must be a finite norm > 0, got {self.grad_clip}.")
        if self.keep_checkpoints is not None and self.keep_checkpoints < 1:
            raise ValueError(f"trainer.keep_checkpoints must be null (keep all) or >= 1, got {self.keep_checkpoints}.")
        if self.val_batches < 1:
            raise ValueError(f"trainer.val_batches must be >= 1, got {self.val_batches}.")

    @property
    def dtype_name(self) -> str:
        return ("bf16" if self.use_gpu else "fp32") if self.precision == "auto" else self.precision


@dataclass(frozen=True)
class TrainRunConfig:
    """One training run: what the method needs (hybrid) plus how to execute it (trainer)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def run_config_from_raw(raw: dict[str, Any], say: Callable[[str], object] | None = None) -> TrainRunConfig:
    """The run's config with the model's encoder settings settled (`hybrid.model_settings`): what was read
    and from where goes to `say` (a command line prints it at the start of the run)."""
    config = from_dict(TrainRunConfig, {k: v for k, v in raw.items() if k not in OTHER_SECTIONS})
    settled = settle(config.model)
    if say:
        say(settled.line())
    return replace(config, model=settled.config)


def load_run_config(
    path: Path | str, overrides: list[str] = (), say: Callable[[str], object] | None = None
) -> TrainRunConfig:
    return run_config_from_raw(apply_overrides(read_yaml(path), list(overrides)), say)


def check_resources(config: TrainRunConfig, available: dict[str, float]) -> None:
    """Fail before any worker starts when the request cannot be met by `available` (ray.cluster_resources())."""
    t = config.trainer
    if t.use_gpu and available.get("GPU", 0) < 1:
        raise ValueError(
            "trainer.use_gpu is true but this Ray cluster has no GPU. Use a CPU preset "
            "(configs/default.yaml) or set trainer.use_gpu=false."
        )
    if t.use_gpu and available.get("GPU", 0) < t.workers:
        raise ValueError(
            f"{t.workers} GPU workers asked, the cluster has {available.get('GPU', 0):g} GPUs; lower trainer.workers."
        )
    need = t.workers * t.cpus_per_worker
    if need > available.get("CPU", 0):
        raise ValueError(
            f"{t.workers} workers x {t.cpus_per_worker} CPUs = {need:g} CPUs, the cluster has "
            f"{available.get('CPU', 0):g}; lower trainer.workers or trainer.cpus_per_worker."
        )
    if t.dtype_name == "bf16" and not t.use_gpu and t.strategy == "ddp":
        raise ValueError("bf16 with DDP needs a GPU here; use precision=fp32 on CPU.")
