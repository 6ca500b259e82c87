"""The trial -> driver contract (`sweeps.records`): what the trial writes is what the driver reads, from a
live Tune result and from a row of Tune's record of the trial (`result.json` read back as a DataFrame)."""

import numpy as np
import pandas as pd

from evaluation import metrics as M
from evaluation.results import EvalResult
from sweeps.records import ACTIVE_S, CHECKPOINT, EVAL_RESULT, STARTUP_S, TrialReport


def report(step: int) -> TrialReport:
    langs = ("en", "de")
    table = M.ReliabilityTable(np.array([0.0, 0.5]), np.array([0.5, 1.0]), np.array([3, 7]),
                               np.array([0.3, 0.8]), np.array([0.33, 0.71]))
    evaluation = EvalResult(f"ckpt-{step}", step, f"hash-{step}", "xquad-r", "heldout-proxy20", langs,
                            {"map": np.array([[0.8, 0.6], [0.5, 0.7]])}, {"multi/map": 0.6 + step / 100},
                            {"en": {"map": 0.7}}, table, 4, 1.0)
    timings = {ACTIVE_S: 10.0 * step} | ({STARTUP_S: 31.5} if step == 3 else {})
    return TrialReport(step, f"s3://b/train/t1/checkpoint_00000{step}", [{"step": step, "loss": 1.0 / step}],
                       timings, evaluation)


def test_a_report_reads_back_as_written_from_tune_and_from_its_record():
    first, last = report(3), report(6)
    tune_result = last.to_tune({"step": 6, "loss": 0.5, "samples_per_s": 4.2}) | {"trial_id": "t1", "done": False}
    assert tune_result["multi/map"] == last.evaluation.summary["multi/map"] and tune_result[CHECKPOINT] == last.checkpoint  # flat, for Tune
    back = TrialReport.from_tune(tune_result)
    assert (back.step, back.checkpoint, back.history, back.timings, back.loss) == (
        6, last.checkpoint, last.history, last.timings, 1.0 / 6)
    assert back.evaluation.summary == last.evaluation.summary and back.evaluation.to_json() == last.evaluation.to_json()
    # Tune's record: one row per report, a column per key of any report (NaN where a report lacks it).
    frame = pd.json_normalize([first.to_tune({"step": 3}), first.to_tune({"step": 3}) | {EVAL_RESULT: np.nan},
                               last.to_tune({"step": 6})], sep="/")
    rows = [TrialReport.from_tune(r) for r in frame.to_dict("records")]
    assert [r.step for r in rows] == [3, 3, 6]
    assert rows[0].timings == first.timings and rows[2].timings == last.timings  # no NaN start-up in the last
    assert rows[1].evaluation is None and rows[2].evaluation.to_json() == last.evaluation.to_json()
