"""Shared fixtures: the packaged XQuAD-R corpus (loaded once), small synthetic training pairs, a tiny
encoder, a per-module local Ray; and the headless-Chromium check of an HTML report."""

import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from hybrid.data import TrainingPair, load_corpus


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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random BERT saved like a checkpoint export, trained vocabulary from XQuAD-R en/de/es."""
    from hybrid.data import load_corpus

    from tiny_encoder import tiny_encoder

    corpus = load_corpus("xquad-r", languages=("en", "de", "es"))
    texts = [q.text for qs in corpus.questions.values() for q in qs]
    texts += [c.sentence for cs in corpus.candidates.values() for c in cs]
    path = tmp_path_factory.mktemp("tiny") / "encoder"
    tiny_encoder(texts, hidden=32, layers=2).save(path)
    return path


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
def s3_bucket(tmp_path_factory):
    """An S3 bucket on moto_server (127.0.0.1): its URI with endpoint options (`S3Server.uri`), and the
    dummy AWS credentials pyarrow needs in this process's environment."""
    import os

    from cluster_harness import AWS_ENV, S3Server, available

    if available() is not None and "moto_server" in available():
        pytest.skip(available())
    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    server = S3Server(tmp_path_factory.mktemp("moto") / "moto.log", os.environ.copy())
    yield server.uri("storage-test")
    server.close()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def chromium(url: str, shot: Path, budget_ms: int = 10000, height: int = 4000) -> str:
    """Open `url` in headless Chromium (Debian's, which CI installs): the DOM once scripts ran for
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
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=180)
    subprocess.run(
        [*flags, f"--screenshot={shot}", f"--window-size=1400,{height}", url], capture_output=True, timeout=180
    )
    assert shot.exists() and shot.stat().st_size > 10_000, dom.stderr[-2000:]
    return dom.stdout


def render_in_chromium(report: Path, tmp_path: Path) -> Path:
    """Open an HTML report in headless Chromium: assert that the page's own check saw every image load,
    and take a screenshot (returned)."""
    shot = tmp_path / "report.png"
    assert 'data-images-ok="true"' in chromium(report.as_uri(), shot)
    return shot
