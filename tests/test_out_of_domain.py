"""The report's out-of-domain section (sweeps/report/out_of_domain.py) on a synthetic sweep (no Ray, no
MLflow): zero-shot figures by alpha with the base model and the paper's row, the in-domain ranking set
against the zero-shot one, robustness over the 49 MLQA-R pairs, calibration, and the merges on the zero-shot
set; then the HTML and the end-of-sweep lines that carry them."""

import numpy as np
import pandas as pd
import pytest

from sweeps.report.data import Sweep

from support import loaded_sweep

LEVELS = [0.0, 0.25, 0.5, 0.75, 1.0]
SEEDS = [0, 1, 2]
STEPS = 40
MLQA = ["ar", "de", "en", "es", "hi", "vi", "zh"]
# In domain the order is 0 > 0.25 > 0.5 > 0.75 > 1; out of domain 0.25 > 0 > 0.5 > 0.75 > 1 (a peak at 0.2).
IN_DOMAIN = {a: 0.6 - 0.1 * a for a in LEVELS}
ZERO_SHOT = {a: 0.45 - 0.3 * (a - 0.2) ** 2 for a in LEVELS}


def _metrics(run: str, dataset: str, split: str, value: float, ece: float, rng) -> list[dict]:
    rows = []
    for setting in ("mono", "cross", "multi"):
        for metric, v in (("map", value), ("mrr@10", value + 0.05), ("ece", ece)):
            rows.append(
                {
                    "run_id": run,
                    "source": "full",
                    "dataset": dataset,
                    "split": split,
                    "setting": setting,
                    "metric": metric,
                    "value": v + rng.normal(0, 0.002),
                    "step": STEPS,
                }
            )
    return rows


def _matrix(value: float, rng) -> pd.DataFrame:
    """7 x 7 mAP: hi-vi pairs (no high-resource language) 0.2 lower, vi->hi the worst."""
    m = pd.DataFrame(value + rng.normal(0, 0.002, (7, 7)), index=MLQA, columns=MLQA)
    for q in ("hi", "vi"):
        for c in ("hi", "vi"):
            m.loc[q, c] -= 0.2
    m.loc["vi", "hi"] -= 0.05
    return m


def synthetic_sweep() -> Sweep:
    rng = np.random.default_rng(3)
    runs, metrics, merges, matrices = [], [], [], {}
    base = {"run_id": "parent"}
    for a in LEVELS:
        for s in SEEDS:
            run = f"a{a}-s{s}"
            runs.append(
                base
                | {
                    "run_id": run,
                    "trial_id": run,
                    "run_name": run,
                    "status": "FINISHED",
                    "config_key": f"a{a}",
                    "mono_ratio": a,
                    "temperature": 0.01,
                    "lang_temperature": np.inf,
                    "seed": s,
                }
            )
            metrics += _metrics(run, "xquad-r", "heldout", IN_DOMAIN[a], 0.1, rng)
            metrics += _metrics(run, "mlqa-r", "all", ZERO_SHOT[a], 0.05 + 0.1 * a, rng)
            matrices[(run, "mlqa-r", "full", "map")] = _matrix(ZERO_SHOT[a], rng)
    for w in (0.25, 0.5):
        for s in SEEDS:
            run = f"merge{w}-s{s}"
            merges.append({"run_id": run, "config_key": f"merge w={w}", "seed": s, "merge_weight": w})
            metrics += _metrics(run, "xquad-r", "heldout", 0.55, 0.1, rng)
            metrics += _metrics(run, "mlqa-r", "all", 0.40 + 0.05 * w, 0.1, rng)
    metrics += _metrics("parent", "mlqa-r", "all", 0.31, 0.2, rng)
    for row in metrics:
        if row["run_id"] == "parent":
            row["step"] = 0
    config = {
        "optim.steps": STEPS,
        "eval.dataset": "xquad-r",
        "sweep.zero_shot_datasets": ["mlqa-r"],
        "sweep.objectives": ["multi/map"],
        "data.train_languages": ["en", "de", "hi"],
    }
    return loaded_sweep("synthetic-ood", config, runs, metrics, matrices, merges)


@pytest.fixture(scope="module")
def findings():
    from sweeps.report.findings import analyse

    return analyse(synthetic_sweep())


def test_zero_shot_by_alpha_with_the_base_model_and_the_papers_row(findings):
    from sweeps.report import out_of_domain

    (ood,) = out_of_domain.analyse(findings)
    frame = ood.by_alpha
    assert ood.dataset == "mlqa-r"
    assert list(frame["configuration"][:5]) == [f"alpha={a:.2f}, tau=0.01" for a in LEVELS]
    assert list(frame["configuration"][5:]) == ["base model", out_of_domain.PAPER_LABEL]
    mean, _, rest = frame.iloc[1]["multi mAP"].partition(" ± ")
    assert float(mean) == pytest.approx(ZERO_SHOT[0.25], abs=0.005) and rest.endswith("(95% CI, 3 seeds)")
    assert frame.iloc[-1]["mono mAP"] == "0.648" and frame.iloc[-1]["multi MRR@10"] == "-"
    assert list(ood.calibration.columns) == ["configuration", "seeds", "mono ECE", "cross ECE", "multi ECE"]


def test_the_in_domain_ranking_set_against_the_zero_shot_one(findings):
    from sweeps.report import out_of_domain

    (ood,) = out_of_domain.analyse(findings)
    rho_line, place_line = ood.agreement
    assert "Spearman rho (in domain, mlqa-r) over 5 configurations = +0.90" in rho_line and "exact" in rho_line
    assert place_line.startswith("The in-domain best, alpha=0.00, tau=0.01, is 2 of 5 on mlqa-r")
    assert "first there: alpha=0.25, tau=0.01" in place_line


def test_robustness_over_the_pairs_and_the_merges_on_the_zero_shot_set(findings):
    from sweeps.report import out_of_domain

    (ood,) = out_of_domain.analyse(findings)
    rob = ood.robustness
    assert list(rob["worst pair (most often)"]) == ["vi→hi"] * 5
    high, low = "pairs with a high-resource language (45)", "pairs without one (4)"
    first = rob.iloc[0]
    assert float(first[high].split()[0]) - float(first[low].split()[0]) == pytest.approx(0.2125, abs=0.01)
    merges = ood.merges
    assert set(merges["merge"]) == {"merge w=0.25", "merge w=0.5"}
    assert {"merge - best hybrid", "merge - alpha=0", "merge - alpha=1"} <= set(merges.columns)


def test_the_html_carries_the_out_of_domain_section(findings, capsys):
    from sweeps.report.html import build_html

    html = build_html([findings], {}, None, "sqlite:///mlflow.db")
    assert '<h2 id="out-of-domain">Out of domain: the zero-shot sets</h2>' in html
    for heading in ("zero-shot retrieval by configuration", "does the in-domain ranking hold?", "calibration (ECE"):
        assert f"mlqa-r: {heading}" in html
