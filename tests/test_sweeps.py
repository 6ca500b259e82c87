"""The sweep: config validation, search construction, statistics, and tiny end-to-end sweeps through
the real CLI (Ray Tune + Optuna + Ray Train + evaluation + MLflow), including a killed driver."""

import json
import math
import re
import subprocess
import sys
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

from support import (
    PROXY_MAP,
    ROOT,
    driver_env,
    mlflow_runs,
    sweep_command,
    tiny_sweep_config,
)


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


@pytest.mark.slow
@pytest.mark.timeout(540)  # about 3x its measured time (tests/README.md)
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
        optim={"steps": 4, "warmup_steps": 1},  # two checkpoints: one deleted once evaluated unless it is the best
        trainer={"workers": 1, "cpus_per_worker": 0.5, "log_every": 1, "checkpoint_every": 2, "keep_checkpoints": 1},
        sweep={"max_concurrent": 2, "search": {"lr": [1e-3, 1e30]}, "final_eval": False, "seeds": 1},
    )
    done = subprocess.run(
        sweep_command(config), cwd=tmp_path, env=driver_env(), capture_output=True, text=True, timeout=900
    )
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
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, metric)) == [1, 2, 3, 4]
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/val_loss")) == [0, 2, 4]
        proxy = {m.step: m.value for m in client.get_metric_history(run.info.run_id, PROXY_MAP)}
        assert sorted(proxy) == [2, 4]  # every checkpoint evaluated, including those deleted after
        best = max(proxy, key=lambda step: (proxy[step], step))
        kept = sorted(p.name for p in (tmp_path / "sweeps" / "busy" / "train" / trial).glob("checkpoint_0*"))
        assert kept == sorted({f"checkpoint_{4:06d}", f"checkpoint_{best:06d}"}), (kept, proxy)
        # Optimizer state only where a run could still resume from: not in a trial's last checkpoint.
        folder = tmp_path / "sweeps" / "busy" / "train" / trial
        assert {k: (folder / k / "deepspeed").is_dir() for k in kept} == {k: k != "checkpoint_000004" for k in kept}


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


def test_a_new_sweep_binds_its_checkpoints_to_its_id_and_one_stored_before_keeps_its_binding(tmp_path):
    """Issue 33: a sweep stored now records that it binds its checkpoints to its id, and its trials' and merges'
    run configs carry it (`trainer.sweep_id`); a sweep stored before resumes binding them to the trial id
    alone, as its checkpoints are, and its settings still compare equal (`ADDED_SINCE`)."""
    from hybrid import signing, storage
    from sweeps import state

    setup = load_sweep_setup(ROOT / "configs/default.yaml", [f"sweep.storage_path={tmp_path}"]).resolved()
    state.save_settings(setup, "abc123", started=False)
    assert state.bound_to_sweep(setup, "abc123").run.trainer.sweep_id == "abc123"
    assert (
        setup.run.trainer.sweep_id == ""
        and trial_run_config(state.bound_to_sweep(setup, "abc123").run, {"mono_ratio": 0.5}).trainer.sweep_id
        == "abc123"
    )

    location = setup.sweep.location(state.SETTINGS_FILE)
    purpose = signing.settings_purpose(setup.sweep.name)
    before = signing.verified(json.loads(storage.read_text(location)), purpose, location)
    before.pop(state.BINDS_SWEEP_ID)
    before["settings"].pop("trainer.sweep_id")  # as a sweep stored before the setting existed
    storage.write_text(location, json.dumps(signing.signed(before, purpose)))
    assert state.bound_to_sweep(setup, "abc123") == setup
    state.check_unchanged(setup)


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
from hybrid import signing
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
trainable = tune.with_parameters(run_trial, setup=setup, driver_key=signing.fingerprint())
grid = tune.Tuner(tune.with_resources(trainable, {"CPU": 0.1}),
                  param_space={"mono_ratio": 0.5, "temperature": 0.05, "seed": 0},
                  run_config=tune.RunConfig(storage_path=setup.sweep.storage_path, name="no-mlflow")).fit()
result = grid[0]
print("RESULT " + json.dumps({"probe": ray.get(probe.remote()), "error": repr(result.error),
                              "keys": sorted(result.metrics), "history": json.loads(result.metrics[TRAIN_HISTORY]),
                              "eval": json.loads(result.metrics[EVAL_RESULT])["step"]}))
"""


@pytest.mark.slow
@pytest.mark.timeout(150)  # about 3x its measured time (tests/README.md)
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
        env=driver_env(),
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

    # More trials for a finished sweep (a round of its own), and sweep.trials only growing: in
    # test_tracking_record.py, on a tracking server, with a driver killed in that round.


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
        ["unshare", "-m", "sh", "-c", script],
        cwd=tmp_path,
        env=driver_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert re.fullmatch(
        r"error: sweep.storage_path='\S+/small' has 1\.1 GB free; the running trials need about "
        r"4\.9 GB \(1\.2 GB a checkpoint: export, model and optimizer state; x 4 kept or being "
        r"written per trial, trainer.keep_checkpoints=2; x sweep.max_concurrent=1\)\. Free space, "
        r"lower trainer.keep_checkpoints or sweep.max_concurrent, or use s3://BUCKET/PREFIX\.\n",
        done.stderr,
    ), done.stderr[-3000:]
    said, *after = done.stdout.splitlines()  # the model's settings first, as every sweep says them
    assert said.startswith("model multilingual-e5-small: ") and after == ["rc=2", "earlier", "earlier.txt"]
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


def test_a_settled_precision_is_kept_signed_and_every_resume_encodes_as_the_first_run(tmp_path, capsys):
    """`eval.precision: auto` is checked once: the decision and its figures live in the sweep's signed
    settings, so a `--resume` (on any machine) reuses it without measuring again."""
    from dataclasses import asdict

    from evaluation.precision import PrecisionCheck
    from sweeps import precision, state

    setup = load_sweep_setup(
        ROOT / "configs/default.yaml", ["eval.precision=auto", f"sweep.storage_path={tmp_path}"]
    ).resolved()
    state.save_settings(setup, "an-id", started=False)
    check = PrecisionCheck("bf16", "1.83x as fast here; ...", 1.83, 0.0006, "multi/recall@100")
    state.save_precision(setup, asdict(check))
    settled, kept = precision.settled(setup)  # no Ray here: a check would need one
    assert kept == check and settled.eval.precision == "bf16" and settled.proxy_eval.precision == "bf16"
    assert "encoding in bf16: 1.83x as fast here" in capsys.readouterr().out
    assert state.search_rounds(setup) == [setup.sweep.trials]  # the settings still verify
    state.check_unchanged(setup)  # `auto` is what the sweep was started with
    fixed = load_sweep_setup(ROOT / "configs/default.yaml")
    assert precision.settled(fixed) == (fixed, PrecisionCheck("fp32", "set in eval.precision"))


def test_a_sweep_started_before_eval_precision_existed_resumes_in_fp32_only():
    """A setting added later (`ADDED_SINCE`) reads as the old behaviour in a sweep stored without it."""
    setup = load_sweep_setup(ROOT / "configs/default.yaml")
    started = json.loads(json.dumps(setup.settings()))
    del started["eval.precision"]
    assert setup.changed_since(started) == []
    bf16 = load_sweep_setup(ROOT / "configs/default.yaml", ["eval.precision=bf16"])
    assert bf16.changed_since(started) == ["eval.precision"]


def test_a_trials_time_left_after_its_workers_restart_is_timed_from_the_restart():
    """Ray Train restarts a trial's workers from its last checkpoint (a lost worker): the time left is timed
    again from there, not from the trial's first report (which read "123 min left" for a 6-min trial)."""
    from sweeps.progress import Pace

    pace = Pace(first_report_at=1000.0)
    assert pace.left(8, 0, 20, now=1080.0) == ", about 2.0 min left"  # 10 s a step, 12 to go
    assert pace.left(10, 8, 20, now=5000.0) == ""  # restarted from step 8: no pace known yet
    assert pace.left(12, 8, 20, now=5020.0) == ", about 1.3 min left"  # 10 s a step since, 8 to go
