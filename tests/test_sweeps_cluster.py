"""The sweep on a simulated multi-node cluster scaled from zero (tests/cluster_harness.py, Ray's fake
multi-node autoscaler): a 0-CPU head, S3 storage (moto), token authentication, the SQLite MLflow store in
the driver's folder. The driver runs `sweeps/ratio_search.py` in a subprocess with the cluster's
environment, like `ray submit` on the head. A lost worker node, a lost cluster and a driver killed on a
cluster, with the record on a tracking server: test_tracking_record.py."""

import subprocess

import pytest

from cluster_harness import AWS_ENV, LocalCluster, require_cluster
from support import NODE_ENV, mlflow_runs, sweep_command, tiny_sweep_config, upload

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.mark.timeout(400)  # about 3x its measured time (tests/README.md)
def test_sweep_waits_for_the_autoscaler(tmp_path, tiny_model_dir, monkeypatch):
    """Autoscaling from zero: a 0-CPU head and no worker node, Ray's fake multi-node autoscaler adds nodes
    when the sweep asks for its trials' resources; the trials on those nodes never need the driver's SQLite
    store."""
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
