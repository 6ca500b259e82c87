"""The sweep's sampler on a budget like the sweeps' own: the searched trials must model the objective,
not draw at random (Optuna's default TPE draws its first 10 trials at random)."""

import math
import statistics
from dataclasses import replace
from pathlib import Path

import optuna
import pytest

from sweeps.config import load_sweep_setup
from sweeps.search import reference_points, sampler

ROOT = Path(__file__).resolve().parents[1]


def objective(trial: optuna.Trial) -> float:
    """A smooth stand-in for held-out mAP over (alpha, tau), best (0) at alpha 0.3, tau 0.03."""
    alpha = trial.suggest_float("mono_ratio", 0.0, 1.0)
    tau = trial.suggest_float("temperature", 0.01, 0.2, log=True)
    return -((alpha - 0.3) ** 2) - 0.5 * (math.log10(tau / 0.03)) ** 2


def regret(chosen: optuna.samplers.BaseSampler, references: list[dict], trials: int) -> float:
    study = optuna.create_study(direction="maximize", sampler=chosen)
    for point in references:
        study.enqueue_trial(point)
    study.optimize(objective, n_trials=trials)
    return -study.best_value


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_eight_trials_find_the_optimum_where_random_draws_do_not():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    setup = load_sweep_setup(ROOT / "configs/default.yaml")
    references = reference_points(setup.sweep, setup.run)  # alpha = 0 and 1 at tau 0.05, as a sweep runs them
    assert len(references) == 2
    seeds = range(4)
    ours = [regret(sampler(replace(setup.sweep, seed=s, trials=8), len(references)), references, 8) for s in seeds]
    default = [regret(optuna.samplers.TPESampler(seed=s), references, 8) for s in seeds]  # the old setup
    assert statistics.mean(ours) < 0.005 < 0.01 < statistics.mean(default), (ours, default)


def run_round(searcher, space: dict, metric: str, trials: int, first_id: int) -> list[dict]:
    """Tune's side of a search round, without Tune: ask the searcher for `trials` configurations and
    report the synthetic objective of each, as a finished trial's last result."""
    searcher.set_search_properties(metric, "max", space)
    configs = []
    for i in range(first_id, first_id + trials):
        config = searcher.suggest(f"t{i}")
        alpha, tau = config["mono_ratio"], config["temperature"]
        value = -((alpha - 0.3) ** 2) - 0.5 * (math.log10(tau / 0.03)) ** 2
        searcher.on_trial_complete(f"t{i}", {metric: value, **config})
        configs.append(config)
    return configs


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::optuna.exceptions.ExperimentalWarning")
def test_the_study_is_stored_and_a_later_round_continues_it(tmp_path, capsys):
    """`optuna.load_study` opens the sweep's study by name beside the MLflow store; a later round (more
    trials on --resume) starts from every earlier trial instead of enqueuing the references again."""
    from sweeps import identity
    from sweeps.search import param_space, tune_config

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    setup = load_sweep_setup(
        ROOT / "configs/default.yaml", ["sweep.name=studied", f"sweep.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]
    ).resolved()
    assert setup.sweep.study_storage == f"sqlite:///{tmp_path}/optuna.db"
    space, metric = param_space(setup.sweep, setup.run), setup.sweep.objectives[0]
    first = run_round(tune_config(setup.sweep, setup.run, 3).search_alg, space, metric, 3, 0)
    assert [c["mono_ratio"] for c in first[:2]] == [0.0, 1.0]  # the references, enqueued
    study = optuna.load_study(study_name="studied", storage=setup.sweep.study_storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3

    later = run_round(tune_config(setup.sweep, setup.run, 2, first_round=False).search_alg, space, metric, 2, 3)
    study = optuna.load_study(study_name="studied", storage=setup.sweep.study_storage)
    assert len(study.trials) == 5 and study.best_value == max(t.value for t in study.trials)
    # Its first pick is the one the same seeded sampler makes from the first round's three trials.
    control = optuna.create_study(direction="maximize", sampler=sampler(setup.sweep, 2))
    control.add_trials(study.trials[:3])
    pick = control.ask(fixed_distributions=study.trials[0].distributions).params
    assert later[0] == pytest.approx(pick) and later[0]["temperature"] != first[0]["temperature"], (later, pick)

    def refused(sweep_id: str, match: str) -> None:
        """A plain start of `sweep_id` refused before Ray starts, the study and its 5 trials untouched."""
        with pytest.raises(ValueError, match=match):
            identity.check(setup, sweep_id, resume=False, search_started=False)
        assert len(optuna.load_study(study_name="studied", storage=setup.sweep.study_storage).trials) == 5

    # Another sweep of this name (another id) is refused, the study untouched; this sweep's own study with no
    # search phase saved (its first start died before Tune saved its state) starts again, marked with its id.
    taken = r"sweep.name='studied' is taken in the study storage .* by another sweep "
    refused("new1", taken + r"\(a sweep made before sweeps had ids; this one is new1\): choose another")
    from mlflow import MlflowClient

    MlflowClient(setup.sweep.tracking_uri).create_experiment("studied")  # a sweep from before ids: adopted
    identity.check(setup, "ours", resume=True, search_started=True)
    identity.claim(setup, "ours", search_started=True)
    assert len(optuna.load_study(study_name="studied", storage=setup.sweep.study_storage).trials) == 5
    refused("new2", r"by another sweep \(sweep id ours; this one is new2\)")
    # Issue 33: this sweep's study holding trials, its search state gone (search/tuner.pkl deleted): a plain
    # start is refused and the study kept (on 29bd854 `claim` deleted it, 5 trials with it).
    refused(
        "ours",
        r"sweep.name='studied': its Optuna study in \S+ holds 5 trial\(s\), but the sweep's search state "
        r"in storage is gone \(search/tuner.pkl\): the study is kept\. Continue from",
    )
    optuna.delete_study(study_name="studied", storage=setup.sweep.study_storage)  # a first start that died
    optuna.create_study(study_name="studied", storage=setup.sweep.study_storage).set_user_attr("sweep_id", "ours")
    identity.check(setup, "ours", resume=False, search_started=False)  # empty: nothing to lose
    identity.claim(setup, "ours", search_started=False)
    assert "was left by this sweep's earlier start, which saved no search state: started again." in (
        capsys.readouterr().out
    )
    study = optuna.load_study(study_name="studied", storage=setup.sweep.study_storage)
    assert not study.trials and study.user_attrs == {"sweep_id": "ours"}


def test_a_restored_searcher_opens_this_drivers_study_storage(tmp_path):
    """Tune pickles the Optuna searcher into its state; restored by --resume on a new head, its storage is
    the one this driver was given (the same study, at another address), not the pickled URL."""
    import pickle

    from sweeps.search import StudyStorage, study_storage

    old = StudyStorage(f"sqlite:///{tmp_path}/old.db", "moved")
    blob = pickle.dumps(old)
    setup = load_sweep_setup(
        ROOT / "configs/default.yaml", ["sweep.name=moved", f"sweep.study_storage=sqlite:///{tmp_path}/new.db"]
    )
    study_storage(setup.sweep)
    assert pickle.loads(blob).url == f"sqlite:///{tmp_path}/new.db"
    assert pickle.loads(pickle.dumps(StudyStorage(old.url, "other"))).url == old.url  # another sweep: as pickled
