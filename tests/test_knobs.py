"""The searched knobs come from one table (`sweeps.knobs.KNOBS`). `hard_negatives` was added to it as one
row, and nothing else: this test follows that knob through everything built from the table, from the
preset to the report."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from ray import tune

from sweeps import knobs
from sweeps.config import load_sweep_setup
from sweeps.progress import describe, knob_text
from sweeps.ranking import PARAM_COLUMNS, row_params
from sweeps.report import analysis
from sweeps.report.data import TRIAL_PARAMS, _trial_row
from sweeps.search import enqueued_points, param_space
from sweeps.trial import config_key, trial_run_config

ROOT = Path(__file__).resolve().parents[1]
SEARCHED = [
    "sweep.search.hard_negatives=[false, true]",
    "sweep.trials=4",
    "sweep.search.points=[{mono_ratio: 0.5, hard_negatives: true}]",
]


def test_a_knob_added_as_one_row_is_searched_applied_logged_and_reported():
    setup = load_sweep_setup(ROOT / "configs/default.yaml", SEARCHED)
    assert setup.sweep.search.hard_negatives == (False, True)

    space = param_space(setup.sweep, setup.run)
    assert isinstance(space["hard_negatives"], tune.search.sample.Categorical)
    assert space["hard_negatives"].categories == [False, True]
    points = enqueued_points(setup.sweep, setup.run)  # the references at the base run's value, then the point
    assert [(p["mono_ratio"], p["hard_negatives"]) for p in points] == [(0.0, False), (1.0, False), (0.5, True)]

    params = points[2] | {"seed": 0}
    run = trial_run_config(setup.run, params)
    assert run.data.hard_negatives is True and run.method.mono_ratio == 0.5
    assert config_key(params) != config_key(points[0] | {"seed": 0})
    assert "hard_negatives" in PARAM_COLUMNS and TRIAL_PARAMS["hard_negatives"] is bool
    # Its label, where people read it: progress lines and run names (only where it differs from the base run).
    assert describe("t1", params, setup.run) == "trial t1 (alpha 0.50, tau 0.050, hard negatives True, seed 0)"
    assert "hard negatives" not in knob_text(points[0] | {"seed": 0}, setup.run)
    # Read back from a trials table (NumPy values, a column of numbers with gaps as floats): the trial's params.
    row = pd.Series({**params, "seed": 0.0, "num_train_languages": math.nan, "step": 16})
    assert row_params(row) == params and type(row_params(row)["seed"]) is int

    class Run:  # an MLflow run as the report reads it: params are strings
        class info:
            run_id, run_name, status = "r1", "trial", "FINISHED"

        class data:
            params = {"mono_ratio": "0.5", "hard_negatives": "True", "seed": "0", "config_key": "k"}
            tags: dict = {}

    row = _trial_row(Run)
    assert row["hard_negatives"] is True and math.isnan(row["lr"])  # a knob not searched reads as NaN

    n = analysis.MIN_IMPORTANCE_CONFIGS  # importances from this many configurations up (issue 34)
    alpha, negatives = [i / (n - 1) for i in range(n)], [i % 2 == 0 for i in range(n)]
    summary = pd.DataFrame(
        {
            "config_key": [f"c{i}" for i in range(n)],
            "mono_ratio": alpha,
            "hard_negatives": negatives,
            "multi/map": [0.6 - 0.2 * a + 0.05 * h for a, h in zip(alpha, negatives)],
            "complete": True,
        }
    )
    assert "hard_negatives" in analysis.varying_knobs(summary)
    found, how = analysis.importances(summary, "multi/map", lower_is_better=False)
    assert set(found) == {"mono_ratio", "hard_negatives"}, how
    found, how = analysis.importances(summary.head(6), "multi/map", lower_is_better=False)
    assert found is None and how.startswith(f"too few completed configurations (6 < {n})"), how


def test_a_knob_left_unsearched_stays_out_of_the_trials():
    setup = load_sweep_setup(ROOT / "configs/default.yaml")
    assert setup.sweep.search.hard_negatives == ()
    assert "hard_negatives" not in param_space(setup.sweep, setup.run)
    assert all("hard_negatives" not in p for p in enqueued_points(setup.sweep, setup.run))


def test_every_knob_sets_a_field_of_the_run_and_reads_it_back():
    setup = load_sweep_setup(ROOT / "configs/cpu-study.yaml")
    values = {
        "mono_ratio": 0.3,
        "temperature": 0.02,
        "lang_temperature": 2.0,
        "lr": 1e-4,
        "num_train_languages": 2,
        "hard_negatives": True,
        "alpha_schedule": "mono_first",
    }
    assert set(values) == set(knobs.NAMES)
    for knob in knobs.KNOBS:
        assert knob.base_value(knob.apply(setup.run, values[knob.name])) == values[knob.name], knob.name
    assert trial_run_config(setup.run, {"num_train_languages": 2}).data.train_languages == ("en", "de")


def test_the_built_classes_pickle_by_reference():
    """Tune keeps the sweep's setup in its experiment state and Ray ships it to trials: the classes built
    from the table must be found again by name (a class of module `types` would not)."""
    import pickle

    setup = load_sweep_setup(ROOT / "configs/cpu-study.yaml")
    assert pickle.loads(pickle.dumps(setup)) == setup
    assert type(setup.sweep.search).__module__ == type(setup.sweep.search.points[0]).__module__ == "sweeps.config"
