"""The best alpha with its 95% interval (sweeps/report/best_alpha.py), on synthetic tables (no Ray, no
MLflow): an interior peak found and covered, a monotone curve's best on the boundary and said to be, too
few alpha levels refused with the reason, a lower-is-better metric minimised; and the report (table,
figure, HTML, terminal summary) built from a sweep with a zero-shot dataset."""

import numpy as np
import pandas as pd
import pytest

from sweeps.report import best_alpha as B
from sweeps.report.data import Sweep

from support import loaded_sweep

LEVELS = [0.0, 0.25, 0.5, 0.75, 1.0]
SEEDS = [0, 1, 2]
STEPS = 40


def runs_table(curve, levels=LEVELS, column="multi/map", tau=0.05, noise=0.02, seed=0) -> pd.DataFrame:
    """One completed run per (alpha, seed) at `tau`: `column` = curve(alpha) + Gaussian noise."""
    rng = np.random.default_rng(seed)
    rows = [
        {
            "run_id": f"t{tau}-a{a}-s{s}",
            "config_key": f"t{tau}-a{a}",
            "mono_ratio": a,
            "temperature": tau,
            "seed": s,
            "complete": True,
            column: curve(a) + rng.normal(0, noise),
        }
        for a in levels
        for s in SEEDS
    ]
    return pd.DataFrame(rows)


def test_an_interior_peak_is_found_and_its_interval_covers_it():
    b = B.estimate(runs_table(lambda a: 0.6 - (a - 0.4) ** 2), "xquad-r", "multi/map")
    assert b.fit is not None and b.reason == ""
    assert abs(b.fit.best - 0.4) < 0.05 and b.fit.low <= 0.4 <= b.fit.high and b.fit.high - b.fit.low < 0.2
    assert (b.stratum, b.trials, b.levels) == ("tau=0.05", 15, 5)
    assert b.caveats() == [] and b.text().startswith(f"{b.fit.best:.2f} [")
    assert np.all(b.fit.band_low <= b.fit.curve) and np.all(b.fit.curve <= b.fit.band_high)
    again = B.estimate(runs_table(lambda a: 0.6 - (a - 0.4) ** 2), "xquad-r", "multi/map")
    assert (again.fit.best, again.fit.low, again.fit.high) == (b.fit.best, b.fit.low, b.fit.high)  # seeded


def test_a_monotone_curve_peaks_on_the_boundary_and_says_so():
    b = B.estimate(runs_table(lambda a: 0.5 + 0.1 * a), "xquad-r", "multi/map")
    assert b.fit.best == 1.0 and b.fit.high == 1.0
    assert "on the boundary alpha = 1, no interior optimum" in b.text()


def test_seeds_that_disagree_more_than_alpha_moves_cannot_pick_an_alpha():
    flat = runs_table(lambda a: 0.5, noise=0.0)
    flat["multi/map"] += 0.05 * (flat["seed"] - 1)  # each level: 0.45, 0.50, 0.55; the fit is flat
    b = B.estimate(flat, "xquad-r", "multi/map")
    assert b.fit.high - b.fit.low > B.WIDE and "the data cannot pick an alpha" in b.text()


def test_two_alpha_levels_give_no_estimate_and_the_reason():
    b = B.estimate(runs_table(lambda a: 0.5 + 0.1 * a, levels=[0.0, 1.0]), "xquad-r", "multi/map")
    assert b.fit is None and b.reason.startswith("needs 3 alpha levels, the sweep has 2")
    assert b.text().startswith("no estimate: needs 3 alpha levels, the sweep has 2")
    assert b.trials == 6  # drawn as points all the same
    one_seed = runs_table(lambda a: a, levels=[0.0, 0.5, 1.0]).drop_duplicates("config_key")
    assert B.estimate(one_seed, "xquad-r", "multi/map").reason.startswith("needs more than 3 trials")


def test_a_lower_is_better_metric_is_minimised():
    table = runs_table(lambda a: 0.1 + (a - 0.7) ** 2, column="multi/ece", seed=2)
    b = B.estimate(table, "xquad-r", "multi/ece")
    assert b.lower_better and abs(b.fit.best - 0.7) < 0.05 and b.fit.low <= 0.7 <= b.fit.high


def test_the_stratum_with_the_most_alpha_levels_is_fitted_ties_to_the_best():
    peak = runs_table(lambda a: 0.6 - (a - 0.4) ** 2)
    few = runs_table(lambda a: 0.9, levels=[0.0, 1.0], tau=0.01)  # better, but two levels only
    assert B.estimate(pd.concat([few, peak]), "xquad-r", "multi/map").stratum == "tau=0.05"
    tie = runs_table(lambda a: 0.9 - (a - 0.4) ** 2, tau=0.01)  # as many levels, and the best configuration
    assert B.estimate(pd.concat([peak, tie]), "xquad-r", "multi/map").stratum == "tau=0.01"


# A sweep as `data.load_sweep` reads it: the proxy evaluation of every trial, the full evaluation (held-out
# and zero-shot) of every trial, as with sweep.final_eval_all; each setting's mAP peaks at its own alpha.
PEAKS = {"mono": 0.8, "cross": 0.2, "multi": 0.5}


def synthetic_sweep() -> Sweep:
    rng = np.random.default_rng(1)
    runs, metrics = [], []
    for a in LEVELS:
        for s in SEEDS:
            run = f"a{a}-s{s}"
            runs.append(
                {
                    "run_id": run,
                    "trial_id": run,
                    "run_name": run,
                    "status": "FINISHED",
                    "config_key": f"a{a}",
                    "mono_ratio": a,
                    "temperature": 0.05,
                    "lang_temperature": np.inf,
                    "seed": s,
                }
            )
            for source, dataset, split, shift in (
                ("proxy", "xquad-r", "heldout-proxy50", -0.05),
                ("full", "xquad-r", "heldout", 0.0),
                ("full", "mlqa-r", "all", -0.2),
            ):
                for setting, peak in PEAKS.items():
                    mean_ap = 0.7 - (a - peak) ** 2
                    for metric, value in (("map", mean_ap), ("mrr@10", mean_ap + 0.05), ("ece", 0.05 + 0.1 * a)):
                        metrics.append(
                            {
                                "run_id": run,
                                "source": source,
                                "dataset": dataset,
                                "split": split,
                                "setting": setting,
                                "metric": metric,
                                "value": value + shift + rng.normal(0, 0.005),
                                "step": STEPS,
                            }
                        )
    config = {
        "optim.steps": STEPS,
        "eval.dataset": "xquad-r",
        "sweep.objectives": ["multi/ece"],
        "data.train_languages": ["en", "de"],
    }
    return loaded_sweep("synthetic", config, runs, metrics)


@pytest.fixture(scope="module")
def findings():
    from sweeps.report.findings import analyse

    return analyse(synthetic_sweep())


def test_each_dataset_and_objective_gets_its_estimate(findings):
    found = {(b.dataset, b.objective): b for b in findings.best_alpha}
    assert list(found) == [
        (ds, o) for ds in ("xquad-r", "mlqa-r") for o in ("mono/map", "cross/map", "multi/map", "multi/ece")
    ]
    for (dataset, objective), b in found.items():
        setting, _, metric = objective.partition("/")
        truth = 0.0 if metric == "ece" else PEAKS[setting]  # ECE rises with alpha: lowest at 0
        assert b.fit.low - 1e-9 <= truth <= b.fit.high + 1e-9, (dataset, objective, b.text())


def test_the_report_and_the_terminal_show_the_best_alpha(findings, capsys):
    from sweeps.compare import print_summary
    from sweeps.report import figures
    from sweeps.report.findings import best_alpha_table
    from sweeps.report.html import build_html

    frame = best_alpha_table(findings.best_alpha, findings.dataset)
    assert list(frame.columns) == ["best alpha (95% interval)", "xquad-r (held-out)", "mlqa-r (out-of-domain)"]
    assert list(frame.iloc[:, 0]) == ["mono mAP", "cross mAP", "multi mAP", "multi ECE", "fitted on"]
    assert frame.iloc[-1, 1] == "tau=0.05: 5 alpha levels, 15 trials"
    drawn = figures.render(findings)
    assert drawn["best_alpha"]["png"][:8] == b"\x89PNG\r\n\x1a\n" and drawn["best_alpha"]["pdf"][:5] == b"%PDF-"
    images = {"synthetic": {key: formats["png"] for key, formats in drawn.items()}}
    html = build_html([findings], images, None, "sqlite:///mlflow.db")
    assert "<h4>Best alpha (95% interval)</h4>" in html and "mlqa-r (out-of-domain)" in html
    assert 'alt="the best alpha per setting, with its interval"' in html
    print_summary(findings)
    out = capsys.readouterr().out
    assert B.METHOD in out and "mlqa-r (out-of-domain)" in out
    assert "no interior optimum" in out  # multi ECE: lowest at alpha = 0


def test_a_sweep_with_no_estimate_says_why_in_one_line():
    """The default sweep fully evaluates the references and the best only: no table of empty cells."""
    from sweeps.report.best_alpha import BestAlpha
    from sweeps.report.findings import best_alpha_lines

    none = [BestAlpha("xquad-r", f"{s}/map", False, reason="needs 3 alpha levels, the sweep has 2") for s in "ab"]
    assert best_alpha_lines(none, "xquad-r") == [
        "Best alpha with a 95% interval: no estimate (needs 3 alpha levels, the sweep has 2)."
    ]
