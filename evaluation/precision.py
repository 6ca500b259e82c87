"""`eval.precision: auto` settled by a measured check: bf16 encoding only where it is as good as fp32 and faster.

Encoding dominates a large evaluation (MLQA-R: 24,733 texts a model). Under bfloat16 autocast a CPU with
AVX-512 BF16 or AMX encodes it faster, but a retrieval metric may move. So bf16 is used only where all of
these hold, checked once before the sweep (or the evaluation) on the node where encoding runs:
  1. the CPU has the instructions (without them autocast emulates bf16, slower than fp32);
  2. it is faster here: the same texts encoded both ways, alternated, at least `MIN_SPEEDUP` times faster;
  3. every metric of the base model on the held-out set stays within `TOLERANCE` of fp32's (rank distance,
     counted in ranks, as a share of the pooled candidates: on the same 0-1 scale as the rest).
The check's figures travel with the decision (`PrecisionCheck`), so they are recorded beside the results.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import ray

from evaluation.checkpoints import CheckpointRef, local_model_dir
from evaluation.config import EvalConfig
from evaluation.eval_set import EvalSet
from evaluation.results import EvalResult
from evaluation.runner import OUTSIDE_TRIAL, evaluate_checkpoints

TOLERANCE = 0.002
MIN_SPEEDUP = 1.2
TIMED_TEXTS = 128  # candidates timed both ways (about 5 s on one core of a 2.6 GHz EPYC)
ROUNDS = 3
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class PrecisionCheck:
    """What `auto` became and why: the figures of the check (None where it stopped before measuring)."""

    precision: str  # fp32 or bf16: what the evaluation uses
    reason: str
    speedup: float | None = None  # fp32 seconds / bf16 seconds on the same texts, one thread
    max_delta: float | None = None  # the largest |bf16 - fp32| over the base model's held-out metrics
    worst: str = ""  # the metric that moved most

    def line(self) -> str:
        return f"encoding in {self.precision}: {self.reason}"

    def as_params(self) -> dict[str, str]:
        return {f"eval_precision/{k}": str(v) for k, v in asdict(self).items() if v not in (None, "")}


def cpu_has_bf16() -> bool:
    """AVX-512 BF16 or AMX on this node (Linux; False elsewhere: fp32 is the safe side)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return False
    flags = next((line for line in cpuinfo.read_text(errors="replace").splitlines() if line.startswith("flags")), "")
    return any(flag in flags.split() for flag in BF16_FLAGS)


@ray.remote(max_calls=1)
def _speedup_task(ref: CheckpointRef, texts: list[str], batch_size: int) -> float | None:
    """fp32 / bf16 encoding time of `texts` on this node, one thread, the median over alternated rounds;
    None where the CPU lacks bf16 instructions."""
    if not cpu_has_bf16():
        return None
    import torch

    from hybrid.model import load_encoder

    torch.set_num_threads(1)
    encoder = load_encoder(str(local_model_dir(ref.path, ref.signed, ref.bound)), ref.spec)
    seconds: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for precision in seconds:  # warm-up, untimed
        encoder.encode(texts[:16], "passage", batch_size=batch_size, progress=False, precision=precision)
    for _ in range(ROUNDS):
        for precision, times in seconds.items():
            tic = time.perf_counter()
            encoder.encode(texts, "passage", batch_size=batch_size, progress=False, precision=precision)
            times.append(time.perf_counter() - tic)
    return statistics.median(seconds["fp32"]) / statistics.median(seconds["bf16"])


def deltas(fp32: EvalResult, bf16: EvalResult, pooled: int) -> dict[str, float]:
    """|bf16 - fp32| per summary metric; rank distance (in ranks) over the `pooled` candidates it ranks among."""
    scale = {key: pooled if key.endswith("rank_distance") else 1 for key in fp32.summary}
    return {key: abs(bf16.summary[key] - value) / scale[key] for key, value in fp32.summary.items()}


def settle(config: EvalConfig, base: CheckpointRef, held_out: EvalSet, cache: str | None = None) -> PrecisionCheck:
    """The precision `config` asks for, `auto` decided by the check above on `base` and `held_out` as `config`
    evaluates it (the full evaluation: the figures the decision is about). Needs Ray."""
    if config.precision != "auto":
        return PrecisionCheck(config.precision, "set in eval.precision")
    candidates = [text for texts in held_out.candidates.values() for text in texts][:TIMED_TEXTS]
    task = _speedup_task.options(num_cpus=config.encode_cpus, name="precision-check", scheduling_strategy=OUTSIDE_TRIAL)
    speedup = ray.get(task.remote(base, candidates, config.batch_size))
    if speedup is None:
        return PrecisionCheck("fp32", "the CPU that encodes has no AVX-512 BF16 or AMX")
    if speedup < MIN_SPEEDUP:
        return PrecisionCheck("fp32", f"bf16 only {speedup:.2f}x as fast here (needs {MIN_SPEEDUP}x)", speedup)
    both = [evaluate_checkpoints([base], held_out, replace(config, precision=p), cache)[0] for p in ("fp32", "bf16")]
    moved = deltas(*both, pooled=sum(map(len, held_out.candidates.values())))
    worst = max(moved, key=moved.get)
    within = moved[worst] <= TOLERANCE
    reason = (
        f"{speedup:.2f}x as fast here; the base model's {held_out.name} metrics move at most {moved[worst]:.4f} "
        f"({worst}; tolerance {TOLERANCE})"
    )
    return PrecisionCheck("bf16" if within else "fp32", reason, speedup, moved[worst], worst)
