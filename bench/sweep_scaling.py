"""How a sweep's wall time grows with its trials: fixed cost per sweep, marginal cost per trial.

    .venv/bin/python bench/sweep_scaling.py                 # 2, 4, 8 trials + 1 vs 2 concurrent: ~20 min
    .venv/bin/python bench/sweep_scaling.py --trials 2 4    # a subset

The tiny sweep (the test suite's: a 2-layer random BERT on XQuAD-R en/de, 6 steps, a checkpoint and a
proxy evaluation every 3 steps), one seed per configuration (no re-seed phase), the final evaluation on.
A sweep needs the alpha = 0 and alpha = 1 references, so the smallest has 2 trials. Each sweep is a fresh
`python sweeps/ratio_search.py` in its own folder (its own Ray, MLflow store and storage), as a user runs
it; its wall time is the command's. The fit `wall = fixed + marginal x trials` is least squares over the
sweeps; the split of both comes from the sweeps' own MLflow figures (start-up, training + evaluation,
final evaluation). Concurrency: 4 trials with 1 Train worker (0.8 CPU) each, `max_concurrent` 1 vs 2,
alternated over `--rounds`. Writes results/sweep_scaling.json and .png after every sweep.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from hybrid.tiny import save_tiny_encoder

ROOT = Path(__file__).resolve().parents[1]
TINY = {  # the test suite's tiny sweep (tests/test_sweeps.py), one seed per configuration
    "data": {"train_languages": ["en", "de"], "eval_languages": ["en", "de"]},
    "model": {"max_length": 32, "freeze_embeddings": False},
    "method": {"batch_size": 8},
    "optim": {"lr": 1e-3, "steps": 6, "warmup_steps": 1},
    "trainer": {"checkpoint_every": 3, "log_every": 3, "val_batches": 2},
    "sweep": {"top_k": 1, "seeds": 1, "grace_period": 1, "proxy_languages": ["en", "de"], "proxy_max_questions": 20},
}


def run_sweep(model: Path, trials: int, concurrent: int = 1, workers: int = 2, cpus_per_worker: float = 0.9) -> dict:
    """One fresh sweep of `trials` trials; its wall time and the means its parent run logged."""
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
        raw = yaml.safe_load((ROOT / "configs/default.yaml").read_text())
        for section, values in TINY.items():
            raw[section] |= values
        raw["model"]["name"] = str(model)
        raw["trainer"] |= {"workers": workers, "cpus_per_worker": cpus_per_worker, "storage_path": f"{tmp}/train"}
        raw["sweep"] |= {
            "name": f"scaling-{trials}",
            "trials": trials,
            "max_concurrent": concurrent,
            "tracking_uri": f"sqlite:///{tmp}/mlflow.db",
            "artifact_location": f"{tmp}/mlruns",
            "storage_path": f"{tmp}/sweeps",
        }
        (Path(tmp) / "sweep.yaml").write_text(yaml.safe_dump(raw))
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {"RAY_ADDRESS": "local"}
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, str(ROOT / "sweeps/ratio_search.py"), "--config", f"{tmp}/sweep.yaml"],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=3600,
        )
        wall = time.perf_counter() - start
        if done.returncode:
            raise RuntimeError(done.stdout[-3000:] + done.stderr[-3000:])
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
        exp = client.get_experiment_by_name(f"scaling-{trials}").experiment_id
        runs = client.search_runs([exp], max_results=1000)
        parent = next(r for r in runs if r.data.tags.get("sweep.role") == "parent").data.metrics
        children = [r.data.metrics for r in runs if r.data.tags.get("sweep.role") == "trial"]
    return {
        "trials": trials,
        "max_concurrent": concurrent,
        "train_workers": workers,
        "wall_s": wall,
        "trial_wall_s": [c["trial/wall_s"] for c in children],
        "trial_startup_s": [c["trial/startup_s"] for c in children],
        "trial_active_s": [c["trial/active_s"] for c in children],
        "startup_split_s": {k.split("/")[-1][:-2]: v for k, v in parent.items() if k.startswith("sweep/startup/")},
        "load_average": os.getloadavg()[0],
    }


def fit(sweeps: list[dict]) -> dict:
    """wall = fixed + marginal x trials, least squares; what each part is made of, in means."""
    n = np.array([s["trials"] for s in sweeps], dtype=float)
    wall = np.array([s["wall_s"] for s in sweeps])
    marginal, fixed = np.polyfit(n, wall, 1)
    trial_walls = [w for s in sweeps for w in s["trial_wall_s"]]
    startup = [w for s in sweeps for w in s["trial_startup_s"]]
    active = [w for s in sweeps for w in s["trial_active_s"]]
    return {
        "fixed_s": fixed,
        "marginal_s": marginal,
        "trial_wall_mean_s": statistics.mean(trial_walls),
        "trial_startup_mean_s": statistics.mean(startup),
        "trial_active_mean_s": statistics.mean(active),
    }


def plot(sweeps: list[dict], line: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    n = [s["trials"] for s in sweeps]
    ax.plot(n, [s["wall_s"] / 60 for s in sweeps], "o", label="sweep wall time")
    xs = np.linspace(0, max(n), 20)
    ax.plot(
        xs,
        (line["fixed_s"] + line["marginal_s"] * xs) / 60,
        "--",
        label=f"fit: {line['fixed_s']:.0f} s + {line['marginal_s']:.0f} s x trials",
    )
    ax.set_xlabel("search trials (max_concurrent 1)")
    ax.set_ylabel("minutes")
    ax.set_title("Tiny sweep: fixed and marginal cost", fontsize=10)
    ax.legend()
    fig.savefig(path, dpi=110, bbox_inches="tight")


RESULTS = ROOT / "bench/results"


def save(sweeps: list[dict], concurrency: dict[int, list[float]]) -> dict:
    """Write what is measured so far (after every sweep: a long run cut short keeps its figures)."""
    out = {
        "sweeps": sweeps,
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "concurrency_wall_s": concurrency,
    }
    if len({s["trials"] for s in sweeps}) >= 2:
        out["fit"] = fit(sweeps)
        plot(sweeps, out["fit"], RESULTS / "sweep_scaling.png")
    ratio = [a / b for a, b in zip(concurrency[1], concurrency[2])]
    if ratio:
        out["concurrency_speedup"] = {"median": statistics.median(ratio), "min": min(ratio), "max": max(ratio)}
    (RESULTS / "sweep_scaling.json").write_text(json.dumps(out, indent=1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--rounds", type=int, default=1, help="1 vs 2 concurrent trials, alternated")
    args = parser.parse_args()
    sweeps, concurrency = [], {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        model = save_tiny_encoder(Path(tmp) / "tiny")
        for trials in args.trials:
            sweeps.append(run_sweep(model, trials))
            print(json.dumps({k: v for k, v in sweeps[-1].items() if not isinstance(v, list)}), flush=True)
            save(sweeps, concurrency)
        for _ in range(args.rounds):
            for concurrent in (1, 2):  # 0.8 CPU per worker: two trials (2 x 0.9 with their drivers) leave room
                wall = run_sweep(model, 4, concurrent, workers=1, cpus_per_worker=0.8)["wall_s"]  # for proxy tasks
                concurrency[concurrent].append(wall)
                print(f"4 trials, 1 worker each, max_concurrent {concurrent}: {wall:.0f} s", flush=True)
                save(sweeps, concurrency)
    out = save(sweeps, concurrency)
    print(json.dumps(out.get("fit"), indent=1), f"\nconcurrency 2 vs 1: {out.get('concurrency_speedup')}")


if __name__ == "__main__":
    main()
