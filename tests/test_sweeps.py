"""The sweep: config validation, search construction, statistics, and tiny end-to-end sweeps through
the real CLI (Ray Tune + Optuna + Ray Train + evaluation + MLflow), including a killed driver."""

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from sweeps.config import load_sweep_setup
from sweeps.search import param_space, reference_points
from sweeps.stats import mean_ci, mean_pm, seed_summary
from sweeps.trial import config_key, trial_run_config

from conftest import chromium, render_in_chromium

ROOT = Path(__file__).resolve().parents[1]
PROXY_MAP = "eval/xquad-r/heldout-proxy20/multi/map"  # evaluation.tracking's name for the proxy mAP


def test_mean_ci_matches_the_t_interval():
    x = [0.61, 0.64, 0.60, 0.66]
    mean, half = mean_ci(x)
    lo, hi = stats.t.interval(0.95, df=3, loc=np.mean(x), scale=stats.sem(x))
    assert mean == pytest.approx(np.mean(x)) and half == pytest.approx((hi - lo) / 2)
    assert math.isnan(mean_ci([0.5])[1])
    assert mean_pm(0.5, 0.0123) == "0.500 ± 0.012" and mean_pm(-0.02, 0.01, signed=True) == "-0.020 ± 0.010"
    assert mean_pm(0.5, math.nan, 4, signed=True) == "+0.5000"  # one seed: the mean alone, no "± nan"


def test_a_configurations_summary_leaves_out_runs_without_a_value():
    runs = pd.DataFrame({"mono_ratio": [0.5, 0.5, 0.5], "seed": [0, 1, 2], "multi/map": [0.6, 0.64, math.nan]})
    row = seed_summary(runs, ["mono_ratio", "absent"], ["multi/map", "cross/map"], " ±")
    assert row["seeds"] == 3 and row["mono_ratio"] == 0.5 and "absent" not in row
    assert row["multi/map"] == pytest.approx(0.62) and row["multi/map ±"] == pytest.approx(mean_ci([0.6, 0.64])[1])
    assert math.isnan(row["cross/map"]) and math.isnan(row["cross/map ±"])  # no run has it


def test_references_alpha_zero_and_one_are_enqueued():
    setup = load_sweep_setup(ROOT / "configs/default.yaml")
    points = reference_points(setup.sweep, setup.run)
    assert sorted(p["mono_ratio"] for p in points) == [0.0, 1.0]
    space = param_space(setup.sweep, setup.run)
    assert set(points[0]) <= set(space)


def test_the_cpu_study_enqueues_its_alpha_grid_and_language_arm_after_the_references():
    """Every point completed with the references' values (tau 0.05, all 9 languages), in the order given,
    each in the search space; a point equal to a reference runs once."""
    from sweeps.search import enqueued_points

    setup = load_sweep_setup(ROOT / "configs/cpu-study.yaml")
    points = enqueued_points(setup.sweep, setup.run)
    assert [(p["mono_ratio"], p["num_train_languages"]) for p in points] == [
        (0.0, 9),
        (1.0, 9),
        (0.25, 9),
        (0.5, 9),
        (0.75, 9),
        (0.5, 2),
        (0.5, 5),
    ]
    assert all(p["temperature"] == 0.05 and set(p) <= set(param_space(setup.sweep, setup.run)) for p in points)
    assert setup.sweep.reseed_references and setup.sweep.final_eval_all
    assert not {"el", "vi"} & set(setup.run.data.train_languages)  # the zero-shot languages stay unseen
    again = load_sweep_setup(ROOT / "configs/cpu-study.yaml", ["sweep.search.points=[{mono_ratio: 1.0}]"])
    assert len(enqueued_points(again.sweep, again.run)) == 2


def test_reseeding_covers_the_references_when_asked():
    """`reseed_references`: alpha = 0 and 1 join the top-k configurations (once each, even when among them)."""
    import pandas as pd

    from sweeps.ranking import reseeded

    setup = load_sweep_setup(ROOT / "configs/cpu-study.yaml", ["sweep.top_k=1"])
    steps = setup.run.optim.steps
    table = pd.DataFrame(
        [
            {
                "trial": t,
                "mono_ratio": a,
                "config_key": t.upper(),
                "seed": 0,
                "step": steps,
                "multi/map": m,
                "checkpoint_path": f"/c/{t}",
            }
            for t, a, m in [("a", 0.0, 0.7), ("b", 1.0, 0.5), ("c", 0.4, 0.6), ("d", 0.6, 0.55)]
        ]
    )
    assert list(reseeded(table, setup)["config_key"]) == ["A", "B"]  # A is the best and a reference
    table.loc[2, "multi/map"] = 0.9
    assert list(reseeded(table, setup)["config_key"]) == ["C", "A", "B"]
    plain = load_sweep_setup(ROOT / "configs/default.yaml", ["sweep.top_k=1"])
    assert list(reseeded(table, plain)["config_key"]) == ["C"]
    table["temperature"], table["num_train_languages"] = 0.05, 9  # D is the study's point {mono_ratio: 0.6}
    marked = load_sweep_setup(
        ROOT / "configs/default.yaml",
        [
            "sweep.top_k=1",
            "sweep.search.num_train_languages=[2, 9]",
            "sweep.search.points=[{mono_ratio: 0.6, reseed: true}]",
        ],
    )
    assert list(reseeded(table, marked)["config_key"]) == ["C", "D"]


def test_points_of_a_text_knob_are_reseeded():
    """The long study's schedule arm: points that differ by a text knob (`alpha_schedule`) are told apart
    when their seeds are added (a text value was once compared as a number, which stopped that study
    after its search)."""
    import pandas as pd

    from sweeps.ranking import reseeded

    setup = load_sweep_setup(ROOT / "configs/cpu-study-long.yaml")
    steps = setup.run.optim.steps
    rows = [
        ("r0", 0.0, "constant", 0.68),
        ("r1", 1.0, "constant", 0.52),
        ("h", 0.5, "constant", 0.679),
        ("m", 0.5, "mono_first", 0.656),
        ("c", 0.5, "cross_first", 0.674),
    ]
    table = pd.DataFrame(
        [
            {
                "trial": t,
                "mono_ratio": a,
                "temperature": 0.01,
                "lang_temperature": math.inf,
                "alpha_schedule": s,
                "config_key": t.upper(),
                "seed": 0,
                "step": steps,
                "multi/map": m,
                "checkpoint_path": f"/c/{t}",
            }
            for t, a, s, m in rows
        ]
    )
    assert sorted(reseeded(table, setup)["config_key"]) == ["C", "H", "M", "R0", "R1"]


def test_resume_may_mark_points_for_more_seeds_but_not_change_them():
    """A point's `reseed` acts after the search: `--resume` may turn it on; a changed knob is refused."""
    study = ROOT / "configs/cpu-study.yaml"
    started = json.loads(json.dumps(load_sweep_setup(study, ["sweep.search.points=[{mono_ratio: 0.5}]"]).settings()))
    assert (
        load_sweep_setup(study, ["sweep.search.points=[{mono_ratio: 0.5, reseed: true}]"]).changed_since(started) == []
    )
    moved = load_sweep_setup(study, ["sweep.search.points=[{mono_ratio: 0.6, reseed: true}]"])
    assert moved.changed_since(started) == ["sweep.search.points"]


def test_trial_config_applies_the_searched_values():
    setup = load_sweep_setup(ROOT / "configs/default.yaml")
    params = {"mono_ratio": 0.25, "temperature": 0.02, "lang_temperature": 2.0, "seed": 4, "num_train_languages": 3}
    run = trial_run_config(setup.run, params)
    assert (run.method.mono_ratio, run.method.temperature, run.method.seed) == (0.25, 0.02, 4)
    assert run.data.train_languages == setup.run.data.train_languages[:3]
    assert config_key(params) == config_key(params | {"seed": 9}) != config_key(params | {"mono_ratio": 0.3})
    as_numpy = {k: np.float64(v) if isinstance(v, float) else np.int64(v) for k, v in params.items()}
    assert config_key(as_numpy) == config_key(params)  # read back from a DataFrame: the same configuration


def test_progress_lines_estimate_the_time_left():
    """From the pace so far (a trial's since its step-0 report: its start-up is not training speed)."""
    from sweeps.progress import pace_left

    assert pace_left(120.0, 8, 16) == ", about 2.0 min left"  # 15 s a step, 8 steps to go
    assert pace_left(30.0, 12, 16) == ", about 10 s left"
    assert pace_left(200.0, 16, 16) == "" and pace_left(0.0, 8, 16) == ""  # done; no pace known


class FakeGrid(list):
    """What `phases.all_ended` reads of a Tune ResultGrid: results (error, metrics) and status counts."""

    def __init__(self, results, terminated: int, errors: int):
        super().__init__(results)
        self.num_terminated, self.num_errors = terminated, errors


def test_the_estimate_counts_the_sweeps_work_and_scales_with_the_measured_speed():
    """The default's plan (3 searched + 1 more seed; one checkpoint each; the proxy and full evaluation's
    texts; base + 2 references + the best at 2 seeds), and an estimate that doubles its measured parts on a
    machine half as fast."""
    from sweeps import estimate
    from trainers.calibrate import Speed

    setup = load_sweep_setup(ROOT / "configs/default.yaml").resolved()
    assert estimate.plan(setup) == estimate.Plan(
        trials=4, checkpoints=1, proxy_texts=300 + 893, final_models=5, final_texts=3069 + 3222
    )
    fast = estimate.estimate(setup, Speed(import_s=5, load_s=4, step_s=2.5, encode_s=0.03, cpu="x"), cpus=2)
    slow = estimate.estimate(setup, Speed(import_s=10, load_s=8, step_s=5, encode_s=0.06, cpu="x"), cpus=2)
    assert list(fast.parts) == ["start-up", "training", "proxy evaluation", "final evaluation"]
    assert fast.total_s == pytest.approx(sum(fast.parts.values()))
    for part in ("training", "final evaluation"):  # no fixed cost in these but per-item ones
        assert 1.8 < slow.parts[part] / fast.parts[part] <= 2
    assert fast.parts["final evaluation"] == pytest.approx(
        5 * (6291 * 0.03 * estimate.EVAL_TEXT + estimate.PER_MODEL_S) / 2
    )


def test_a_trial_stopped_before_it_started_is_not_an_ended_trial():
    from types import SimpleNamespace as R

    from sweeps.phases import all_ended

    done, failed, never = (
        R(error=None, metrics={"step": 6}),
        R(error=ValueError("nan"), metrics={}),
        R(error=None, metrics={}),
    )
    assert all_ended(FakeGrid([done, done, failed], terminated=2, errors=1), trials=3)
    # Ctrl-C while the third trial was pending: Tune marks it TERMINATED, yet it never ran.
    assert not all_ended(FakeGrid([done, done, never], terminated=3, errors=0), trials=3)
    assert not all_ended(FakeGrid([done, done], terminated=2, errors=0), trials=3)  # not even created


def test_the_startup_split_adds_up_to_the_startup():
    from sweeps.trial import startup_split

    marks = {
        "process": 103.0,
        "entry": 110.0,
        "data": 111.0,
        "model": 113.0,
        "engine": 116.0,
        "restore": 116.5,
        "validation": 119.0,
    }
    split = startup_split(100.0, marks, 120.0)
    assert split["trial/startup/workers_s"] == 3.0 and split["trial/startup/imports_s"] == 7.0
    assert split["trial/startup/validation_s"] == 2.5 and split["trial/startup/report_s"] == 1.0
    assert sum(split.values()) == pytest.approx(20.0)
    assert startup_split(100.0, {}, 120.0) == {}  # a resumed run that reports no marks


def test_ranking_compares_only_completed_trials():
    """A pruned trial (stopped at step 8 of 16) with the best proxy score is not the best configuration:
    its score is from an earlier step and it has no final checkpoint to evaluate."""
    import pandas as pd

    from sweeps.ranking import completed, ranked

    setup = load_sweep_setup(ROOT / "configs/default.yaml")
    steps = setup.run.optim.steps
    table = pd.DataFrame(
        [
            {
                "trial": "a",
                "mono_ratio": 0.0,
                "config_key": "A",
                "seed": 0,
                "step": steps,
                "multi/map": 0.50,
                "checkpoint_path": "/c/a",
            },
            {
                "trial": "b",
                "mono_ratio": 1.0,
                "config_key": "B",
                "seed": 0,
                "step": steps,
                "multi/map": 0.60,
                "checkpoint_path": "/c/b",
            },
            {
                "trial": "b1",
                "mono_ratio": 1.0,
                "config_key": "B",
                "seed": 1,
                "step": steps,
                "multi/map": 0.64,
                "checkpoint_path": "/c/b1",
            },
            {
                "trial": "c",
                "mono_ratio": 0.4,
                "config_key": "C",
                "seed": 0,
                "step": steps // 2,
                "multi/map": 0.90,
                "checkpoint_path": "/c/c",
            },
        ]
    )
    assert list(completed(table, setup)["trial"]) == ["a", "b", "b1"]
    ranking = ranked(table, setup)
    assert list(ranking["config_key"]) == ["B", "A"] and list(ranking["seeds"]) == [2, 1]
    assert ranking.loc[0, "multi/map"] == pytest.approx(0.62)
    assert ranked(table[table["trial"] == "c"], setup).empty


@pytest.mark.parametrize(
    "override, message",
    [
        ("sweep.search.mono_ratio=[0.5, 1.5]", "mono_ratio"),
        ("sweep.search.temperature=[0, 0.1]", "temperature"),
        ("sweep.objectives=[multi/map, mono/map];sweep.scheduler=asha", "multi-objective sweeps cannot prune"),
        ("sweep.objectives=[pooled/map]", "setting"),
        ("sweep.trials=1", "references"),
        ("sweep.trials=3;sweep.search.points=[{mono_ratio: 0.5}, {mono_ratio: 0.25}]", "at least 4"),
        ("sweep.search.points=[{mono_ratio: 1.5}]", r"points\[0\].mono_ratio=1.5 lies outside"),
        ("sweep.search.points=[{num_train_languages: 3}]", "not one of sweep.search.num_train_languages"),
        ("sweep.search.points=[{}]", "is empty"),
        ("sweep.search.points=[{alpha: 0.5}]", "unknown key"),
        ("sweep.search.num_train_languages=[12]", "exceeds"),
        ("data.eval_languages=[en, xx]", "unknown language code 'xx'"),
        ("sweep.scheduler=hyperband", "scheduler"),
        ("sweep.merge_references=[0.5, 1]", r"merge_references=\[0.5, 1.0\]: 1.0 is not strictly between 0 and 1"),
        ("sweep.merge_references=[0.5];sweep.final_eval=false", "merge_references needs sweep.final_eval=true"),
        ("sweep.search.alpha_schedule=[constant, linear]", "'linear' is not one of constant, mono_first, cross_first"),
        ("method.alpha_schedule=linear", "method.alpha_schedule='linear' is not one of"),
    ],
)
def test_bad_sweeps_fail_before_ray_starts(override, message):
    with pytest.raises(ValueError, match=message):
        load_sweep_setup(ROOT / "configs/default.yaml", override.split(";"))


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
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
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
        env=env(),
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


def env() -> dict[str, str]:
    """RAY_ADDRESS=local: the sweep starts its own Ray (never joins one this pytest process started),
    so killing the driver's process group takes that Ray down with it. MLFLOW_TRACKING_URI left out: the
    sweep honours it, and `mlflow.set_tracking_uri` in an earlier test sets it in this process."""
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {
        "RAY_ADDRESS": "local",
        "PYTHONUNBUFFERED": "1",
    }


def assert_mlflow_ui(folder: Path, run, trial: str) -> None:
    """`mlflow ui` on 127.0.0.1 over the sweep's store, pages opened in headless Chromium: the experiment on
    its training runs with their dataset, a trial's run with its inputs and registered model, the
    registered model with alias best. Screenshots stay in `folder/mlflow-ui/`."""
    shots = folder / "mlflow-ui"
    shots.mkdir(exist_ok=True)
    exp = run.info.experiment_id
    with mlflow_ui(f"sqlite:///{folder}/mlflow.db", folder / "mlflow-ui.log") as ui:
        page = chromium(f"{ui}/#/experiments/{exp}/runs", shots / "experiment.png", 20000, 1000)
        assert "Training runs" in page and "<strong>6</strong> matching runs" in page, page[-3000:]
        assert "xquad-r/heldout (" in page  # the parent's dataset column
        page = chromium(f"{ui}/#/experiments/{exp}/runs/{run.info.run_id}", shots / "trial.png", 20000, 1400)
        assert run.info.run_name in page and "Registered models" in page, page[-3000:]
        assert "xquad-r/train/en+de" in page and "Training" in page  # its training set, an input
        page = chromium(f"{ui}/#/models/tiny", shots / "model.png", 20000, 800)
        assert "Version 1" in page and "@&nbsp;best" in page and trial in page, page[-3000:]  # tags name the trial


@pytest.mark.slow
def test_tiny_sweep_end_to_end(tmp_path, tiny_model_dir):
    config = tiny_sweep_config(tmp_path, tiny_model_dir, "tiny", sweep={"merge_references": [0.5]})
    done = subprocess.run(sweep_command(config), cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Configurations ranked by multi/map" in done.stdout and "mlflow ui --backend-store-uri" in done.stdout
    # The references merged (w = 0.5 of alpha = 1; seed 0, the one both have), ranked beside the trials.
    assert re.search(
        r"^\d\d:\d\d:\d\d merging the references: 1 merges \(w = 0.5 of alpha = 1; seeds 0\)$", done.stdout, re.M
    ), done.stdout[-3000:]
    ranked = done.stdout[done.stdout.index("Configurations ranked by") :]
    assert re.search(r"^\s*\d+\s+merge w=0.5\s+1 ", ranked, re.M), ranked[:2000]
    assert "+ 1 merges)" in done.stdout
    # The estimate from this machine's measured speed, before the search, and beside the actual at the end.
    estimated = re.search(
        r"^\d\d:\d\d:\d\d this machine \((.+)\): a training step [\d.]+ s per worker, \d+ ms per "
        r"evaluated text; the sweep should take about (\d+) min \(start-up [\d.]+, training [\d.]+, "
        r"proxy evaluation [\d.]+, final evaluation [\d.]+ min\)$",
        done.stdout,
        re.M,
    )
    assert estimated and done.stdout.index(estimated.group(0)) < done.stdout.index("== search"), done.stdout[:3000]
    assert re.search(
        r"^Sweep 'tiny': 4 trials in [\d.]+ min \(trials [\d.]+, final evaluation [\d.]+\); estimated "
        rf"[\d.]+ \([\d.]+ \+ [\d.]+\) on {re.escape(estimated.group(1))}: [+-]\d+%\. Compare",
        done.stdout,
        re.M,
    ), done.stdout[-2000:]
    # The quiet terminal: phase headers and a line per trial result, not Tune's tables or workers' chatter;
    # the workers' output is in the Ray log folder it names.
    assert len((done.stdout + done.stderr).splitlines()) < 200, done.stdout
    assert (
        len(
            re.findall(
                r"^\d\d:\d\d:\d\d trial \S+ \(alpha [\d.]+, tau [\d.]+, seed \d\): step 6/6, loss [\d.]+, "
                r"multi/map [\d.]+$",
                done.stdout,
                re.M,
            )
        )
        == 4
    )
    assert "== search: 3 trial(s) ==" in done.stdout and "Reporting training result" not in done.stdout
    assert " started now (a reference; " not in done.stdout  # 2 cores: no room for the final evaluation beside trials
    assert re.search(r"step 3/6, loss [\d.]+, multi/map [\d.]+, about \d+ s left$", done.stdout, re.M), done.stdout
    logs = Path(re.search(r"Ray workers' and tasks' output: (\S+) \(--verbose", done.stdout).group(1))
    assert any("Reporting training result" in p.read_text(errors="replace") for p in logs.glob("worker-*"))
    [saved] = (tmp_path / "sweeps" / "tiny" / "logs").iterdir()  # and in the sweep's storage: logs/<Ray session>
    assert saved.name == logs.parent.name
    assert any("Reporting training result" in p.read_text(errors="replace") for p in saved.glob("worker-*"))
    client, runs = mlflow_runs(tmp_path, "tiny")
    assert client.get_experiment_by_name("tiny").tags["mlflow.experimentKind"] == "custom_model_development"
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("sweep.role") == "trial"]
    assert len(parents) == 1 and len(children) == 4  # 3 searched + 1 extra seed of the best
    [merged] = [r for r in runs if r.data.tags.get("sweep.role") == "merge"]
    for r in runs:  # lineage: who ran it, from which commit of which entry point
        assert r.data.tags["mlflow.source.name"] == "sweeps/ratio_search.py" and r.data.tags["mlflow.user"]
        if (ROOT / ".git").exists():  # a git checkout (CI's clean clone is one)
            assert re.fullmatch(r"[0-9a-f]{40}", r.data.tags["mlflow.source.git.commit"])
    resolved = yaml.safe_load(
        Path(client.download_artifacts(parents[0].info.run_id, "config/resolved.yaml", str(tmp_path))).read_text()
    )
    assert (
        resolved["sweep"]["name"] == "tiny"
        and resolved["optim"]["steps"] == 6
        and resolved["method"]["batch_size"] == 8
    )
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    alphas = sorted(float(c.data.params["mono_ratio"]) for c in children)
    assert alphas[0] == 0.0 and alphas[-1] == 1.0  # both references ran
    for child in children:  # evaluation metrics per checkpoint (steps 3 and 6), training metrics per step
        steps = [m.step for m in client.get_metric_history(child.info.run_id, PROXY_MAP)]
        assert sorted(steps) == [3, 6], steps
        assert client.get_metric_history(child.info.run_id, "train/loss")
    assert {
        "base/multi/map",
        "best/multi/map",
        "eval/xquad-r/heldout/multi/map",
        "sweep/estimate_s",
        "calibration/step_s",
        "calibration/encode_s",
    } <= set(parents[0].data.metrics)
    assert [r.info.status for r in runs] == ["FINISHED"] * 6  # closed, not left "running" in MLflow's UI
    # The merge: a run of its own under the parent, evaluated like a trial's final checkpoint (proxy and
    # full), its model naming both parents: their trials, runs and checkpoints.
    assert merged.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert merged.data.params["merge_weight"] == "0.5" and merged.data.params["config_key"] == "merge w=0.5"
    assert {PROXY_MAP, "eval/xquad-r/heldout/multi/map"} <= set(merged.data.metrics)
    by_alpha = {float(c.data.params["mono_ratio"]): c for c in children if c.data.params["seed"] == "0"}
    [model] = client.search_logged_models(
        [merged.info.experiment_id], filter_string=f"source_run_id = '{merged.info.run_id}'"
    )
    for alpha in (0, 1):
        parent = by_alpha[float(alpha)]
        assert model.tags[f"merge.alpha{alpha}.run_id"] == parent.info.run_id
        assert model.tags[f"merge.alpha{alpha}.trial"] == parent.data.tags["tune.trial_id"]
        assert model.tags[f"merge.alpha{alpha}.checkpoint"].endswith("checkpoint_000006/encoder")
    assert model.tags["merge.weight"] == "0.5" and model.params["path"].endswith("merges/merge-w0.5-s0")

    # The best configuration's encoder, registered as models:/tiny@best: it loads with MLflow's
    # sentence-transformers flavour and gives the checkpoint's embeddings; its export carries a model card.
    import mlflow

    from hybrid.model import load_encoder

    version = client.get_model_version_by_alias("tiny", "best")
    trial = version.tags["trial"]
    [child] = [c for c in children if c.data.tags["tune.trial_id"] == trial]
    assert version.run_id == child.info.run_id and float(version.tags["mono_ratio"]) == float(
        child.data.params["mono_ratio"]
    )
    # mean ± 95% half-width over the best configuration's seeds; with one seed, the mean alone (not "± nan")
    assert (
        re.search(r"by multi/map \(proxy evaluation\) \d\.\d{4}( ± \d\.\d{4})? over \d+ seed", version.description)
        and "nan" not in version.description
    ), version.description
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    registered = mlflow.sentence_transformers.load_model("models:/tiny@best")
    [export] = (tmp_path / "sweeps" / "tiny" / "train" / trial).glob("checkpoint_000006/encoder")
    texts = ["Who won the game?", "Wer hat das Spiel gewonnen?"]
    np.testing.assert_allclose(
        registered.encode(texts, prompt_name="query"), load_encoder(str(export)).encode(texts, "query"), atol=1e-5
    )
    card = (export / "README.md").read_text()
    alpha = float(child.data.params["mono_ratio"])
    assert "base_model: " in card and f"| alpha (mono ratio) | {alpha:g} (constant schedule) |" in card
    assert "CC BY-SA 4.0" in card
    for child in children:  # the trial's time split: start-up, then training + evaluation, then teardown
        m = child.data.metrics
        assert 0 < m["trial/startup_s"] < m["trial/wall_s"] - m["trial/active_s"] < m["trial/wall_s"], m
        split = {k: v for k, v in m.items() if k.startswith("trial/startup/")}
        assert len(split) == 8 and sum(split.values()) == pytest.approx(m["trial/startup_s"], abs=0.01), split
    assert 0 < parents[0].data.metrics["sweep/trial_overhead_fraction"] < 1 and "Per trial:" in done.stdout
    # The step-0 validation: embedded once (one key: same model, data and batch layout; the tiny model has
    # no randomly initialised weights, so the extra seed shares it), the same accuracy in every trial.
    [key] = (tmp_path / "sweeps" / "tiny" / "validation-cache").iterdir()
    assert sorted(f.name for f in key.iterdir()) == ["rank0-of-2.safetensors", "rank1-of-2.safetensors"]
    step0 = {
        [m.value for m in client.get_metric_history(c.info.run_id, "train/val_accuracy") if m.step == 0][0]
        for c in children
    }
    assert len(step0) == 1, step0

    # The comparison report of this real (tiny) sweep: every question answered or marked, images load.
    report = subprocess.run(
        [
            sys.executable,
            str(ROOT / "sweeps/compare.py"),
            "--experiment",
            "tiny",
            "--tracking-uri",
            f"sqlite:///{tmp_path}/mlflow.db",
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
    assert all(
        q in report.stdout for q in ("1. How does", "2. Does hybrid", "3. How do", "4. How does", "5. How robust")
    )
    render_in_chromium(tmp_path / "report" / "report.html", tmp_path)

    # MLflow 3's lineage: each evaluated checkpoint a LoggedModel with its metrics linked to it and to the
    # evaluation set; training and evaluation sets as run inputs; the study stored for optuna-dashboard.
    best_run = next(c for c in children if c.data.tags["tune.trial_id"] == trial)
    models = client.search_logged_models(
        [best_run.info.experiment_id], filter_string=f"source_run_id = '{best_run.info.run_id}'"
    )
    assert {m.name for m in models} >= {f"{trial}-step-3", f"{trial}-step-6"}
    final = next(m for m in models if m.name == f"{trial}-step-6")
    assert final.params["path"].endswith("checkpoint_000006/encoder")
    assert {(m.key, m.dataset_name) for m in final.metrics} >= {
        (PROXY_MAP, "xquad-r/heldout-proxy20"),
        ("eval/xquad-r/heldout/multi/map", "xquad-r/heldout"),
    }
    inputs = {(d.dataset.name, d.tags[0].value) for d in client.get_run(best_run.info.run_id).inputs.dataset_inputs}
    assert inputs == {
        ("xquad-r/train/en+de", "training"),
        ("xquad-r/heldout-proxy20", "evaluation"),
        ("xquad-r/heldout", "evaluation"),
    }
    assert not [t for r in runs for t in r.data.tags if t.startswith("eval.")]  # idempotence keys: on the models
    import optuna

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert f"optuna-dashboard sqlite:///{tmp_path}/optuna.db" in done.stdout

    # The MLflow UI, as a user opens it: the runs, the registered model with alias best, the dataset inputs.
    assert_mlflow_ui(tmp_path, best_run, trial)


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


def assert_resumed_cleanly(folder: Path, name: str, before: dict[str, int], trials: int) -> None:
    """After a killed driver and `--resume`: one parent, `trials` trial runs (no duplicate), every trial
    finished, and the trials finished `before` the kill neither trained nor logged again."""
    _, runs = mlflow_runs(folder, name)
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    trial_ids = [r.data.tags["tune.trial_id"] for r in runs if r.data.tags.get("sweep.role") == "trial"]
    assert len(parents) == 1 and len(trial_ids) == len(set(trial_ids)) == trials  # no duplicate runs
    after = finished_trials(folder, name)
    assert set(after) == set(trial_ids)  # every trial finished
    assert all(after[t] == before[t] for t in before), (before, proxy_steps(folder, name))  # not run or logged again
    assert all(r.info.status == "FINISHED" for r in runs)


@pytest.mark.slow
def test_concurrent_trials_log_every_report_and_a_diverging_trial_fails_alone(tmp_path, tiny_model_dir):
    """Two trials at once (`max_concurrent=2`), a training report every step (`log_every=1`), a checkpoint
    every 2 steps with `keep_checkpoints=1`, and a searched lr range whose third trial diverges:
    - every report of every finished trial is in MLflow (train/* at each step, a proxy evaluation at
      each checkpoint), however the two trials' results interleave;
    - the diverging trial fails at the step its loss turned NaN, named, with no checkpoint after it,
      its run FAILED, and the sweep finishes the others and lists it;
    - each finished trial keeps its last checkpoint and its best, each deleted only after evaluation."""
    config = tiny_sweep_config(
        tmp_path,
        tiny_model_dir,
        "busy",
        trainer={"workers": 1, "cpus_per_worker": 0.5, "log_every": 1, "checkpoint_every": 2, "keep_checkpoints": 1},
        sweep={"max_concurrent": 2, "search": {"lr": [1e-3, 1e30]}, "final_eval": False, "seeds": 1},
    )
    done = subprocess.run(sweep_command(config), cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client, runs = mlflow_runs(tmp_path, "busy")
    trials = {r.data.tags["tune.trial_id"]: r for r in runs if r.data.tags.get("sweep.role") == "trial"}
    failed = {t: r for t, r in trials.items() if r.info.status == "FAILED"}
    assert len(trials) == 3 and len(failed) == 1, {t: (r.info.status, r.data.params["lr"]) for t, r in trials.items()}
    [(bad, bad_run)] = failed.items()
    assert float(bad_run.data.params["lr"]) > 1e3  # the diverging one
    failed_lines = [line for line in done.stdout.splitlines() if "failed: trial" in line]
    assert len(failed_lines) == 1 and re.search(
        rf"failed: trial {bad} before its first checkpoint: .*non-finite "
        r"training loss \(nan\) at step 2, lr",
        failed_lines[0],
    ), failed_lines
    # Its reports before the failure (step 0's base figures, step 1) are in its run all the same.
    assert [m.step for m in client.get_metric_history(bad_run.info.run_id, "train/loss")] == [1]
    assert [m.step for m in client.get_metric_history(bad_run.info.run_id, "train/val_loss")] == [0]
    assert not list((tmp_path / "sweeps" / "busy" / "train" / bad).glob("checkpoint_0000[0-9][2-9]"))
    for trial, run in trials.items():
        if trial == bad:
            continue
        assert run.info.status == "FINISHED"
        for metric in ("train/loss", "train/accuracy", "train/grad_norm", "train/lr", "train/samples_per_s"):
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, metric)) == [1, 2, 3, 4, 5, 6]
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/val_loss")) == [0, 2, 4, 6]
        proxy = {m.step: m.value for m in client.get_metric_history(run.info.run_id, PROXY_MAP)}
        assert sorted(proxy) == [2, 4, 6]  # every checkpoint evaluated, including those deleted after
        best = max(proxy, key=lambda step: (proxy[step], step))
        kept = sorted(p.name for p in (tmp_path / "sweeps" / "busy" / "train" / trial).glob("checkpoint_0*"))
        assert kept == sorted({f"checkpoint_{6:06d}", f"checkpoint_{best:06d}"}), (kept, proxy)
        # Optimizer state only where a run could still resume from: not in a trial's last checkpoint.
        folder = tmp_path / "sweeps" / "busy" / "train" / trial
        assert {k: (folder / k / "deepspeed").is_dir() for k in kept} == {k: k != "checkpoint_000006" for k in kept}


def test_the_default_fills_two_cpus_exactly_and_one_less_is_refused():
    """2 Train workers x 0.9 + the trial's 0.1 + proxy 0.1 = 2 CPUs: no spare CPU (not -1e-16 of one), so no
    early final evaluation on 2 cores and no refusal; on 1.95 CPUs the proxy evaluation would starve."""
    from sweeps.cluster import check_capacity, spare_cpus

    setup = load_sweep_setup(ROOT / "configs/default.yaml")
    assert spare_cpus(setup, 2.0) == 0 and spare_cpus(setup, 3.0) == 1
    check_capacity(setup, 2.0)
    with pytest.raises(
        ValueError,
        match=r"1 concurrent trial\(s\) use 1.9 of 1.95 CPUs, leaving less than "
        r"sweep.proxy_cpus=0.1",
    ):
        check_capacity(setup, 1.95)


def test_resume_names_the_settings_that_changed():
    setup = load_sweep_setup(ROOT / "configs/default.yaml").resolved()
    started = json.loads(json.dumps(setup.settings()))
    assert setup.changed_since(started) == []
    changed = load_sweep_setup(
        ROOT / "configs/default.yaml",
        ["method.batch_size=4", "sweep.search.mono_ratio=[0, 0.5]", "sweep.final_eval=false"],
    ).resolved()
    assert changed.changed_since(started) == ["method.batch_size", "sweep.search.mono_ratio"]  # final_eval may change


def test_selecting_on_a_zero_shot_set_is_refused():
    with pytest.raises(ValueError, match="would select on a zero-shot set"):
        load_sweep_setup(ROOT / "configs/default.yaml", ["eval.dataset=mlqa-r"])


TRIAL_WITHOUT_MLFLOW = """
import json, sys
sys.modules["mlflow"] = None  # this driver cannot import MLflow; neither can any Ray worker (PYTHONPATH)
import ray
from ray import tune
from sweeps.config import load_sweep_setup
from sweeps.records import EVAL_RESULT, TRAIN_HISTORY
from sweeps.trial import run_trial

ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
         runtime_env={"env_vars": {"PYTHONPATH": sys.argv[2], "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}})

@ray.remote
def probe():
    try:
        import mlflow
    except ImportError as e:
        return str(e)

setup = load_sweep_setup(sys.argv[1]).resolved()
grid = tune.Tuner(tune.with_resources(tune.with_parameters(run_trial, setup=setup), {"CPU": 0.1}),
                  param_space={"mono_ratio": 0.5, "temperature": 0.05, "seed": 0},
                  run_config=tune.RunConfig(storage_path=setup.sweep.storage_path, name="no-mlflow")).fit()
result = grid[0]
print("RESULT " + json.dumps({"probe": ray.get(probe.remote()), "error": repr(result.error),
                              "keys": sorted(result.metrics), "history": json.loads(result.metrics[TRAIN_HISTORY]),
                              "eval": json.loads(result.metrics[EVAL_RESULT])["step"]}))
"""


@pytest.mark.slow
def test_a_trial_and_its_train_controller_never_touch_mlflow(tmp_path, tiny_model_dir):
    """A real trial (Tune function, Train controller with EvaluateAndReport, Train workers, evaluation
    tasks) runs where `import mlflow` fails in every process: the driver and, through a poisoned `mlflow`
    package first on PYTHONPATH, every Ray worker. Its result still carries what the driver logs."""
    poison = tmp_path / "poison" / "mlflow"
    poison.mkdir(parents=True)
    (poison / "__init__.py").write_text('raise ImportError("MLflow was imported in a Ray worker")\n')
    config = tiny_sweep_config(
        tmp_path,
        tiny_model_dir,
        "no-mlflow",
        optim={"steps": 3, "warmup_steps": 1},
        sweep={"tracking_uri": "sqlite:////nonexistent/mlflow.db"},
    )
    done = subprocess.run(
        [sys.executable, "-c", TRIAL_WITHOUT_MLFLOW, str(config), str(tmp_path / "poison")],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT ") :])
    assert out["probe"] == "MLflow was imported in a Ray worker"  # the poison is active in workers
    assert out["error"] == "None"
    assert {"multi/map", "checkpoint_path", "trial/startup_s", "trial/active_s"} <= set(out["keys"])
    assert [h["step"] for h in out["history"]] == [0, 3] and out["eval"] == 3
    assert not Path("/nonexistent").exists()


@pytest.mark.slow
def test_a_killed_then_interrupted_sweep_resumes_without_rerunning_or_duplicating(tmp_path, tiny_model_dir):
    """A killed driver (SIGKILL to it and its local Ray) once a trial finished; `--resume`, then a Ctrl-C
    (SIGINT) once another finished: Tune stops the trials and saves its state, the command exits 130 with
    the command that continues it, no later phase starts; `--resume` finishes the sweep without running
    finished trials again or duplicating runs. Then: the finished sweep started again is refused with its
    summary, a changed setting by name."""
    config = tiny_sweep_config(tmp_path, tiny_model_dir, "resumable")

    def run_until(extra: list[str], finished: int, **output) -> subprocess.Popen:
        """The sweep, left running until more than `finished` trials finished (it must still run then)."""
        driver = subprocess.Popen(
            sweep_command(config, *extra), cwd=tmp_path, env=env(), start_new_session=True, text=True, **output
        )
        deadline = time.time() + 600
        while (
            time.time() < deadline and driver.poll() is None and len(finished_trials(tmp_path, "resumable")) <= finished
        ):
            time.sleep(1)
        if driver.poll() is not None:  # say why: its output, where the test took it
            said = (
                "".join(p.read()[-4000:] for p in (driver.stdout, driver.stderr) if p and not p.closed)
                if "stdout" in output and output["stdout"] == subprocess.PIPE
                else ""
            )
            raise AssertionError(f"the sweep ended (exit {driver.returncode}) before it could be interrupted\n{said}")
        return driver

    driver = run_until([], 0, stdout=open(tmp_path / "driver.log", "w"), stderr=subprocess.STDOUT)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
    driver.wait()
    time.sleep(3)  # its lease goes stale (2 heartbeats of 1 s): --resume takes it over
    before = finished_trials(tmp_path, "resumable")
    assert before

    driver = run_until(["--resume"], len(before), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    driver.send_signal(signal.SIGINT)
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 130, err[-3000:]
    phase = re.search(r"interrupted in its (\S+) phase", err)
    assert phase, err[-2000:]
    assert re.search(r"Continue with:\n  python sweeps/ratio_search.py --config \S+ --resume\n", err), err[-2000:]
    if phase.group(1) == "search":
        assert not list((tmp_path / "sweeps" / "resumable").glob("seeds-*"))  # no next phase started
    after = finished_trials(tmp_path, "resumable")
    assert all(before[t] == n for t, n in after.items() if t in before), (before, proxy_steps(tmp_path, "resumable"))
    before = after
    _, runs = mlflow_runs(tmp_path, "resumable")
    assert all(r.info.status != "RUNNING" for r in runs if r.data.tags.get("sweep.role") == "trial")

    done = subprocess.run(
        sweep_command(config, "--resume"), cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert_resumed_cleanly(tmp_path, "resumable", before, trials=4)

    # The same command again, without --resume: refused before Ray starts, the finished sweep untouched.
    again = subprocess.run(sweep_command(config), cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "Traceback" not in again.stderr, again.stderr[-2000:]
    assert re.fullmatch(
        r"error: sweep 'resumable' finished: 4 trials in [\d.]+ min; best multi/map \d\.\d{4} over [12] "
        r"seed\(s\) at mono_ratio=[\d.e-]+, temperature=[\d.e-]+, lang_temperature=inf\. Start another "
        r"with --name NEW, or add trials with --resume --set sweep.trials=N\.\n",
        again.stderr,
    ), again.stderr
    # --resume with a setting that changes results: refused by name, before Ray starts.
    changed = subprocess.run(
        sweep_command(config, "--resume", "--set", "method.batch_size=4"),
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert changed.returncode == 2 and "with changed settings: method.batch_size." in changed.stderr, changed.stderr

    # A driver killed after Tune saved a trial's last report and its end, before its queued MLflow writes
    # (seen on a tracking server): the run RUNNING, without what that report logs. `--resume` logs it from
    # Tune's record, once, and ends the run.
    client, runs = mlflow_runs(tmp_path, "resumable")
    victim = next(r for r in runs if r.data.tags.get("sweep.role") == "trial")
    counts = finished_trials(tmp_path, "resumable")
    keys = [k for k in victim.data.metrics if k.startswith(("train/", PROXY_MAP.rsplit("/", 2)[0], "trial/active_s"))]
    history = {k: [(m.step, m.value) for m in client.get_metric_history(victim.info.run_id, k)] for k in keys}
    forget_after(tmp_path / "mlflow.db", victim.info.run_id, step=3)  # its step-6 report: checkpoint_every 3
    assert (
        len(client.get_metric_history(victim.info.run_id, PROXY_MAP)) == counts[victim.data.tags["tune.trial_id"]] - 1
    )
    caught = subprocess.run(
        sweep_command(config, "--resume"), cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=900
    )
    assert caught.returncode == 0, caught.stdout[-3000:] + caught.stderr[-3000:]
    assert (
        f"trial {victim.data.tags['tune.trial_id']}: 1 report(s) a killed driver had not logged, and its end "
        "(FINISHED), logged now"
    ) in caught.stdout, caught.stdout[-3000:]
    assert {k: [(m.step, m.value) for m in client.get_metric_history(victim.info.run_id, k)] for k in keys} == history
    assert_resumed_cleanly(tmp_path, "resumable", counts, trials=4)

    # More trials for a finished sweep (a round of its own), and sweep.trials only growing: in
    # test_tracking_record.py, on a tracking server, with a driver killed in that round.


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
) -> tuple[int, str, str]:
    """Run the sweep and send SIGINT when its terminal shows a line with `line` (a second one
    `second_after_s` later): (exit status, stdout, stderr)."""
    import threading

    driver = subprocess.Popen(
        sweep_command(config, *extra),
        cwd=cwd,
        env=env(),
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
    assert seen.wait(timeout_s), f"no line with {line!r}:\n" + "".join(out)[-3000:] + "".join(err)[-3000:]
    driver.send_signal(signal.SIGINT)
    if second_after_s is not None:
        time.sleep(second_after_s)
        driver.send_signal(signal.SIGINT)
    try:
        driver.wait(timeout=300)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    for reader in readers:
        reader.join(timeout=10)
    return driver.returncode, "".join(out), "".join(err)


@pytest.mark.slow
def test_ctrl_c_at_any_moment_stops_says_how_to_continue_and_loses_nothing(tmp_path, tiny_model_dir):
    """SIGINT while the machine's speed is measured, while the first trial is starting (before its first
    report), during a proxy evaluation,
    between phases, during the final evaluation, and twice in a row: each exits 130 with the command that
    continues it, no traceback and no later phase started; then `--resume` completes the sweep with every
    trial run once and logged once. (During training: the killed-then-interrupted test.)"""
    config = tiny_sweep_config(tmp_path, tiny_model_dir, "ctrl-c")
    folder = tmp_path / "sweeps" / "ctrl-c"
    continued = re.compile(r"Continue with:\n  python sweeps/ratio_search.py --config \S+ --resume\n")

    def stopped(status: int, err: str, phase: str) -> None:
        assert status == 130 and "Traceback" not in err, err[-3000:]
        assert f"Sweep interrupted in its {phase} phase" in err and continued.search(err), err[-3000:]
        assert not (folder / "finished.txt").exists()

    status, out, err = interrupt_at(config, tmp_path, "measuring this machine's speed")  # (0) the calibration
    stopped(status, err, "calibration")
    assert not list(folder.glob("search")) and "== search" not in out
    status, out, err = interrupt_at(config, tmp_path, ": starting on ", ("--resume",))  # (1) a trial starting
    stopped(status, err, "search")
    assert not list(folder.glob("seeds-*")) and "step 3/6" not in out  # before its first report
    status, out, err = interrupt_at(config, tmp_path, "evaluating its checkpoint", ("--resume",))  # (3)
    stopped(status, err, "search")
    assert not list(folder.glob("seeds-*"))
    status, out, err = interrupt_at(config, tmp_path, "== seeds-", ("--resume",))  # (4) between phases
    assert re.search(r"Sweep interrupted in its seeds-\S+ phase", err) and status == 130, err[-3000:]
    assert "Traceback" not in err and "final evaluation" not in out
    status, out, err = interrupt_at(config, tmp_path, "final evaluation on xquad-r started", ("--resume",))  # (5)
    stopped(status, err, "final evaluation")
    status, out, err = interrupt_at(
        config, tmp_path, "final evaluation on xquad-r started", ("--resume",), second_after_s=0.05
    )  # (6) twice in a row
    assert status == 130 and "Traceback" not in err, err[-3000:]
    assert "Second Ctrl-C: exiting at once, in the final evaluation phase." in err or continued.search(err), err[-3000:]

    done = subprocess.run(
        sweep_command(config, "--resume"), cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _, runs = mlflow_runs(tmp_path, "ctrl-c")
    trial_ids = [r.data.tags["tune.trial_id"] for r in runs if r.data.tags.get("sweep.role") == "trial"]
    assert len(trial_ids) == len(set(trial_ids)) == 4  # 3 searched + 1 more seed, each run once in MLflow
    assert set(finished_trials(tmp_path, "ctrl-c")) == set(trial_ids)
    assert all(r.info.status == "FINISHED" for r in runs)


def test_storage_too_small_for_the_checkpoints_is_refused_before_ray_starts(tmp_path):
    """The default sweep (multilingual-e5-small: 1.2 GB a checkpoint) with its storage on a 1 GB tmpfs:
    refused with the estimate before Ray starts, and what the folder already held is still there."""
    from cluster_harness import require_cluster

    require_cluster()  # `unshare -m` + tmpfs, as the cluster tests use
    small = tmp_path / "small"
    small.mkdir()
    command = " ".join(
        sweep_command(
            ROOT / "configs/default.yaml",
            "--set",
            f"sweep.storage_path={small}",
            "--set",
            f"sweep.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        )
    )
    script = (
        f"mount -t tmpfs -o size=1g tmpfs {small} && echo earlier > {small}/earlier.txt && "
        f"{command}; echo rc=$?; cat {small}/earlier.txt; ls {small}"
    )
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300
    )
    assert re.fullmatch(
        r"error: sweep.storage_path='\S+/small' has 1\.1 GB free; the running trials need about "
        r"4\.9 GB \(1\.2 GB a checkpoint: export, model and optimizer state; x 4 kept or being "
        r"written per trial, trainer.keep_checkpoints=2; x sweep.max_concurrent=1\)\. Free space, "
        r"lower trainer.keep_checkpoints or sweep.max_concurrent, or use s3://BUCKET/PREFIX\.\n",
        done.stderr,
    ), done.stderr[-3000:]
    assert done.stdout.split() == ["rc=2", "earlier", "earlier.txt"]  # nothing written, nothing lost
    assert not (tmp_path / "mlflow.db").exists()  # Ray never started, no MLflow run touched


def test_the_default_preset_sets_only_what_differs_from_the_defaults():
    """One place per default: every key of configs/default.yaml differs from its config class's default
    (a key repeating a default would be a second place that can drift)."""
    from evaluation.config import EvalConfig
    from hybrid.config import read_yaml, to_dict
    from sweeps.config import SweepConfig, flatten
    from trainers.config import TrainRunConfig

    defaults = flatten(to_dict(TrainRunConfig()) | {"eval": to_dict(EvalConfig()), "sweep": to_dict(SweepConfig())})
    preset = flatten(read_yaml(ROOT / "configs/default.yaml"))
    assert preset and all(k in defaults for k in preset)
    assert [k for k, v in preset.items() if v == defaults[k]] == []


def test_show_config_prints_every_setting_and_starts_nothing():
    done = subprocess.run(
        [sys.executable, str(ROOT / "sweeps/ratio_search.py"), "--show-config", "--set", "sweep.trials=5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    shown = yaml.safe_load(done.stdout)
    assert set(shown) == {"data", "model", "method", "optim", "trainer", "eval", "sweep"}
    assert shown["sweep"]["trials"] == 5 and shown["optim"]["steps"] == 16  # --set, then the preset
    assert shown["optim"]["weight_decay"] == 0.01 and shown["sweep"]["search"]["hard_negatives"] == []  # defaults
    assert "Ray" not in done.stdout + done.stderr


def test_the_base_model_is_evaluated_as_the_trials_embed():
    """Its export carries no spec (E5's defaults read 128 tokens): the sweep imposes the run's model.*."""
    from sweeps.early import base_ref

    setup = load_sweep_setup(ROOT / "configs/default.yaml")
    ref = base_ref(setup)
    assert ref.spec == setup.run.model.spec and ref.spec.max_length == 64 and ref.step == 0
