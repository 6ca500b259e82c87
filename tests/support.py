"""What the tests share, so that no test module imports another: the sweep's command line and a preset
shrunk to seconds, the one builder of a driver's environment (local, on a simulated cluster, with a tracking
server), reading a sweep's MLflow record while it runs, waiting on a condition (never a fixed sleep),
interrupting a driver at a line it prints, headless Chromium, small training data and configs.
The servers and clusters themselves: `cluster_harness.py` (moto's S3, LocalCluster, free_port) and
`tracking_server.py` (PostgreSQL, `mlflow server`, RecordStack)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.fs as pafs
import pytest
import yaml

from hybrid.data import TrainingPair
from trainers.config import TrainRunConfig, run_config_from_raw

from cluster_harness import AWS_ENV, free_port

if TYPE_CHECKING:
    from cluster_harness import LocalCluster
    from tracking_server import RecordStack

NODE_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "PYTHONUNBUFFERED": "1"}  # every driver and node
ROOT = Path(__file__).resolve().parents[1]


PROXY_MAP = "eval/xquad-r/heldout-proxy20/multi/map"  # evaluation.tracking's name for the proxy mAP


def tiny_sweep_config(tmp_path: Path, model: Path | str, name: str, **sections: dict) -> Path:
    """The default preset shrunk to seconds: 2 languages, the tiny model, 6 steps; `sections` update
    it (e.g. sweep={"storage_path": "s3://..."}). Everything the driver writes lands under `tmp_path`."""
    raw = yaml.safe_load((ROOT / "configs/default.yaml").read_text())
    for section in ("data", "model", "method", "optim", "trainer", "sweep", *sections):
        raw.setdefault(section, {})
    raw["data"] |= {"train_languages": ["en", "de"], "eval_languages": ["en", "de"]}
    raw["model"] |= {"name": str(model), "max_length": 32, "freeze_embeddings": False}
    raw["method"] |= {"batch_size": 8}
    raw["optim"] |= {"lr": 1e-3, "steps": 6, "warmup_steps": 1}
    raw["trainer"] |= {"checkpoint_every": 3, "log_every": 3, "val_batches": 2, "storage_path": str(tmp_path / "train")}
    raw["sweep"] |= {
        "name": name,
        "trials": 3,
        "top_k": 1,
        "seeds": 2,
        "grace_period": 1,
        "proxy_languages": ["en", "de"],
        "proxy_max_questions": 20,
        "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
        "artifact_location": str(tmp_path / "mlruns"),
        "storage_path": str(tmp_path / "sweeps"),
        "lease_heartbeat_s": 1,
        "lease_stale_after": 2,
    }  # a killed driver's lease: stale in 2 s
    for section, values in sections.items():
        raw[section] |= values
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def sweep_command(config: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "sweeps/ratio_search.py"), "--config", str(config), *extra]


def mlflow_runs(tmp_path: Path, name: str):
    """(client, every run of sweep `name`) from the SQLite store under `tmp_path`."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name(name)
    return client, client.search_runs([exp.experiment_id], max_results=1000)


@contextlib.contextmanager
def mlflow_ui(store: str, log: Path):
    """`mlflow ui` on 127.0.0.1 and a free port over `store`, ready (GET /health); stopped (its own process
    group) on exit. Yields its base URL."""
    import urllib.request

    port = free_port()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "ui",
            "--backend-store-uri",
            store,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        env=driver_env(),
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=5)
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, log.read_text()[-2000:]
                time.sleep(1)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def proxy_steps(tmp_path: Path, name: str) -> dict[str, list[int]]:
    """{trial id: the steps of its proxy evaluations in MLflow}, read while a sweep may be writing.

    The store is opened through MLflow only once the driver has made the sweep's experiment: an MlflowClient
    on a store still being created runs MLflow's schema migration beside the driver's, and the driver then
    dies with "table ... already exists"."""
    import sqlite3

    from mlflow import MlflowClient

    db = tmp_path / "mlflow.db"
    try:
        with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as con:
            if not con.execute("SELECT 1 FROM experiments WHERE name = ?", (name,)).fetchone():
                return {}
    except sqlite3.Error:  # no store yet, or its tables are being created
        return {}
    try:
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
        exp = client.get_experiment_by_name(name)
        runs = client.search_runs([exp.experiment_id]) if exp else []
        return {
            run.data.tags["tune.trial_id"]: [m.step for m in client.get_metric_history(run.info.run_id, PROXY_MAP)]
            for run in runs
            if run.data.tags.get("sweep.role") == "trial"
        }
    except Exception:  # the driver is creating the store right now
        return {}


def finished_trials(tmp_path: Path, name: str, steps: int = 6) -> dict[str, int]:
    """{trial id: number of proxy mAP points} of trials whose final checkpoint (`steps`) was evaluated."""
    return {trial: len(done) for trial, done in proxy_steps(tmp_path, name).items() if steps in done}


def assert_resumed_cleanly(folder: Path, name: str, trials: int, steps: tuple[int, ...] = (3, 6)) -> None:
    """After a killed driver and `--resume`: one parent, `trials` trial runs (no duplicate), every trial
    finished, and every checkpoint's report (`steps`) in the record exactly once: none trained or logged
    again, none lost (a report whose write the kill overtook is logged from the one its trial kept)."""
    _, runs = mlflow_runs(folder, name)
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    trial_ids = [r.data.tags["tune.trial_id"] for r in runs if r.data.tags.get("sweep.role") == "trial"]
    assert len(parents) == 1 and len(trial_ids) == len(set(trial_ids)) == trials  # no duplicate runs
    logged = proxy_steps(folder, name)
    assert set(finished_trials(folder, name)) == set(trial_ids)  # every trial finished
    assert all(sorted(s) == list(steps) for s in logged.values()), logged  # each report once
    assert all(r.info.status == "FINISHED" for r in runs)


def forget_after(db: Path, run_id: str, step: int) -> None:
    """What a driver killed before its last MLflow writes leaves: the run RUNNING, no metric after `step`, and
    the later checkpoints' evaluations not marked logged (`evaluation.tracking.log_result` tags it last)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as con, con:
        later = "SELECT model_id FROM logged_model_params WHERE param_key = 'step' AND CAST(param_value AS INTEGER) > ?"
        con.execute(
            f"DELETE FROM logged_model_tags WHERE tag_key LIKE 'eval.%' AND model_id IN ({later}) AND model_id IN "
            "(SELECT model_id FROM logged_models WHERE source_run_id = ?)",
            (step, run_id),
        )
        con.execute("DELETE FROM metrics WHERE run_uuid = ? AND step > ?", (run_id, step))
        con.execute("DELETE FROM latest_metrics WHERE run_uuid = ? AND step > ?", (run_id, step))
        con.execute("UPDATE runs SET status = 'RUNNING', end_time = NULL WHERE run_uuid = ?", (run_id,))


def interrupt_at(
    config: Path,
    cwd: Path,
    line: str,
    extra: tuple[str, ...] = (),
    second_after_s: float | None = None,
    timeout_s: float = 900,
    sig: signal.Signals = signal.SIGINT,
) -> tuple[int, str, str]:
    """Run the sweep and send `sig` (a Ctrl-C's SIGINT by default) when its terminal shows a line with
    `line` (a second one `second_after_s` later): (exit status, stdout, stderr)."""
    import threading

    driver = subprocess.Popen(
        sweep_command(config, *extra),
        cwd=cwd,
        env=driver_env(),
        start_new_session=True,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out: list[str] = []
    err: list[str] = []
    seen = threading.Event()

    def read_out() -> None:
        for text in driver.stdout:
            out.append(text)
            if line in text:
                seen.set()

    readers = [
        threading.Thread(target=read_out, daemon=True),
        threading.Thread(target=lambda: err.extend(driver.stderr), daemon=True),
    ]
    for reader in readers:
        reader.start()
    deadline = time.time() + timeout_s
    while not seen.wait(1) and driver.poll() is None and time.time() < deadline:
        pass  # a driver that ended without the line fails here at once, not at the timeout
    if not seen.is_set():
        for reader in readers:
            reader.join(timeout=10)
        raise AssertionError(
            f"no line with {line!r} (the driver {'exited ' + str(driver.poll()) if driver.poll() is not None else 'ran on'}):\n"
            + "".join(out)[-3000:]
            + "".join(err)[-3000:]
        )
    driver.send_signal(sig)
    if second_after_s is not None:
        time.sleep(second_after_s)
        driver.send_signal(sig)
    try:
        driver.wait(timeout=300)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    for reader in readers:
        reader.join(timeout=10)
    return driver.returncode, "".join(out), "".join(err)


def make_pairs(counts: dict[str, int], n_ids: int | None = None) -> list[TrainingPair]:
    """Pairs where language `l` covers the first `counts[l]` ids (so ids overlap across languages)."""
    pairs = []
    for lang, n in counts.items():
        for i in range(n):
            pairs.append(
                TrainingPair(
                    f"q{i}",
                    lang,
                    f"{lang} question {i}",
                    f"{lang} answer {i}",
                    f"{lang} negative {i}" if i % 2 else None,
                )
            )
    return pairs


def chromium(url: str, shot: Path, budget_ms: int = 10000, height: int = 4000) -> str:
    """Open `url` in headless Chromium (Debian's, which CI installs), once: the DOM after scripts ran for
    `budget_ms` of virtual time, and a screenshot at `shot` (a fresh profile beside it)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium); CI installs it")
    flags = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={shot.parent / ('profile-' + shot.stem)}",
        f"--virtual-time-budget={budget_ms}",
    ]
    dom = subprocess.run(  # one launch: the DOM on stdout and the screenshot, once the time budget has run
        [*flags, "--dump-dom", f"--screenshot={shot}", f"--window-size=1400,{height}", url],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert shot.exists() and shot.stat().st_size > 10_000, dom.stderr[-2000:]
    return dom.stdout


def render_in_chromium(report: Path, tmp_path: Path) -> Path:
    """Open an HTML report in headless Chromium: assert that the page's own check saw every image load,
    and take a screenshot (returned)."""
    shot = tmp_path / "report.png"
    assert 'data-images-ok="true"' in chromium(report.as_uri(), shot)
    return shot


def upload(folder: Path, uri: str) -> None:
    """Put a model folder in the bucket: on a cluster the model is read from storage, not a head's disk."""
    from hybrid import storage

    fs, path = storage.filesystem(uri)
    pafs.copy_files(str(folder), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def tiny_config(model_dir, tmp_path, **trainer) -> TrainRunConfig:
    """A run of the tiny model, settled as a command line's is (`hybrid.model_settings`)."""
    return run_config_from_raw(
        {
            "data": {"train_languages": ["en", "de", "es"], "eval_languages": ["en", "de", "es"]},
            "model": {"name": str(model_dir), "max_length": 32, "freeze_embeddings": False},
            "method": {"batch_size": 16, "mono_ratio": 0.5, "temperature": 0.1, "seed": 3},
            "optim": {"lr": 3e-3, "steps": 40, "warmup_steps": 4},
            "trainer": {
                "workers": 2,
                "checkpoint_every": 20,
                "log_every": 10,
                "val_batches": 4,
                "storage_path": str(tmp_path / "ray"),
            }
            | trainer,
        },
    )


def with_steps(config: TrainRunConfig, steps: int) -> TrainRunConfig:
    return replace(config, optim=replace(config.optim, steps=steps))


def wait_for(what, timeout: float, proc: subprocess.Popen | None = None, poll: float = 1.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the driver ended (exit {proc.returncode}) before: {what.__doc__ or what}")
        try:
            found = what()
        except Exception:  # the server restarting, the store being created
            found = None
        if found:
            return found
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for: {what.__doc__ or what}")


def stop_group(proc: subprocess.Popen, timeout: float = 30) -> list[str]:
    """SIGKILL a driver started with `start_new_session=True` and every process of its session (the local Ray
    it started: Ray's own processes stay in the driver's session), by process group, then by PID for any
    that left the group. Returns the command lines of those that outlived the group's kill (a lead, should a
    later `--resume` fail)."""
    from cluster_harness import is_alive, session_members

    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    deadline, strays = time.time() + timeout, []
    while live := [p for p in session_members(proc.pid) if is_alive(p)]:
        if time.time() > deadline:
            for p in live:
                with contextlib.suppress(Exception):
                    strays.append(" ".join(p.cmdline())[:200])
                    p.kill()
            break
        time.sleep(0.2)
    return strays


def wait_for_stale_lease(location: Path | str, stale_after: float, timeout: float = 300) -> None:
    """Until the sweep lease at `location` is gone or older than `stale_after` of its heartbeats (a killed
    driver's, which `--resume` takes over: `sweeps.lease`), polled: never a fixed sleep."""
    import json

    from hybrid import storage

    deadline = time.time() + timeout
    while storage.exists(str(location)):
        data, _, age = storage.read_aged(str(location))  # by the store's clock, as `sweeps.lease` reads it
        held = json.loads(data)
        if age > stale_after * held["heartbeat_s"]:
            return
        assert time.time() < deadline, f"the lease {location} was still renewed after {timeout} s: {held}"
        time.sleep(0.2)


def driver_env(cluster: LocalCluster | None = None, record: RecordStack | None = None) -> dict[str, str]:
    """The environment of a sweep driver the tests start, as on a head node: this process's, less any RAY_*,
    AWS_*, MLFLOW_* and PG* of the test process (`mlflow.set_tracking_uri` in one test sets
    MLFLOW_TRACKING_URI here; `local_ray` leaves RAY_* behind), with moto's dummy AWS credentials; a local Ray of
    its own (RAY_ADDRESS=local: killing the driver's process group takes that Ray with it) or `cluster`'s
    address; and `record`'s tracking server and study database with their credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_", "MLFLOW_", "PG"))}
    env |= AWS_ENV | NODE_ENV | (cluster.driver_env() if cluster is not None else {"RAY_ADDRESS": "local"})
    return env | (record.driver_env if record is not None else {})


def loaded_sweep(name: str, config: dict, runs: list[dict], metrics: list[dict], matrices=None, merges=None):
    """A `sweeps.report.data.Sweep` as `load_sweep` reads one from MLflow, built from rows (the report's
    synthetic tests): parent run "parent", no per-language rows."""
    import pandas as pd

    from sweeps.report.data import Sweep

    columns = ["run_id", "source", "dataset", "split", "lang", "metric", "value", "step"]
    sweep = Sweep(
        name, "0", "parent", {}, config, {}, pd.DataFrame(runs), pd.DataFrame(metrics), pd.DataFrame(columns=columns)
    )
    sweep.matrices = matrices or {}
    sweep.merges = pd.DataFrame(merges or [])
    return sweep
