"""One driver per sweep: a lease file in the sweep's storage, `<storage>/<sweep>/driver.lease`.

Two drivers on one sweep (a second `--resume` while the first runs, the same command in two terminals)
would run the same trials into the same Train folders and Tune state. The driver therefore creates the
lease atomically before anything starts (O_EXCL on a local or mounted folder, a conditional put with
`If-None-Match: *` on S3), with its host, pid, start time and a heartbeat it renews every
`sweep.lease_heartbeat_s` seconds, and deletes it when it ends, however it ends (short of SIGKILL).
A second driver is refused in one line naming the holder and the heartbeat's age. A lease whose heartbeat
is older than `sweep.lease_stale_after` of the holder's intervals is a dead driver's: `--resume` takes it
over, and says so. Ages are read against this machine's clock: keep the clocks of the machines that drive
a sweep in sync (NTP), as any cluster does.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any

from hybrid import storage
from sweeps.config import SweepConfig
from sweeps.uris import redact

LEASE_FILE = "driver.lease"


class LeaseHeld(ValueError):
    """Another driver runs this sweep (a user error: one line, exit 2, before Ray starts)."""


class DriverLease:
    """This driver's hold on its sweep: acquired before Ray starts, renewed by a daemon thread, released
    at the end. `enforced` is False on storage with no atomic create (gs://): then nothing is guarded."""

    def __init__(self, location: str, sweep_name: str, heartbeat_s: float, enforced: bool = True):
        self.location, self.sweep_name, self.heartbeat_s, self.enforced = location, sweep_name, heartbeat_s, enforced
        self.record = {
            "token": uuid.uuid4().hex,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.time(),
            "heartbeat": time.time(),
            "heartbeat_s": heartbeat_s,
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def acquire(cls, sweep: SweepConfig, resume: bool) -> DriverLease:
        """Hold the sweep's lease, or raise `LeaseHeld` naming the driver that does. With `resume`, a lease
        whose heartbeat stopped `lease_stale_after` intervals ago is taken over (its driver is gone)."""
        lease = cls(sweep.location(LEASE_FILE), sweep.name, sweep.lease_heartbeat_s)
        try:
            if not lease._create():
                held = lease._holder()
                age = time.time() - held.get("heartbeat", 0)
                limit = sweep.lease_stale_after * float(held.get("heartbeat_s", sweep.lease_heartbeat_s))
                if age <= limit or not resume:
                    raise LeaseHeld(lease._refusal(held, age, limit, resume))
                storage.delete(lease.location)  # the holder stopped renewing: its driver is gone
                if not lease._create():
                    raise LeaseHeld(lease._refusal(lease._holder(), 0.0, limit, resume))
                print(
                    f"Took over sweep {sweep.name!r} from the driver on {held.get('host')} (pid {held.get('pid')}), "
                    f"whose heartbeat stopped {_age(age)} ago.",
                    flush=True,
                )
        except NotImplementedError:
            print(
                f"warning: {redact(sweep.storage_path)} has no atomic create: nothing stops a second driver on "
                f"sweep {sweep.name!r} (use s3:// or a folder for sweep.storage_path to have it checked).",
                file=sys.stderr,
            )
            lease.enforced = False
            return lease
        except OSError as e:
            raise ValueError(
                f"sweep.storage_path={redact(sweep.storage_path)!r} cannot be written from the driver "
                f"({e}). Check the location and the credentials (AWS_* / instance profile for "
                "s3://)."
            ) from None
        lease._thread = threading.Thread(target=lease._renew, name="sweep-lease", daemon=True)
        lease._thread.start()
        return lease

    def _create(self) -> bool:
        return storage.create_exclusive(self.location, json.dumps(self.record))

    def _holder(self) -> dict[str, Any]:
        try:
            return json.loads(storage.read_text(self.location))
        except (OSError, ValueError):  # gone or half-written since: treat as just renewed
            return {"heartbeat": time.time()}

    def _refusal(self, held: dict[str, Any], age: float, limit: float, resume: bool) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(held.get("started", 0)))
        after = (
            "--resume takes it over"
            if not resume or age > limit
            else f"--resume takes it over once its heartbeat is older than {limit:g} s"
        )
        return (
            f"sweep {self.sweep_name!r} is being run by another driver: {held.get('host')} pid {held.get('pid')}, "
            f"started {started}, last heartbeat {_age(age)} ago ({redact(self.location)}). Wait for it to end "
            f"or stop it; if that driver is gone, {after}."
        )

    def _renew(self) -> None:
        """Renew the heartbeat until released; a lease taken over meanwhile (this driver was paused past
        its staleness) is left to its new holder, said once."""
        while not self._stop.wait(self.heartbeat_s):
            try:
                if self._holder().get("token") != self.record["token"]:
                    print(
                        f"warning: the lease of sweep {self.sweep_name!r} was taken over by another driver: this "
                        "one should stop (Ctrl-C).",
                        file=sys.stderr,
                        flush=True,
                    )
                    return
                self.record["heartbeat"] = time.time()
                storage.write_text(self.location, json.dumps(self.record))
            except OSError as e:
                print(
                    f"warning: renewing the lease of sweep {self.sweep_name!r} failed ({e}); retrying.",
                    file=sys.stderr,
                    flush=True,
                )

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still this driver's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if not self.enforced:
            return
        try:
            if self._holder().get("token") == self.record["token"]:
                storage.delete(self.location)
        except OSError:
            pass  # the storage is unreachable: the lease goes stale and --resume takes it over


def _age(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
