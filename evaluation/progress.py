"""Progress lines of an evaluation of several models, for the sweep's final evaluation and `python -m
evaluation` alike: the models run concurrently and their figures come in late and together, so a line as
each one's are in, with the time left at the pace so far, is what shows the work is moving."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from evaluation.checkpoints import CheckpointRef


def time_left(seconds: float) -> str:
    """ ", about N min left" (or "N s"); "" when nothing is left."""
    if seconds <= 0:
        return ""
    return f", about {seconds / 60:.1f} min left" if seconds >= 60 else f", about {seconds:.0f} s left"


def pace_left(elapsed_s: float, done: int, total: int) -> str:
    """`time_left` at the pace so far: `done` of `total` units took `elapsed_s`."""
    return time_left(elapsed_s / done * (total - done)) if 0 < done < total and elapsed_s > 0 else ""


def model_lines(what: str, total: int) -> Callable[[CheckpointRef, float, bool], None]:
    """Say that `what` ("final evaluation on xquad-r") started on `total` models, and return the `on_done`
    of `evaluation.runner.evaluate_checkpoints` that prints a line per model as its figures are in."""
    print(f"{time.strftime('%H:%M:%S')} {what} started: {total} models, every language pair", flush=True)
    done: list[float] = []

    def say(ref: CheckpointRef, elapsed: float, cached: bool) -> None:
        done.append(elapsed)
        more = "" if cached else pace_left(elapsed, len(done), total)
        print(
            f"{time.strftime('%H:%M:%S')} {what}: {ref.label} "
            f"{'from the evaluation cache' if cached else f'done after {elapsed:.0f} s'} ({len(done)}/{total}{more})",
            flush=True,
        )

    return say
