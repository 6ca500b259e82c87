"""A sweep's identity: an id made when it starts, kept with its settings in storage (`sweep_config.json`),
and put on what it owns elsewhere: its MLflow experiment and parent run (tag `sweep.id`) and its Optuna
study (user attribute `sweep_id`).

A shared tracking server and study database hold many sweeps, found by name. Before Ray starts, `check`
makes sure the name there belongs to this sweep; before any trial (the storage checked), `claim` marks it.
A new sweep whose name another sweep holds is refused (no silently reused experiment, no moved `best`
alias, no deleted study), and `--resume` is refused against a store that holds another sweep of the name.
On `--resume` from a new head the MLflow side is found again by this id and the name, never by ids Tune
pickled.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from sweeps.config import SweepSetup
from sweeps.uris import redact

STUDY_ATTR = "sweep_id"  # on the Optuna study


def new_id() -> str:
    return uuid.uuid4().hex[:12]


def check(setup: SweepSetup, sweep_id: str, resume: bool, search_started: bool) -> None:
    """Before Ray starts, reading only: the sweep's name in the tracking store and the study storage is this
    sweep's or free (and there, on `--resume` of a sweep whose search started). Raises ValueError (one line)."""
    _check_experiment(setup, sweep_id, resume, search_started)
    _check_study(setup, sweep_id, resume, search_started)


def claim(setup: SweepSetup, sweep_id: str, search_started: bool) -> None:
    """Once the sweep is sure to run (after `check` and the cluster's checks): mark its study with its id
    (the experiment and parent run get it when `SweepRuns` opens them). A study of this sweep left without
    a search phase (its first start died before Tune saved its state) starts again empty (`check` refused
    one that holds trials)."""
    import optuna

    from sweeps.search import study_storage

    s = setup.sweep
    store = study_storage(s)
    found = _study(store, s.name)
    if found is not None and not search_started:
        optuna.delete_study(study_name=s.name, storage=store)
        print(
            f"Optuna study {s.name!r} in {redact(s.study_storage)} was left by this sweep's earlier start, "
            "which saved no search state: started again.",
            flush=True,
        )
        found = None
    if found is None:
        modes = {"max": "maximize", "min": "minimize"}
        study = optuna.create_study(study_name=s.name, storage=store, directions=[modes[m] for m in s.modes])
    else:
        study = optuna.load_study(study_name=s.name, storage=store)
    study.set_user_attr(STUDY_ATTR, sweep_id)


def _study(store, name: str):
    return next((study for study in store.get_all_studies() if study.study_name == name), None)


def _taken(setup: SweepSetup, where: str, other: str | None, sweep_id: str, resume: bool) -> ValueError:
    name = setup.sweep.name
    whose = f"sweep id {other}" if other else "a sweep made before sweeps had ids"
    fix = (
        f"point it at the store this sweep ({sweep_id}) logged to, or start a new sweep with --name NEW"
        if resume
        else "choose another name with --name NEW (or delete that sweep's record there)"
    )
    return ValueError(
        f"sweep.name={name!r} is taken in {where} by another sweep ({whose}; this one is {sweep_id}): {fix}."
    )


def _missing(setup: SweepSetup, where: str, flag: str, sweep_id: str) -> ValueError:
    """--resume against a store that does not hold the sweep: its record would be split in two."""
    return ValueError(
        f"--resume of sweep {setup.sweep.name!r} ({sweep_id}): {where} does not hold it. Point {flag} "
        "at the one it started with (the same server or database may have another address)."
    )


def _no_such_file(uri: str) -> bool:
    """A SQLite store whose file is not there: opening it would create an empty one."""
    return uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).exists()


def _check_experiment(setup: SweepSetup, sweep_id: str, resume: bool, search_started: bool) -> None:
    from mlflow import MlflowClient

    from sweeps.records import ID_TAG, PARENT, ROLE_TAG  # with MLflow: the id check runs once the lease is held

    s = setup.sweep
    if resume and search_started and _no_such_file(s.tracking_uri):
        raise _missing(setup, f"the tracking store {redact(s.tracking_uri)}", "--tracking-uri", sweep_id)
    client = MlflowClient(tracking_uri=s.tracking_uri)
    found = client.get_experiment_by_name(s.name)
    if found is None and resume and search_started:
        raise _missing(setup, f"the tracking store {redact(s.tracking_uri)}", "--tracking-uri", sweep_id)
    if found is None or found.tags.get(ID_TAG) == sweep_id:
        return
    other = found.tags.get(ID_TAG)
    if other is None and (
        resume
        or not client.search_runs([found.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = '{PARENT}'", max_results=1)
    ):
        return  # an experiment without a sweep's runs, or this sweep's from before ids: adopted by SweepRuns.open
    raise _taken(setup, f"the tracking store {redact(s.tracking_uri)}", other, sweep_id, resume)


def _check_study(setup: SweepSetup, sweep_id: str, resume: bool, search_started: bool) -> None:
    from sweeps.search import study_storage

    s = setup.sweep
    if resume and search_started and _no_such_file(s.study_storage):
        raise _missing(setup, f"the study storage {redact(s.study_storage)}", "--study-storage", sweep_id)
    store = study_storage(s)
    found = _study(store, s.name)
    if found is None and resume and search_started:
        raise _missing(setup, f"the study storage {redact(s.study_storage)}", "--study-storage", sweep_id)
    other = found.user_attrs.get(STUDY_ATTR) if found is not None else sweep_id
    if other not in (sweep_id, None) or (other is None and not resume):
        raise _taken(setup, f"the study storage {redact(s.study_storage)}", other, sweep_id, resume)
    trials = store.get_n_trials(store.get_study_id_from_name(s.name)) if found and not search_started else 0
    if trials:  # never deleted by `claim`: its trials would be lost with it
        raise ValueError(
            f"sweep.name={s.name!r}: its Optuna study in {redact(s.study_storage)} holds {trials} trial(s), but "
            "the sweep's search state in storage is gone (search/tuner.pkl): the study is kept. Continue from "
            "the storage the sweep saved to (--storage-path), or start a new sweep with --name NEW."
        )
