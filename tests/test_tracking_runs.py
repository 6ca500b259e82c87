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
