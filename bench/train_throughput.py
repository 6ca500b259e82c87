"""Training throughput: our Ray Train + DeepSpeed path against sentence-transformers' trainer.

    .venv/bin/python bench/train_throughput.py            # 25 steps each, about 8-10 min on 2 cores
    .venv/bin/python bench/train_throughput.py --quick    # 6 steps each, a smoke run (numbers not steady)

Same model (the offline multilingual-e5-small), same texts, batch 32, max_length 64, fp32, word
embeddings frozen, fused AdamW, gradient clipping 1.0, in one run of this script (one machine state):

- ours, deepspeed: `configs/default.yaml` as is (2 Ray workers x 0.9 CPU -> 1 torch thread each,
  ZeRO-2, 16 per worker, negatives all-gathered), through `build_trainer(...).fit()`.
- ours, ddp: the same with `trainer.workers=1, cpus_per_worker=1.8` (-> 2 threads), batch 32 on one worker.
- sentence-transformers: `SentenceTransformerTrainer` + `MultipleNegativesRankingLoss(scale=1/tau)` in this
  process (2 threads), fed the very (query, positive) texts our sampler draws for steps 0..N-1, in order.

Ours reports `samples_per_s` per logging window (`trainer.log_every` steps; validation and checkpoints
are outside the windows); the first window is warm-up, the steady state is the median of the others.
sentence-transformers' steps are timed by a callback and grouped into windows of the same size.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from hybrid.sampler import HybridBatchSampler
from hybrid.splits import training_pairs
from trainers.config import TrainRunConfig, load_run_config

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # name -> overrides of configs/default.yaml
    "ours_deepspeed": [],
    "ours_ddp_1worker": [
        "trainer.strategy=ddp",
        "trainer.workers=1",
        "trainer.cpus_per_worker=1.8",
        "method.batch_size=32",
    ],
}


def steady(per_step_s: list[float], window: int, warmup: int, batch: int) -> dict:
    """Windows of `window` steps after `warmup` steps -> median and pooled samples/s."""
    rest = per_step_s[warmup:]
    windows = [rest[i : i + window] for i in range(0, len(rest) - window + 1, window)] or [rest]
    rates = [len(w) * batch / sum(w) for w in windows]
    return {
        "samples_per_s": statistics.median(rates),
        "best_window_samples_per_s": max(rates),
        "window_samples_per_s": rates,
        "pooled_samples_per_s": len(rest) * batch / sum(rest),
        "steps_timed": len(rest),
    }


def run_ours(name: str, overrides: list[str], steps: int, window: int, storage: Path) -> dict:
    import ray
    import ray.train

    from trainers.preflight import preflight
    from trainers.train import build_trainer

    class ReportsToFile(ray.train.UserCallback):  # runs in Ray's controller: hand the reports over by file
        def __init__(self, path: str):
            self.path = path

        def after_report(self, run_context, metrics, checkpoint):
            with open(self.path, "a") as f:
                f.write(json.dumps(metrics, default=str) + "\n")

    bench = [
        f"optim.steps={steps}",
        f"trainer.log_every={window}",
        f"trainer.checkpoint_every={steps}",
        "trainer.val_batches=1",
        "trainer.max_failures=0",
        f"trainer.storage_path={storage}",
    ]
    config = load_run_config(ROOT / "configs/default.yaml", overrides + bench)
    preflight(config, ray.cluster_resources())
    log = storage / f"{name}.jsonl"
    t0 = time.perf_counter()
    build_trainer(config, f"{name}-{int(time.time())}", callbacks=[ReportsToFile(str(log))]).fit()
    wall = time.perf_counter() - t0
    reports = [json.loads(line) for line in log.read_text().splitlines()]
    windows = [r for r in reports if r[0].get("step", 0) > 0 and "samples_per_s" in r[0]]
    steady_w = [w for w in windows if w[0]["step"] > window]  # the first window is warm-up
    rank0 = [w[0]["samples_per_s"] for w in steady_w]
    seconds = [window * config.method.batch_size * config.trainer.workers / r for r in rank0]
    return {
        "samples_per_s": statistics.median(rank0),
        "best_window_samples_per_s": max(rank0),
        "window_samples_per_s": rank0,
        "pooled_samples_per_s": len(rank0) * window * config.method.batch_size * config.trainer.workers / sum(seconds),
        "warmup_window_samples_per_s": windows[0][0]["samples_per_s"] if windows else None,
        "steps_timed": len(rank0) * window,
        "fit_wall_s": round(wall, 1),
        "per_rank_window_samples_per_s": [[m["samples_per_s"] for m in w] for w in steady_w],
        "settings": settings(config),
        "overrides": overrides + bench,
    }


def settings(config: TrainRunConfig) -> dict:
    t = config.trainer
    return {
        "strategy": t.strategy,
        "zero_stage": t.zero_stage if t.strategy == "deepspeed" else None,
        "workers": t.workers,
        "cpus_per_worker": t.cpus_per_worker,
        "torch_threads_per_worker": max(1, round(t.cpus_per_worker)),  # what trainers/loop.py sets
        "batch_per_worker": config.method.batch_size,
        "global_batch": config.method.batch_size * t.workers,
        "max_length": config.model.max_length,
        "freeze_embeddings": config.model.freeze_embeddings,
        "precision": t.dtype_name,
        "optimizer": "torch AdamW fused=True",
        "grad_clip": t.grad_clip,
    }


def bench_texts(config: TrainRunConfig, steps: int) -> tuple[list[str], list[str]]:
    """The global batches our sampler draws for steps 0..steps-1 (prefixed), flattened in order."""
    m, spec = config.method, config.model.spec
    sampler = HybridBatchSampler(
        training_pairs(config.data)[0],
        m.batch_size * config.trainer.workers,
        m.mono_ratio,
        m.lang_temperature,
        m.seed,
        0,
        1,
    )
    batches = [sampler.batch(t) for t in range(steps)]
    return (
        [spec.query_prefix + q for b in batches for q in b.queries],
        [spec.passage_prefix + p for b in batches for p in b.positives],
    )


def run_sentence_transformers(config: TrainRunConfig, steps: int, warmup: int, window: int, out: Path) -> dict:
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.base.sampler import DefaultBatchSampler
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.modules import Pooling
    from torch.utils.data import SequentialSampler
    from transformers import TrainerCallback

    from hybrid.e5_offline import ensure_e5_small

    class InOrder(DefaultBatchSampler):  # our sampler's batches, unshuffled: the same texts per step as ours
        def __init__(self, dataset, **kwargs):
            super().__init__(SequentialSampler(dataset), **kwargs)

    class StepTimer(TrainerCallback):  # end to end, like ours' windows: batch loading (tokenizing) included
        def __init__(self):
            self.t, self.per_step = None, []

        def on_train_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            self.per_step.append(now - self.t)
            self.t = now

    batch, length = config.method.batch_size * config.trainer.workers, config.model.max_length
    queries, positives = bench_texts(config, steps)
    transformer = Transformer(
        str(ensure_e5_small()), max_seq_length=length, model_kwargs={"add_pooling_layer": False}
    )  # as ours: E5 has no pooler
    model = SentenceTransformer(
        modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean"), Normalize()], device="cpu"
    )
    table = transformer.model.get_input_embeddings()
    table.requires_grad_(False)
    before = table.weight[:1000].clone()
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=config.optim.lr,
        weight_decay=config.optim.weight_decay,
        warmup_steps=config.optim.warmup_steps,
        max_grad_norm=1.0,
        lr_scheduler_type="linear",
        batch_sampler=InOrder,
        save_strategy="no",
        report_to="none",
        logging_steps=10**6,
        disable_tqdm=True,
        use_cpu=True,
        seed=config.method.seed,
        dataloader_drop_last=True,
    )
    timer = StepTimer()
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict({"anchor": queries, "positive": positives}),
        loss=MultipleNegativesRankingLoss(model, scale=1.0 / config.method.temperature),
        callbacks=[timer],
    )
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    trained = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    return steady(timer.per_step, window, warmup, batch) | {
        "train_wall_s": round(wall, 1),
        "per_step_s": [round(s, 3) for s in timer.per_step],
        "settings": {
            "workers": 1,
            "torch_threads": torch.get_num_threads(),
            "global_batch": batch,
            "max_seq_length": transformer.max_seq_length,
            "precision": "fp32",
            "optimizer": str(args.optim),
            "grad_clip": args.max_grad_norm,
            "loss": f"MultipleNegativesRankingLoss(scale={1.0 / config.method.temperature:g})",
            "attn_implementation": transformer.model.config._attn_implementation,
            "unpadded_inputs": bool(transformer.can_flatten_inputs),
        },
        "word_embeddings_frozen": {
            "requires_grad": table.weight.requires_grad,
            "in_optimizer": id(table.weight) in trained,
            "unchanged_after_training": bool(torch.equal(before, table.weight[:1000])),
        },
    }


def padding_stats(config: TrainRunConfig, steps: int) -> dict:
    """Tokens per step, padding included. Sentence-transformers pads the global batch's 32 queries and 32
    positives each to their longest; ours, per worker, sorts each side by length and pads it in groups of
    `trainer.pad_group` (`Encoder.tokenize_groups`)."""
    from transformers import AutoTokenizer

    from hybrid.e5_offline import ensure_e5_small

    tok, n = AutoTokenizer.from_pretrained(str(ensure_e5_small())), config.model.max_length
    queries, positives = bench_texts(config, steps)

    def lens(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tok(texts, truncation=True, max_length=n)["input_ids"]]

    ql, pl = lens(queries), lens(positives)
    b = config.method.batch_size * config.trainer.workers

    def padded(k: int, group: int) -> float:  # k texts a side per forward, sorted, padded in groups
        total = 0
        for lens in (ql, pl):
            for s in range(0, len(lens), k):
                part = sorted(lens[s : s + k])
                total += sum(len(g) * max(g) for g in (part[c : c + (group or k)] for c in range(0, k, group or k)))
        return total / steps

    g = config.trainer.pad_group
    return {
        "real_tokens_per_step": (sum(ql) + sum(pl)) / steps,
        "mean_query_tokens": sum(ql) / len(ql),
        "mean_positive_tokens": sum(pl) / len(pl),
        "pad_group": g,
        "padded_tokens_per_step": {
            "ours_2_workers": padded(config.method.batch_size, g),
            "ours_1_worker": padded(b, g),
            "sentence_transformers": padded(b, 0),
        },
    }


def cpu_counters() -> list[int]:
    """/proc/stat's machine-wide jiffies: user nice system idle iowait irq softirq steal."""
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def cpu_shares(before: list[int], after: list[int]) -> dict:
    """Where the machine's CPU time went between two `cpu_counters()`; steal = taken by the host."""
    d = [b - a for a, b in zip(before, after)]
    total = sum(d) or 1
    return {
        "busy": round((d[0] + d[1] + d[2] + d[5] + d[6]) / total, 3),
        "idle": round((d[3] + d[4]) / total, 3),
        "steal": round(d[7] / total, 3),
    }


def with_load(rnd: int, run) -> dict:
    """`run()`'s result plus how busy the machine was meanwhile (other jobs share these 2 cores)."""
    load, cpu = loadavg(), cpu_counters()
    return run() | {
        "round": rnd,
        "loadavg_before": load,
        "loadavg_after": loadavg(),
        "cpu_shares": cpu_shares(cpu, cpu_counters()),
    }


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("ray", "deepspeed", "transformers", "sentence-transformers", "accelerate"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def machine_note() -> dict:
    def cmd(*c):
        return subprocess.run(c, capture_output=True, text=True).stdout.strip()

    return {
        "uptime": cmd("uptime"),
        "cpus": os.cpu_count(),
        "cpu_model": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        ),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "packages": versions(),
        "note": "2 cores shared with other engineers' jobs; no GPU",
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=25, help="training steps per run (default 25)")
    parser.add_argument("--window", type=int, default=5, help="steps per timing window; the first is warm-up")
    parser.add_argument("--rounds", type=int, default=1, help="repeat all runs, alternating (noisy machine)")
    parser.add_argument("--only", nargs="+", choices=[*VARIANTS, "sentence_transformers"], default=None)
    parser.add_argument("--quick", action="store_true", help="6 steps, windows of 2: a smoke run")
    parser.add_argument(
        "--out",
        default=None,
        help="JSON to write (default bench/results/train_throughput.json; a --quick run writes only where --out says)",
    )
    args = parser.parse_args(argv)
    steps, window = (6, 2) if args.quick else (args.steps, args.window)
    if steps < 2 * window:
        raise ValueError(f"--steps {steps} must be >= 2 x --window {window}: one warm-up window plus one timed.")
    runs = args.only or [*VARIANTS, "sentence_transformers"]

    import ray

    from trainers.train import WORKER_ENV

    config = load_run_config(ROOT / "configs/default.yaml")
    storage = Path(tempfile.mkdtemp(prefix="train_throughput-"))
    started, load_before, cpu_before = datetime.datetime.now().astimezone(), machine_note()["uptime"], cpu_counters()
    results: dict[str, list[dict]] = {r: [] for r in runs}
    try:
        for rnd in range(args.rounds):  # odd rounds run the baseline first: neither side always goes first
            for part in ("ours", "baseline") if rnd % 2 == 0 else ("baseline", "ours"):
                ours = [r for r in runs if r in VARIANTS] if part == "ours" else []
                if ours:  # a private local Ray (never another engineer's cluster), shut down after
                    ray.init(
                        address="local",
                        include_dashboard=False,
                        runtime_env={"env_vars": WORKER_ENV},
                        log_to_driver=False,
                    )
                    for name in ours:
                        print(f"[round {rnd}] {name} ...", flush=True)
                        results[name].append(
                            with_load(rnd, lambda: run_ours(name, VARIANTS[name], steps, window, storage))
                        )
                        print(f"  {results[name][-1]['samples_per_s']:.2f} samples/s", flush=True)
                    ray.shutdown()
                if part == "baseline" and "sentence_transformers" in runs:
                    print(f"[round {rnd}] sentence_transformers ...", flush=True)
                    results["sentence_transformers"].append(
                        with_load(rnd, lambda: run_sentence_transformers(config, steps, window, window, storage / "st"))
                    )
                    print(f"  {results['sentence_transformers'][-1]['samples_per_s']:.2f} samples/s", flush=True)
    finally:
        shutil.rmtree(storage, ignore_errors=True)

    summary = {name: statistics.median(r["samples_per_s"] for r in rs) for name, rs in results.items()}
    best = {name: max(r["best_window_samples_per_s"] for r in rs) for name, rs in results.items()}
    base, best_base = summary.get("sentence_transformers"), best.get("sentence_transformers")
    out = {
        "date": started.isoformat(timespec="seconds"),
        "command": "python bench/train_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "quick": args.quick,
        "steps": steps,
        "window_steps": window,
        "warmup_steps_discarded": window,
        "rounds": args.rounds,
        "data": "XQuAD-R training split, default sampler (mono_ratio 0.5, seed 0): "
        "identical (query, positive) texts per step in every run",
        "samples_per_s": summary,
        "ratio_vs_sentence_transformers": {
            k: v / base for k, v in summary.items() if base and k != "sentence_transformers"
        },
        # the fastest window of each: least disturbed by other jobs on a shared machine
        "best_window_samples_per_s": best,
        "best_window_ratio_vs_sentence_transformers": {
            k: v / best_base for k, v in best.items() if best_base and k != "sentence_transformers"
        },
        "padding": padding_stats(config, steps),
        "machine": machine_note()
        | {"uptime_before": load_before, "cpu_shares_during_benchmark": cpu_shares(cpu_before, cpu_counters())},
        "runs": results,
    }
    print(
        json.dumps(
            {
                k: out[k]
                for k in (
                    "samples_per_s",
                    "ratio_vs_sentence_transformers",
                    "best_window_samples_per_s",
                    "best_window_ratio_vs_sentence_transformers",
                )
            },
            indent=2,
        )
    )
    path = args.out or (None if args.quick else ROOT / "bench/results/train_throughput.json")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
