"""`make gpu-check`: the GPU path (Ray Train + DeepSpeed ZeRO in bf16, NCCL, faiss-gpu, a sweep) run once, end
to end, in under 8 minutes on one H100, so that a lent GPU's minutes go to running it and reading its figures.

    python bench/gpu_check.py OUT             # on a CUDA machine (make gpu-check OUT=...)
    python bench/gpu_check.py OUT --dry-run   # the same steps on CPU at the smallest sizes (tests/test_gpu_check.py)
    bash bench/gpu_check.sh OUT               # on the lent GPU machine, with the carried bundle (bench/README.md)

The steps, in order, each under its own time limit; the first that fails ends the check, named, exit 1:
  env    GPU, driver, CUDA, torch, NCCL, DeepSpeed, FAISS and Ray versions and a bf16 matrix product's rate; the
         `gpu` extra (faiss-gpu) installed from the registry where it is missing, or one line saying why not
  zero2  e5-small through Ray Train + DeepSpeed ZeRO-2, 50 steps in bf16 and in fp32 from one seed: losses
         agree, samples/s and MFU; the bf16 export loads with plain sentence-transformers on the GPU
  zero3  ZeRO-3, 4 steps, sharded checkpoints; the last one cut short, a restart resumes from the one before
         it: step, lr and loss as the first time
  eval   that export on XQuAD-R held-out with eval.use_gpu_index true and false: every metric equal to 4
         decimals; texts/s encoded on the GPU
  sweep  a 2-trial sweep of the tiny encoder with trainer.use_gpu=true, end to end (Tune, Train, evaluation
         tasks, MLflow): exit 0, both trials and the registered best in MLflow
OUT gets gpu_check.json (every figure) and summary.txt. Without a CUDA device (and no --dry-run): one line,
exit 2. The steps themselves: bench/gpu_check_steps.py.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import gpu_check_steps as steps
from gpu_check_steps import DRY, GPU, NOT_CHECKED, Check, CheckFailed, StepTimeout

ROOT = Path(__file__).resolve().parents[1]
# Dense datasheet peaks, TFLOP/s, by a fragment of torch's device name: (bf16 tensor cores, fp32 without
# TF32: torch leaves TF32 off for matrix products, so fp32 runs on the CUDA cores).
PEAKS = {"H100 80GB HBM3": (989.4, 66.9), "H100 PCIe": (756.5, 51.2), "H200": (989.4, 66.9)}


@contextmanager
def time_limit(seconds: int):
    """Raise StepTimeout in the main thread once `seconds` have passed. Ray's waits (`ray.get` inside
    `TorchTrainer.fit`) give way to a KeyboardInterrupt alone and raise a plain one instead: turned back here."""
    expired = False

    def expire(signum, frame):
        nonlocal expired
        expired = True
        raise StepTimeout(f"over its limit of {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    except KeyboardInterrupt as e:
        if expired and not isinstance(e, StepTimeout):
            raise StepTimeout(f"over its limit of {seconds} s") from None
        raise
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def versions() -> dict[str, str | None]:
    """The stack's versions: torch's and CUDA's from torch, the driver's from nvidia-smi, the rest from their
    installed metadata (no import: DeepSpeed's alone takes seconds)."""
    from importlib.metadata import version

    import torch

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "driver": _driver(),
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
        **{
            name: version(name)
            for name in ("deepspeed", "ray", "transformers", "sentence-transformers", "mlflow-skinny")
        },
        "cpus": str(os.cpu_count()),
    }


def _driver() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    done = subprocess.run(
        ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True
    )
    return done.stdout.strip() or None


def faiss_probe() -> tuple[str, int]:
    """(FAISS's version, the GPUs it sees), in a fresh process: one installed below is then what is read."""
    done = subprocess.run(
        [sys.executable, "-c", "import faiss; print(faiss.__version__, faiss.get_num_gpus())"],
        capture_output=True,
        text=True,
        check=True,
    )
    version, gpus = done.stdout.split()
    return version, int(gpus)


def install_gpu_extra(limit_s: int) -> str | None:
    """Install pyproject's `gpu` extra (faiss-gpu) from the registry; None once done, else pip's reason."""
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--retries", "0", "--timeout", "10", *extra],
            capture_output=True,
            text=True,
            timeout=limit_s,
        )
    except subprocess.TimeoutExpired:
        return f"pip install {' '.join(extra)} did not finish in {limit_s} s"
    lines = (done.stderr or done.stdout).strip().splitlines()
    return None if done.returncode == 0 else f"pip install {' '.join(extra)}: {lines[-1] if lines else 'failed'}"


def matmul_tflops(n: int = 8192, reps: int = 10) -> float:
    """A bf16 n x n x n matrix product's rate on this GPU (random data, after 3 warm-ups; CUDA events)."""
    import torch

    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (start.elapsed_time(end) / 1000) / 1e12


def env_step(check: Check) -> dict:
    """Versions, faiss-gpu settled (there, installed, or not checked and why), the bf16 matmul rate.

    Where the `gpu` extra cannot be installed (the lent machine reaches no registry, and faiss-gpu's CUDA 12
    libraries are too large to carry there), the check goes on with CPU FAISS and names faiss-gpu as not
    checked: failing here would hide every other figure of the GPU path on the one machine we can use."""
    figures = versions()
    figures["faiss"], gpus = faiss_probe()
    why = "dry run (CPU)" if check.dry_run else None
    if gpus == 0 and not check.dry_run:
        why = install_gpu_extra(check.sizes.limits["env"] // 2)
        if why is None:
            figures["faiss"], gpus = faiss_probe()
            if gpus == 0:
                raise CheckFailed(f"the gpu extra is installed, but FAISS {figures['faiss']} sees no GPU", figures)
        else:
            print(f"faiss-gpu {NOT_CHECKED}: {why}; FAISS runs on the CPU", flush=True)
    check.faiss_gpu = figures["faiss_gpu"] = f"{gpus} GPU(s)" if gpus else f"{NOT_CHECKED}: {why}"
    if figures["gpu"]:
        figures["bf16_matmul_tflops"] = round(matmul_tflops(), 1)
        peak = next((p for name, p in PEAKS.items() if name in figures["gpu"]), None)
        figures["peak_tflops"] = {"bf16": peak[0], "fp32": peak[1]} if peak else None
    check.peak = figures.get("peak_tflops")
    return figures


STEPS: dict[str, Callable[[Check], dict]] = {
    "env": env_step,
    "zero2": steps.zero2,
    "zero3": steps.zero3,
    "eval": steps.evaluation,
    "sweep": steps.sweep,
}


def run_step(name: str, check: Check, record: dict) -> bool:
    """One step under its limit, its figures and outcome in `record`; False when it failed (said in one
    line; an unexpected exception, a crash, with its traceback first)."""
    limit = check.sizes.limits[name]
    print(f"== {name} (limit {limit} s)", flush=True)
    started = time.perf_counter()
    entry = record["steps"][name] = {"limit_s": limit}
    try:
        with time_limit(limit):
            entry["figures"] = STEPS[name](check)
        entry["status"] = "passed"
    except (CheckFailed, StepTimeout) as e:
        entry |= {"status": "failed", "error": str(e), "figures": getattr(e, "figures", {})}
    except Exception as e:  # a crash (ours, or of what it checks): the traceback is kept
        traceback.print_exc()
        entry |= {"status": "failed", "error": f"{type(e).__name__}: {e}"}
    entry["seconds"] = round(time.perf_counter() - started, 1)
    if entry["status"] == "failed":
        print(f"gpu-check FAILED at step {name}: {entry['error']}", flush=True)
        return False
    print(f"{name} passed in {entry['seconds']:.0f} s", flush=True)
    return True


def summary(record: dict) -> str:
    """The figures a reader looks at first, one line each."""
    where = "dry run, CPU" if record["dry_run"] else record["steps"]["env"].get("figures", {}).get("gpu")
    lines = [f"gpu-check {record['result']} in {record['wall_s']:.0f} s ({where})"]
    lines += [f"{NOT_CHECKED}: {what}" for what in record["not_checked"]]
    for name, entry in record["steps"].items():
        figures = entry.get("figures") or {}
        said = "; ".join(f"{k} {v}" for k, v in figures.items() if k in steps.HEADLINE.get(name, ()))
        lines.append(f"{name:6} {entry['status']:7} {entry['seconds']:6.1f} s  {entry.get('error', said)}")
    return "\n".join(lines) + "\n"


def write(out: Path, record: dict) -> None:
    (out / "gpu_check.json").write_text(json.dumps(record, indent=2, default=str))
    (out / "summary.txt").write_text(summary(record))


def start_ray(check: Check) -> None:
    """A Ray of this check's own, never another on the machine (a study's): no dashboard; the sweep joins it,
    so one Ray runs for the check."""
    import logging

    import ray

    from trainers.train import WORKER_ENV

    ray.init(
        address="local",
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        runtime_env={"env_vars": WORKER_ENV},
    )
    check.ray_address = ray.get_runtime_context().gcs_address


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="folder for gpu_check.json and summary.txt")
    parser.add_argument("--dry-run", action="store_true", help="the same steps on CPU at the smallest sizes")
    args = parser.parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: the GPU check needs one", file=sys.stderr)
        return 2
    from trainers.train import WORKER_ENV

    os.environ.update(WORKER_ENV)  # here too: no progress bars, no tokenizer threads, in the sweep's driver too
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    record = {
        "check": "gpu-check",
        "dry_run": args.dry_run,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "steps": {},
    }
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:  # checkpoints: never under OUT
        check = Check(args.dry_run, DRY if args.dry_run else GPU, Path(work), args.out)
        passed = run_step("env", check, record)
        if passed:
            start_ray(check)
        try:
            passed = passed and all(run_step(name, check, record) for name in list(STEPS)[1:])
        finally:
            import ray

            ray.shutdown()
    failed = [name for name, entry in record["steps"].items() if entry["status"] == "failed"]
    record |= {
        "result": "passed" if passed else f"FAILED at {failed[0]}",
        "not_checked": [
            f"{name} {key}: {value[len(NOT_CHECKED) + 2 :]}"
            for name, entry in record["steps"].items()
            for key, value in (entry.get("figures") or {}).items()
            if str(value).startswith(NOT_CHECKED)
        ],
        "wall_s": time.perf_counter() - started,
    }
    write(args.out, record)
    print(summary(record), end="", flush=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
