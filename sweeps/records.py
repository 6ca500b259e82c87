"""The contracts of a sweep's record, each written in one place and read in another.

What a trial reports to the driver: written by the trial (`sweeps.trial`), read by the driver's MLflow
logger (`sweeps.tracking`) from a live Tune result, from Tune's record of a trial (`--resume` after a
killed driver) or from the file a failed trial leaves.

A trial reports to Tune once per checkpoint. Tune wants flat numbers (the objective and `step` for the
scheduler), so the report is a flat dict: the checkpoint's training report, the proxy evaluation's
summary, the timings (`trial/*`), and two JSON texts, the training reports since the previous checkpoint
and the whole evaluation (`evaluation.results.EvalResult`). The trial also keeps each report, signed, in
its Train run's folder (`report_file`): what the driver logs when it catches up after a killed driver,
never Tune's `result.json` rows, which anyone who can write to the bucket could change.

How the sweep's MLflow runs are found: written by `sweeps.tracking`, read by the report
(`sweeps.report.data`). One experiment per sweep; its runs carry ROLE_TAG: the parent (NAME_TAG, ID_TAG,
the configuration under CONFIG_FOLDER), a trial per Tune trial (TRIAL_TAG) and a run per merge (MERGE_TAG),
nested under the parent. An evaluation's keys and artifacts: `evaluation.mlflow_layout`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from evaluation.results import EvalResult
from hybrid import storage
from trainers import reports

TRAIN_HISTORY, EVAL_RESULT = "train_history", "eval_result"  # the two JSON texts of a report
CHECKPOINT = reports.CHECKPOINT  # the checkpoint's URI in the sweep's storage, named as the trainer names it
TIMING = "trial/"  # the timings' prefix
ACTIVE_S = "trial/active_s"  # in every report: which steps a trial's run has logged
STARTUP_S, WALL_S = "trial/startup_s", "trial/wall_s"  # the first report's; the driver's, at the trial's end
STARTUP_STAGE = "trial/startup/"  # `trial/startup/<stage>_s`: the start-up's split (`sweeps.trial.startup_split`)
UNREPORTED = "unreported_history.json"  # in a Train run's folder: training reports its failure left unsent
REPORTS = "reports"  # in a Train run's folder: each checkpoint's report as passed to Tune, signed
REPORT_TIME_MS = "report_time_ms"  # when the trial made the report: the MLflow time of its metrics

ROLE_TAG, PARENT, TRIAL, MERGE = "sweep.role", "parent", "trial", "merge"
NAME_TAG, ID_TAG = "sweep.name", "sweep.id"  # the parent's: the sweep's name and id (`sweeps.identity`)
TRIAL_TAG, MERGE_TAG = "tune.trial_id", "sweep.merge"  # a trial's Tune id; a merge's name
PARENT_RUN = "mlflow.parentRunId"  # MLflow's own: nests a run under the parent in the UI
CONFIG_FOLDER, RESOLVED = "config", "resolved.yaml"  # the parent's configuration artifacts
CONFIG_KEY = "config_key"  # a trial's param: its configuration without the seed


def unreported_purpose(trial_id: str) -> str:
    """The signing purpose of a trial's `UNREPORTED` file: the driver logs only what the trial signed."""
    return f"unreported:{trial_id}"


def report_purpose(trial_id: str) -> str:
    """The signing purpose of a trial's kept reports (`report_file`)."""
    return f"trial-report:{trial_id}"


REPORT_NAME = "step_{:06d}.json"  # a kept report's file name, by its step


def report_file(train_storage: str, trial_id: str, step: int) -> str:
    return storage.join(train_storage, trial_id, REPORTS, REPORT_NAME.format(step))


def reported_steps(train_storage: str, trial_id: str) -> set[int]:
    """The steps whose reports the trial kept (`report_file`)."""
    prefix, suffix = REPORT_NAME.split("{:06d}")
    names = storage.names(storage.join(train_storage, trial_id, REPORTS))
    return {int(name.removeprefix(prefix).removesuffix(suffix)) for name in names}


@dataclass(frozen=True)
class TrialReport:
    """One checkpoint's report: its step and URI, the training reports since the previous one (`history`,
    each a dict with `step`), the timings so far, the proxy evaluation of the checkpoint, and when Tune took
    it (`time_ms`: the MLflow timestamp of its metrics, the same however often it is logged, so that MLflow
    keeps one point where a write is retried or caught up again; the trial sets it when it makes the
    report, so its kept copy carries the same)."""

    step: int
    checkpoint: str
    history: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    evaluation: EvalResult | None = None
    time_ms: int = 0

    def to_tune(self, training: Mapping[str, Any]) -> dict[str, Any]:
        """The flat dict Tune gets, with the checkpoint's own training report (`training`: loss, speed)."""
        summary = self.evaluation.summary if self.evaluation else {}
        return {
            **training,
            **summary,
            **self.timings,
            "step": self.step,
            CHECKPOINT: self.checkpoint,
            REPORT_TIME_MS: self.time_ms,
            TRAIN_HISTORY: json.dumps(self.history),
            **({EVAL_RESULT: self.evaluation.to_json()} if self.evaluation else {}),
        }

    @classmethod
    def from_tune(cls, result: Mapping[str, Any]) -> TrialReport:
        """A report back from Tune's result (live, or a row of its record: absent fields may be NaN)."""
        evaluation = result.get(EVAL_RESULT)
        made, stamp = result.get(REPORT_TIME_MS), result.get("timestamp")  # the trial's; Tune's, in seconds
        return cls(
            step=int(result.get("step", 0)),
            checkpoint=str(result.get(CHECKPOINT, "")),
            history=json.loads(result.get(TRAIN_HISTORY) or "[]"),
            timings={k: float(v) for k, v in result.items() if k.startswith(TIMING) and v == v},
            evaluation=EvalResult.from_json(evaluation) if isinstance(evaluation, str) else None,
            time_ms=int(made)
            if isinstance(made, (int, float)) and made == made
            else int(stamp * 1000)
            if isinstance(stamp, (int, float)) and stamp == stamp
            else int(time.time() * 1000),
        )

    @property
    def loss(self) -> float:
        """The last training loss in this report's history (NaN when none)."""
        return next((h["loss"] for h in reversed(self.history) if "loss" in h), float("nan"))
