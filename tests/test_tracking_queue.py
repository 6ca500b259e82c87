"""The driver's MLflow writes (`sweeps.tracking_queue`): in order, retried on a transient error (a server
down or restarting), a lasting error raised at `flush`; Tune's loop never waits on them."""

import time

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from sweeps.tracking_queue import TrackingQueue


def test_writes_run_in_order_and_wait_out_an_unreachable_server(capsys):
    done, failures = (
        [],
        iter(
            [
                MlflowException("API request to http://127.0.0.1:1/api failed: connection refused"),
                ConnectionRefusedError(111, "refused"),
            ]
        ),
    )

    def write(i: int) -> None:
        if i == 1 and (error := next(failures, None)) is not None:
            raise error  # the server down for the second write's first two tries
        done.append(i)

    writes = TrackingQueue(first_delay_s=0.05)
    started = time.monotonic()
    for i in range(4):
        writes.submit(write, i)
    assert time.monotonic() - started < 0.05  # submitting never waits
    writes.flush()
    assert done == [0, 1, 2, 3]
    err = capsys.readouterr().err
    assert (
        "MLflow is unreachable (API request to http://127.0.0.1:1/api failed: connection refused); the trials go "
        "on and 3 write(s) wait"
        in err
        and "MLflow is reachable again after 0 s; catching up." in err
    )


def test_a_lasting_error_is_raised_at_flush_and_later_writes_are_skipped():
    done = []

    def bad() -> None:
        raise MlflowException("Invalid metric name: ''", error_code=INVALID_PARAMETER_VALUE)

    writes = TrackingQueue(first_delay_s=0.05)
    writes.submit(done.append, 1)
    writes.submit(bad)
    writes.submit(done.append, 2)
    with pytest.raises(MlflowException, match="Invalid metric name"):
        writes.flush()
    assert done == [1]
    writes.submit(done.append, 3)  # the error was handed over: the queue works again
    writes.flush()
    assert done == [1, 3]
