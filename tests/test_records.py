"""The contracts of a sweep's record: what the trial writes is what the driver reads (`sweeps.records`),
from a live Tune result and from a row of Tune's record of the trial (`result.json` read back as a
DataFrame); what a Train worker writes is what the trial reads (`trainers.reports`); the MLflow names an
evaluation is logged under parse back to it (`evaluation.mlflow_layout`)."""

import numpy as np
import pandas as pd

from evaluation import metrics as M
from evaluation import mlflow_layout as L
from evaluation.results import EvalResult
from sweeps.records import ACTIVE_S, CHECKPOINT, EVAL_RESULT, STARTUP_S, TrialReport
from trainers import reports


def report(step: int) -> TrialReport:
    langs = ("en", "de")
    table = M.ReliabilityTable(
        np.array([0.0, 0.5]), np.array([0.5, 1.0]), np.array([3, 7]), np.array([0.3, 0.8]), np.array([0.33, 0.71])
    )
    evaluation = EvalResult(
        f"ckpt-{step}",
        step,
        f"hash-{step}",
        "xquad-r",
        "heldout-proxy20",
        langs,
        {"map": np.array([[0.8, 0.6], [0.5, 0.7]])},
        {"multi/map": 0.6 + step / 100},
        {"en": {"map": 0.7}},
        table,
        4,
        1.0,
    )
    timings = {ACTIVE_S: 10.0 * step} | ({STARTUP_S: 31.5} if step == 3 else {})
    return TrialReport(
        step, f"s3://b/train/t1/checkpoint_00000{step}", [{"step": step, "loss": 1.0 / step}], timings, evaluation
    )


def test_a_report_reads_back_as_written_from_tune_and_from_its_record():
    first, last = report(3), report(6)
    tune_result = last.to_tune({"step": 6, "loss": 0.5, "samples_per_s": 4.2}) | {"trial_id": "t1", "done": False}
    assert (
        tune_result["multi/map"] == last.evaluation.summary["multi/map"] and tune_result[CHECKPOINT] == last.checkpoint
    )  # flat, for Tune
    back = TrialReport.from_tune(tune_result)
    assert (back.step, back.checkpoint, back.history, back.timings, back.loss) == (
        6,
        last.checkpoint,
        last.history,
        last.timings,
        1.0 / 6,
    )
    assert back.evaluation.summary == last.evaluation.summary and back.evaluation.to_json() == last.evaluation.to_json()
    # Tune's record: one row per report, a column per key of any report (NaN where a report lacks it).
    frame = pd.json_normalize(
        [first.to_tune({"step": 3}), first.to_tune({"step": 3}) | {EVAL_RESULT: np.nan}, last.to_tune({"step": 6})],
        sep="/",
    )
    rows = [TrialReport.from_tune(r) for r in frame.to_dict("records")]
    assert [r.step for r in rows] == [3, 3, 6]
    assert rows[0].timings == first.timings and rows[2].timings == last.timings  # no NaN start-up in the last
    assert rows[1].evaluation is None and rows[2].evaluation.to_json() == last.evaluation.to_json()


def test_a_workers_start_up_marks_come_back_out_of_its_report():
    report = reports.with_startup_marks({"step": 0, "val_loss": 1.5}, {"data": 10.0, "model": 12.5})
    assert reports.pop_startup_marks(report) == {"data": 10.0, "model": 12.5}
    assert report == {"step": 0, "val_loss": 1.5}  # the training metrics are left, without the marks
    assert reports.pop_startup_marks({"step": 5, "loss": 0.3}) == {}


def test_every_mlflow_name_of_an_evaluation_parses_back_to_what_was_logged():
    for split, source in (("heldout-proxy50", L.PROXY), ("heldout", L.FULL)):
        key = L.parse_metric_key(L.metric_key("xquad-r", split, "cross/recall@10"))
        assert (key.source, key.dataset, key.split, key.scope, key.group, key.metric) == (
            source,
            "xquad-r",
            split,
            "setting",
            "cross",
            "recall@10",
        )
        key = L.parse_metric_key(L.metric_key("mlqa-r", split, L.language_metric("de", "map")))
        assert (key.scope, key.group, key.metric) == ("lang", "de", "map")
        folder = L.artifact_folder("xquad-r", split, 40)
        matrix = L.parse_artifact_path(f"{folder}/{L.artifact_stem('mrr@10')}.csv")
        assert (matrix.source, matrix.dataset, matrix.split, matrix.step, matrix.kind, matrix.metric) == (
            source,
            "xquad-r",
            split,
            40,
            "matrix",
            "mrr@10",
        )
        assert L.parse_artifact_path(f"{folder}/{L.RELIABILITY}.csv").kind == "reliability"
        assert L.parse_artifact_path(f"{folder}/map.png") is None
    assert L.parse_metric_key("train/loss") is None and L.parse_metric_key("best/multi/map") is None
    assert L.parse_artifact_path("report/figures/map.csv") is None  # the report's own files
