"""One driver per sweep (`sweeps.lease`): the lease is created atomically on a local folder (O_EXCL) and on
S3 (moto, If-None-Match: *), refused to a second driver with its holder named, renewed while held, taken
over by --resume only once stale, deleted on release. Fast: no Ray."""

import json
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from hybrid import storage
from sweeps.config import SweepConfig
from sweeps.lease import LEASE_FILE, DriverLease, LeaseHeld


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path):
    return str(tmp_path / "sweeps") if request.param == "local" else request.getfixturevalue("s3_bucket")


def held_by_us(message: str) -> bool:
    return (
        re.search(
            rf"sweep 'leased' is being run by another driver: {re.escape(socket.gethostname())} pid \d+, "
            r"started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d, last heartbeat \d+ s ago \(.*driver\.lease[^)]*\)\. Wait for "
            r"it to end or stop it; if that driver is gone, --resume takes it over",
            message,
        )
        is not None
    )


def taken_over_once_stale(sweep: SweepConfig, timeout: float = 15, **kwargs) -> DriverLease:
    """`--resume`'s lease, polled until the holder's is stale by the store's clock (S3 counts in seconds)."""
    deadline = time.time() + timeout
    while True:
        try:
            return DriverLease.acquire(sweep, resume=True, **kwargs)
        except LeaseHeld:
            assert time.time() < deadline, "the lease never went stale"
            time.sleep(0.2)


def test_a_second_driver_is_refused_until_the_first_is_gone(where, capsys):
    sweep = SweepConfig(name="leased", storage_path=where, lease_heartbeat_s=0.3, lease_stale_after=3)
    first = DriverLease.acquire(sweep, resume=False)
    location = sweep.location(LEASE_FILE)
    beat = json.loads(storage.read_text(location))["heartbeat"]
    for resume in (False, True):  # a second driver, with or without --resume
        with pytest.raises(LeaseHeld) as refused:
            DriverLease.acquire(sweep, resume)
        assert held_by_us(str(refused.value)), refused.value
    time.sleep(1.0)
    assert json.loads(storage.read_text(location))["heartbeat"] > beat  # renewed
    first.release()
    assert not storage.exists(location)
    DriverLease.acquire(sweep, resume=False).release()  # free again

    # A driver killed (SIGKILL: no release, no more heartbeats): refused within the window, then taken over
    # by --resume (not by a new start), said in one line.
    dead = DriverLease.acquire(sweep, resume=False)
    dead._stop.set()
    dead._thread.join()
    with pytest.raises(LeaseHeld):
        DriverLease.acquire(sweep, resume=True)
    with pytest.raises(LeaseHeld, match="if that driver is gone, --resume takes it over"):
        DriverLease.acquire(sweep, resume=False)
    taker = taken_over_once_stale(sweep)
    assert re.search(
        r"Took over sweep 'leased' from the driver on \S+ \(pid \d+\), whose heartbeat stopped \d+ s "
        r"ago\.",
        capsys.readouterr().out,
    )
    assert json.loads(storage.read_text(location))["token"] == taker.record["token"]
    dead.release()  # the old driver, back: it deletes nothing that is no longer its own
    assert storage.exists(location)
    taker.release()


def test_two_drivers_racing_for_the_lease_one_wins(where):
    location = SweepConfig(name="raced", storage_path=where).location(LEASE_FILE)
    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda i: storage.create_exclusive(location, str(i)), range(8)))
    assert sum(won) == 1 and storage.read_text(location) == str(won.index(True))
    storage.delete(location)


def test_unwritable_storage_is_a_one_line_error(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with pytest.raises(ValueError, match=r"sweep.storage_path='.*file/x' cannot be written from the driver"):
        DriverLease.acquire(SweepConfig(name="x", storage_path=str(blocked / "x")), resume=False)


def test_a_failed_read_or_write_of_the_lease_is_retried_never_taken_for_a_takeover(where, monkeypatch, capsys):
    """Issue 33: one failed read (an S3 503, a dropped connection) ended the lease for good, read as "taken
    over". Now the storage failing for a few heartbeats leaves the lease renewed once it answers again."""
    sweep = SweepConfig(name="flaky", storage_path=where, lease_heartbeat_s=0.1, lease_stale_after=3)
    lost = threading.Event()
    lease = DriverLease.acquire(sweep, resume=False, on_lost=lost.set)
    location = sweep.location(LEASE_FILE)
    failures = iter(range(4))  # the next 4 reads or writes of the lease fail

    def flaky(call):
        def wrapper(*args, **kwargs):
            if threading.current_thread() is lease._thread and next(failures, None) is not None:
                raise OSError("503 Slow Down")
            return call(*args, **kwargs)

        return wrapper

    for name in ("read_versioned", "replace_if"):
        monkeypatch.setattr(storage, name, flaky(getattr(storage, name)))
    time.sleep(1.2)  # the failures, then renewals
    beat = json.loads(storage.read_text(location))["heartbeat"]
    time.sleep(0.5)
    assert json.loads(storage.read_text(location))["heartbeat"] > beat  # still renewed
    assert not lost.is_set() and lease._thread.is_alive()
    assert "failed (503 Slow Down); retrying." in capsys.readouterr().err
    lease.release()
    assert not storage.exists(location)


def test_a_paused_driver_never_overwrites_its_successors_lease_and_stops(where, monkeypatch):
    """Issue 33: renewal was a read then an unconditional write, so a driver paused in between (past its
    staleness, taken over meanwhile) overwrote its successor's lease and both ran the sweep. Now the renewal
    is a compare-and-swap: the paused driver's write is refused, it learns it lost the lease within the
    heartbeat and stops, and the successor's lease stands."""
    sweep = SweepConfig(name="fenced", storage_path=where, lease_heartbeat_s=0.2, lease_stale_after=2)
    location = sweep.location(LEASE_FILE)
    lost = threading.Event()
    paused, go = threading.Event(), threading.Event()
    first: DriverLease | None = None

    def pausing(write):
        def wrapper(*args, **kwargs):
            if first is not None and threading.current_thread() is first._thread and not go.is_set():
                paused.set()
                go.wait(30)
            return write(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(storage, "replace_if", pausing(storage.replace_if))
    first = DriverLease.acquire(sweep, resume=False, on_lost=lost.set)
    assert paused.wait(10)  # the first driver stopped just before its renewal's write
    second = taken_over_once_stale(sweep, on_lost=lambda: None)  # once its heartbeat is stale
    assert second.held() and not first.held()  # asked before each signed write of Tune's state
    go.set()  # the first driver goes on with the write it was about to make
    assert lost.wait(2)
    first._thread.join(2)
    assert not first._thread.is_alive()  # it renews no more
    time.sleep(0.5)
    assert json.loads(storage.read_text(location))["token"] == second.record["token"]
    first.release()  # deletes nothing of the successor's
    assert json.loads(storage.read_text(location))["token"] == second.record["token"]
    second.release()


def test_a_lease_that_cannot_be_read_or_comes_from_the_future_blocks_nothing_forever(where, capsys):
    """An unreadable lease: `--resume` takes it over at once. Issue 33: ages are the store's, so a lease whose
    holder's clock runs an hour ahead is neither taken while its writes are fresh nor blocks once they stop
    (29bd854 compared the holder's clock with the reader's)."""
    sweep = SweepConfig(name="odd", storage_path=where, lease_heartbeat_s=0.3, lease_stale_after=3)
    location = sweep.location(LEASE_FILE)
    storage.write_text(location, "{not json")
    with pytest.raises(LeaseHeld, match=r"has a lease that cannot be read .* --resume takes it over"):
        DriverLease.acquire(sweep, resume=False)
    DriverLease.acquire(sweep, resume=True).release()
    assert "whose lease could not be read." in capsys.readouterr().out
    future = {"token": "x", "host": "h", "pid": 1, "started": 0, "heartbeat": time.time() + 3600, "heartbeat_s": 0.3}
    storage.write_text(location, json.dumps(future))
    for resume in (False, True):  # written just now: fresh, whatever its clock says
        with pytest.raises(LeaseHeld):
            DriverLease.acquire(sweep, resume)
    taken_over_once_stale(sweep).release()
    assert re.search(r"whose heartbeat stopped \d+ s ago\.", capsys.readouterr().out)
    assert not storage.exists(location)
