"""The sweep report (sweeps/compare.py, sweeps/report/): a synthetic MLflow store with known values in the
layout the sweep writes; the report's intervals, Pareto front, per-pair deltas, worst pair and spread
checked against hand / scipy values; the HTML checked offline and in headless Chromium."""

import base64
import math
import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from sweeps.report import analysis as A
from sweeps.report.data import load_sweep
from sweeps.report.findings import PICKED

from support import render_in_chromium

ROOT = Path(__file__).resolve().parents[1]
LANGS = ["en", "de", "el"]  # high-resource by default: en, de
STEPS = 40
PLANTED = "cfg-a05-s1"  # its artifacts get a planted step_999999 folder (issue 33)
# config -> (alpha, tau, seeds, multi/map per seed, (mono, cross) mAP means, L x L mAP, seed offsets of the matrix)
CONFIGS = {
    "cfg-a0": (
        0.0,
        0.05,
        [0, 1, 2],
        [0.50, 0.52, 0.54],
        (0.70, 0.60),
        [[0.70, 0.60, 0.55], [0.62, 0.72, 0.50], [0.58, 0.52, 0.66]],
        [0.0, 0.01, 0.02],
    ),
    "cfg-a05": (
        0.5,
        0.05,
        [0, 1, 2],
        [0.60, 0.61, 0.65],
        (0.75, 0.65),
        [[0.76, 0.66, 0.60], [0.68, 0.75, 0.57], [0.63, 0.59, 0.70]],
        [0.0, 0.02, 0.01],
    ),
    "cfg-a1": (
        1.0,
        0.05,
        [0, 1, 2],
        [0.55, 0.53, 0.57],
        (0.80, 0.50),
        [[0.80, 0.55, 0.45], [0.56, 0.79, 0.44], [0.50, 0.47, 0.78]],
        [0.0, -0.01, 0.005],
    ),
    "cfg-a03": (
        0.3,
        0.10,
        [0],
        [0.58],
        (0.74, 0.67),  # seed 0 logs the means - 0.01: (0.73, 0.66)
        [[0.74, 0.66, 0.62], [0.67, 0.73, 0.60], [0.64, 0.61, 0.69]],
        [0.0],
    ),
    # pruned at step 20 with the best numbers: must be listed but never compared
    "cfg-pruned": (0.25, 0.02, [0], [0.90], (0.90, 0.90), [[0.9] * 3] * 3, [0.0]),
}
K = {"cfg-a0": 2, "cfg-a05": 2, "cfg-a1": 2, "cfg-a03": 3, "cfg-pruned": 3}  # the second sweep varies k
FULL = ("cfg-a0", "cfg-a05", "cfg-a1")  # full evaluation (and zero-shot) at the final step, as phases.final_evaluation
OFFSETS = [-0.01, 0.0, 0.01]
FULL_SHIFT = 0.01  # full evaluation = proxy + 0.01, so a test can tell which one the report read
MERGE_GAP = 0.02  # the merge w=0.5 of the first sweep: alpha = 0.5's figures less this, seed by seed


def settings_values(config: str, i: int) -> dict[str, float]:
    alpha, _, _, multi, (mono, cross), _, _ = CONFIGS[config]
    out = {"multi/map": multi[i], "mono/map": mono + OFFSETS[i], "cross/map": cross + OFFSETS[i]}
    out |= {k.replace("map", "mrr@10"): v + 0.05 for k, v in list(out.items())}
    out |= {f"{s}/ece": 0.05 + 0.1 * alpha + 0.01 * i for s in ("mono", "cross", "multi")}
    return out | {"multi/rank_distance": 100 - 40 * alpha + i}


def matrix(config: str, i: int) -> np.ndarray:
    _, _, _, _, _, base, offsets = CONFIGS[config]
    return np.array(base) + offsets[i]


def log_evaluation(
    client, run_id: str, dataset: str, split: str, step: int, values: dict[str, float], mat: np.ndarray, alpha: float
) -> None:
    """One evaluation in the evaluation.tracking layout: metrics at the step, CSV artifacts under step_{step}/."""
    from mlflow.entities import Metric

    metrics = {f"eval/{dataset}/{split}/{k.replace('@', '_at_')}": v for k, v in values.items()}
    metrics |= {f"eval/{dataset}/{split}/lang/{lang}/map": float(mat[j].mean()) for j, lang in enumerate(LANGS)}
    client.log_batch(run_id, metrics=[Metric(k, float(v), 0, step) for k, v in metrics.items()])
    with tempfile.TemporaryDirectory() as tmp:
        for name, m in (("map", mat), ("mrr_at_10", mat + 0.05)):
            frame = pd.DataFrame(m, index=LANGS, columns=LANGS)
            frame.index.name = "query\\candidate"
            frame.to_csv(f"{tmp}/{name}.csv")
        pd.DataFrame(
            {
                "lower": np.arange(5) / 5,
                "upper": np.arange(1, 6) / 5,
                "count": [1, 2, 3, 4, 10],
                "confidence": [0.1, 0.3, 0.5, 0.7, 0.9],
                "accuracy": [0.0, 0.5, 1 / 3, 0.75, min(1.0, 0.8 + 0.1 * alpha)],
            }
        ).to_csv(f"{tmp}/reliability.csv", index=False)
        Path(tmp, "summary.json").write_text("{}")
        client.log_artifacts(run_id, tmp, f"eval/{dataset}/{split}/step_{step}")


def build_store(root: Path, name: str = "synthetic", languages: dict[str, int] | None = None) -> str:
    """A sweep as the real one logs it: parent (base model at step 0), a child per trial; returns the URI.
    `languages`: config -> num_train_languages, for a sweep that varied the number of training languages."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(name, artifact_location=(root / "mlruns").as_uri())
    parent = client.create_run(exp, run_name=name, tags={"sweep.name": name, "sweep.role": "parent"}).info.run_id
    for key, value in {"eval.dataset": "xquad-r", "sweep.objectives": "['multi/map']", "sweep.name": name}.items():
        client.log_param(parent, key, value)  # the preset's own keys, as strings
    train = ["en", "de", "el"] if languages else ["en", "de"]  # the resolved configuration, read back as YAML
    client.log_text(
        parent,
        yaml.safe_dump(
            {
                "optim": {"steps": STEPS},
                "data": {"train_languages": train},
                "eval": {"dataset": "xquad-r"},
                "sweep": {"objectives": ["multi/map"]},
            }
        ),
        "config/resolved.yaml",
    )
    base = {k: v - 0.1 for k, v in settings_values("cfg-a0", 0).items()}
    log_evaluation(client, parent, "xquad-r", "heldout", 0, base, matrix("cfg-a0", 0) - 0.1, 0.0)
    log_evaluation(client, parent, "mlqa-r", "all", 0, base, matrix("cfg-a0", 0) - 0.2, 0.0)
    for config, (alpha, tau, seeds, *_rest) in CONFIGS.items():
        for i, seed in enumerate(seeds):
            trial = f"{config}-s{seed}"
            run = client.create_run(
                exp, run_name=trial, tags={"tune.trial_id": trial, "sweep.role": "trial", "mlflow.parentRunId": parent}
            ).info.run_id
            params = {
                "mono_ratio": alpha,
                "temperature": tau,
                "lang_temperature": math.inf,
                "seed": seed,
                "config_key": config,
            }
            for key, value in (params | ({"num_train_languages": languages[config]} if languages else {})).items():
                client.log_param(run, key, value)
            values, mat = settings_values(config, i), matrix(config, i)
            early = {k: v - 0.1 for k, v in values.items()}
            if config == "cfg-pruned":
                log_evaluation(client, run, "xquad-r", "heldout-proxy50", 20, values, mat, alpha)
                continue
            log_evaluation(client, run, "xquad-r", "heldout-proxy50", 20, early, mat - 0.2, alpha)
            log_evaluation(client, run, "xquad-r", "heldout-proxy50", STEPS, values, mat, alpha)
            if trial == PLANTED:  # a folder put in the artifact store under a later step, no metric logged
                with tempfile.TemporaryDirectory() as tmp:
                    pd.DataFrame(np.zeros((len(LANGS),) * 2), index=LANGS, columns=LANGS).to_csv(f"{tmp}/map.csv")
                    client.log_artifacts(run, tmp, "eval/xquad-r/heldout-proxy50/step_999999")
            if config in FULL:
                full = {k: v + FULL_SHIFT for k, v in values.items()}
                log_evaluation(client, run, "xquad-r", "heldout", STEPS, full, mat + FULL_SHIFT, alpha)
                log_evaluation(
                    client, run, "mlqa-r", "all", STEPS, {k: v - 0.1 for k, v in values.items()}, mat - 0.1, alpha
                )
    if not languages:  # merges of the references (sweeps.merges): the hybrid's figures less MERGE_GAP, per seed
        for i, seed in enumerate(CONFIGS["cfg-a05"][2]):
            run = client.create_run(
                exp,
                run_name=f"merge-w0.5-s{seed}",
                tags={"sweep.merge": f"merge-w0.5-s{seed}", "sweep.role": "merge", "mlflow.parentRunId": parent},
            ).info.run_id
            for key, value in {
                "merge_weight": 0.5,
                "seed": seed,
                "config_key": "merge w=0.5",
                "temperature": 0.05,
            }.items():
                client.log_param(run, key, value)
            values = {k: v - MERGE_GAP for k, v in settings_values("cfg-a05", i).items()}
            for split, shift in (("heldout-proxy50", 0.0), ("heldout", FULL_SHIFT)):
                log_evaluation(
                    client,
                    run,
                    "xquad-r",
                    split,
                    STEPS,
                    {k: v + shift for k, v in values.items()},
                    matrix("cfg-a05", i) - MERGE_GAP + shift,
                    0.5,
                )
    return uri


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    build_store(root, "synthetic-k", K)
    return root, build_store(root)


@pytest.fixture(scope="module")
def built(store):
    """The report as the CLI builds it (load, analyse, figures, HTML, artifacts), once for the module."""
    from mlflow import MlflowClient

    from sweeps.compare import build_report

    root, uri = store
    return build_report(
        MlflowClient(tracking_uri=uri),
        ["synthetic", "synthetic-k"],
        root / "report",
        ("en", "de", "es", "zh"),
        tracking_uri=uri,
    )


@pytest.fixture(scope="module")
def findings(built):
    return built[1][0]


def t_half(values) -> float:
    lo, hi = stats.t.interval(0.95, df=len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    return (hi - lo) / 2


def row(summary: pd.DataFrame, key: str) -> pd.Series:
    return summary.set_index("config_key").loc[key]


def test_loader_reads_the_last_step_and_flags_pruned_trials(findings):
    """The last step each evaluation was logged at; issue 33, item 4: a planted step_999999 artifact folder
    is not read (the loader took the highest step found among the folders)."""
    runs = findings.sweep.runs.set_index("trial_id")["run_id"]
    planted = findings.sweep.matrices[(runs[PLANTED], "xquad-r", "proxy", "map")]
    assert planted.to_numpy() == pytest.approx(matrix("cfg-a05", 1))
    table = findings.selection.table.set_index("trial_id")
    assert findings.selection.source == "proxy"  # cfg-a03 has no full evaluation: proxy for every trial
    assert table.loc["cfg-a05-s1", "multi/map"] == pytest.approx(0.61)  # step 40, not step 20 (0.51)
    assert not table.loc["cfg-pruned-s0", "complete"] and table.loc["cfg-a0-s0", "complete"]
    assert findings.pruned == 1
    assert findings.best["config_key"] == "cfg-a05"  # the pruned 0.90 is not eligible
    assert findings.sweep.zero_shot_datasets == ["mlqa-r"]


def test_config_means_carry_student_t_intervals(findings):
    for config in ("cfg-a0", "cfg-a05", "cfg-a1"):
        values = CONFIGS[config][3]
        r = row(findings.summary, config)
        assert r["multi/map"] == pytest.approx(np.mean(values))
        assert r["multi/map ±"] == pytest.approx(t_half(values))
        assert r["seeds"] == 3
    assert math.isnan(row(findings.summary, "cfg-a03")["multi/map ±"])  # one seed: no interval


def test_differences_pair_seeds():
    a, b = {0: 0.60, 1: 0.61, 2: 0.65}, {0: 0.55, 1: 0.53, 2: 0.57}
    d = A.diff_ci(a, b)
    diffs = [0.05, 0.08, 0.08]
    assert (d.kind, d.n) == ("paired", 3)
    assert d.mean == pytest.approx(np.mean(diffs)) and d.half == pytest.approx(t_half(diffs))
    assert "paired over 3 seeds" in d.text()
    one = A.diff_ci(a, {0: 0.5})
    assert one.kind == "one-run" and one.half == pytest.approx(t_half([0.10, 0.11, 0.15]))
    assert "CI unavailable" in A.diff_ci({0: 0.6}, {0: 0.5}).text()


def test_rank_trend_is_exact_for_few_configurations():
    rho, p = A.rank_trend([0.0, 0.5, 1.0], [0.59, 0.55, 0.48])  # 3 points in perfect order: 2 of 6 orderings
    assert rho == pytest.approx(-1.0) and p == pytest.approx(1 / 3)  # as extreme; spearmanr's t says p = 0
    x, y = np.arange(12.0), np.array([0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10.0])
    assert A.rank_trend(x, y) == pytest.approx(tuple(stats.spearmanr(x, y)))  # many points: t approximation


def test_pareto_front_is_the_hand_known_set(findings):
    front = findings.pareto[findings.pareto["front"]]
    assert sorted(front["config_key"]) == ["cfg-a03", "cfg-a05", "cfg-a1"]  # a0 dominated by a05; pruned out
    toy = pd.DataFrame({"x": [1, 2, 3, 2, 1], "y": [3, 2, 1, 1, 3]})
    assert A.pareto_front(toy, "x", "y").tolist() == [True, True, True, False, True]  # ties do not dominate


def test_high_resource_pair_deltas_against_alpha_one(findings):
    d = findings.hr_deltas.set_index("pair")
    assert findings.high_resource == ["en", "de"] and len(d) == 4  # el is not high-resource
    assert findings.heatmap_source == "full"  # the three configurations all have the full evaluation
    seed_diffs = np.array(CONFIGS["cfg-a05"][6]) - np.array(CONFIGS["cfg-a1"][6])
    m05, m1 = np.array(CONFIGS["cfg-a05"][5]), np.array(CONFIGS["cfg-a1"][5])
    for q, c in [("en", "en"), ("en", "de"), ("de", "en"), ("de", "de")]:
        i, j = LANGS.index(q), LANGS.index(c)
        expected = m05[i, j] - m1[i, j] + seed_diffs
        assert d.loc[f"{q}→{c}", "delta"] == pytest.approx(expected.mean())
        assert d.loc[f"{q}→{c}", "half"] == pytest.approx(t_half(expected))
    heat = next(iter(findings.heatmaps.values()))  # full matrices: mean over seeds + the full shift
    assert heat.loc["en", "en"] == pytest.approx(0.76 + np.mean(CONFIGS["cfg-a05"][6]) + FULL_SHIFT)


def test_worst_pair_and_spread(findings):
    r = findings.robust.set_index("config_key").loc["cfg-a0"]
    offsets = np.array(CONFIGS["cfg-a0"][6])
    base = np.array(CONFIGS["cfg-a0"][5])
    off = base[~np.eye(3, dtype=bool)]
    assert r["worst"] == pytest.approx(0.50 + offsets.mean()) and r["worst ±"] == pytest.approx(t_half(0.50 + offsets))
    assert r["std"] == pytest.approx(np.std(off)) and r["range"] == pytest.approx(0.62 - 0.50)
    assert set(findings.robust_runs[findings.robust_runs["config_key"] == "cfg-a0"]["worst_pair"]) == {"de→el"}


def test_answers_state_numbers_or_coverage(findings):
    q1 = " ".join(findings.answers["q1"])
    assert "alpha=0.50, tau=0.05 vs alpha=1: multi mAP +0.070 ±" in q1 and "paired over 3 seeds" in q1
    assert "Out-of-domain mlqa-r" in q1
    assert "--set sweep.search.num_train_languages=[2,5,9]" in " ".join(findings.answers["q3"])
    assert any("Largest loss" in line for line in findings.answers["q2"])
    assert findings.importance is None and "too few" in findings.importance_note  # 4 completed configurations


def test_number_of_training_languages_when_the_sweep_varied_it(built):
    f = built[1][1]
    assert f.lang_effect["k"].tolist() == [2, 3] and f.lang_effect["config_key"].tolist() == ["cfg-a05", "cfg-a03"]
    q3 = " ".join(f.answers["q3"])
    expected = A.diff_ci({0: 0.58}, dict(enumerate(CONFIGS["cfg-a05"][3])))  # k=3 (1 seed) - k=2 (3 seeds)
    assert f"k=3 vs k=2 (their best configurations, each {PICKED}): multi mAP {expected.text()}" in q3
    assert expected.kind == "one-run" and expected.mean == pytest.approx(0.58 - 0.62)


def test_answers_at_a_glance_carry_intervals_and_verdicts(built):
    """alpha = 0 - alpha = 1 on the full evaluation, paired over 3 seeds: mono and cross mAP differ by a
    constant 0.1 (separated), multi mAP by -0.03 ± 0.050 (not separable); el is never trained on."""
    from sweeps.report.glance import glance
    from sweeps.report.questions import BEYOND
    from sweeps.report.verdicts import NOT_SEPARABLE

    table = glance(built[1][0]).set_index("question")
    q1, verdict1 = table.iloc[0]
    assert verdict1 == (
        "alpha=0 worse than alpha=1: mono mAP; alpha=0 better than alpha=1: cross mAP, mAP on pairs with an "
        "unseen language (el); alpha=0 vs alpha=1 not separable: multi mAP, mAP on trained-language pairs"
    )
    unseen = np.mean([0.55, 0.50, 0.58, 0.52, 0.66]) - np.mean([0.45, 0.44, 0.50, 0.47, 0.78])  # pairs with el
    assert f"(el) {unseen + np.mean([0, 0.02, 0.015]):+.3f} ±" in q1  # + the seeds' matrix offsets, paired
    multi = A.diff_ci(dict(enumerate(CONFIGS["cfg-a0"][3])), dict(enumerate(CONFIGS["cfg-a1"][3])))
    assert f"multi mAP {multi.mean:+.3f} ± {multi.half:.3f}" in q1 and not multi.significant
    assert "mAP on pairs with an unseen language (el)" in q1 and "Best by multi mAP: alpha=0.50" in q1
    assert table.iloc[1]["verdict"].startswith(("hybrid", NOT_SEPARABLE))  # alpha 0.5 vs 1, high-resource pairs
    assert "Selection: the hybrid (the best of 2) was picked on this held-out set" in table.iloc[1, 0]
    assert "each k's best configuration" not in table.iloc[2, 0] and table.iloc[2, 1] == "not covered"
    varied = (
        glance(built[1][1]).set_index("question").iloc[2]
    )  # k = 3 at another alpha and tau: a confounded comparison, said so
    assert "each k's best configuration (other knobs differ)" in varied.iloc[0] and "k=3 - k=2 -0.040" in varied.iloc[0]
    assert table.iloc[3, 0].startswith("alpha=0 - alpha=1 (lower ECE is better): mono ECE -0.100 ± 0.000")
    assert table.iloc[3, 1] == "alpha=0 better than alpha=1: mono ECE, cross ECE, multi ECE"  # lower ECE: better
    # Beyond the paper: training length (proxy, steps 20 and 40), the merge against the best hybrid (full
    # evaluation, paired: -0.02 on every seed), no schedule in this sweep.
    length, merge, schedule = (table.loc[q] for q in BEYOND.values())
    assert length.iloc[0].startswith(f"multi mAP, proxy evaluation: alpha=0 - alpha=1 at step 20 {multi.mean:+.3f}")
    assert "at step 40" in length.iloc[0] and "hybrid - alpha=1 at step 40" in length.iloc[0]
    assert merge.iloc[0] == (
        "merge w=0.5 (the best merge by multi mAP) - alpha=0.50, tau=0.05 (hybrid), full evaluation: "
        "mono mAP -0.020 ± 0.000; cross mAP -0.020 ± 0.000; multi mAP -0.020 ± 0.000. Selection: the hybrid (the "
        "best of 2) was picked on this held-out set (xquad-r), so its value there is optimistic."
    )  # one merge weight: no selection among merges
    assert merge.iloc[1] == "merge w=0.5 worse than hybrid: mono mAP, cross mAP, multi mAP"
    assert schedule.tolist() == ["every trial used one alpha schedule (sweep.search.alpha_schedule)", "not covered"]
    assert glance(built[1][1]).set_index("question").loc[BEYOND["merge"], "verdict"] == "not covered"


def test_the_merges_are_set_against_the_hybrid_and_each_reference(built):
    from sweeps.report.glance import merges_table

    f = built[1][0]
    assert (
        f.sweep.merges["config_key"].tolist() == ["merge w=0.5"] * 3
        and f.sweep.runs["config_key"].ne("merge w=0.5").all()
    )
    table = merges_table(f).set_index("metric")
    multi = table.loc["multi mAP"]
    values = [v - MERGE_GAP + FULL_SHIFT for v in CONFIGS["cfg-a05"][3]]
    assert multi["value"].startswith(f"{np.mean(values):.3f} ± {t_half(values):.3f}")
    assert (
        multi["merge - best hybrid"]
        == A.diff_ci(dict(enumerate(values)), {i: v + MERGE_GAP for i, v in enumerate(values)}).text()
    )
    for ref in ("cfg-a0", "cfg-a1"):
        theirs = {i: v + FULL_SHIFT for i, v in enumerate(CONFIGS[ref][3])}
        assert multi[f"merge - alpha={CONFIGS[ref][0]:g}"] == A.diff_ci(dict(enumerate(values)), theirs).text()


def test_the_references_are_compared_at_every_checkpoint(built):
    """Proxy multi mAP at step 20 (the synthetic early values) and 40, alpha = 0 - alpha = 1 paired by seed."""
    from sweeps.report.glance import references_by_step

    table = references_by_step(built[1][0])
    assert table["step"].tolist() == [20, STEPS]
    final = A.diff_ci(dict(enumerate(CONFIGS["cfg-a0"][3])), dict(enumerate(CONFIGS["cfg-a1"][3])))
    assert table.iloc[1]["alpha=0 - alpha=1"] == final.text()  # early values are all shifted by -0.1: same diff
    assert table.iloc[0]["alpha=0 - alpha=1"] == final.text()
    assert table.iloc[1]["verdict (alpha=0 - alpha=1)"].startswith("not separable")
    # The best hybrid (alpha = 0.5) against each reference, at each step, and the figure of all three.
    for ref in ("cfg-a0", "cfg-a1"):
        hybrid = A.diff_ci(dict(enumerate(CONFIGS["cfg-a05"][3])), dict(enumerate(CONFIGS[ref][3])))
        assert table[f"hybrid - alpha={CONFIGS[ref][0]:g}"].tolist() == [hybrid.text()] * 2
    from sweeps.report.figures import gap_curves

    assert gap_curves(built[1][0]) is not None


def test_importances_from_a_rebuilt_optuna_study():
    """Importances from 20 configurations (`MIN_IMPORTANCE_CONFIGS`); none, and why, from fewer."""
    n = A.MIN_IMPORTANCE_CONFIGS
    rng = np.random.default_rng(0)
    summary = pd.DataFrame(
        {
            "config_key": [f"c{i}" for i in range(n)],
            "mono_ratio": rng.uniform(0, 1, n),
            "temperature": np.exp(rng.uniform(-4, -1.5, n)),
            "complete": True,
        }
    )
    summary["multi/map"] = 0.5 + 0.3 * summary["mono_ratio"]
    found, note = A.importances(summary, "multi/map", lower_is_better=False)
    assert set(found) == {"mono_ratio", "temperature"} and sum(found.values()) == pytest.approx(1.0)
    assert found["mono_ratio"] > found["temperature"]
    fewer, why = A.importances(summary.iloc[1:], "multi/map", lower_is_better=False)
    assert fewer is None and f"({n - 1} < {n})" in why


@pytest.fixture(scope="module")
def report(store, built):
    return built[0], store[1]


def test_cli_arguments_and_errors(store, capsys):
    from sweeps.compare import main, parse_args

    args = parse_args(["--experiment", "a", "--experiment", "b", "--high-resource", "en", "zh"])
    assert args.experiment == ["a", "b"] and args.high_resource == ["en", "zh"] and args.out == "outputs/report"
    with pytest.raises(SystemExit, match="no MLflow experiment 'nope'; the store has: .*synthetic"):
        main(["--experiment", "nope", "--tracking-uri", store[1]])
    with pytest.raises(SystemExit, match="no MLflow store"):
        main(["--tracking-uri", "sqlite:///does/not/exist.db"])


def test_an_experiment_that_is_not_a_sweep_is_refused_by_name(tmp_path):
    from mlflow import MlflowClient

    from sweeps.compare import main

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("by-hand", artifact_location=(tmp_path / "mlruns").as_uri())
    client.create_run(exp, run_name="a notebook's run")
    with pytest.raises(
        SystemExit, match="experiment 'by-hand' holds no sweep: no run tagged sweep.role=parent and sweep.name=by-hand"
    ):
        main(["--experiment", "by-hand", "--tracking-uri", uri, "--out", str(tmp_path / "report")])


def test_cli_writes_a_self_contained_report_and_logs_the_pngs(report):
    from mlflow import MlflowClient

    path, uri = report
    text = path.read_text()
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == text.count("<img") >= 15  # two sweeps side by side, and their comparison
    assert 'alt="sweeps side by side"' in text and 'alt="metric vs number of training languages"' in text
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert not re.search(r'(src|href)="(?!data:)', text) and "<link" not in text  # nothing fetched
    for question in ("1. How does", "2. Does hybrid", "3. How do", "4. How does", "5. How robust"):
        assert question in text
    client = MlflowClient(tracking_uri=uri)
    parent = client.search_runs(
        [client.get_experiment_by_name("synthetic").experiment_id], filter_string="tags.`sweep.role` = 'parent'"
    )[0]
    logged = {f.path for f in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/alpha_curves.png", "report/heatmaps.png", "report/report.html"} <= logged


def test_report_renders_in_headless_chromium(report, tmp_path):
    render_in_chromium(report[0], tmp_path)


def test_loader_reads_what_evaluation_tracking_writes(tmp_path, monkeypatch):
    """Contract with evaluation.tracking: metric names, '@' -> '_at_', CSV layout, step folders, proxy split."""
    from mlflow import MlflowClient

    from evaluation import metrics as M
    from evaluation import tracking as ET
    from evaluation.results import EvalResult

    monkeypatch.setattr(ET, "heatmap", lambda *a, **k: None)  # the PNGs are not read by the report
    monkeypatch.setattr(ET, "reliability_diagram", lambda *a, **k: None)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.create_experiment("contract", artifact_location=(tmp_path / "mlruns").as_uri())
    parent = client.create_run(exp, tags={"sweep.name": "contract", "sweep.role": "parent"}).info.run_id
    run = client.create_run(
        exp, tags={"sweep.role": "trial", "mlflow.parentRunId": parent, "tune.trial_id": "t0"}
    ).info.run_id
    for key, value in {"mono_ratio": 0.5, "temperature": 0.05, "seed": 0, "config_key": "k"}.items():
        client.log_param(run, key, value)
    langs = ("en", "de")
    mat = np.array([[0.8, 0.6], [0.5, 0.7]])
    table = M.ReliabilityTable(
        np.array([0.0, 0.5]), np.array([0.5, 1.0]), np.array([3, 7]), np.array([0.3, 0.8]), np.array([0.33, 0.71])
    )
    for split, step, shift in (("heldout-proxy50", 20, -0.1), ("heldout-proxy50", 40, 0.0), ("heldout", 40, 0.01)):
        summary = {"multi/map": 0.6 + shift, "cross/mrr@10": 0.55 + shift, "mono/recall@10": 0.9}
        result = EvalResult(
            f"ckpt-{step}",
            step,
            f"hash-{split}-{step}",
            "xquad-r",
            split,
            langs,
            {"map": mat + shift, "mrr@10": mat},
            summary,
            {"en": {"map": 0.7}},
            table,
            4,
            1.0,
        )
        ET.log_result(result, run, client)
    sweep = load_sweep(client, "contract")
    m = sweep.metrics.set_index(["source", "setting", "metric"])
    assert (
        m.loc[("proxy", "multi", "map"), "value"] == pytest.approx(0.6)
        and m.loc[("proxy", "multi", "map"), "step"] == 40
    )
    assert m.loc[("full", "cross", "mrr@10"), "value"] == pytest.approx(0.56)
    assert ("full", "mono", "recall@10") in m.index and set(sweep.per_language["lang"]) == {"en"}
    full = sweep.matrices[(run, "xquad-r", "full", "map")]
    assert list(full.index) == list(full.columns) == ["en", "de"] and full.loc["de", "en"] == pytest.approx(0.51)
    assert sweep.matrices[(run, "xquad-r", "proxy", "map")].loc["de", "en"] == pytest.approx(0.5)  # step 40, not 20
    assert sweep.reliability[(run, "xquad-r", "full")]["count"].tolist() == [3, 7]


@pytest.mark.parametrize(
    "study, section, rows",
    [
        ("cpu-study", "What the CPU study found", 5),
        ("cpu-study-long", "What the long CPU study found", 3),
        ("cpu-study-ood", "What the out-of-domain study found", 2),
    ],
)
def test_a_committed_study_report_opens_offline_and_backs_the_readme(tmp_path, study, section, rows):
    """docs/<study>/report.html asks for nothing outside itself, every image decodes in headless Chromium,
    and each verdict of the README's table for that study is the report's."""
    report = ROOT / "docs" / study / "report.html"
    text = report.read_text()
    assert not re.search(r'(src|href)="(?!data:|#)', text) and "<link" not in text
    assert "Answers at a glance" in text and f"<h3>{study}</h3>" in text
    render_in_chromium(report, tmp_path)
    readme = (ROOT / "README.md").read_text().split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    verdicts = re.findall(r"^\| [^|]+\|[^|]+\| \*\*([^*]+)\*\* \|$", readme, re.M)
    assert len(verdicts) == rows and all(f"<td>{v}</td>" in text for v in verdicts), verdicts


def test_the_references_are_the_pair_equal_in_every_other_knob():
    """The sampler's alpha = 0 at tau 0.01 (better, as many seeds) is not the alpha = 0 reference: the one
    at alpha = 1's tau and k is, so the references differ in alpha alone."""
    summary = pd.DataFrame(
        {
            "config_key": ["searched", "ref0", "ref1", "hybrid"],
            "mono_ratio": [0.0, 0.0, 1.0, 0.5],
            "temperature": [0.01, 0.05, 0.05, 0.05],
            "lang_temperature": math.inf,
            "lr": np.nan,
            "num_train_languages": [5, 9, 9, 9],
            "seeds": [3, 3, 3, 1],
            "complete": True,
        }
    )
    ref0, ref1 = A.reference_pair(summary)
    assert (ref0["config_key"], ref1["config_key"]) == ("ref0", "ref1")
    assert A.reference_config(summary, 0.0)["config_key"] == "searched"  # the rule without a partner
    alone = A.reference_pair(summary[summary["config_key"] != "ref0"])
    assert (alone[0]["config_key"], alone[1]["config_key"]) == ("searched", "ref1")
