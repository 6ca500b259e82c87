"""A run's batch samplers, built in one place for the worker loop and the driver's preflight: training
batches at the trial's alpha, held-out validation batches at a fixed mix and seed."""

from __future__ import annotations

from hybrid.sampler import HybridBatchSampler
from hybrid.splits import training_pairs
from trainers.config import TrainRunConfig

VAL_SEED = 1_000_003  # fixed: every checkpoint is validated on the same held-out batches
VAL_MONO_RATIO = 0.5  # half X-X, half X-Y, whatever the trial's alpha: every trial validated alike


def samplers(config: TrainRunConfig, rank: int, world: int) -> tuple[HybridBatchSampler, HybridBatchSampler]:
    """(training, validation) samplers of this rank; a ValueError names which data cannot fill a batch."""
    train, val = training_pairs(config.data)
    m = config.method
    built = []
    for pairs, alpha, schedule, seed, what in (
        (train, m.mono_ratio, m.alpha_schedule, m.seed, "training"),
        (val, VAL_MONO_RATIO, "constant", VAL_SEED, "held-out validation"),
    ):
        try:
            built.append(
                HybridBatchSampler(
                    pairs, m.batch_size, alpha, m.lang_temperature, seed, rank, world, schedule, config.optim.steps
                )
            )
        except ValueError as e:
            raise ValueError(f"{what} data: {e}") from None
    return built[0], built[1]
