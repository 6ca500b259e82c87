"""The tracking backend of tests/tracking_server.py works end to end: an MLflow server with basic auth on
PostgreSQL proxies a run's artifacts to the S3 bucket, refuses a client without credentials, survives a
restart on the same port with its data, Optuna keeps a study in the same PostgreSQL, and closing leaves
no process of the harness running. ~30 s."""

import os
import time
import urllib.error
import urllib.request

import psutil
import pytest

from cluster_harness import AWS_ENV, S3Server, available, is_alive, session_members
from tracking_server import MlflowServer, Postgres, require_postgres

pytestmark = pytest.mark.slow


def test_tracking_server_postgres_s3_auth_restart(tmp_path, monkeypatch):
    require_postgres()
    reason = available()
    if reason is not None and "moto_server" in reason:
        pytest.skip(reason)
    import mlflow
    import mlflow.tracking._tracking_service.utils as tracking_utils
    import optuna
    from mlflow import MlflowClient

    t0 = time.monotonic()
    started: list[psutil.Process] = []
    s3 = S3Server(tmp_path / "moto.log", {**os.environ, **AWS_ENV})
    try:
        started += session_members(s3.proc.pid)
        with Postgres() as pg, MlflowServer(pg, s3, prefix="tracking", auth=True) as server:
            pg.create_database("optuna")
            assert {"mlflow", "optuna"} <= set(pg.databases())
            print(
                f"\npostgres: initdb {pg.initdb_s:.1f} s, start {pg.start_s:.1f} s; "
                f"mlflow server: first start {server.start_times[0]:.1f} s"
            )
            assert pg.password not in pg.url("mlflow") and pg.password not in " ".join(server.cmd)

            # -- MLflow through the server, credentials from the environment only ------------------------
            monkeypatch.setattr(tracking_utils, "_tracking_uri", None)  # an earlier test's set_tracking_uri
            monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
            for key, value in server.client_env.items():
                monkeypatch.setenv(key, value)
            assert mlflow.get_tracking_uri() == server.url
            client = MlflowClient()
            exp_id = client.create_experiment("tracking-server-test")  # no artifact_location: the server's
            run = client.create_run(exp_id)
            run_id = run.info.run_id
            assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
            client.log_metric(run_id, "loss", 0.25, step=1)
            client.log_text(run_id, "hello from the test\n", "notes/hello.txt")
            client.set_terminated(run_id)
            keys = s3.list_keys("tracking/")
            assert any(k.endswith(f"{run_id}/artifacts/notes/hello.txt") for k in keys), keys
            assert run_id in pg.dump("mlflow")

            # -- no credentials, wrong credentials: 401 ---------------------------------------------------
            api = f"{server.url}/api/2.0/mlflow/experiments/get?experiment_id={exp_id}"
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(api, timeout=10)
            assert e.value.code == 401
            monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
            with pytest.raises(Exception, match="401|[Uu]nauthori[sz]ed|credentials"):
                MlflowClient().get_run(run_id)
            monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", server.password)

            # -- Optuna on the same PostgreSQL, password from the environment ------------------------------
            for key, value in pg.env.items():
                monkeypatch.setenv(key, value)
            storage = optuna.storages.RDBStorage(pg.url("optuna"))
            study = optuna.create_study(storage=storage, study_name="harness-study", direction="minimize")
            study.optimize(lambda trial: (trial.suggest_float("x", -1, 1) - 0.5) ** 2, n_trials=2)
            assert len(optuna.load_study(study_name="harness-study", storage=storage).trials) == 2
            storage.engine.dispose()
            assert "harness-study" in pg.dump("optuna")

            # -- restart on the same port: the run, its metric and artifact come back -----------------------
            port, first = server.port, server.started_processes()
            server.stop()
            assert not [p for p in first if is_alive(p)]
            with pytest.raises(urllib.error.URLError):
                urllib.request.urlopen(f"{server.url}/health", timeout=5)
            server.start()
            assert server.port == port
            print(f"mlflow server: restart {server.start_times[1]:.1f} s")
            back = MlflowClient().get_run(run_id)
            assert back.data.metrics["loss"] == 0.25 and back.info.status == "FINISHED"
            assert mlflow.artifacts.load_text(f"{back.info.artifact_uri}/notes/hello.txt") == "hello from the test\n"

            started += pg.started_processes() + server.started_processes()
        started += pg.started_processes() + server.started_processes()
    finally:
        started += session_members(s3.proc.pid)
        s3.close()
    survivors = [p for p in started if is_alive(p)]
    assert not survivors, [(p.pid, p.cmdline()) for p in survivors]
    assert len(started) >= 4  # moto, the postmaster and its workers, mlflow server and uvicorn
    print(f"test wall time {time.monotonic() - t0:.1f} s; {len({p.pid for p in started})} processes, none left")
