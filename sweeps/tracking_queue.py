"""The driver's MLflow writes during a phase, in order, on a thread of their own, retried while the
tracking server is unreachable.

Tune calls its callbacks on its own loop. A callback that waits on a slow or unreachable tracking server
stalls that loop; a trial whose last report then waits in Ray Train's report queue while its training
function returns deadlocks in Ray 2.60 (the trial's actor blocks forever in `_report_training_result`,
seen with the server stopped for 30 s). So `TrialLogger` only queues its writes here and returns: the
trials go on whatever the server does. A write that fails on a transient error (the server down or
restarting, a 5xx once MLflow's own retries are spent) is retried with backoff, without limit, and said
once; any other error is kept and raised by `flush`, at the end of the phase, as a callback's would be.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

TRANSIENT_CODES = ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED")


def transient(error: BaseException) -> bool:
    """A tracking server down, restarting or overloaded: worth waiting for. MLflow reports a refused
    connection, a timeout and a 5xx after its own retries as INTERNAL_ERROR."""
    from mlflow.exceptions import MlflowException

    if isinstance(error, MlflowException):
        return error.error_code in TRANSIENT_CODES
    return isinstance(error, OSError)  # requests' connection errors among them


class TrackingQueue:
    """Writes run in submission order on one daemon thread; `flush` waits for them all."""

    def __init__(self, first_delay_s: float = 5, max_delay_s: float = 60):
        self.first_delay_s, self.max_delay_s = first_delay_s, max_delay_s
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="mlflow-writes", daemon=True)
        self._thread.start()

    def submit(self, write: Callable[..., Any], *args: Any) -> None:
        self._queue.put((write, args))

    def flush(self) -> None:
        """Wait until every queued write is done; raise the first that failed for good."""
        self._queue.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _loop(self) -> None:
        while True:
            write, args = self._queue.get()
            try:
                if self._error is None:  # after a failure for good, later writes would only add to it
                    self._retrying(write, args)
            except BaseException as e:  # noqa: BLE001 (kept for flush, which raises it on the driver's thread)
                self._error = e
            finally:
                self._queue.task_done()

    def _retrying(self, write: Callable[..., Any], args: tuple) -> None:
        delay, down_since, said = self.first_delay_s, None, 0.0
        while True:
            try:
                write(*args)
            except Exception as e:
                if not transient(e):
                    raise
                now = time.monotonic()
                down_since = down_since or now
                if now - said >= 300:
                    print(
                        f"MLflow is unreachable ({str(e).splitlines()[0][:200]}); the trials go on and "
                        f"{self._queue.qsize() + 1} write(s) wait; retrying every {delay:.0f} s.",
                        file=sys.stderr,
                        flush=True,
                    )
                    said = now
                time.sleep(delay)
                delay = min(delay * 2, self.max_delay_s)
                continue
            if down_since is not None:
                print(
                    f"MLflow is reachable again after {time.monotonic() - down_since:.0f} s; catching up.",
                    file=sys.stderr,
                    flush=True,
                )
            return
