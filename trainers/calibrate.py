"""This machine's speed at the run's own work, measured in seconds: the figures a sweep's time estimate is
built from (`sweeps.estimate`). Times a fresh process's imports, the encoder's load, a few training steps
of the actual model on the run's own batches (forward, backward, AdamW; one worker's share, with its
threads) and the encoding of evaluation texts. About 15-25 s for e5-small on 2 cores.
"""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

STEPS = 3  # timed training steps after one untimed (the first pays one-time allocations)


@dataclass(frozen=True)
class Speed:
    """Seconds, on the node that measured them (`cpu`)."""

    import_s: float  # torch, transformers and DeepSpeed imported in a fresh process
    load_s: float  # the encoder's weights loaded
    step_s: float  # one training step of one worker (method.batch_size pairs), the median of STEPS
    encode_s: float  # one evaluation text encoded (eval batches, one thread)
    cpu: str

    def as_metrics(self) -> dict[str, float]:
        return {f"calibration/{k}": v for k, v in asdict(self).items() if k != "cpu"}


def cpu_name() -> str:
    """The CPU as the README names machines: model, clock and widest vector unit, e.g. "AMD EPYC, 2.6 GHz,
    AVX-512" (Linux; the platform's processor string elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return platform.processor() or "unknown CPU"
    fields = dict(
        line.split(":", 1) for line in cpuinfo.read_text(errors="replace").split("\n\n")[0].splitlines() if ":" in line
    )
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = fields.get("flags", "").split()
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    clock = f"{float(fields['cpu MHz']) / 1000:.1f} GHz, " if "cpu MHz" in fields else ""
    return f"{fields.get('model name', 'unknown CPU')}, {clock}{vector}"


def measure(config, eval_batch_size: int, texts: int = 32) -> Speed:
    """Time this process's share of a trial's work (`config`: a `TrainRunConfig`). Single process, no
    process group: the gradient all-reduce between workers is not in `step_s`."""
    started = time.perf_counter()
    import importlib

    import torch

    importlib.import_module("transformers")  # timed: every trial's worker imports it
    from trainers.engine import clipped_step, forward_args, import_deepspeed, make_optimizer, trainable_encoder

    import_deepspeed()
    imported = time.perf_counter()
    from hybrid.loss import InfoNCELoss
    from trainers.batches import samplers
    from trainers.forward import forward_batch

    torch.set_num_threads(max(1, round(config.trainer.cpus_per_worker)))
    encoder = trainable_encoder(config)
    loaded = time.perf_counter()
    optimizer, _ = make_optimizer(encoder, config)
    loss_fn = InfoNCELoss(config.method.temperature, config.method.symmetric)
    sampler, _ = samplers(config, 0, config.trainer.workers)

    class Local:  # the engine's call, in one process
        def __init__(self):
            self.encoder = encoder

        def __call__(self, *groups):
            return encoder(*forward_args(groups, torch.device("cpu")))

    engine, times = Local(), []
    for step in range(STEPS + 1):
        batch = sampler.batch(step)
        tic = time.perf_counter()
        loss, _ = forward_batch(engine, loss_fn, batch, config.data.hard_negatives, config.trainer.pad_group)
        clipped_step(encoder, optimizer, loss, config.trainer.grad_clip)
        times.append(time.perf_counter() - tic)
    encoder.eval()
    torch.set_num_threads(1)
    batches = [sampler.batch(i) for i in range(STEPS + 1)]
    encoder.encode(batches[0].positives, "passage", batch_size=eval_batch_size, progress=False)  # warm-up, untimed
    queries = [t for b in batches[1:] for t in b.queries][: texts // 2]  # an evaluation's mix: questions, passages
    passages = [t for b in batches[1:] for t in b.positives][: texts // 2]
    tic = time.perf_counter()
    encoder.encode(queries, "query", batch_size=eval_batch_size, progress=False)
    encoder.encode(passages, "passage", batch_size=eval_batch_size, progress=False)
    encode_s = (time.perf_counter() - tic) / (len(queries) + len(passages))
    return Speed(
        import_s=imported - started,
        load_s=loaded - imported,
        step_s=statistics.median(times[1:]),
        encode_s=encode_s,
        cpu=cpu_name(),
    )
