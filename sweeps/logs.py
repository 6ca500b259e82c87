"""Ray's logs in the sweep's storage, `<storage>/<sweep>/logs/<Ray session>/`: they outlive the cluster.

The driver's node (the head on a cluster: every trial's Tune function and Train controller log there)
is copied every `sweep.log_sync_s` seconds while the sweep runs, so a head lost mid-sweep leaves its logs
up to the last copy; at the end each live worker node copies its own into `<session>/node-<ip>/`. Best
effort: a failed copy is said in one line and never hides the sweep's own outcome.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

from hybrid import storage
from sweeps.uris import redact

PATTERN = "worker-*"  # every Ray worker's and task's output (stdout / stderr), the trials' included


def quiet_libraries() -> None:
    """Keep the libraries' start-up lines out of the terminal (`--verbose` shows them): MLflow's INFO lines
    (its database tables created, "View run ... at" with a server), the database migrations', DeepSpeed's
    "Setting accelerator to CPU" on a driver without one (Ray's: `init_ray(quiet=True)`). Called before any
    of them is imported; a user's own MLFLOW_LOGGING_LEVEL wins."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("DeepSpeed").addFilter(lambda record: "Setting accelerator to CPU" not in record.getMessage())


class LogSync:
    """Copies this node's Ray logs (`logs`, the session's folder) into `target/<session>` now and then
    on a daemon thread; `close` copies once more, and every other live node's."""

    def __init__(self, logs: Path, target: str, every_s: float):
        self.logs, self.target = logs, storage.join(target, logs.parent.name)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(every_s,), name="log-sync", daemon=True)
        self._thread.start()

    def _loop(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.copy()

    def copy(self) -> None:
        try:
            storage.upload(self.logs, self.target, PATTERN)
        except OSError as e:
            print(
                f"Ray's logs stay in {self.logs}: copying them to {redact(self.target)} failed ({e}).",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        """The last copy of this node's logs, then each other live node's (a Ray task pinned to it)."""
        self._stop.set()
        self._thread.join(timeout=60)
        self.copy()
        copy_worker_nodes(self.target)


def copy_worker_nodes(target: str, timeout_s: float = 120) -> None:
    """Every live node other than this one copies its session's logs into `target/node-<ip>/`."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not ray.is_initialized():
        return
    here = ray.get_runtime_context().get_node_id()
    copy = ray.remote(num_cpus=0, max_retries=0)(_copy_node_logs)
    pending = {
        copy.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(
            storage.join(target, f"node-{node['NodeManagerAddress']}")
        ): node["NodeManagerAddress"]
        for node in ray.nodes()
        if node["Alive"] and node["NodeID"] != here
    }
    done, late = ray.wait(list(pending), num_returns=len(pending), timeout=timeout_s)
    failed = [pending[ref] for ref in late]
    for ref in done:
        try:
            ray.get(ref)
        except Exception as e:  # a node lost meanwhile, its storage unreachable: said, not raised
            failed.append(f"{pending[ref]} ({str(e).splitlines()[-1][:200]})")
    if failed:
        print(f"Ray's logs of node(s) {', '.join(failed)} were not copied to {redact(target)}.", file=sys.stderr)


def _copy_node_logs(target: str) -> int:
    """On a node: copy its Ray session's worker logs into `target`."""
    import ray

    logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path())
    return storage.upload(logs, target, PATTERN)
