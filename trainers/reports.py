"""What a Train worker reports to its controller, beyond its training metrics: the one contract between
`trainers.loop` (which writes it) and the trial's Train callback (`sweeps.trial`, which reads it).

- every report: `step`, the training metrics, and RESUMED_FROM (the run's first step: a resumed run's
  history starts there);
- the step-0 report: when each start-up stage of rank 0's worker ended (epoch seconds), by stage name;
- a run resumed after its last step trains nothing and reports its final checkpoint's URI as CHECKPOINT
  instead of a checkpoint (the report a killed sweep driver may never have received).
"""

from __future__ import annotations

from typing import Any

CHECKPOINT = "checkpoint_path"
RESUMED_FROM = "resumed_from_step"
_STARTUP_MARK = "startup_at/"


def with_startup_marks(report: dict[str, Any], marks: dict[str, float]) -> dict[str, Any]:
    """`report` with the start-up marks ({stage: when it ended}) added."""
    return report | {f"{_STARTUP_MARK}{stage}": at for stage, at in marks.items()}


def pop_startup_marks(report: dict[str, Any]) -> dict[str, float]:
    """The start-up marks of a report, taken out of it ({} for any report but step 0's)."""
    return {k[len(_STARTUP_MARK) :]: report.pop(k) for k in list(report) if k.startswith(_STARTUP_MARK)}
