"""Ctrl-C in the sweep driver, at any moment: the first stops the work and the sweep says how to continue
(exit 130, no later stage started); the second exits at once, its lease released. SIGTERM and SIGHUP
are taken as a Ctrl-C.

Tune installs a SIGINT handler of its own at the start of each `fit`: on a Ctrl-C its loop stops the
trials and saves its state, and it puts back the handler that was there before. When no Ctrl-C comes,
its handler stays installed after `fit` returns and would swallow one between phases or during the final
evaluation. So the driver installs `_on_sigint` before anything starts and runs every phase through
`fit` here, which installs it again afterwards and tells from which handler is installed whether Tune
took a Ctrl-C. Outside a phase the first Ctrl-C raises KeyboardInterrupt where the driver is (starting
Ray, an evaluation's `ray.wait`, the registration); inside one, or once stopping, the next exits at once.

The command line installs `_on_sigint` before it imports anything heavy, so this module imports no Tune:
`TuneHandlerSet` (a Tune callback, pickled into each phase's `tuner.pkl` by this module's path) is built
on first use.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any, NoReturn

stage = "start-up"  # what the driver is doing, for "interrupted in its ... phase"
_stopping = False  # a Ctrl-C was taken: the next one exits at once
_in_fit = False  # Tune's handler has the first Ctrl-C (set by `TuneHandlerSet`); one that reaches ours is the second


_before_exit: list[Callable[[], None]] = []  # run before a second Ctrl-C exits at once (the lease's release)


def _unraisable_here(frame: Any) -> bool:
    """A frame where a raised KeyboardInterrupt would be "ignored": printed as a traceback, and lost (a
    weakref callback, such as a WeakKeyDictionary's, or a finalizer, run wherever the driver was)."""
    return frame is not None and (frame.f_code.co_name == "__del__" or frame.f_code.co_filename == weakref.__file__)


def _on_sigint(signum: int, frame: Any) -> None:
    global _stopping
    if not (_stopping or _in_fit) and _unraisable_here(frame):
        again = threading.Timer(0.05, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT))
        again.start()  # the same Ctrl-C, once that frame has returned (a signal: it wakes a blocking call)
        return
    if _stopping or _in_fit:
        for callback in _before_exit:
            callback()
        print(
            f"\nSecond Ctrl-C: exiting at once, in the {stage} phase. Everything saved so far is kept; continue "
            "with the same command and --resume.",
            file=sys.stderr,
            flush=True,
        )
        os._exit(130)
    _stopping = True
    raise KeyboardInterrupt


def _as_ctrl_c(signum: int, frame: Any) -> None:
    """SIGTERM (`kill`, a scheduler) and SIGHUP (a dropped SSH session) stop the sweep as a Ctrl-C does: the
    same stop, the same line on how to continue, the lease released."""
    signal.raise_signal(signal.SIGINT)


def install() -> None:
    """Ctrl-C, SIGTERM and SIGHUP handled by the sweep (again after `ray.init`, whose core worker installs a
    SIGTERM handler that dumps a stack and exits 134)."""
    signal.signal(signal.SIGINT, _on_sigint)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _as_ctrl_c)


def before_exit(callback: Callable[[], None]) -> None:
    """Run `callback` before a second Ctrl-C exits at once (it must be quick: the user asked to go)."""
    _before_exit.append(callback)


def stopped(phase: str, args: list[str]) -> NoReturn:
    """The sweep's command (`args`: its flags) stopped by a Ctrl-C in `phase`: say how to continue, exit 130."""
    command = " ".join(["python", "sweeps/ratio_search.py", *args]).replace(" --resume", "")
    print(
        f"\nSweep interrupted in its {phase} phase: its trials were stopped and its state saved; nothing "
        f"finished is lost. Continue with:\n  {command} --resume",
        file=sys.stderr,
        flush=True,
    )
    raise SystemExit(130)


class Interrupted(Exception):
    """A phase stopped before all its trials ended (Ctrl-C: Tune stopped the trials and saved its state)."""


def _tune_handler_set() -> type:
    from ray import tune

    class TuneHandlerSet(tune.Callback):
        """Tune calls `setup` once its own SIGINT handler is in place: from then on, until `fit` returns, the
        first Ctrl-C is Tune's (before, it is ours, and stops the phase's start). Its handler is wrapped to
        say at once what happens (Tune's own words, advice to call `Tuner.restore` included, are hidden)."""

        def setup(self, **info) -> None:
            global _in_fit
            _in_fit = True
            tunes = signal.getsignal(signal.SIGINT)
            if not callable(tunes):  # Tune's handler turned off (TUNE_DISABLE_SIGINT_HANDLER)
                return

            def stopping(signum: int, frame: Any) -> None:
                print(
                    f"\nCtrl-C: stopping the {stage} phase (Tune stops its trials and saves its state, a few "
                    "seconds); Ctrl-C again exits at once.",
                    file=sys.stderr,
                    flush=True,
                )
                tunes(signum, frame)

            signal.signal(signal.SIGINT, stopping)

    TuneHandlerSet.__qualname__ = TuneHandlerSet.__name__  # pickled as sweeps.interrupts.TuneHandlerSet
    return TuneHandlerSet


def __getattr__(name: str) -> Any:
    """`TuneHandlerSet`, built (and Tune imported) on first use: by a phase, or by unpickling a `tuner.pkl`."""
    if name == "TuneHandlerSet":
        globals()[name] = _tune_handler_set()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def fit(tuner, phase: str):
    """`tuner.fit()` as phase `phase` (its run config holding a `TuneHandlerSet`): (its ResultGrid, whether
    a Ctrl-C stopped it)."""
    global stage, _in_fit, _stopping
    stage = phase
    install()  # Tune's handler puts back this one when it takes a Ctrl-C
    try:
        grid = tuner.fit()
    finally:
        _in_fit = False
    interrupted = signal.getsignal(signal.SIGINT) is _on_sigint
    _stopping = _stopping or interrupted
    install()  # after a fit no Ctrl-C stopped, Tune's handler is still there
    return grid, interrupted


def enter(what: str) -> None:
    """The driver moves on to `what` (the final evaluation, the registration); after a Ctrl-C it does not."""
    global stage
    if _stopping:
        raise KeyboardInterrupt
    stage = what
