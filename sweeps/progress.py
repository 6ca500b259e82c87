"""The progress view's lines from where the work runs. A trial's Tune function and Train controller run on
any node, and their output goes to Ray's logs, not the terminal; Tune hears of a trial only at its
checkpoints. So they post short lines (a trial starting, its workers up, each training report, each
evaluation) to the sweep's `Board`, a Ray actor without CPUs, and the driver prints them as they come.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import ray

from evaluation.progress import pace_left
from sweeps.knobs import KNOBS

NAME = "hybrid-sweep-progress:{}"  # the board of sweep NAME, found by its name from any node


@ray.remote(num_cpus=0)
class Board:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def post(self, line: str) -> None:
        self.lines.append(line)

    def take(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines


class Pace:
    """A trial's time left at its pace since its first report, timed again from the first report after its
    workers restart from a checkpoint (Ray Train's `max_failures`): the time before a restart is no pace."""

    def __init__(self, first_report_at: float):
        self.origin: tuple[int, int, float] | None = None  # (resumed from, step, time) the pace is timed from
        self.first_report_at = first_report_at

    def left(self, step: int, start: int, steps: int, now: float) -> str:
        """ ", about 2.0 min left" at `step` of `steps`, in an attempt resumed from `start` (0: the first)."""
        if self.origin is None:
            self.origin = (start, start, self.first_report_at)
        elif self.origin[0] != start:
            self.origin = (start, step, now)
        _, first, since = self.origin
        return pace_left(now - since, step - first, steps - first)


def knob_text(params: dict[str, Any], base: Any) -> str:
    """ "alpha 0.50, tau 0.050, seed 0": the always-shown knobs, the others where they differ from the base
    run (`knobs.Knob.text`)."""
    shown = [
        k.text(params[k.name])
        for k in KNOBS
        if k.name in params and (k.shown_always or params[k.name] != k.base_value(base))
    ]
    return ", ".join([*shown, f"seed {params.get('seed', 0)}"])


def describe(trial_id: str, params: dict[str, Any], base: Any) -> str:
    """ "trial ID (alpha 0.50, tau 0.050, seed 0)": a progress line's trial."""
    return f"trial {trial_id} ({knob_text(params, base)})"


def post(sweep: str, line: str) -> None:
    """From any node, without waiting: a line for the driver's terminal (nothing outside a sweep)."""
    try:
        board = ray.get_actor(NAME.format(sweep))
    except ValueError:
        return
    board.post.remote(f"{time.strftime('%H:%M:%S')} {line}")


class Printer:
    """The driver's side: makes the sweep's board and prints what is posted, once a second."""

    def __init__(self, sweep: str, period_s: float = 1.0):
        self.board = Board.options(name=NAME.format(sweep)).remote()
        self.period_s, self.stopped = period_s, threading.Event()
        self.thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.wait(self.period_s):
            self._print()

    def _print(self, timeout_s: float = 30) -> None:
        try:
            for line in ray.get(self.board.take.remote(), timeout=timeout_s):
                print(line, flush=True)
        except (ray.exceptions.RayError, TimeoutError):  # Ray shutting down: the lines are in the logs too
            pass

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self._print(timeout_s=5)
