"""A sweep's MLflow runs (`sweeps.tracking.SweepRuns`) found again after a driver was killed at the worst
moment: between creating a run and logging its params or config files. Fast: an SQLite store, no Ray."""

from mlflow import MlflowClient

from sweeps.records import ID_TAG, NAME_TAG, TRIAL_TAG
from sweeps.tracking import SweepRuns


def test_a_run_created_by_a_killed_driver_gets_its_params_and_configs_when_found_again(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = {"sweep.trials": 4, "eval.dataset": "xquad-r"}
    configs = {"resolved.yaml": "sweep:\n  trials: 4\n", "sweep.yaml": "trials: 4\n"}
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("killed", artifact_location=(tmp_path / "artifacts").as_uri())
    # What a driver killed right after `create_run` left: the runs, tagged, with nothing logged.
    parent = client.create_run(
        exp, run_name="killed", tags={NAME_TAG: "killed", "sweep.role": "parent", ID_TAG: "id-1"}
    ).info.run_id
    trial = client.create_run(
        exp, run_name="t1", tags={TRIAL_TAG: "t1", "mlflow.parentRunId": parent, "sweep.role": "trial"}
    ).info.run_id

    runs = SweepRuns.open(uri, "killed", "id-1", "", params, configs)
    assert runs.parent_id == parent
    assert client.get_run(parent).data.params == {k: str(v) for k, v in params.items()}
    assert {a.path for a in client.list_artifacts(parent, "config")} == {f"config/{n}" for n in configs}
    trial_params = {"mono_ratio": 0.5, "temperature": 0.05, "seed": 0, "config_key": "a=0.5 t=0.05"}
    assert runs.trial("t1", "t1", trial_params) == trial
    assert client.get_run(trial).data.params == {k: str(v) for k, v in trial_params.items()}
    assert runs.trial("t1", "t1", trial_params) == trial  # found again: nothing logged twice, nothing refused

    fresh = runs.trial("t2", "t2", trial_params | {"seed": 1})
    assert fresh != trial and client.get_run(fresh).data.params["seed"] == "1"
    assert client.get_run(fresh).data.tags["mlflow.parentRunId"] == parent


def test_a_report_logged_again_keeps_one_point_per_step(tmp_path):
    """A write retried after a partial failure (its evaluation's upload met a server outage) or a report
    caught up after a killed driver logs the report's training history and timings again: they carry the
    time Tune took the report, so MLflow keeps one point per step (seen on the tracking server before:
    duplicated train/* points)."""
    import time

    from sweeps.records import TrialReport
    from sweeps.tracking import TrialLogger
    from trainers.config import TrainRunConfig

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = SweepRuns.open(uri, "retried", "id-1", str(tmp_path / "artifacts"), {}, {})
    logger = TrialLogger(runs, TrainRunConfig(), str(tmp_path / "train"), "multi/map", progress=False)
    history = '[{"step": 1, "loss": 2.0}, {"step": 3, "loss": 1.5}]'
    tune_result = {"step": 3, "timestamp": 1_765_000_000, "train_history": history, "trial/active_s": 12.5}
    for _ in range(2):  # the first write, then its retry (or the catch-up of the same report from Tune's record)
        logger._log_report("t1", {"mono_ratio": 0.5, "seed": 0}, TrialReport.from_tune(tune_result))
        time.sleep(0.05)  # a retry comes later
    client = MlflowClient(tracking_uri=uri)
    run = logger.runs["t1"]
    assert [(m.step, m.value) for m in client.get_metric_history(run, "train/loss")] == [(1, 2.0), (3, 1.5)]
    assert [m.step for m in client.get_metric_history(run, "trial/active_s")] == [3]


def test_a_catch_up_logs_only_the_reports_the_trial_signed(tmp_path, capsys):
    """Issue 33, item 4: after a killed driver, `catch_up` logged every row of the trial's `result.json` in
    the bucket, so a forged row reached MLflow. Now only the reports the trial kept signed in its Train
    run's folder (a forged one, or another trial's copied in, is skipped and said), ending with the last
    from Tune's signed state; each at the time the trial made it."""
    import json
    from types import SimpleNamespace

    import pandas as pd

    from hybrid import signing, storage
    from sweeps.records import TrialReport, report_file, report_purpose
    from sweeps.tracking import reported

    train = str(tmp_path / "train")

    def report(step: int, loss: float) -> dict:
        history = [{"step": step, "loss": loss}]
        return TrialReport(step, f"ckpt{step}", history, {"trial/active_s": float(step)}, None, 1000 + step).to_tune({})

    for step, loss, signer in ((2, 1.5, "t1"), (4, 1.2, "t1"), (6, 0.1, "t2")):  # t2's: another trial's, copied in
        kept = signing.signed(report(step, loss), report_purpose(signer))
        storage.write_text(report_file(train, "t1", step), json.dumps(kept))
    altered = json.loads(storage.read_text(report_file(train, "t1", 4))) | {"step": 5}
    storage.write_text(report_file(train, "t1", 5), json.dumps(altered))
    forged = pd.DataFrame([{"step": 3, "train_history": json.dumps([{"step": 3, "loss": 0.0001}])}])
    result = SimpleNamespace(metrics=report(8, 1.0) | {"trial_id": "t1"}, metrics_dataframe=forged)

    reports = reported(result, train)
    assert [(r.step, r.loss, r.time_ms) for r in reports] == [(2, 1.5, 1002), (4, 1.2, 1004), (8, 1.0, 1008)]
    said = capsys.readouterr().out
    assert said.count("[hybrid-sweep] trial t1: a kept report not logged: ") == 2 and "bad signature" in said


def test_a_resumed_sweeps_catch_up_leaves_an_ended_trial_as_it_was(tmp_path, capsys):
    """Every `--resume` catches up the trials of phases already done. Their runs were found by reopening them
    (RUNNING), so each looked unended: ended again and said as "which a killed driver had not logged" after a
    clean Ctrl-C (seen in the out-of-domain study). Now a run already logged and ended stays as it was."""
    from sweeps.records import TrialReport
    from sweeps.tracking import TrialLogger
    from trainers.config import TrainRunConfig

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = {"mono_ratio": 0.5, "seed": 0}
    report = TrialReport.from_tune({"step": 4, "timestamp": 1_765_000_000, "train_history": "[]", "trial/active_s": 3})

    def logger() -> TrialLogger:  # a driver's, as restored from Tune's state: no run ids
        runs = SweepRuns.open(uri, "resumed", "id-1", str(tmp_path / "artifacts"), {}, {})
        return TrialLogger(runs, TrainRunConfig(), str(tmp_path / "train"), "multi/map", progress=False)

    logger()._catch_up("t1", config, [report], "FINISHED")  # the first driver's (or a killed one's catch-up)
    assert "trial t1: 1 report(s) and its end (FINISHED)" in capsys.readouterr().out
    resumed = logger()
    resumed._catch_up("t1", config, [report], "FINISHED")
    assert capsys.readouterr().out == ""
    assert MlflowClient(tracking_uri=uri).get_run(resumed.runs["t1"]).info.status == "FINISHED"
