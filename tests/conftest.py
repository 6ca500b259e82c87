"""Shared fixtures: the packaged XQuAD-R corpus (loaded once), small synthetic training pairs, a tiny
encoder, a per-module local Ray; and the headless-Chromium check of an HTML report."""

import os
import secrets
import subprocess
from pathlib import Path

import pytest

from hybrid.data import load_corpus


@pytest.fixture(scope="session", autouse=True)
def signing_key(tmp_path_factory) -> Path:
    """The deployment's signing key for the whole suite (`hybrid.signing`), in the environment every process
    the tests start inherits (Ray workers, sweep drivers, simulated nodes): the user's own key is never
    touched."""
    from hybrid.signing import KEY_ENV

    path = tmp_path_factory.mktemp("signing") / "signing.key"
    path.write_text(secrets.token_hex(32))
    path.chmod(0o600)
    os.environ[KEY_ENV] = str(path)
    return path


@pytest.fixture(scope="session")
def xquad():
    return load_corpus("xquad-r")


@pytest.fixture(scope="session")
def mlqa_r_dir() -> Path:
    """The real MLQA-R files: `$HYBRID_SWEEP_MLQA_R_DIR`, else the developers' copy in ../shared/data/mlqa-r
    (CC BY-NC 4.0: never copied into the project). Skipped, with the way to provide it, where neither is."""
    from hybrid.data.sources import MLQA_R_ENV

    folder = Path(os.environ.get(MLQA_R_ENV) or Path(__file__).resolve().parents[2] / "shared" / "data" / "mlqa-r")
    if not (folder / "en.json").is_file():
        pytest.skip(f"no MLQA-R at {folder}: point {MLQA_R_ENV} at a copy of the lareqa repository's mlqa-r/")
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random BERT saved like a checkpoint export, trained vocabulary from XQuAD-R en/de/es."""
    from hybrid.tiny import save_tiny_encoder

    return save_tiny_encoder(tmp_path_factory.mktemp("tiny") / "encoder")


@pytest.fixture(scope="session")
def finished_tiny_sweep(tmp_path_factory, tiny_model_dir):
    """A tiny sweep (3 searched trials + 1 more seed, a merge of the references) run once to its end through
    the CLI, for the tests that only read what it leaves: (its folder, the finished command)."""
    from types import SimpleNamespace

    from support import driver_env, sweep_command, tiny_sweep_config

    folder = tmp_path_factory.mktemp("finished")
    config = tiny_sweep_config(folder, tiny_model_dir, "tiny", sweep={"merge_references": [0.5]})
    done = subprocess.run(
        sweep_command(config), cwd=folder, env=driver_env(), capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return SimpleNamespace(folder=folder, done=done)


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray per test module (start-up ~5 s), shut down after it: the sweep tests start their own
    Ray, and a second instance on the machine stops Ray Train's placement-group cleaner from finding its
    cluster (it then leaks a stopped trial's workers)."""
    import ray

    from trainers.train import WORKER_ENV

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": WORKER_ENV})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One moto_server (127.0.0.1) for the session: its bucket holds every S3 test's and the record stack's
    prefixes. The dummy AWS credentials pyarrow needs are in this process's environment while it runs."""
    from cluster_harness import AWS_ENV, S3Server, available

    if available() is not None and "moto_server" in available():
        pytest.skip(available())
    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    server = S3Server(tmp_path_factory.mktemp("moto") / "moto.log", os.environ.copy())
    yield server
    server.close()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def s3_bucket(s3_server) -> str:
    """An S3 location on the session's moto_server: its URI with endpoint options (`S3Server.uri`)."""
    return s3_server.uri("storage-test")


@pytest.fixture(scope="session")
def record_stack(s3_server):
    """The record's stack, started once for every test that needs it (`tracking_server.RecordStack`):
    PostgreSQL with databases mlflow and optuna, `mlflow server` with basic auth, artifacts in the session's
    bucket; stopped by PID / process group at the end."""
    from tracking_server import MlflowServer, Postgres, RecordStack, require_postgres

    require_postgres()
    with Postgres() as pg:
        pg.create_database("optuna")
        with MlflowServer(pg, s3_server, prefix="mlflow-artifacts", auth=True) as server:
            yield RecordStack(s3_server, pg, server)
