"""The GPU check's training, evaluation and sweep steps (bench/gpu_check.py runs them, in order, each under its
time limit). Each returns its figures or raises `CheckFailed` naming what disagreed; every run goes through
the product's own entry points (`build_trainer`, `evaluate_checkpoints`, `sweeps/ratio_search.py`).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from hybrid.config import DEFAULT_CONFIG, DataConfig, read_yaml
from hybrid.spec import E5_SMALL_NAME
from hybrid.tiny import LANGUAGES, save_tiny_encoder

ROOT = Path(__file__).resolve().parents[1]
# bf16 against fp32 from one seed, each logging window's mean training loss: the two differ by rounding only.
# Measured here at step 0 (e5-small, 64 pairs, bf16 weights and activations as DeepSpeed's bf16 runs them):
# 0.06%. Over 50 steps the bf16 weights are re-rounded from the fp32 master copy at every update (2^-8 =
# 0.4% of each weight at most), so the trajectories drift apart slowly (the dry run's tiny encoder at lr 1e-3,
# 3 steps: 0.8-1.0%); 2% leaves that room, while a real fault (gradients not reduced or clipped, a lost
# update, an overflow) moves the loss by tens of percent.
LOSS_RTOL = 0.02
VAL_RTOL = 0.005  # step 0's held-out loss: the base model, no update yet: rounding alone (0.06% measured)
# A resumed ZeRO-3 run against its first pass over the same steps: the restored state is bit-identical
# (trainers.engine.weights_only_loads) and each step's dropout masks depend on (seed, rank, step) alone
# (trainers.loop.seed_step), so only non-deterministic GPU kernels (atomics in attention's backward,
# split-K products) move the loss: ~1e-4 relative over a few bf16 steps; on CPU it is exact.
RESUME_RTOL = 1e-3
ST_MIN_COSINE = 0.99  # sentence-transformers and our encoder on one export: batching and padding differ, in bf16
METRIC_ATOL = 5e-5  # "equal to 4 decimals"
SWEEP_NAME = "gpu-check"
NOT_CHECKED = "not checked"  # a figure that could not be measured here, with why (faiss-gpu on the lent machine)
HEADLINE = {  # the figures summary.txt shows per step
    "env": ("gpu", "driver", "cuda", "torch", "nccl", "deepspeed", "faiss", "faiss_gpu", "bf16_matmul_tflops"),
    "zero2": ("samples_per_s", "mfu", "max_loss_rdiff", "st_min_cosine", "export_dtype"),
    "zero3": ("resumed_at", "max_loss_rdiff", "shards"),
    "eval": ("multi/map", "max_metric_diff", "gpu_index_on", "encode_texts_per_s", "evaluation_wall_s"),
    "sweep": ("wall_s", "trials_finished", "best_registered"),
}


class CheckFailed(Exception):
    """A check that did not hold: said in one line, with the figures gathered so far."""

    def __init__(self, message: str, figures: dict | None = None):
        super().__init__(message)
        self.figures = figures or {}


class StepTimeout(KeyboardInterrupt):
    """A step over its time limit (bench/gpu_check.py's `time_limit`): a KeyboardInterrupt, the one exception
    besides SystemExit that Ray's waits give way to."""


@dataclass(frozen=True)
class Sizes:
    """How big each step runs: on the GPU (`GPU`) or in the dry run on CPU (`DRY`)."""

    e5: bool  # zero2 / zero3 / eval train and evaluate e5-small (else the tiny encoder)
    batch: int  # pairs per step (one worker)
    max_length: int
    steps: int  # zero2, per precision
    log_every: int
    lr: float
    zero3_steps: int  # checkpoints every zero3_steps // 2
    cpus_per_worker: float
    val_batches: int
    max_questions: int | None  # eval: held-out questions per language (None: all)
    encode_batch: int
    encode_cpus: float
    sweep_steps: int  # a checkpoint (and its proxy evaluation) every 3
    limits: dict[str, int]  # seconds per step


# One H100, 16 cores: about 5 minutes in all, each step's estimate and why in bench/README.md; the limits
# (7.9 minutes together) stop a hang inside one 10-minute call of the device tool.
GPU = Sizes(
    e5=True,
    batch=100,  # the GPU presets' global batch (4 x 25), here on one GPU
    max_length=128,
    steps=50,
    log_every=10,
    lr=3e-5,
    zero3_steps=4,
    cpus_per_worker=4,
    val_batches=4,
    max_questions=None,
    encode_batch=256,
    encode_cpus=2,
    sweep_steps=6,
    limits={"env": 45, "zero2": 150, "zero3": 100, "eval": 60, "sweep": 120},
)
DRY = Sizes(
    e5=False,
    batch=8,
    max_length=32,
    steps=3,
    log_every=1,
    lr=1e-3,
    zero3_steps=2,
    cpus_per_worker=1,
    val_batches=1,
    max_questions=10,
    encode_batch=16,
    encode_cpus=1,
    sweep_steps=3,
    limits={"env": 120, "zero2": 240, "zero3": 240, "eval": 120, "sweep": 60},
)


@dataclass
class Check:
    """What the steps share: the sizes, a work folder (checkpoints, never under `out`), the Ray to join."""

    dry_run: bool
    sizes: Sizes
    work: Path
    out: Path
    peak: dict | None = None  # {"bf16": TFLOP/s, "fp32": ...} of this GPU, from the env step
    ray_address: str = ""
    faiss_gpu: str = ""  # what the env step found of FAISS on the GPU
    checkpoint: Path | None = None  # zero2's bf16 run's last checkpoint, evaluated by `evaluation`
    _tiny: Path | None = field(default=None, repr=False)

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"

    def tiny(self) -> Path:
        """The tiny encoder, built once (a few seconds)."""
        if self._tiny is None:
            self._tiny = save_tiny_encoder(self.work / "tiny")
        return self._tiny

    def model(self) -> str:
        return E5_SMALL_NAME if self.sizes.e5 else str(self.tiny())


def run_config(check: Check, steps: int, **trainer):
    """The default preset on `LANGUAGES` (whose texts the carried e5-small vocabulary covers: bench/gpu_bundle.py),
    one worker, the check's sizes, `trainer` settings on top."""
    from trainers.config import run_config_from_raw

    s = check.sizes
    sections = {
        "data": {"train_languages": list(LANGUAGES), "eval_languages": list(LANGUAGES)},
        "model": {"name": check.model(), "max_length": s.max_length},
        "method": {"batch_size": s.batch},
        "optim": {"lr": s.lr, "steps": steps, "warmup_steps": max(1, steps // 10)},
        "trainer": {
            "workers": 1,
            "use_gpu": not check.dry_run,
            "cpus_per_worker": s.cpus_per_worker,
            "pad_group": 0,  # the GPU presets': one padded tensor per side
            "max_failures": 0,
            "val_batches": s.val_batches,
            "log_every": s.log_every,
            "checkpoint_every": steps,
            "storage_path": str(check.work / "train"),
        }
        | trainer,
    }
    return run_config_from_raw(preset(sections))


def preset(sections: dict[str, dict]) -> dict:
    """The default preset (configs/default.yaml) with `sections`' settings on top of its own."""
    raw = read_yaml(DEFAULT_CONFIG)
    for name, values in sections.items():
        raw[name] = (raw.get(name) or {}) | values
    return raw


def fit(config, name: str) -> list[dict]:
    """One run through the product's `build_trainer`: rank 0's reports in order, each with its checkpoint's
    path (or None)."""
    import ray.train

    from trainers.preflight import preflight
    from trainers.train import build_trainer

    folder = Path(config.trainer.storage_path)
    folder.mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix=f"{name}.", suffix=".jsonl", dir=folder)  # one per fit: a rerun is new
    os.close(fd)

    class Reports(ray.train.UserCallback):  # on Train's controller: handed over by file; local, so pickled by value
        def after_report(self, run_context, metrics, checkpoint):
            with open(path, "a") as f:
                f.write(json.dumps(metrics[0] | {"checkpoint": checkpoint and checkpoint.path}, default=str) + "\n")

    preflight(config)
    build_trainer(config, name, callbacks=[Reports()]).fit()
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def windows(reports: list[dict]) -> list[dict]:
    """The training reports (one per logging window), step 0's validation left out."""
    return [r for r in reports if "loss" in r]


def rdiff(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def step_flops(encoder, config, steps: int) -> float:
    """Training FLOPs per step over the run's first `steps` batches, counted from their padded shapes (the
    GPU computes the padding): a text of T tokens costs 2 x (non-embedding parameters) x T in its matrix
    products plus 4 x layers x d x T^2 in attention, forward; training is 3 forwards (the backward is twice
    the forward; the frozen word-embedding table costs lookups only)."""
    from trainers.batches import samplers

    c = encoder.backbone.config
    params = sum(p.numel() for n, p in encoder.backbone.named_parameters() if not n.startswith("embeddings."))
    sampler, _ = samplers(config, 0, 1)
    total = 0
    for step in range(steps):
        batch = sampler.batch(step)
        for texts, side in ((batch.queries, "query"), (batch.positives, "passage")):
            for group in encoder.tokenize_groups(texts, side, config.trainer.pad_group)[0]:
                n, t = group["input_ids"].shape
                total += n * (2 * params * t + 4 * c.num_hidden_layers * c.hidden_size * t * t)
    return 3 * total / steps


def throughput(reports: list[dict], config, flops: float, peak: float | None) -> dict:
    """Steady samples/s (the median window after the first, which holds the warm-up) and MFU against `peak`."""
    rates = [w["samples_per_s"] for w in windows(reports)]
    steady = statistics.median(rates[1:] or rates)
    figures = {"samples_per_s": round(steady, 1), "windows_samples_per_s": [round(r, 1) for r in rates]}
    figures["tflops"] = round(flops * steady / config.method.batch_size / 1e12, 2)
    figures["mfu"] = round(figures["tflops"] / peak, 4) if peak else None
    return figures


def sentence_transformers_agree(export: Path, texts: list[str], device: str) -> dict:
    """The export loaded with plain sentence-transformers on `device` embeds `texts` as our encoder does."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from hybrid.model import load_encoder

    st = SentenceTransformer(str(export), device=device)
    theirs = st.encode_query(texts, convert_to_numpy=True)
    ours = load_encoder(str(export)).to(device).encode(texts, "query", batch_size=len(texts), progress=False)
    return {
        "st_min_cosine": round(float(np.min(np.sum(theirs * ours, axis=1))), 5),
        "export_dtype": str(next(st.parameters()).dtype),
    }


def zero2(check: Check) -> dict:
    """bf16 and fp32 from one seed through DeepSpeed ZeRO-2: losses agree, throughput and MFU, the export."""
    from hybrid.model import load_encoder

    s, runs = check.sizes, {}
    for precision in ("bf16", "fp32"):
        config = run_config(check, s.steps, zero_stage=2, precision=precision)
        runs[precision] = fit(config, f"zero2-{precision}")
    bf16, fp32 = (windows(runs[p]) for p in ("bf16", "fp32"))
    check.checkpoint = Path(runs["bf16"][-1]["checkpoint"])
    flops = step_flops(load_encoder(str(check.checkpoint / "encoder")), config, s.steps)
    speed = {p: throughput(runs[p], config, flops, (check.peak or {}).get(p)) for p in runs}
    figures = {
        "samples_per_s": {p: speed[p]["samples_per_s"] for p in runs},
        "mfu": {p: speed[p]["mfu"] for p in runs},
        "max_loss_rdiff": round(max(rdiff(a["loss"], b["loss"]) for a, b in zip(bf16, fp32)), 5),
        "val_loss_step0": {p: runs[p][0]["val_loss"] for p in runs},
        "flops_per_step": flops,
        "runs": {p: speed[p] | {"losses": [round(w["loss"], 5) for w in windows(runs[p])]} for p in runs},
    }
    texts = [p.query for p in held_out_pairs()[:32]]
    figures |= sentence_transformers_agree(check.checkpoint / "encoder", texts, check.device)
    if len(bf16) != len(fp32) or figures["max_loss_rdiff"] > LOSS_RTOL:
        raise CheckFailed(
            f"bf16 and fp32 losses differ by {figures['max_loss_rdiff']:.2%} (> {LOSS_RTOL:.0%})", figures
        )
    if rdiff(*figures["val_loss_step0"].values()) > VAL_RTOL:
        raise CheckFailed(f"step 0's held-out loss differs in bf16 and fp32: {figures['val_loss_step0']}", figures)
    if figures["st_min_cosine"] < ST_MIN_COSINE:
        raise CheckFailed(
            f"sentence-transformers embeds the export otherwise (cos {figures['st_min_cosine']})", figures
        )
    return figures


def held_out_pairs():
    """The held-out validation pairs of `LANGUAGES`."""
    from hybrid.splits import training_pairs

    return training_pairs(DataConfig(train_languages=LANGUAGES, eval_languages=LANGUAGES))[1]


def zero3(check: Check) -> dict:
    """ZeRO-3 with sharded checkpoints; the last cut short (a node lost while it uploaded), a restart resumes
    from the one before and goes over the same steps again: step, lr and loss as the first time."""
    n = check.sizes.zero3_steps
    config = run_config(check, n, zero_stage=3, log_every=1, checkpoint_every=n // 2, keep_checkpoints=None)
    first = fit(config, "zero3")
    last = Path(first[-1]["checkpoint"])
    shards = sorted(p.name for p in (last / "deepspeed").rglob("*_states.pt"))
    figures = {"shards": shards, "first_losses": [w["loss"] for w in windows(first)]}
    if not any("optim_states" in s for s in shards) or not any("model_states" in s for s in shards):
        raise CheckFailed(f"no ZeRO-3 model and optimizer shards in {last}: {shards}", figures)
    optim = next((last / "deepspeed").rglob("*optim_states.pt"))
    with open(optim, "r+b") as f:  # cut short: the manifest check must refuse it
        f.truncate(optim.stat().st_size // 2)
    again = windows(fit(config, "zero3"))
    figures["resumed_at"] = again[0]["resumed_from_step"] if again else None
    if figures["resumed_at"] != n // 2 or [w["step"] for w in again] != list(range(n // 2 + 1, n + 1)):
        raise CheckFailed(f"the restart trained steps {[w['step'] for w in again]}, not from step {n // 2}", figures)
    before = {w["step"]: w for w in windows(first)}
    figures["max_loss_rdiff"] = max(rdiff(w["loss"], before[w["step"]]["loss"]) for w in again)
    if any(rdiff(w["lr"], before[w["step"]]["lr"]) > 1e-9 for w in again) or figures["max_loss_rdiff"] > RESUME_RTOL:
        raise CheckFailed(
            f"resumed steps differ from the first pass (loss by {figures['max_loss_rdiff']:.2e})", figures
        )
    return figures


def encode_rates(export: Path, texts: list[str], device: str, batch: int) -> dict[str, float]:
    """Texts per second our encoder embeds on `device`, fp32 and bf16 autocast (a warm-up batch first)."""
    from hybrid.model import load_encoder

    encoder = load_encoder(str(export)).float().to(device)
    rates = {}
    for precision in ("fp32", "bf16"):
        encoder.encode(texts[:batch], "passage", batch_size=batch, progress=False, precision=precision)
        tic = time.perf_counter()
        encoder.encode(texts, "passage", batch_size=batch, progress=False, precision=precision)
        rates[precision] = round(len(texts) / (time.perf_counter() - tic), 1)
    return rates


def evaluation(check: Check) -> dict:
    """The zero2 export on XQuAD-R held-out, FAISS on the GPU and on the CPU: every metric to 4 decimals."""
    import numpy as np

    from evaluation.checkpoints import CheckpointRef
    from evaluation.config import EvalConfig
    from evaluation.datasets import load_eval_set
    from evaluation.runner import evaluate_checkpoints

    s, figures = check.sizes, {}
    config = EvalConfig(
        languages=LANGUAGES, max_questions=s.max_questions, batch_size=s.encode_batch, encode_cpus=s.encode_cpus
    )
    eval_set = load_eval_set(config, DataConfig(train_languages=LANGUAGES, eval_languages=LANGUAGES))
    ref = CheckpointRef.from_path(str(check.checkpoint))
    results, walls = {}, {}
    for index in ("gpu", "cpu"):  # the first pays for the encode workers' start and model loads
        tic = time.perf_counter()
        [results[index]] = evaluate_checkpoints([ref], eval_set, replace(config, use_gpu_index=index == "gpu"))
        walls[index] = round(time.perf_counter() - tic, 1)
    figures["evaluation_wall_s"] = walls
    figures["multi/map"] = round(results["gpu"].summary["multi/map"], 4)
    diffs = [abs(results["gpu"].summary[k] - v) for k, v in results["cpu"].summary.items()]
    for name, matrix in results["cpu"].matrices.items():
        other = results["gpu"].matrices[name]
        if not np.array_equal(np.isnan(matrix), np.isnan(other)):
            raise CheckFailed(f"{name}: NaN in one index's matrix only", figures)
        diffs.append(float(np.nanmax(np.abs(matrix - other))) if not np.isnan(matrix).all() else 0.0)
    figures["max_metric_diff"] = max(diffs)
    figures["gpu_index_on"] = "CPU (faiss-gpu not checked)" if check.faiss_gpu.startswith(NOT_CHECKED) else "GPU"
    texts = [t for lang in eval_set.languages for t in eval_set.queries[lang] + eval_set.candidates[lang]]
    figures["encode_texts_per_s"] = encode_rates(check.checkpoint / "encoder", texts, check.device, s.encode_batch)
    if figures["max_metric_diff"] > METRIC_ATOL:
        raise CheckFailed(f"GPU and CPU FAISS disagree: a metric differs by {figures['max_metric_diff']:.2e}", figures)
    return figures


def sweep_config(check: Check, folder: Path) -> Path:
    """The default preset shrunk to the tiny encoder and 2 trials (the references), on the GPU, with its
    evaluation's FAISS on the GPU, every file under `folder`."""
    s = check.sizes
    sections = {
        "data": {"train_languages": ["en", "de"], "eval_languages": ["en", "de"]},
        "model": {"name": str(check.tiny()), "max_length": 32, "freeze_embeddings": False},
        "method": {"batch_size": 8},
        "optim": {"lr": 1e-3, "steps": s.sweep_steps, "warmup_steps": 1},
        "trainer": {
            "workers": 1,
            "use_gpu": not check.dry_run,
            "cpus_per_worker": 0.9,
            "checkpoint_every": 3,
            "log_every": 3,
            "val_batches": 1,
        },
        "eval": {"use_gpu_index": True},
        "sweep": {
            "name": SWEEP_NAME,
            "trials": 2,
            "seeds": 1,
            "top_k": 1,
            "proxy_languages": ["en", "de"],
            "proxy_max_questions": 10,
            "tracking_uri": f"sqlite:///{folder}/mlflow.db",
            "artifact_location": str(folder / "mlruns"),
            "storage_path": str(folder / "sweeps"),
        },
    }
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(preset(sections)))
    return path


def sweep(check: Check) -> dict:
    """`sweeps/ratio_search.py` as a user runs it, joined to this check's Ray (one Ray on the machine); its
    output in OUT/sweep.log. Stopped, with its process group, when the step's time is up.

    The dry run only has the driver check the sweep's configuration (`--show-config`: every check a sweep
    makes before Ray starts) and stops there: the same CLI on CPU runs whole in the suite's finished tiny
    sweep (tests/conftest.py), whose record `sweep_record` is tested on; running it again here would cost
    the suite a sweep's fixed minute and a half for nothing the GPU changes."""
    folder = check.work / "sweep"
    folder.mkdir()
    config = sweep_config(check, folder)
    log = check.out / "sweep.log"
    env = os.environ | {"RAY_ADDRESS": check.ray_address, "PYTHONUNBUFFERED": "1"}
    tic = time.perf_counter()
    only_checked = ["--show-config"] if check.dry_run else []
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "sweeps/ratio_search.py"), "--config", str(config), *only_checked],
            cwd=folder,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped whole, and only it
        )
        try:
            code = proc.wait()
        except StepTimeout as e:  # the step's time is up: what the sweep was doing then
            raise CheckFailed(f"{e}; OUT/sweep.log ends: {last_lines(log)}") from None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    figures = {"wall_s": round(time.perf_counter() - tic, 1), "exit": code}
    if code:
        raise CheckFailed(f"the sweep exited {code}; OUT/sweep.log ends: {last_lines(log)}", figures)
    if check.dry_run:
        return figures | {"ran": "configuration checked only (dry run)"}
    figures |= sweep_record(folder, SWEEP_NAME)
    if figures["trials_finished"] != 2:
        raise CheckFailed(f"{figures['trials_finished']} of the sweep's 2 trials finished in MLflow", figures)
    return figures


def last_lines(log: Path, n: int = 3) -> str:
    return " | ".join(log.read_text(errors="replace").strip().splitlines()[-n:])


def sweep_record(folder: Path, name: str) -> dict:
    """What sweep `name` left in MLflow (`folder`/mlflow.db): its trials finished, its best model registered."""
    from mlflow import MlflowClient

    from sweeps.records import ROLE_TAG, TRIAL

    client = MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    trials = [r for r in runs if r.data.tags.get(ROLE_TAG) == TRIAL]
    return {
        "trials_finished": sum(r.info.status == "FINISHED" for r in trials),
        "best_registered": client.get_model_version_by_alias(name, "best").version,
    }
