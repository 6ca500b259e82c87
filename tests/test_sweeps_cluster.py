"""The sweep on a simulated multi-node cluster (tests/cluster_harness.py), as on `cluster.yaml`: a 0-CPU
head, worker nodes that cannot see the driver's run directory (which holds the SQLite MLflow store and
the outputs), S3 storage (moto), token authentication. The driver runs `sweeps/ratio_search.py` in a
subprocess with the cluster's environment, like `ray submit` on the head."""

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from cluster_harness import AWS_ENV, LocalCluster, require_cluster
from support import NODE_ENV, PROXY_MAP, ROOT, mlflow_runs, sweep_command, tiny_sweep_config, upload

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
STEPS = 9  # three checkpoints: the kill lands after the first is registered, before the last


def checkpoint_steps(cluster: LocalCluster, prefix: str) -> dict[str, list[int]]:
    """{Train run (trial id): steps of its checkpoints in the bucket (those with their trainer state)}."""
    out: dict[str, list[int]] = {}
    for key in cluster.list_keys(prefix):
        parts = key[len(prefix) :].split("/")
        if len(parts) == 3 and parts[1].startswith("checkpoint_") and parts[2] == "trainer_state.json":
            out.setdefault(parts[0], []).append(int(parts[1][len("checkpoint_") :]))
    return {run: sorted(steps) for run, steps in out.items()}


def registered_steps(cluster: LocalCluster, prefix: str) -> dict[str, int]:
    """{Train run: step of the latest checkpoint its controller registered}, from the snapshot Ray Train
    writes to storage after each registration (what a restarted worker group resumes from)."""
    out = {}
    for key in cluster.list_keys(prefix):
        if key.endswith("/checkpoint_manager_snapshot.json"):
            body = cluster.s3_client().get_object(Bucket=cluster.s3.bucket, Key=key)["Body"].read()
            latest = json.loads(body).get("latest_checkpoint_result")
            if latest:
                out[key[len(prefix) :].split("/")[0]] = int(latest["checkpoint_dir_name"][len("checkpoint_") :])
    return out


def hidden_dir_as_seen_by(node, hidden: Path) -> list[str]:
    """The driver's run directory as a node's processes see it (through /proc/PID/root, which resolves
    paths in that process's mount namespace)."""
    process = node.processes()[0]
    return os.listdir(f"/proc/{process.pid}/root{hidden}")


def train_worker_node(cluster: LocalCluster):
    """A worker node that runs a Train worker now."""
    for node in cluster.nodes:
        if not node.killed and any("RayTrainWorker" in " ".join(p.cmdline()) for p in node.processes()):
            return node
    raise AssertionError("no node runs a Train worker")


@pytest.mark.timeout(850)  # about 3x its measured time (tests/README.md)
def test_sweep_with_s3_storage_survives_a_lost_node(tmp_path, tiny_model_dir, monkeypatch):
    """(a) search, extra seeds, final evaluation and compare.py with S3 storage and the SQLite store in the
    driver's hidden directory; (b) a worker node killed mid-trial and replaced: the trial resumes from its
    last checkpoint in the bucket, no step lost beyond it, no duplicate MLflow run; (c) a trial's two Train
    workers (0.45 CPU each) leave a 1-CPU node free: each reference's final evaluation starts when its
    trial finishes, not after the last trial."""
    require_cluster()
    for key, value in AWS_ENV.items():  # the bucket's dummy credentials, for the upload from this process
        monkeypatch.setenv(key, value)
    run = tmp_path / "driver"
    # As cluster.yaml: the head declares `sweep_trial`, so trial drivers (Tune function, Train controller)
    # run there and a lost worker node takes only Train workers (and evaluation tasks) with it.
    with LocalCluster(run, worker_nodes=2, cpus_per_node=1, env=NODE_ENV, head_resources={"sweep_trial": 8}) as cluster:
        model = cluster.storage_uri("models/tiny")
        upload(tiny_model_dir, model)
        config = tiny_sweep_config(
            run,
            model,
            "cl",
            optim={"steps": STEPS, "warmup_steps": 1},
            trainer={"cpus_per_worker": 0.45},
            eval={"encode_cpus": 0.5, "score_cpus": 0.5},
            sweep={
                "trials": 2,
                "seeds": 2,
                "storage_path": cluster.storage_uri("sweeps"),
                "trial_resource": "sweep_trial",
            },
        )
        started = time.time()
        driver = subprocess.Popen(
            sweep_command(config),
            cwd=run,
            env=cluster.driver_env() | NODE_ENV,
            stdout=open(run / "driver.log", "w"),
            stderr=subprocess.STDOUT,
        )
        train_prefix = "sweeps/cl/train/"
        deadline = time.time() + 600
        while time.time() < deadline and driver.poll() is None and not registered_steps(cluster, train_prefix):
            time.sleep(0.2)
        assert driver.poll() is None, (run / "driver.log").read_text()[-3000:]
        [(hit_trial, registered)] = registered_steps(cluster, train_prefix).items()
        killed = train_worker_node(cluster)
        cluster.kill_node(killed, wait_dead=False)  # its raylet and workers, by PID: a Train worker
        steps_at_kill = checkpoint_steps(cluster, train_prefix)[hit_trial]
        assert max(steps_at_kill) < STEPS, "the trial finished before its node was killed"
        cluster.add_node()  # the trial's replacement node
        assert driver.wait(timeout=900) == 0, (run / "driver.log").read_text()[-5000:]
        wall = time.time() - started
        log = (run / "driver.log").read_text()
        assert "Configurations ranked by multi/map" in log

        # Nothing reached the worker nodes' view of the driver's directory: no MLflow store, no outputs.
        for node in [n for n in cluster.nodes if not n.killed]:
            assert hidden_dir_as_seen_by(node, run) == []
        checkpoints = checkpoint_steps(cluster, train_prefix)

    client, runs = mlflow_runs(run, "cl")
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("sweep.role") == "trial"]
    trial_ids = [c.data.tags["tune.trial_id"] for c in children]
    assert len(parents) == 1 and len(children) == len(set(trial_ids)) == 3  # 2 searched + 1 seed, no duplicate
    assert all(r.info.status == "FINISHED" for r in runs)
    every_checkpoint = list(range(3, STEPS + 1, 3))
    for child in children:
        run_id, trial = child.info.run_id, child.data.tags["tune.trial_id"]
        assert sorted(m.step for m in client.get_metric_history(run_id, PROXY_MAP)) == every_checkpoint, trial
        assert client.get_metric_history(run_id, "train/loss")
        for step in every_checkpoint:
            names = {
                Path(a.path).name for a in client.list_artifacts(run_id, f"eval/xquad-r/heldout-proxy20/step_{step}")
            }
            assert {"map.csv", "map.png", "reliability.csv", "summary.json"} <= names, (trial, step, names)
        proxy = {m.step: m.value for m in client.get_metric_history(run_id, PROXY_MAP)}
        best = max(proxy, key=lambda step: (proxy[step], step))
        # Retention in the bucket (keep_checkpoints=2): the last two and the best, each deleted once evaluated.
        assert checkpoints[trial] == sorted({STEPS - 3, STEPS, best}), (trial, checkpoints[trial], proxy)
    assert {"base/multi/map", "best/multi/map", "eval/xquad-r/heldout/multi/map"} <= set(parents[0].data.metrics)

    # (c) The first reference's final evaluation (with the base model's) started before the second trial
    # finished; the final phase found every result in the cache (no model evaluated twice).
    lines = log.splitlines()
    first, second = [i for i, line in enumerate(lines) if re.search(r"trial \S+ \(.*\): finished$", line)][:2]
    started = [i for i, line in enumerate(lines) if " started now (a reference; " in line]
    assert started and first < started[0] < second and " of base, " in lines[started[0]], log
    assert "Final evaluation on xquad-r: 4 models (base + 3 final checkpoints), 4 from the evaluation cache" in log

    # (b) The hit trial resumed from the last checkpoint it had in the bucket when the node died.
    [hit] = [c for c in children if c.data.tags["tune.trial_id"] == hit_trial]
    resumed = {int(m.value) for m in client.get_metric_history(hit.info.run_id, "train/resumed_from_step")}
    # From the latest checkpoint registered when the node died (or one registered in the same instant).
    assert max(resumed) in steps_at_kill and max(resumed) >= registered, (resumed, registered, steps_at_kill)
    assert max(m.step for m in client.get_metric_history(hit.info.run_id, "train/loss")) == STEPS

    report = subprocess.run(
        [
            os.sys.executable,
            str(ROOT / "sweeps/compare.py"),
            "--experiment",
            "cl",
            "--tracking-uri",
            f"sqlite:///{run}/mlflow.db",
            "--out",
            str(tmp_path / "report"),
            "--high-resource",
            "en",
            "de",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stdout[-2000:] + report.stderr[-2000:]
    assert (tmp_path / "report" / "report.html").stat().st_size > 10_000
    print(
        f"\ncluster sweep: {wall:.0f} s; checkpoints in the bucket: {checkpoints}; node killed when "
        f"{hit_trial} had checkpoints {steps_at_kill} ({registered} registered), resumed from {max(resumed)}"
    )


@pytest.mark.timeout(400)  # about 3x its measured time (tests/README.md)
def test_sweep_waits_for_the_autoscaler(tmp_path, tiny_model_dir, monkeypatch):
    """(d) autoscaling from zero: a 0-CPU head and no worker node, Ray's fake multi-node autoscaler adds
    nodes when the sweep asks for its trials' resources. (A driver killed mid-sweep and continued, there on a
    new cluster: test_tracking_record.py.)"""
    require_cluster()
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    run = tmp_path / "driver"
    with LocalCluster(run, autoscaling=True, max_autoscaled_nodes=2, cpus_per_node=1, env=NODE_ENV) as cluster:
        assert cluster.alive_worker_nodes() == []
        model = cluster.storage_uri("models/tiny")
        upload(tiny_model_dir, model)
        config = tiny_sweep_config(
            run,
            model,
            "auto",
            sweep={"trials": 2, "seeds": 1, "final_eval": False, "storage_path": cluster.storage_uri("sweeps")},
        )
        env = cluster.driver_env() | NODE_ENV
        local = subprocess.run(
            sweep_command(config, "--set", f"sweep.storage_path={run / 'sweeps'}"),
            cwd=run,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert (
            local.returncode == 2
            and "is a folder on this machine, but this Ray cluster has several nodes" in local.stderr
        ), local.stderr[-2000:]  # refused before any node was asked for
        done = subprocess.run(sweep_command(config), cwd=run, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "Waiting for the autoscaler to add nodes" in done.stdout + done.stderr  # it ran on added nodes

    _, runs = mlflow_runs(run, "auto")
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)  # the parent and 2 trials
