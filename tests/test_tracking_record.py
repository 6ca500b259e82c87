"""A sweep whose record lives on a real tracking server: `mlflow server` with basic auth on PostgreSQL,
artifacts proxied to S3 (moto), the Optuna study in the same PostgreSQL, the sweep's storage in the bucket
(tests/tracking_server.py, started once per session: conftest's `record_stack`). Local Ray, then a
simulated cluster lost as a whole.

One sweep, several faults, in order (each asserted where it happens):
- a second driver (`--resume` while the first runs) is refused in one line naming the first, which
  finishes untouched;
- the tracking server stopped during a trial until a write met the outage, then started again: every
  training and evaluation metric of every trial is in the server;
- a new sweep of the same name (another id) against the same server and database is refused, and the
  first sweep's runs, alias and study are unchanged;
- a driver SIGKILLed in a later round (`--resume --set sweep.trials=4`): `--resume` is refused while its
  heartbeat is fresh, takes over after; only the new trial runs; sweep.trials may not shrink;
- no credential in anything the sweep wrote (bucket, driver folder, Tune state, logs, pg_dump of both
  databases)."""

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from hybrid import storage

from cluster_harness import AWS_ENV
from support import (
    NODE_ENV,
    PROXY_MAP,
    ROOT,
    driver_env,
    stop_group,
    sweep_command,
    tiny_sweep_config,
    upload,
    wait_for,
    wait_for_stale_lease,
)
from tracking_server import MlflowServer, Postgres

pytestmark = pytest.mark.slow
# A 30-s stale window: long enough that a live driver's renewals (every 2 s, on 2 loaded cores) are never
# late by it, short for the takeover; a refused command reaches the lease a second after it starts.
HEARTBEAT_S, STALE_AFTER = 2, 15


def client(server: MlflowServer, monkeypatch):
    from mlflow import MlflowClient

    for key, value in server.client_env.items():
        monkeypatch.setenv(key, value)
    return MlflowClient(tracking_uri=server.url)


def trial_runs(mlflow, name: str) -> dict[str, object]:
    exp = mlflow.get_experiment_by_name(name)
    runs = mlflow.search_runs([exp.experiment_id], max_results=1000) if exp else []
    return {r.data.tags["tune.trial_id"]: r for r in runs if r.data.tags.get("sweep.role") == "trial"}


def state(mlflow, pg: Postgres, name: str) -> dict:
    """What another sweep must never change: runs (ids, status, metric keys), the alias, the study."""
    import optuna

    exp = mlflow.get_experiment_by_name(name)
    runs = mlflow.search_runs([exp.experiment_id], max_results=1000)
    study = optuna.load_study(study_name=name, storage=pg.url("optuna"))
    return {
        "runs": sorted((r.info.run_id, r.info.status, tuple(sorted(r.data.metrics))) for r in runs),
        "best": mlflow.get_model_version_by_alias(name, "best").version,
        "study": [(t.number, t.state.name, t.value) for t in study.trials],
        "study_id": study.user_attrs,
    }


@pytest.mark.timeout(1300)  # about 3x its measured time (tests/README.md)
def test_a_sweep_keeps_its_record_on_the_tracking_server_through_faults(
    tmp_path, tiny_model_dir, record_stack, monkeypatch, signing_key
):
    import optuna

    s3, pg, server = record_stack.s3, record_stack.pg, record_stack.server
    monkeypatch.setenv("PGPASSWORD", pg.password)
    mlflow = client(server, monkeypatch)
    config = tiny_sweep_config(
        tmp_path,
        tiny_model_dir,
        "served",
        sweep={
            "storage_path": s3.uri("sweeps"),
            "tracking_uri": "sqlite:///unused.db",
            "artifact_location": "",
            "lease_heartbeat_s": HEARTBEAT_S,
            "lease_stale_after": STALE_AFTER,
            "log_sync_s": 5,
            "seeds": 1,
            "final_eval": False,
        },
    )  # the final phase on a server: the cluster-loss test below
    # MLflow's client retries a refused request for about 4 minutes before the driver's write queue sees the
    # outage; 2 quick retries let the outage below be as short as the queue's own retry needs.
    env = driver_env(record=record_stack) | {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    }
    run = tmp_path / "driver"  # the driver's folder: nothing of the record may be needed from it
    run.mkdir()

    # -- a second driver while the first runs -------------------------------------------------------------
    first = subprocess.Popen(
        sweep_command(config),
        cwd=run,
        env=env,
        start_new_session=True,
        text=True,
        stdout=open(tmp_path / "first.log", "w"),
        stderr=subprocess.STDOUT,
    )

    def training():
        """a trial reporting its first checkpoint"""
        return any(
            mlflow.get_metric_history(r.info.run_id, "train/loss") for r in trial_runs(mlflow, "served").values()
        )

    wait_for(training, 600, first)
    second = subprocess.run(
        sweep_command(config, "--resume"), cwd=run, env=env, capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr[-3000:]
    assert re.fullmatch(
        rf"error: sweep 'served' is being run by another driver: \S+ pid {first.pid}, started [\d :-]+, "
        r"last heartbeat \d+ s ago \(s3://.*driver\.lease.*\)\. Wait for it to end or stop it; if that "
        rf"driver is gone, --resume takes it over once its heartbeat is older than {HEARTBEAT_S * STALE_AFTER} s\.\n",
        second.stderr,
    ), second.stderr

    # -- the tracking server down for 30 s during a trial -----------------------------------------------
    server.stop()

    def unreachable():
        """the driver's MLflow writes failing, queued for a retry"""
        return "MLflow is unreachable" in (tmp_path / "first.log").read_text()

    wait_for(unreachable, 300, first, poll=0.5)  # the outage lasts until a write has met it
    server.start()
    assert first.wait(timeout=1200) == 0, (tmp_path / "first.log").read_text()[-4000:]
    out = (tmp_path / "first.log").read_text()
    assert "MLflow is reachable again after" in out, out[-4000:]  # the queued writes caught up
    assert f"{server.url}/#/experiments/" in out and "mlflow ui --backend-store-uri" not in out
    trials = trial_runs(mlflow, "served")
    assert len(trials) == 3 and all(r.info.status == "FINISHED" for r in trials.values())
    for trial, r in trials.items():  # every report: training at steps 3 and 6, validation at 0, 3, 6, proxy at 3, 6
        steps = {
            m: sorted(h.step for h in mlflow.get_metric_history(r.info.run_id, m))
            for m in ("train/loss", "train/lr", "train/val_loss", PROXY_MAP)
        }
        assert steps == {"train/loss": [3, 6], "train/lr": [3, 6], "train/val_loss": [0, 3, 6], PROXY_MAP: [3, 6]}, (
            trial,
            steps,
        )
        assert r.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied: nothing on the driver's disk
    assert not (run / "mlruns").exists() and not (run / "mlflow.db").exists() and not (run / "optuna.db").exists()
    assert any(k.startswith("mlflow-artifacts/") and k.endswith(".csv") for k in s3.list_keys())  # matrices
    study = optuna.load_study(study_name="served", storage=pg.url("optuna"))
    assert len(study.trials) == 3 and all(t.state.name == "COMPLETE" for t in study.trials)
    before = state(mlflow, pg, "served")
    sweep_id = before["study_id"]["sweep_id"]
    assert mlflow.get_experiment_by_name("served").tags["sweep.id"] == sweep_id

    # -- the same name, another sweep (another storage, so another id), the same server and database ----
    (tmp_path / "other").mkdir()
    other = tiny_sweep_config(
        tmp_path / "other",
        tiny_model_dir,
        "served",
        sweep={"storage_path": s3.uri("elsewhere"), "artifact_location": ""},
    )
    taken = subprocess.run(sweep_command(other), cwd=run, env=env, capture_output=True, text=True, timeout=300)
    assert taken.returncode == 2 and "Traceback" not in taken.stderr, taken.stderr[-3000:]
    assert re.fullmatch(
        rf"error: sweep.name='served' is taken in the tracking store {re.escape(server.url)} by another "
        rf"sweep \(sweep id {sweep_id}; this one is [0-9a-f]{{12}}\): choose another name with --name "
        r"NEW \(or delete that sweep's record there\)\.\n",
        taken.stderr,
    ), taken.stderr
    # --resume may name the record by another address, not another record: an empty store is refused.
    for flag in (f"--tracking-uri=sqlite:///{tmp_path}/empty.db", f"--study-storage={pg.url('postgres')}"):
        elsewhere = subprocess.run(
            sweep_command(config, "--resume", flag), cwd=run, env=env, capture_output=True, text=True, timeout=300
        )
        assert elsewhere.returncode == 2 and re.fullmatch(
            rf"error: --resume of sweep 'served' \({sweep_id}\): the (tracking store|study storage) \S+ does not hold "
            rf"it\. Point {flag.split('=')[0]} at the one it started with .*\n",
            elsewhere.stderr,
        ), elsewhere.stderr
    assert state(mlflow, pg, "served") == before

    # -- a driver SIGKILLed in a later round: refused while its heartbeat is fresh, taken over after ------
    more = sweep_command(config, "--resume", "--set", "sweep.trials=4")
    third = subprocess.Popen(
        more,
        cwd=run,
        env=env,
        start_new_session=True,
        text=True,
        stdout=open(tmp_path / "third.log", "w"),
        stderr=subprocess.STDOUT,
    )
    proxy = {
        t: len(mlflow.get_metric_history(r.info.run_id, PROXY_MAP)) for t, r in trial_runs(mlflow, "served").items()
    }

    def new_trial_training():
        """a trial of the new round reporting"""
        return any(
            t not in proxy and mlflow.get_metric_history(r.info.run_id, "train/loss")
            for t, r in trial_runs(mlflow, "served").items()
        )

    wait_for(new_trial_training, 600, third)
    assert not stop_group(third), "processes of the killed driver's session outlived its group's kill"
    killed = time.time()
    refused = subprocess.run(more, cwd=run, env=env, capture_output=True, text=True, timeout=300)
    assert time.time() - killed < HEARTBEAT_S * STALE_AFTER  # inside the stale window
    assert refused.returncode == 2 and f"pid {third.pid}" in refused.stderr, refused.stderr[-3000:]
    wait_for_stale_lease(storage.join(s3.uri("sweeps"), "served", "driver.lease"), STALE_AFTER)
    done = subprocess.run(more, cwd=run, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(
        rf"Took over sweep 'served' from the driver on \S+ \(pid {third.pid}\), whose heartbeat stopped", done.stdout
    ), done.stdout[-3000:]
    trials = trial_runs(mlflow, "served")
    names = [r.data.tags["tune.trial_id"] for r in trials.values()]
    assert len(names) == len(set(names)) == 4 and all(r.info.status == "FINISHED" for r in trials.values())
    assert all(len(mlflow.get_metric_history(trials[t].info.run_id, PROXY_MAP)) == n for t, n in proxy.items())
    study = optuna.load_study(study_name="served", storage=pg.url("optuna"))
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4  # each search trial once
    assert not s3.list_keys("sweeps/served/driver.lease")  # released at the end
    fewer = subprocess.run(
        sweep_command(config, "--resume"), cwd=run, env=env, capture_output=True, text=True, timeout=300
    )
    assert fewer.returncode == 2 and fewer.stderr == (
        "error: sweep.trials=3: sweep 'served' has 4 search trials already; --resume can only raise it "
        "(sweep.trials=4 continues it as it is).\n"
    ), fewer.stderr

    # -- no credential, and not the signing key, in anything the sweep wrote (bucket, driver folder, logs, MLflow)
    secrets = {"database": pg.password, "mlflow": server.password, "signing key": signing_key.read_text().strip()}
    bucket = s3.client()
    written = [k for k in s3.list_keys() if k.startswith(("sweeps/", "elsewhere/", "mlflow-artifacts/"))]
    for key in written:  # the sweep's storage, the other sweep's, the server's artifacts (the bucket is shared)
        body = bucket.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
        assert not any(s.encode() in body for s in secrets.values()), key
    for path in [p for p in tmp_path.rglob("*") if p.is_file()]:
        data = path.read_bytes()
        assert not any(s.encode() in data for s in secrets.values()), path
    assert any("/logs/" in k for k in s3.list_keys("sweeps/served/"))  # the logs scanned above
    for db in ("mlflow", "optuna"):
        dump = pg.dump(db)
        assert "served" in dump and not any(s in dump for s in secrets.values()), db
    # A password in a URI: refused in one line naming the variable to use, before anything starts.
    for flag, variable in (
        ("--tracking-uri=http://admin:hunter2@127.0.0.1:1", "MLFLOW_TRACKING_PASSWORD"),
        ("--study-storage=postgresql+psycopg://sweeps:hunter2@127.0.0.1:1/optuna", "PGPASSWORD"),
    ):
        bad = subprocess.run(sweep_command(config, flag), cwd=run, env=env, capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and variable in bad.stderr, bad.stderr
        assert "hunter2" not in bad.stderr


@pytest.mark.cluster
@pytest.mark.timeout(1400)  # about 3x its measured time (tests/README.md)
def test_a_sweep_continues_on_a_new_cluster_from_the_bucket_the_server_and_the_study(
    tmp_path, tiny_model_dir, record_stack, monkeypatch
):
    """(a) The whole cluster lost mid-sweep: once one trial has finished and another is running, every
    process of the Ray cluster (head included) and the driver are killed by PID, and the driver's folder is
    deleted; a new cluster (new head, new worker nodes, an empty driver folder) continues with `--resume`
    from the bucket, the tracking server and the study database alone. No finished trial is trained or
    logged again; one run per trial, all FINISHED; each search trial once in the study; the final
    evaluation and the `best` alias in the server; compare.py builds the report from the server."""
    import shutil

    import optuna

    from cluster_harness import LocalCluster, require_cluster

    require_cluster()
    s3, pg, server = record_stack.s3, record_stack.pg, record_stack.server
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PGPASSWORD", pg.password)
    mlflow = client(server, monkeypatch)
    model = s3.uri("models/tiny")
    upload(tiny_model_dir, model)
    sweep = {
        "trials": 2,
        "seeds": 1,
        "storage_path": s3.uri("lost"),
        "trial_resource": "sweep_trial",
        "artifact_location": "",
        "lease_heartbeat_s": 2,
        "lease_stale_after": 3,
        "log_sync_s": 10,
    }

    def cluster(folder: Path) -> LocalCluster:
        return LocalCluster(
            folder, worker_nodes=2, cpus_per_node=1, env=NODE_ENV, head_resources={"sweep_trial": 8}, s3=s3
        )

    def env(c: LocalCluster) -> dict[str, str]:
        return driver_env(c, record_stack)

    first = tmp_path / "head-1"
    with cluster(first) as lost:
        config = tiny_sweep_config(
            first,
            model,
            "lost",
            trainer={"cpus_per_worker": 0.45},
            eval={"encode_cpus": 0.5, "score_cpus": 0.5},
            sweep=sweep,
        )
        driver = subprocess.Popen(
            sweep_command(config),
            cwd=first,
            env=env(lost),
            start_new_session=True,
            stdout=open(tmp_path / "driver-1.log", "w"),
            stderr=subprocess.STDOUT,
        )

        def one_finished_one_running():
            """one trial finished and another training"""
            steps = {
                t: [m.step for m in mlflow.get_metric_history(r.info.run_id, PROXY_MAP)]
                for t, r in trial_runs(mlflow, "lost").items()
            }
            done = [t for t, s in steps.items() if 6 in s]
            return done if done and len(steps) > len(done) else None

        finished = wait_for(one_finished_one_running, 900, driver)
        stop_group(driver)
    # Leaving the block SIGKILLed every process of that cluster by PID, head included (close() checks none survived).
    before = {
        t: {m: len(mlflow.get_metric_history(r.info.run_id, m)) for m in ("train/loss", PROXY_MAP)}
        for t, r in trial_runs(mlflow, "lost").items()
        if t in finished
    }
    shutil.rmtree(first)

    second = tmp_path / "head-2"
    with cluster(second) as new:
        config = tiny_sweep_config(
            second,
            model,
            "lost",
            trainer={"cpus_per_worker": 0.45},
            eval={"encode_cpus": 0.5, "score_cpus": 0.5},
            sweep=sweep,
        )
        done = subprocess.run(
            sweep_command(config, "--resume"), cwd=second, env=env(new), capture_output=True, text=True, timeout=1500
        )
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "Took over sweep 'lost' from the driver on" in done.stdout, done.stdout[-3000:]
    logs = [k for k in s3.list_keys("lost/lost/logs/")]  # both heads' logs, and the worker nodes' at the end
    assert len({k.split("/")[3] for k in logs} - {""}) == 2 and any("/node-" in k for k in logs), logs
    trials = trial_runs(mlflow, "lost")
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials.values())
    for trial, counts in before.items():  # finished before the loss: not trained or logged again
        assert {m: len(mlflow.get_metric_history(trials[trial].info.run_id, m)) for m in counts} == counts, trial
    exp = mlflow.get_experiment_by_name("lost")
    [parent] = mlflow.search_runs([exp.experiment_id], "tags.`sweep.role` = 'parent'")
    assert parent.info.status == "FINISHED" and {"base/multi/map", "best/multi/map"} <= set(parent.data.metrics)
    assert mlflow.get_model_version_by_alias("lost", "best").tags["sweep"] == "lost"
    study = optuna.load_study(study_name="lost", storage=pg.url("optuna"))
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 2

    report = subprocess.run(
        [
            os.sys.executable,
            str(ROOT / "sweeps/compare.py"),
            "--experiment",
            "lost",
            "--tracking-uri",
            server.url,
            "--out",
            str(tmp_path / "report"),
            "--high-resource",
            "en",
            "de",
        ],
        cwd=tmp_path,
        env=driver_env(record=record_stack),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stdout[-2000:] + report.stderr[-2000:]
    assert (tmp_path / "report" / "report.html").stat().st_size > 10_000
