"""What the cluster must offer before a sweep spends anything: storage that every node sees, and the
resources its trials ask for, now or once the autoscaler has added nodes. The checks that run before Ray
starts (storage that answers, room for the checkpoints, CPUs) import no Ray.

On `cluster.yaml` the head has no CPU and worker nodes start at zero: the sweep asks the autoscaler for
its trials' bundles (`request_resources`) and waits, saying so, instead of refusing a cluster that is
about to grow. A request is refused at once only where no autoscaler could ever add to the cluster.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

from hybrid import signing, storage
from sweeps.config import SweepSetup
from trainers.config import check_resources
from trainers.footprint import checkpoint_bytes

AUTOSCALING_STATUS = "__autoscaling_status"  # ray_constants.DEBUG_AUTOSCALING_STATUS, written by the autoscaler


def alive_nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node["Alive"])


def autoscaling() -> bool:
    """Whether an autoscaler with node types of its own runs for this cluster (`ray up`, or `ray start
    --autoscaling-config`). Read from the status the autoscaler publishes in the GCS key-value store: a
    cluster started without a config (a local Ray, hand-started nodes) gets a read-only autoscaler that
    names each node's type `node_<node id>`, and can add nothing."""
    from ray.experimental.internal_kv import _internal_kv_get

    status = _internal_kv_get(AUTOSCALING_STATUS)
    mapping = (json.loads(status).get("autoscaler_report") or {}).get("node_type_mapping") or {} if status else {}
    return any(node_type != f"node_{node_id}" for node_id, node_type in mapping.items())


def check_storage(setup: SweepSetup) -> None:
    """A node-local folder cannot hold a multi-node sweep (a trial restarted on another node would not find
    its checkpoints); and storage that cannot be written fails here, not in every trial."""
    location = setup.sweep.storage_path
    if not storage.is_uri(location) and (alive_nodes() > 1 or autoscaling()):
        raise ValueError(
            f"sweep.storage_path={location!r} is a folder on this machine, but this Ray cluster has "
            "several nodes, which do not see it. Set sweep.storage_path to storage every node "
            "reaches: s3://BUCKET/PREFIX (or gs://...), or file:///PATH for a folder mounted at the "
            "same place on every node."
        )
    probe = setup.sweep.location(f".write-test-{uuid.uuid4().hex[:8]}")
    try:
        storage.write_text(probe, "ok")
        storage.delete(probe)
    except OSError as e:
        raise ValueError(
            f"sweep.storage_path={location!r} cannot be written from the driver ({e}). Check the "
            "location and the credentials (AWS_* / instance profile for s3://)."
        ) from None


def _key_fingerprint() -> str:
    """This node's signing key's fingerprint, or why it has none (a Ray task on each node)."""
    try:
        return signing.fingerprint()
    except signing.SigningKeyError as e:
        return str(e)


def check_signing_keys() -> None:
    """Every node verifies what the others wrote with the driver's key (`hybrid.signing`): a node without
    it, or with another, would skip every checkpoint and cache entry as forged. Nodes added later by the
    autoscaler fail their first trial with the same message."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    mine = signing.fingerprint()
    nodes = [node for node in ray.nodes() if node["Alive"]]
    probe = ray.remote(num_cpus=0)(_key_fingerprint)
    found = ray.get(
        [
            probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote()
            for node in nodes
        ]
    )
    for node, theirs in zip(nodes, found):
        if theirs != mine:
            problem = theirs if " " in theirs else "has another signing key than the driver's."
            raise ValueError(
                f"node {node['NodeManagerAddress']}: {problem} Every node needs the driver's "
                f"{signing.key_path()} (cluster.yaml's file_mounts ship it)."
            )


def check_reachable(setup: SweepSetup) -> None:
    """The sweep's storage answers (before Ray starts): a misspelt bucket, an endpoint that is down or
    missing credentials fail here in one line, not in a traceback from Tune's first look."""
    location = setup.sweep.storage_path
    try:
        storage.exists(setup.sweep.location())
    except OSError as e:
        raise ValueError(
            f"sweep.storage_path={location!r} cannot be read from the driver ({str(e).splitlines()[0]}). "
            "Check the bucket's name, the endpoint and the credentials (AWS_* / instance profile for "
            "s3://)."
        ) from None


def check_free_space(setup: SweepSetup) -> str | None:
    """Before Ray starts, for storage on a disk (a folder or file://): refuse a sweep whose running trials'
    checkpoints cannot fit (`checkpoint_bytes` x kept per trial x concurrent trials); return a warning when
    the whole sweep's kept checkpoints may not (finished trials keep theirs). Buckets are not measured."""
    location, run = setup.sweep.storage_path, setup.run
    if storage.is_uri(location) and not location.startswith("file://"):
        return None
    per = checkpoint_bytes(run)
    if per is None:
        return None
    s, t = setup.sweep, run.trainer
    per_trial = t.keep_checkpoints + 1 if t.keep_checkpoints else -(-run.optim.steps // t.checkpoint_every)
    running = per * (per_trial + 1) * s.max_concurrent  # + the one being written
    reseeded = s.top_k + (2 if s.reseed_references else 0)
    every = per * per_trial * (s.trials + reseeded * (s.seeds - 1))
    folder = Path(storage.filesystem(location)[1])
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < running:
        raise ValueError(
            f"sweep.storage_path={location!r} has {_gb(free)} free; the running trials need about "
            f"{_gb(running)} ({_gb(per)} a checkpoint: export, model and optimizer state; x {per_trial + 1} "
            f"kept or being written per trial, trainer.keep_checkpoints={t.keep_checkpoints}; x "
            f"sweep.max_concurrent={s.max_concurrent}). Free space, lower trainer.keep_checkpoints or "
            "sweep.max_concurrent, or use s3://BUCKET/PREFIX."
        )
    if free < every:
        return (
            f"warning: sweep.storage_path={location!r} has {_gb(free)} free; the sweep's trials keep up to "
            f"{_gb(every)} of checkpoints (trainer.keep_checkpoints={t.keep_checkpoints}). It may fill up."
        )
    return None


def trials_cpus(setup: SweepSetup) -> float:
    """CPUs `max_concurrent` trials hold: their drivers' bundles and their Train workers."""
    t, s = setup.run.trainer, setup.sweep
    return s.max_concurrent * (s.trial_bundle["CPU"] + t.workers * t.cpus_per_worker)


def spare_cpus(setup: SweepSetup, cpus: float) -> float:
    """CPUs of a cluster of `cpus` beyond `max_concurrent` trials and their proxy evaluation (rounded to
    1e-9: 2 - 1.9 - 0.1 is not quite 0 in floating point)."""
    return round(cpus - trials_cpus(setup) - setup.sweep.proxy_cpus, 9)


def check_capacity(setup: SweepSetup, cpus: float) -> None:
    """Proxy evaluation runs while trials train: its tasks must fit in the CPUs trials leave free,
    or the evaluation waits for CPUs held by the training it is waiting on."""
    s = setup.sweep
    if spare_cpus(setup, cpus) < 0:
        raise ValueError(
            f"{s.max_concurrent} concurrent trial(s) use {trials_cpus(setup):g} of {cpus:g} CPUs, "
            f"leaving less than sweep.proxy_cpus={s.proxy_cpus:g} for evaluating "
            "checkpoints. Lower sweep.max_concurrent, trainer.cpus_per_worker or sweep.proxy_cpus."
        )


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def shortfall(setup: SweepSetup, resources: dict[str, float]) -> str | None:
    """Why `resources` cannot run the sweep's trials (None when they can)."""
    try:
        check_resources(setup.run, resources)
        check_capacity(setup, resources.get("CPU", 0))
    except ValueError as e:
        return str(e)
    name, s = setup.sweep.trial_resource, setup.sweep
    if name and resources.get(name, 0) < s.max_concurrent:
        return (
            f"sweep.trial_resource={name!r}: the cluster has {resources.get(name, 0):g} of it for "
            f"sweep.max_concurrent={s.max_concurrent} trials. Declare it on the head node only (cluster.yaml: "
            f"resources: {{CPU: 0, {name}: 64}}), or set sweep.trial_resource='' to run trials anywhere."
        )
    return None


def bundles(setup: SweepSetup) -> list[dict[str, float]]:
    """The resource shapes of `max_concurrent` trials (Tune function + Train workers) and a proxy evaluation."""
    t, s = setup.run.trainer, setup.sweep
    worker = {"CPU": t.cpus_per_worker} | ({"GPU": 1} if t.use_gpu else {})
    return s.max_concurrent * ([s.trial_bundle] + [worker] * t.workers) + [{"CPU": s.proxy_cpus}]


def wait_for_resources(setup: SweepSetup, timeout_s: float, poll_s: float = 5.0) -> bool:
    """Return once the cluster can run the sweep's trials; ask the autoscaler for them when it cannot yet.
    Returns whether a request was made (to be withdrawn with `release` when the sweep ends)."""
    import ray
    from ray.autoscaler.sdk import request_resources

    problem = shortfall(setup, ray.cluster_resources())
    if problem is None:
        return False
    if not autoscaling():
        raise ValueError(problem)
    request_resources(bundles=bundles(setup))
    deadline, said = time.monotonic() + timeout_s, 0.0
    while problem is not None:
        if time.monotonic() > deadline:
            release()
            raise ValueError(
                f"{problem} The autoscaler added no capacity for it in {timeout_s:g} s "
                "(sweep.scale_up_timeout_s): check that a node type of the cluster config can hold "
                "a Train worker, and its max_workers."
            )
        if time.monotonic() - said >= 30:
            have = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
            print(
                f"Waiting for the autoscaler to add nodes (up to {timeout_s:g} s): the cluster has {have}; {problem}",
                flush=True,
            )
            said = time.monotonic()
        time.sleep(poll_s)
        problem = shortfall(setup, ray.cluster_resources())
    return True


def release() -> None:
    """Withdraw the sweep's standing request, so the autoscaler may remove idle nodes again."""
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[])
