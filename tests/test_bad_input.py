"""Bad input fails before Ray starts, with one message that names the key, the value and what is accepted:
a table of config values, `--set` strings and YAML shapes, and the CLI's one-line error (exit status 2)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sweeps.config import load_sweep_setup

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "configs" / "default.yaml"

BAD_OVERRIDES = [  # (--set strings, message)
    ("method.temperature=.nan", r"method.temperature: NaN is not a setting"),
    ("method.lang_temperature=.nan", r"method.lang_temperature: NaN"),
    ("optim.lr=.nan", r"optim.lr: NaN"),
    ("optim.weight_decay=.nan", r"optim.weight_decay: NaN"),
    ("trainer.cpus_per_worker=.nan", r"trainer.cpus_per_worker: NaN"),
    ("sweep.proxy_cpus=.nan", r"sweep.proxy_cpus: NaN"),
    ("sweep.objectives=[]", r"sweep.objectives is empty: name at least one metric"),
    ("sweep.search.mono_ratio=[0.5]", r"sweep.search.mono_ratio: expected a list of 2 values, got \[0.5\]"),
    ("sweep.search.temperature=[0.01, 0.1, 0.2]", r"sweep.search.temperature: expected a list of 2 values"),
    ("sweep.search.num_train_languages=[2.5]", r"sweep.search.num_train_languages\[0\]: expected int, got 2.5"),
    ("sweep.grace_period=0", r"sweep.grace_period must be >= 1 checkpoint, got 0"),
    ("sweep.trial_cpus=0", r"sweep.trial_cpus must be > 0"),
    ("sweep.max_concurrent=0", r"sweep.max_concurrent >= 1"),
    ("sweep.scale_up_timeout_s=0", r"sweep.scale_up_timeout_s must be > 0"),
    ("sweep.trials=two", r"sweep.trials: expected int, got 'two'"),
    ("sweep.name=a'b", r"sweep.name=\"a'b\": use letters, digits"),
    ("sweep.name=a/b", r"sweep.name='a/b': use letters, digits"),
    ("sweep.name=..", r"sweep.name='..': use letters, digits"),
    ("sweep.trial_resource=a b", r"sweep.trial_resource='a b': a Ray resource name"),
    ("trainer.keep_checkpoints=0", r"trainer.keep_checkpoints must be null \(keep all\) or >= 1, got 0"),
    ("trainer.grad_clip=0", r"trainer.grad_clip must be a finite norm > 0, got 0.0"),
    ("trainer.grad_clip=.inf", r"trainer.grad_clip must be a finite norm > 0, got inf"),
    ("trainer.zero_stage=4", r"trainer.zero_stage must be 0, 1, 2 or 3, got 4"),
    ("trainer.strategy=fsdp", r"trainer.strategy must be one of \('deepspeed', 'ddp'\), got 'fsdp'"),
    ("trainer.precision=fp16", r"trainer.precision must be one of"),
    ("trainer.val_batches=0", r"trainer.val_batches must be >= 1"),
    ("model.max_length=4", r"model.max_length must be between 8 and 8192 tokens .*, got 4"),
    ("model.max_length=100000000", r"model.max_length must be between 8 and 8192 tokens .*, got 100000000"),
    ("method.temperature=.inf", r"method.temperature \(tau\) must be a finite number > 0, e.g. 0.05, got inf"),
    ("optim.lr=.inf", r"optim needs a finite lr > 0"),
    ("optim.weight_decay=.inf", r"optim needs a finite lr > 0, .* and a finite weight_decay >= 0"),
    # A knob's values are checked by its field's own config class: the same rule, named by the knob's key.
    (
        "sweep.search.temperature=[0.01,.inf]",
        r"sweep.search.temperature=\[0.01, inf\]: inf is refused: method.temperature \(tau\) must be a finite number > 0",
    ),
    ("sweep.search.lr=[1e-5,.inf]", r"sweep.search.lr=\[1e-05, inf\]: inf is refused: optim needs a finite lr > 0"),
    (
        "sweep.search.num_train_languages=[1, 3]",
        r"sweep.search.num_train_languages=\[1, 3\]: 1 is refused: data.train_languages needs >= 2 languages",
    ),
    ("model.pooling=max", r"model.pooling must be one of \('mean', 'cls'\), got 'max'"),
    ("model.name=/no/such/model", r"model.name='/no/such/model': no such folder"),
    ("method.mono_ratio=1.5", r"method.mono_ratio \(alpha\) must be in \[0, 1\], got 1.5"),
    ("method.batch_size=1", r"method.batch_size must be >= 2"),
    ("method.unknown=1", r"method: unknown key\(s\) \['unknown'\]; valid keys: mono_ratio"),
    ("optim.steps=0", r"optim needs a finite lr > 0, steps >= 1"),
    ("data.train_languages=[en]", r"data.train_languages needs >= 2 languages"),
    ("eval.dataset=nope", r"eval.dataset must be one of \('xquad-r', 'mlqa-r', 'miracl'\)"),
    ("eval.languages=[]", r"eval.languages must be null .* or a non-empty list"),
    ("method.batch_size.x=1", r"override 'method.batch_size.x=1': method.batch_size is a value \(16\), not a section"),
    ("method.seed.x=1", r"method.seed: expected int, got \{'x': 1\}"),
    ("method.mono_ratio", r"override 'method.mono_ratio': use section.key=value"),
    ("method.mono_ratio=[1,", r"override 'method.mono_ratio=\[1,': the value is not valid YAML"),
    (
        "sweep.tracking_uri=https://admin:s3cret@mlflow.example.org",
        r"sweep.tracking_uri='https://\*\*\*@mlflow\.example\."
        r"org' carries a password: remove it and set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD",
    ),
    (
        "sweep.study_storage=postgresql+psycopg://sweeps:s3cret@db:5432/optuna",
        r"sweep.study_storage='postgresql\+psycopg://\*\*\*@db:5432/optuna' carries a password: .* set PGPASSWORD",
    ),
    (  # issue 33: a password in the query string, keys in a bucket's URI
        "sweep.study_storage=postgresql+psycopg://sweeps@db/optuna?password=s3cret",
        r"sweep.study_storage='postgresql\+psycopg://\*\*\*@db/optuna\?password=\*\*\*' carries a password: .* PGPASSWORD",
    ),
    (
        "sweep.storage_path=s3://AKIAEXAMPLE:s3cret@bucket/sweeps",
        r"sweep.storage_path='s3://\*\*\*@bucket/sweeps' carries credentials: .* AWS_ACCESS_KEY_ID",
    ),
    (
        "sweep.tracking_uri=http://127.0.0.1:5000;sweep.artifact_location=mlruns",
        r"sweep.artifact_location='mlruns' is a folder on this machine, behind the tracking server http://127.0.0.1:5000",
    ),
    ("sweep.lease_stale_after=1", r"sweep.lease_stale_after=1.*at least 2 heartbeats"),
]


@pytest.mark.parametrize("override, message", BAD_OVERRIDES, ids=[o for o, _ in BAD_OVERRIDES])
def test_a_bad_value_names_the_key_and_the_fix(override, message):
    with pytest.raises(ValueError, match=message):
        load_sweep_setup(DEFAULT, override.split(";")).resolved()


@pytest.mark.parametrize(
    "text, message",
    [
        ("- data\n- model\n", r"the top level must be a mapping of sections .* got a list"),
        ("data: [\n", r"is not valid YAML"),
        ("method: 3\n", r"method: expected a mapping, got 3"),
        ("sweep:\n  search: [0, 1]\n", r"sweep.search: expected a mapping"),
    ],
)
def test_a_bad_yaml_shape_names_the_problem(tmp_path, text, message):
    path = tmp_path / "preset.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_sweep_setup(path)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "optim.steps=0"], "error: optim needs a finite lr > 0, steps >= 1"),
        (["--config", "no-such.yaml"], "error: config file no-such.yaml not found"),
        (["--name", "a/b"], "error: sweep.name='a/b': use letters, digits"),
    ],
)
def test_the_cli_prints_one_line_and_exits_2_before_ray_starts(args, message):
    done = subprocess.run(
        [sys.executable, str(ROOT / "sweeps/ratio_search.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().startswith(message) and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Ray" not in done.stdout + done.stderr  # nothing started


def test_a_finished_sweeps_refusal_imports_nothing_heavy(tmp_path):
    """The same command again after a sweep finished: refused from what storage holds, before torch,
    DeepSpeed, Ray Train, Tune or MLflow are imported (`-X importtime` lists every module loaded)."""
    (tmp_path / "done" / "search").mkdir(parents=True)
    (tmp_path / "done" / "search" / "tuner.pkl").write_bytes(b"")  # what Tuner.can_restore looks for
    (tmp_path / "done" / "finished.txt").write_text("2 trials in 1.0 min")
    done = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            str(ROOT / "sweeps/ratio_search.py"),
            "--name",
            "done",
            "--set",
            f"sweep.storage_path={tmp_path}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    said = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    assert done.returncode == 2 and said == [
        "error: sweep 'done' finished: 2 trials in 1.0 min. Start another with "
        "--name NEW, or add trials with --resume --set sweep.trials=N."
    ], said
    loaded = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert not {
        m
        for m in loaded
        if m.split(".")[0] in ("torch", "deepspeed", "mlflow", "transformers")
        or m.startswith(("ray.train", "ray.tune"))
    }


@pytest.mark.parametrize("after", ["argparse", "sweeps.lease", "trainers.train"])
def test_ctrl_c_while_the_command_starts_is_a_clean_stop(tmp_path, after):
    """SIGINT once the command has imported `after` (its own imports, its checks, the driver's imports
    once the lease is held): the stop's lines and exit 130, never a KeyboardInterrupt traceback."""
    import signal
    import threading

    command = [
        sys.executable,
        "-X",
        "importtime",
        str(ROOT / "sweeps/ratio_search.py"),
        "--name",
        "early",
        "--set",
        f"sweep.storage_path={tmp_path}",
        "--set",
        f"sweep.tracking_uri=sqlite:///{tmp_path}/m.db",
    ]
    driver = subprocess.Popen(
        command,
        cwd=tmp_path,
        env={**os.environ, "RAY_ADDRESS": "local"},
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    said: list[str] = []
    seen = threading.Event()

    def read() -> None:
        for line in driver.stderr:
            if line.startswith("import time:"):
                if line.split("|")[-1].strip() == after:
                    seen.set()
            else:
                said.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert seen.wait(120), "".join(said)[-3000:]
        driver.send_signal(signal.SIGINT)
        assert driver.wait(timeout=120) == 130, "".join(said)[-3000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    reader.join(timeout=10)
    text = "".join(said)
    assert "Traceback" not in text and "Sweep interrupted in its start-up phase" in text, text[-3000:]
    assert re.search(r"Continue with:\n  python sweeps/ratio_search.py .* --resume\n$", text), text[-3000:]
    assert not (tmp_path / "early" / "driver.lease").exists()  # released


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "eval.ece_bins=0"], "error: eval.ece_bins must be >= 1, got 0."),
        (["--set", "eval.dataset=squad"], "error: eval.dataset must be one of"),
        (["--set", "evalbins"], "error: override 'evalbins': use section.key=value"),
    ],
)
def test_the_evaluation_cli_takes_set_and_names_a_bad_value_in_one_line(args, message):
    done = subprocess.run(
        [sys.executable, "-m", "evaluation", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().startswith(message) and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_credentials_in_uris_are_masked_wherever_they_are_shown():
    from sweeps.driver import flat_params
    from sweeps.uris import redact

    uri = "https://alice:s3cr3t@mlflow.example.org/api"
    assert redact(uri) == "https://***@mlflow.example.org/api"
    assert redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    assert redact("postgresql+psycopg://u@db/optuna?password=x&sslmode=require") == (
        "postgresql+psycopg://***@db/optuna?password=***&sslmode=require"
    )
    assert redact("s3://bucket/p?endpoint_override=h&Token=abc") == "s3://bucket/p?endpoint_override=h&Token=***"
    assert flat_params({"sweep": {"tracking_uri": uri}}) == {"sweep.tracking_uri": "https://***@mlflow.example.org/api"}


def test_the_record_goes_where_the_tracking_store_is(tmp_path, monkeypatch):
    """The embedded default keeps mlruns/ and optuna.db beside its SQLite store; a tracking server gets no
    forced artifact location (it stores artifacts itself), and a study file beside it is warned about."""
    from sweeps.uris import record_warning

    monkeypatch.chdir(tmp_path)
    local = load_sweep_setup(DEFAULT).resolved()
    assert (local.sweep.artifact_location, local.sweep.study_storage) == (
        str(tmp_path / "mlruns"),
        f"sqlite:///{tmp_path}/optuna.db",
    )
    assert record_warning(local.sweep.tracking_uri, local.sweep.study_storage) is None
    served = load_sweep_setup(DEFAULT, ["sweep.tracking_uri=http://127.0.0.1:5000"]).resolved()
    assert served.sweep.artifact_location == ""
    assert record_warning(served.sweep.tracking_uri, served.sweep.study_storage) == (
        f"warning: the Optuna study is in sqlite:///{tmp_path}/optuna.db, on this machine: it will not survive the "
        "head. Set sweep.study_storage (or --study-storage) to postgresql+psycopg://USER@HOST:PORT/DB."
    )
    study = load_sweep_setup(
        DEFAULT,
        [
            "sweep.tracking_uri=http://127.0.0.1:5000",
            "sweep.artifact_location=s3://b/a",
            "sweep.study_storage=postgresql+psycopg://sweeps@db:5432/optuna",
        ],
    ).resolved()
    assert study.sweep.artifact_location == "s3://b/a"
    assert record_warning(study.sweep.tracking_uri, study.sweep.study_storage) is None


def test_an_unusable_ray_address_or_storage_is_one_line_before_ray_starts(tmp_path, s3_bucket):
    """An empty RAY_ADDRESS, a head that does not answer (given, or the address file a stopped `ray start`
    left), storage whose endpoint is down or whose bucket does not exist: one line, exit 2, no traceback,
    within seconds (Ray's own retries take minutes)."""
    from cluster_harness import AWS_ENV, free_port

    stale = tmp_path / "ray-tmp" / "ray"
    stale.mkdir(parents=True)
    dead = f"127.0.0.1:{free_port()}"
    (stale / "ray_current_cluster").write_text(dead)
    endpoint = s3_bucket.split("?", 1)[1]
    cases = [
        ({"RAY_ADDRESS": ""}, [], "error: RAY_ADDRESS is set but empty: unset it to start a local Ray"),
        ({"RAY_ADDRESS": dead}, [], f"error: RAY_ADDRESS={dead} does not answer within 5 s: check the address"),
        (
            {"RAY_TMPDIR": str(tmp_path / "ray-tmp")},
            [],
            f"error: the Ray cluster recorded on this machine by `ray start` ({dead}) does not answer within 5 s: start "
            "it again",
        ),
        (
            AWS_ENV,
            ["--set", f"sweep.storage_path=s3://b/p?endpoint_override={dead}&scheme=http"],
            "error: sweep.storage_path='s3://b/p?endpoint_override=127.0.0.1:",
        ),
        (
            AWS_ENV,
            ["--set", f"sweep.storage_path=s3://no-such-bucket/p?{endpoint}"],
            "error: sweep.storage_path='s3://no-such-bucket/p?",
        ),
    ]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    for env, args, message in cases:
        done = subprocess.run(
            [sys.executable, str(ROOT / "sweeps/ratio_search.py"), *args],
            cwd=tmp_path,
            env=base | env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 2 and done.stderr.startswith(message), (env, done.stderr[-2000:])
        assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
        assert "Ray workers' and tasks' output" not in done.stdout  # Ray never started


def test_resume_of_a_sweep_without_its_stored_settings_is_refused(tmp_path):
    """Settings are stored before any phase starts, so phases without them are a sweep of another version
    (or the file was deleted): nothing proves `--resume` would continue the same sweep."""
    from sweeps import state

    setup = load_sweep_setup(DEFAULT, [f"sweep.storage_path={tmp_path}", "sweep.name=old"]).resolved()
    state.check_unchanged(setup)  # not started: --resume starts it
    (tmp_path / "old" / "search").mkdir(parents=True)
    (tmp_path / "old" / "search" / "tuner.pkl").write_bytes(b"")  # what Tune.can_restore looks for
    with pytest.raises(
        ValueError,
        match=rf"--resume of sweep 'old': its phases are in {tmp_path}/old but not the "
        r"settings it started with \(sweep_config.json\)",
    ):
        state.check_unchanged(setup)
