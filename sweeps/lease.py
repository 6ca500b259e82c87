"""One driver per sweep: a lease file in the sweep's storage, `<storage>/<sweep>/driver.lease`.

Two drivers on one sweep (a second `--resume` while the first runs, the same command in two terminals)
would run the same trials into the same Train folders and Tune state. The driver therefore creates the
lease atomically before anything starts (O_EXCL on a local or mounted folder, a conditional put with
`If-None-Match: *` on S3), with its host, pid, start time and a heartbeat it renews every
`sweep.lease_heartbeat_s` seconds, and deletes it when it ends, however it ends (short of SIGKILL).
A second driver is refused in one line naming the holder and the heartbeat's age. A lease whose heartbeat
is older than `sweep.lease_stale_after` of the holder's intervals is a dead driver's: `--resume` takes it
over, and says so. Ages are the store's: the lease's last write by the bucket's clock (its Date less the
object's LastModified) or the folder's (its modification time), never a comparison of the holder's clock
with the reader's, so machines whose clocks disagree neither take a live lease nor wait on a dead one. A
lease that cannot be read as one blocks nothing forever: `--resume` takes it over too.

The lease fences: every renewal and the takeover are compare-and-swap writes on the version last seen
(`storage.replace_if`: S3 `If-Match` on the ETag, a lock beside the file on a folder), so a driver paused
past its staleness never overwrites its successor's lease. A renewal that fails to read or write is
retried (never read as a takeover); a driver that finds its lease another's stops at once, in one line,
exit status 3, writing nothing more.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from hybrid import storage
from sweeps.config import SweepConfig
from sweeps.uris import redact

LEASE_FILE = "driver.lease"
LOST_EXIT = 3  # the exit status of a driver whose lease another driver took over


class LeaseHeld(ValueError):
    """Another driver runs this sweep (a user error: one line, exit 2, before Ray starts)."""


class DriverLease:
    """This driver's hold on its sweep: acquired before Ray starts, renewed by a daemon thread, released
    at the end. `enforced` is False on storage with no atomic create (gs://): then nothing is guarded.
    `on_lost` runs on the renewing thread once the lease is found another's (default: exit at once)."""

    def __init__(
        self,
        location: str,
        sweep_name: str,
        heartbeat_s: float,
        enforced: bool = True,
        on_lost: Callable[[], None] | None = None,
    ):
        self.location, self.sweep_name, self.heartbeat_s, self.enforced = location, sweep_name, heartbeat_s, enforced
        self.on_lost = on_lost or _exit_lost
        self.record = {
            "token": uuid.uuid4().hex,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.time(),
            "heartbeat": time.time(),
            "heartbeat_s": heartbeat_s,
        }
        self.version: str | None = None  # of the lease as this driver last wrote it; None: look first
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def acquire(cls, sweep: SweepConfig, resume: bool, on_lost: Callable[[], None] | None = None) -> DriverLease:
        """Hold the sweep's lease, or raise `LeaseHeld` naming the driver that does. With `resume`, a lease
        whose heartbeat stopped `lease_stale_after` intervals ago is taken over (its driver is gone)."""
        lease = cls(sweep.location(LEASE_FILE), sweep.name, sweep.lease_heartbeat_s, on_lost=on_lost)
        try:
            for _ in range(3):  # a holder that releases while we look: create again
                if lease._create():
                    break
                try:
                    data, version, age = storage.read_aged(lease.location)
                except FileNotFoundError:
                    continue
                lease._take_over(_parse(data), version, age, sweep.lease_stale_after, resume)
                break
            else:
                raise LeaseHeld(f"sweep {sweep.name!r}: its lease {redact(lease.location)} kept changing; try again.")
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

    def _bytes(self) -> bytes:
        return json.dumps(self.record).encode()

    def _create(self) -> bool:
        if not storage.create_exclusive(self.location, self._bytes().decode()):
            return False
        self.version = self._ours()
        return self.version is not None

    def _ours(self) -> str | None:
        """The lease's version if it is this driver's; None when it is another's or gone."""
        try:
            data, version = storage.read_versioned(self.location)
        except FileNotFoundError:
            return None
        return version if (_parse(data) or {}).get("token") == self.record["token"] else None

    def _take_over(self, held: dict[str, Any] | None, version: str, age: float, stale_after: int, resume: bool) -> None:
        """Replace `held` (the lease at `version`, last written `age` seconds ago by the store's clock: the
        holder's and this machine's clocks may disagree) with this driver's if it is stale or unreadable and
        `resume` allows it; else raise `LeaseHeld`."""
        if held is None:
            if not resume:
                raise LeaseHeld(
                    f"sweep {self.sweep_name!r} has a lease that cannot be read ({redact(self.location)}: half-written "
                    "or altered). If no other driver runs it, --resume takes it over."
                )
            why = "whose lease could not be read"
        else:
            limit = stale_after * float(held.get("heartbeat_s", self.heartbeat_s))
            if age <= limit or not resume:
                raise LeaseHeld(self._refusal(held, age, limit, resume))
            why = f"whose heartbeat stopped {_age(age)} ago"
        self.record["heartbeat"] = time.time()
        self.version = storage.replace_if(self.location, self._bytes(), version)
        if self.version is None:  # another driver took it over first
            data, _ = storage.read_versioned(self.location)
            raise LeaseHeld(self._refusal(_parse(data) or {}, 0.0, stale_after * self.heartbeat_s, resume))
        who = f"the driver on {held.get('host')} (pid {held.get('pid')})" if held else "a driver"
        print(f"Took over sweep {self.sweep_name!r} from {who}, {why}.", flush=True)

    def _refusal(self, held: dict[str, Any], age: float, limit: float, resume: bool) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(held.get("started", 0)))
        after = (
            "--resume takes it over"
            if not resume or age > limit
            else f"--resume takes it over once its heartbeat is older than {limit:g} s"
        )
        return (
            f"sweep {self.sweep_name!r} is being run by another driver: {held.get('host')} pid {held.get('pid')}, "
            f"started {started}, last heartbeat {_age(max(age, 0.0))} ago ({redact(self.location)}). Wait for it to "
            f"end or stop it; if that driver is gone, {after}."
        )

    def _renew(self) -> None:
        """Renew the heartbeat until released. A failed read or write is retried at the next heartbeat (its
        outcome unknown, the lease is looked at first); a lease found another's runs `on_lost`."""
        while not self._stop.wait(self.heartbeat_s):
            try:
                held = self._beat()
            except OSError as e:
                self.version = None
                print(
                    f"warning: renewing the lease of sweep {self.sweep_name!r} failed ({e}); retrying.",
                    file=sys.stderr,
                    flush=True,
                )
                continue
            if not held and not self._stop.is_set():
                self._lost()
                return

    def _beat(self) -> bool:
        """One renewal, a compare-and-swap on the version this driver last saw: whether the lease is still
        this driver's."""
        if self.version is None:  # the last renewal failed: did it land, and is the lease still ours?
            self.version = self._ours()
            if self.version is None:
                return False
        self.record["heartbeat"] = time.time()
        version = storage.replace_if(self.location, self._bytes(), self.version)
        if version is None:
            return False
        self.version = version
        return True

    def _lost(self) -> None:
        try:
            held = _parse(storage.read_versioned(self.location)[0]) or {}
            by = f"another driver ({held.get('host')} pid {held.get('pid')})"
        except OSError:
            by = "another driver (or its lease was deleted)"
        print(
            f"error: sweep {self.sweep_name!r}: this driver's lease was taken over by {by} "
            f"({redact(self.location)}). One sweep, one driver: this one stops now and writes nothing more; the "
            "other continues the sweep.",
            file=sys.stderr,
            flush=True,
        )
        self.on_lost()

    def held(self) -> bool:
        """Whether the lease is still this driver's, read now (a failed read: not known to be, so False): asked
        before each signed write of Tune's state, so a driver that lost it writes nothing more even in the
        heartbeat before it stops."""
        if not self.enforced:
            return True
        try:
            return self._ours() is not None
        except OSError:
            return False

    def release(self, wait: bool = True) -> None:
        """Stop renewing and delete the lease if it is still this driver's. `wait=False` (a second Ctrl-C,
        exiting at once) does not wait for a renewal under way."""
        self._stop.set()
        if wait and self._thread is not None:
            self._thread.join(timeout=10)
        if not self.enforced:
            return
        try:
            version = self.version or self._ours()
            if version is not None:
                storage.delete_if(self.location, version)
        except OSError:
            pass  # the storage is unreachable: the lease goes stale and --resume takes it over


def _parse(data: bytes) -> dict[str, Any] | None:
    """A lease's record, or None when the bytes are not one (half-written by a foreign tool, altered)."""
    try:
        record = json.loads(data)
        float(record["heartbeat"])
    except (ValueError, TypeError, KeyError):
        return None
    return record if isinstance(record, dict) else None


def _exit_lost() -> None:
    sys.stdout.flush()
    os._exit(LOST_EXIT)


def _age(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
