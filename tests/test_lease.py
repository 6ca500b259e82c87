"""One driver per sweep (`sweeps.lease`): the lease is created atomically on a local folder (O_EXCL) and on
S3 (moto, If-None-Match: *), refused to a second driver with its holder named, renewed while held, taken
over by --resume only once stale, deleted on release. Fast: no Ray."""

import json
import re
import socket
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
    time.sleep(1.2)  # > 3 heartbeats of 0.3 s
    with pytest.raises(LeaseHeld, match="if that driver is gone, --resume takes it over"):
        DriverLease.acquire(sweep, resume=False)
    taker = DriverLease.acquire(sweep, resume=True)
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
