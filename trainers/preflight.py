"""The checks a run passes on the driver before Ray starts or a worker is scheduled: data present, the
batch fits the questions, the resources asked for exist, the signing key, the Ray cluster's address. They
import neither torch nor Ray, so a bad request is refused in about a second.
"""

from __future__ import annotations

import os
import socket

from hybrid import signing
from trainers.batches import samplers
from trainers.config import TrainRunConfig, check_resources


def preflight(config: TrainRunConfig, resources: dict[str, float] | None = None) -> None:
    """Data, batch size, resources and the signing key checked on the driver (about a second), before
    workers start."""
    signing.ensure_key()
    if resources is not None:
        check_resources(config, resources)
    samplers(config, 0, config.trainer.workers)


def check_ray_address(timeout_s: float = 5) -> None:
    """The Ray cluster this process would join, checked before Ray starts: RAY_ADDRESS, else the one `ray
    start` recorded on this machine. An empty RAY_ADDRESS, or a head that does not answer within seconds
    (a stopped cluster whose address file stayed behind), is a one-line ValueError instead of Ray's minutes
    of "Failed to connect to GCS" retries."""
    from ray._private.utils import read_ray_address

    address = os.environ.get("RAY_ADDRESS")
    if address is not None and not address.strip():
        raise ValueError(
            "RAY_ADDRESS is set but empty: unset it to start a local Ray, or set it to the cluster "
            "head's HOST:PORT (ray start --head prints it)."
        )
    target = address or read_ray_address()
    where = (
        f"RAY_ADDRESS={address}" if address else f"the Ray cluster recorded on this machine by `ray start` ({target})"
    )
    if not target or target in ("local", "auto") or "://" in target:
        return  # a new local Ray; `auto` and ray:// are Ray's to resolve
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError):
        fix = (
            "check the address and that the head runs"
            if address
            else "start it again (ray start --head), or run with RAY_ADDRESS=local for a local Ray of this sweep"
        )
        raise ValueError(f"{where} does not answer within {timeout_s:g} s: {fix}.") from None
