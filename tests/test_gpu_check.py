"""bench/gpu_check.py, the GPU path's check (`make gpu-check`), tested through its dry run: the same steps on
CPU at the smallest sizes, its own Ray started and stopped inside its process (run on a GPU: bench/README.md)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECK = [sys.executable, str(ROOT / "bench/gpu_check.py")]


def run(args: list[str], cwd: Path, timeout: float) -> tuple[int, str]:
    """The check in a process group of its own, stopped whole (and only it) if it outlives `timeout`."""
    proc = subprocess.Popen(
        CHECK + args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return proc.returncode, out


@pytest.mark.slow
@pytest.mark.timeout(600)  # about 3x its measured time (tests/README.md): 3.2 min on 2 shared cores
def test_dry_run_passes_every_step_and_writes_its_figures(tmp_path):
    code, out = run([str(tmp_path / "out"), "--dry-run"], tmp_path, timeout=560)
    assert code == 0, out[-4000:]
    record = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert record["result"] == "passed" and record["dry_run"] is True
    assert {name: entry["status"] for name, entry in record["steps"].items()} == dict.fromkeys(
        ("env", "zero2", "zero3", "eval", "sweep"), "passed"
    )
    steps = {name: entry["figures"] for name, entry in record["steps"].items()}
    assert steps["zero2"]["samples_per_s"]["bf16"] > 0 and steps["zero2"]["max_loss_rdiff"] <= 0.02
    assert steps["zero2"]["export_dtype"] == "torch.float32"  # a bf16 run's export, as a plain load sees it
    assert steps["zero3"]["resumed_at"] == 1 and steps["zero3"]["max_loss_rdiff"] == 0  # CPU: exact
    assert steps["eval"]["max_metric_diff"] <= 5e-5 and steps["sweep"]["exit"] == 0
    assert record["not_checked"] == ["env faiss_gpu: dry run (CPU)"]
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert summary.startswith("gpu-check passed in ") and "not checked: env faiss_gpu: dry run (CPU)" in summary


def test_the_sweep_steps_record_reader_on_a_finished_sweep(finished_tiny_sweep):
    """The dry run stops its sweep at the configuration check (bench/gpu_check_steps.py's `sweep`): what the
    GPU run reads of its sweep's record is read here from the suite's finished tiny sweep, the same CLI."""
    sys.path.insert(0, str(ROOT / "bench"))
    from gpu_check_steps import sweep_record

    from support import mlflow_runs

    figures = sweep_record(finished_tiny_sweep.folder, "tiny")
    _, runs = mlflow_runs(finished_tiny_sweep.folder, "tiny")
    trials = [r for r in runs if r.data.tags.get("sweep.role") == "trial"]
    assert figures["trials_finished"] == sum(r.info.status == "FINISHED" for r in trials) >= 2
    assert str(figures["best_registered"]) == "1"  # MLflow 3: an int


@pytest.mark.timeout(60)
def test_without_a_gpu_it_says_so_in_one_line_and_exits_2(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    code, out = run([str(tmp_path / "out")], tmp_path, timeout=50)
    assert (code, out) == (2, "no CUDA device: the GPU check needs one\n")
    assert not (tmp_path / "out").exists()
