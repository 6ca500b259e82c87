"""A simulated multi-node Ray cluster on one machine, for tests of the sweep against a real cluster's setup.

Why: bugs that only show on a cluster (a worker node that cannot see the driver's run directory, storage
that must be shared, a node that dies, nodes that the autoscaler adds) do not show with a local
`ray.init()`. This builds the cluster's shape on one machine:

- an S3-compatible store (`moto_server` on 127.0.0.1) as the shared storage of every node;
- a 0-CPU head started like cluster.yaml's (`ray start --head --num-cpus=0`, dashboard on, token auth);
- worker nodes, each its own `ray start --address=... --block` in a mount namespace where the driver's
  run directory (`hidden_dir`) is an empty tmpfs, as on a separate machine; or, with `autoscaling=True`,
  worker nodes that Ray's fake multi-node provider adds and removes on demand (no mount isolation).

Everything it starts runs in sessions of its own and is stopped by PID: it never calls `ray stop`, which
would kill a user's own Ray on the machine, and it never touches `/tmp/ray` or `~/.ray/auth_token`.

Drivers must run in a subprocess with `driver_env()` (never `ray.init` in pytest's own process):

    with LocalCluster(tmp_path / "run") as cluster:
        subprocess.run([sys.executable, "-c", SCRIPT], env=cluster.driver_env(), cwd=REPO, check=True)
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import psutil

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's `ray` and `moto_server` (not whatever PATH finds first)

# Dummy credentials for moto: every node and the driver get them, so nothing can reach a real AWS account.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata lookups (slow timeouts without a network)
}

# Token authentication (Ray 2.60; the token is read in C++ by AuthenticationTokenLoader, see
# ray/_private/authentication/authentication_token_setup.py):
# - on with RAY_AUTH_MODE=token. With the mode unset, a local `ray.init()` turns it on by default and
#   writes a new token to ~/.ray/auth_token when it finds none (seen here with an empty HOME);
# - the token comes from RAY_AUTH_TOKEN (the value), else RAY_AUTH_TOKEN_PATH (a file), else
#   ~/.ray/auth_token (checked with AuthenticationTokenLoader.instance().get_raw_token()).
# So the harness gives the head, every node and the driver RAY_AUTH_MODE=token and a random RAY_AUTH_TOKEN
# of its own (and drops RAY_AUTH_TOKEN_PATH): a user's ~/.ray/auth_token is not used, created or changed.
# The dashboard's HTTP API wants the same token as `Authorization: Bearer TOKEN`.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tool(name: str) -> str | None:
    path = BIN / name
    return str(path) if path.exists() else shutil.which(name)


def short_tmp(prefix: str) -> Path:
    """A temp dir with a short path: Ray puts Unix sockets under it (108-byte limit on their paths)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp" if os.path.isdir("/tmp") else None))


@functools.lru_cache(maxsize=1)
def available() -> str | None:
    """Why this machine cannot run a LocalCluster, or None when it can. Tries the real thing (a mount
    namespace with a tmpfs over a directory) rather than guessing from the user id: ~0.1 s."""
    if not sys.platform.startswith("linux"):
        return f"LocalCluster needs Linux mount namespaces (this is {sys.platform})"
    for tool in ("ray", "moto_server", "unshare", "mount"):
        if _tool(tool) is None:
            hint = " (pip install -c constraints.txt -e '.[dev]')" if tool == "moto_server" else ""
            return f"`{tool}` is not installed{hint}"
    if importlib.util.find_spec("boto3") is None:
        return "boto3 is not installed (pip install -c constraints.txt -e '.[dev]')"
    probe = short_tmp("lcprobe")
    try:
        (probe / "marker").touch()
        cmd = f"mount -t tmpfs none {probe} && test ! -e {probe}/marker"  # a short path of our own: no quoting
        try:
            r = subprocess.run(
                ["unshare", "-m", "sh", "-c", cmd], check=False, capture_output=True, text=True, timeout=20
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"`unshare -m` failed: {e!r}"
        if r.returncode != 0:
            return (
                f"cannot hide a directory from a node: `unshare -m sh -c 'mount -t tmpfs ...'` exited "
                f"{r.returncode}: {(r.stderr or r.stdout).strip()[-300:]} (needs root or CAP_SYS_ADMIN)"
            )
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    return None


def require(reason: str | None, what: str) -> None:
    """Skip the calling test for `reason` (None: it can run); under CI=true fail instead, so a CI image that
    lost a tool does not turn `what` into silent skips."""
    import pytest

    if reason is None:
        return
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"{what} must run in CI, but: {reason}", pytrace=False)
    pytest.skip(reason)


def require_cluster() -> None:
    """A LocalCluster can run here (`unshare`, moto, root), or the test is skipped (failed under CI)."""
    require(available(), "cluster tests")


def run_on_node(node_id: str, fn: Callable, *args, num_cpus: float = 0, timeout: float = 120, **kwargs) -> Any:
    """Run `fn(*args, **kwargs)` as a Ray task pinned to node `node_id` and return its result. Call it from
    a driver connected to the cluster (not from pytest's process). `num_cpus=0` so a probe runs even
    while the node's CPUs are busy."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(fn).options(
        num_cpus=num_cpus, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)
    )
    return ray.get(task.remote(*args, **kwargs), timeout=timeout)


@dataclass
class Node:
    """One `ray start --block` the harness started (the head or a worker node). Its processes (raylet,
    agents, workers, ...) are the members of the session this process leads (`start_new_session=True`)."""

    name: str
    proc: subprocess.Popen
    log: Path
    node_id: str | None = None
    killed: bool = False

    @property
    def sid(self) -> int:
        return self.proc.pid

    def processes(self) -> list[psutil.Process]:
        """The node's processes now alive."""
        return [p for p in session_members(self.sid) if is_alive(p)]


def session_members(sid: int) -> list[psutil.Process]:
    """The processes whose session id is `sid` (zombies included)."""
    out = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid:
                out.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            pass
    return out


def is_alive(p: psutil.Process) -> bool:
    """Zombies count as dead: where PID 1 does not reap orphans (containers, this VM) they linger."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class ClosedOnExit:
    """`with Thing(...) as thing:` closes it at the end; an error of `close()` (something survived) is raised
    unless the block already raised one of its own, which stays the one shown."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, typ, exc, tb) -> None:
        try:
            self.close()
        except RuntimeError:
            if typ is None:
                raise


class S3Server:
    """An S3-compatible store with one bucket: `moto_server` on 127.0.0.1 in a session of its own, stopped
    by PID. The storage of a LocalCluster, and of storage tests that need no Ray."""

    def __init__(self, log: Path, env: dict[str, str]):
        self.log, self.env = log, env
        self.bucket = f"lc-{uuid.uuid4().hex[:10]}"
        self.port = free_port()
        self.proc = subprocess.Popen(
            [_tool("moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while not _http_ok(f"{self.endpoint}/"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"moto_server did not start:\n{_tail(log)}")
            time.sleep(0.25)
        self.client().create_bucket(Bucket=self.bucket)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def uri(self, prefix: str = "") -> str:
        """An S3 URI that pyarrow (`pyarrow.fs.FileSystem.from_uri`), Ray Train and Tune take as a
        `storage_path`. Build sub-locations with string operations, never `pathlib.Path`."""
        return f"s3://{self.bucket}/{prefix.strip('/')}?endpoint_override=127.0.0.1:{self.port}&scheme=http"

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=AWS_ENV["AWS_DEFAULT_REGION"],
            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        )

    def list_keys(self, prefix: str = "") -> list[str]:
        keys = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", [])]
        return keys

    def close(self) -> None:
        for p in session_members(self.proc.pid):
            with _ignore_gone():
                p.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


class LocalCluster(ClosedOnExit):
    """A Ray cluster of several nodes on this machine (see the module docstring). Use it as a context
    manager; `close()` stops only what it started, by PID, and checks that nothing survived."""

    def __init__(
        self,
        hidden_dir: Path,
        worker_nodes: int | None = None,
        cpus_per_node: float = 1,
        autoscaling: bool = False,
        max_autoscaled_nodes: int = 2,
        health_check_s: float = 5,
        object_store_mb: int = 256,
        idle_timeout_s: float = 30,
        start_timeout_s: float = 90,
        env: dict[str, str] | None = None,
        head_resources: dict[str, float] | None = None,
        s3: S3Server | None = None,
    ):
        """`hidden_dir`: the driver's run directory, an empty tmpfs on static worker nodes (created if
        missing). `worker_nodes`: static nodes started at once (default 2, or 0 with `autoscaling`).
        `health_check_s`: about how long Ray takes to mark a killed node dead (Ray's defaults: 5 checks
        3 s apart, ~15 s; too small and a node starved of CPU by a heavy trial is declared dead by mistake).
        `idle_timeout_s`: how long the autoscaler keeps an idle fake node. `env`: extra variables for
        every node and the driver (e.g. RAY_TRAIN_ENABLE_PRINT_PATCH=0, TORCH_EXTENSIONS_DIR).
        `head_resources`: custom resources of the head (its CPUs stay 0), as cluster.yaml's `sweep_trial`.
        `s3`: storage that outlives this cluster (a bucket another cluster continues from): used, never stopped;
        by default the cluster starts moto of its own and stops it with the rest."""
        self.hidden_dir = Path(hidden_dir).resolve()
        self.worker_nodes = (0 if autoscaling else 2) if worker_nodes is None else worker_nodes
        self.cpus_per_node = cpus_per_node
        self.autoscaling = autoscaling
        self.max_autoscaled_nodes = max_autoscaled_nodes
        self.health_check_s = health_check_s
        self.object_store_bytes = object_store_mb * 1024 * 1024
        self.idle_timeout_s = idle_timeout_s
        self.start_timeout_s = start_timeout_s
        self.extra_env = dict(env or {})
        self.head_resources = dict(head_resources or {})
        self.token = secrets.token_hex(32)
        self.head: Node | None = None
        self.nodes: list[Node] = []  # static worker nodes, killed ones included
        self.tmp: Path | None = None
        self.gcs_port = self.dashboard_port = None
        self.s3: S3Server | None = s3
        self._moto: subprocess.Popen | None = None
        self._seen: dict[tuple[int, float], psutil.Process] = {}  # every process of ours ever seen
        self.escaped: set[int] = set()  # ours, but outside their node's session (none seen in Ray 2.60)
        self.signalled: set[int] = set()  # every PID the harness sent SIGKILL to
        self._n = 0
        self._closed = False

    # -- life cycle ------------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        self.start()
        return self

    def start(self) -> LocalCluster:
        reason = available()
        if reason is not None:
            raise RuntimeError(f"LocalCluster cannot run here: {reason}")
        self.hidden_dir.mkdir(parents=True, exist_ok=True)
        self.tmp = short_tmp("lc")
        try:
            self._start_moto()
            self._start_head()
            if self.worker_nodes:
                self.add_nodes(self.worker_nodes)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """SIGKILL every process of every node, the head (with the fake nodes, which run in its session)
        and moto, by PID; then check that none of the processes ever seen is alive, and remove the temp
        dir. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._scan()  # remember what is running now (workers a driver started since the last look)
        for node in [*reversed(self.nodes), self.head]:
            if node is not None:
                self._kill_session(node.proc)
        if self._moto is not None:
            self._kill_session(self._moto)
        # Anything of ours outside those sessions (none seen): processes naming our temp dir.
        for p in self._strays():
            self._record(p)
            self._sigkill(p)
        deadline = time.monotonic() + 15
        while (survivors := [p for p in self._seen.values() if is_alive(p)]) and time.monotonic() < deadline:
            for p in survivors:
                self._sigkill(p)
            time.sleep(0.2)
        if self.tmp is not None and not os.environ.get("LOCALCLUSTER_KEEP_TMP"):
            shutil.rmtree(self.tmp, ignore_errors=True)  # LOCALCLUSTER_KEEP_TMP=1 keeps Ray's logs there
        if survivors:
            raise RuntimeError(f"LocalCluster.close: processes survived SIGKILL: {[p.pid for p in survivors]}")

    # -- storage ---------------------------------------------------------------------------------------
    def _start_moto(self) -> None:
        if self.s3 is None:
            self.s3 = S3Server(self.tmp / "moto.log", self._env("moto"))
            self._moto = self.s3.proc

    @property
    def s3_endpoint(self) -> str:
        return self.s3.endpoint

    def storage_uri(self, prefix: str = "") -> str:
        """`S3Server.uri`. (A plain `s3://BUCKET/...` works too in processes with driver_env():
        AWS_ENDPOINT_URL points at moto.)"""
        return self.s3.uri(prefix)

    def s3_client(self):
        return self.s3.client()

    def list_keys(self, prefix: str = "") -> list[str]:
        return self.s3.list_keys(prefix)

    # -- environment -----------------------------------------------------------------------------------
    def _env(self, role: str) -> dict[str, str]:
        """The environment of every process the harness starts and of the driver. Inherited RAY_*, AWS_*
        and MLFLOW_* variables are dropped (a user's RAY_ADDRESS, AWS profile or tracking server must not
        leak in; `mlflow.set_tracking_uri` in a test sets MLFLOW_TRACKING_URI in pytest's process)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_", "MLFLOW_"))}
        env.update(AWS_ENV)
        if self.s3 is not None:
            env["AWS_ENDPOINT_URL"] = self.s3.endpoint  # boto3 / pyarrow given a plain s3:// URI use moto too
        period_ms = 1000
        env.update(
            {
                "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": self.token,
                "RAY_USAGE_STATS_ENABLED": "0",
                # A killed node is marked dead after ~health_check_s failed checks, one a second (read by the GCS;
                # Ray's defaults: 5 s initial delay, period 3 s, timeout 10 s, 5 failures).
                "RAY_health_check_initial_delay_ms": "1000",
                "RAY_health_check_period_ms": str(period_ms),
                "RAY_health_check_timeout_ms": "2000",
                "RAY_health_check_failure_threshold": str(max(2, math.ceil(self.health_check_s * 1000 / period_ms))),
                # A node joining a head still busy starting (2 loaded cores) gave up after Ray's 5 s default
                # ("Failed to get cluster ID from GCS server: TimedOut"), once in a full run.
                "RAY_gcs_rpc_server_connect_timeout_s": "60",
            }
        )
        env.update(self.extra_env)
        if role == "head" and self.autoscaling:
            env["RAY_FAKE_CLUSTER"] = "1"  # FakeMultiNodeProvider refuses to start without it
            env["AUTOSCALER_UPDATE_INTERVAL_S"] = "1"  # the monitor's loop (default 5 s)
        return env

    def driver_env(self) -> dict[str, str]:
        """The environment of a driver process that joins this cluster (`ray.init()` with no address)."""
        env = self._env("driver")
        env["RAY_ADDRESS"] = f"127.0.0.1:{self.gcs_port}"
        return env

    # -- head and nodes --------------------------------------------------------------------------------
    def _start_head(self) -> None:
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        cmd = [
            _tool("ray"),
            "start",
            "--head",
            "--num-cpus=0",
            f"--port={self.gcs_port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--temp-dir={self.tmp}",
            # Free ports, not Ray's fixed defaults (10001, 52365), which a user's Ray may hold.
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--object-store-memory={self.object_store_bytes}",
            "--node-name=lc-head",
            "--disable-usage-stats",
            "--block",
        ]
        if self.head_resources:
            cmd.append(f"--resources={json.dumps(self.head_resources)}")
        if self.autoscaling:
            config = self.tmp / "autoscaling.json"
            config.write_text(json.dumps(self._autoscaling_config(), indent=1))
            cmd.append(f"--autoscaling-config={config}")
        self.head = self._popen_node("lc-head", cmd, self._env("head"))
        self._wait(
            lambda: self._find_node("lc-head"), self.start_timeout_s, "the Ray head", self.head.proc, self.head.log
        )
        self.head.node_id = self._find_node("lc-head")["node_id"]

    def _autoscaling_config(self) -> dict:
        """The autoscaler config of Ray's fake multi-node provider (the 2.60 wheel lacks its
        fake_multi_node/example.yaml, which ray.cluster_utils.AutoscalingCluster reads). The provider
        starts each node in the head's monitor process as `ray._private.node.Node(...)` (raylet, agents)
        connected to `gcs_address`, and stops it with `kill_all_processes` once idle."""
        return {
            "cluster_name": f"lc-{uuid.uuid4().hex[:8]}",
            "max_workers": self.max_autoscaled_nodes,
            "provider": {
                "type": "fake_multinode",
                "gcs_address": f"127.0.0.1:{self.gcs_port}",
                "use_node_id_as_ip": True,
                "disable_node_updaters": True,
                "disable_launch_config_check": True,
            },
            "available_node_types": {
                "ray.head.default": {
                    "resources": {"CPU": 0, **self.head_resources},
                    "node_config": {},
                    "max_workers": 0,
                },
                "ray.worker.cpu": {
                    "resources": {"CPU": self.cpus_per_node, "object_store_memory": self.object_store_bytes},
                    "node_config": {},
                    "min_workers": 0,
                    "max_workers": self.max_autoscaled_nodes,
                },
            },
            "head_node_type": "ray.head.default",
            "upscaling_speed": 1.0,
            "idle_timeout_minutes": self.idle_timeout_s / 60,
            "auth": {},
            "docker": {},
            "file_mounts": {},
            "cluster_synced_files": [],
            "file_mounts_sync_continuously": False,
            "rsync_exclude": [],
            "rsync_filter": [],
            "initialization_commands": [],
            "setup_commands": [],
            "head_setup_commands": [],
            "worker_setup_commands": [],
            "head_start_ray_commands": [],
            "worker_start_ray_commands": [],
        }

    def add_node(self) -> Node:
        """Start one more static worker node (hidden_dir an empty tmpfs there) and wait until it is alive."""
        return self.add_nodes(1)[0]

    def add_nodes(self, count: int) -> list[Node]:
        """Start `count` worker nodes, one after the other: nodes sharing a session dir that start at the
        same time pick the same socket names (`sockets/plasma_store.1`) and one raylet dies with "bind:
        Address already in use"."""
        new = []
        for _ in range(count):
            self._n += 1
            name = f"lc-w{self._n}"
            ray_start = shlex.join(
                [
                    _tool("ray"),
                    "start",
                    f"--address=127.0.0.1:{self.gcs_port}",
                    f"--num-cpus={self.cpus_per_node}",
                    f"--object-store-memory={self.object_store_bytes}",
                    f"--dashboard-agent-listen-port={free_port()}",
                    f"--node-name={name}",
                    "--disable-usage-stats",
                    "--block",
                ]
            )
            # The node's processes see an empty tmpfs at hidden_dir (they keep the namespace after `sh`
            # execs into `ray start`); everything else (venv, code, temp dir) stays shared.
            script = f"mount -t tmpfs none {shlex.quote(str(self.hidden_dir))} && exec {ray_start}"
            node = self._popen_node(name, ["unshare", "-m", "sh", "-c", script], self._env("worker"))
            self.nodes.append(node)
            self._wait(
                lambda name=name: self._find_node(name),
                self.start_timeout_s,
                f"worker node {name}",
                node.proc,
                node.log,
            )
            node.node_id = self._find_node(name)["node_id"]
            new.append(node)
        self._scan()
        return new

    def kill_node(self, node: Node, wait_dead: bool = True, timeout: float | None = None) -> float:
        """SIGKILL every process of `node` (its `ray start`, raylet, agents, workers) by PID, as when a
        machine fails. With `wait_dead`, wait until Ray marks the node DEAD; returns the seconds that took."""
        t0 = time.monotonic()
        self._kill_session(node.proc)
        node.killed = True
        if not wait_dead:
            return 0.0
        timeout = timeout or self.health_check_s + 30
        self._wait(lambda: self.node_state(node.node_id) == "DEAD", timeout, f"Ray to mark {node.name} dead")
        return time.monotonic() - t0

    def _popen_node(self, name: str, cmd: list[str], env: dict) -> Node:
        log = self.tmp / f"{name}.log"
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=REPO,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        return Node(name, proc, log)

    # -- cluster state (the dashboard's state API: no Ray driver in the test process) ---------------------
    def api_nodes(self) -> list[dict]:
        """All nodes the GCS knows (alive and dead), as dicts of the state API (`node_id`, `node_name`,
        `state`, `is_head_node`, `resources_total`, ...)."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.dashboard_port}/api/v0/nodes?limit=10000&detail=1",
            headers={"Authorization": f"Bearer {self.token}"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)["data"]["result"]["result"]

    def _find_node(self, name: str) -> dict | None:
        try:
            return next((n for n in self.api_nodes() if n.get("node_name") == name and n["state"] == "ALIVE"), None)
        except (OSError, ValueError, KeyError):
            return None

    def node_state(self, node_id: str) -> str | None:
        try:
            return next((n["state"] for n in self.api_nodes() if n["node_id"] == node_id), None)
        except (OSError, ValueError, KeyError):
            return None

    def alive_worker_nodes(self) -> list[dict]:
        """Alive nodes other than the head: static and autoscaled ones."""
        return [n for n in self.api_nodes() if n["state"] == "ALIVE" and not n.get("is_head_node")]

    def wait_for_worker_nodes(self, count: int, timeout: float = 60) -> list[dict]:
        self._wait(lambda: len(self.alive_worker_nodes()) >= count, timeout, f"{count} alive worker nodes")
        return self.alive_worker_nodes()

    # -- processes -------------------------------------------------------------------------------------
    def _record(self, p: psutil.Process) -> None:
        with _ignore_gone():
            self._seen.setdefault((p.pid, p.create_time()), p)

    def _scan(self) -> None:
        """Remember every process of ours now running (for close()'s check and `started_pids`)."""
        for proc in self._popens():
            for p in session_members(proc.pid):
                self._record(p)
        for p in self._strays():
            self._record(p)

    def _popens(self) -> list[subprocess.Popen]:
        return [n.proc for n in [self.head, *self.nodes] if n is not None] + ([self._moto] if self._moto else [])

    def _strays(self) -> list[psutil.Process]:
        """Processes of ours outside their session: descendants of a session member, or processes with a
        Ray flag that names our temp dir (`--session-dir=/tmp/lc...`). An environment tag would not do:
        Ray's setproctitle overwrites /proc/PID/environ of its agents and workers."""
        sids = {proc.pid for proc in self._popens()}
        out = {}
        for proc in self._popens():
            for m in session_members(proc.pid):
                with _ignore_gone():
                    for c in m.children(recursive=True):
                        out[c.pid] = c
        if self.tmp is not None:
            for p in psutil.process_iter(["cmdline"]):
                if any(f"={self.tmp}" in a for a in p.info["cmdline"] or []):
                    out[p.pid] = p
        strays = []
        for pid, p in out.items():
            try:
                if os.getsid(pid) not in sids:
                    strays.append(p)
                    self.escaped.add(pid)
            except (ProcessLookupError, PermissionError):
                pass
        return strays

    def started_pids(self) -> set[int]:
        """PIDs of every process of the cluster seen so far (now running or not)."""
        self._scan()
        return {pid for pid, _ in self._seen}

    def alive_started(self) -> list[psutil.Process]:
        """The processes of `started_pids()` still alive (PID reuse is caught by psutil's create time)."""
        return [p for p in self._seen.values() if is_alive(p)]

    def _sigkill(self, p: psutil.Process) -> None:
        """The only place the harness signals a process: it records the PID for `signalled` first."""
        with _ignore_gone():
            self.signalled.add(p.pid)
            p.send_signal(signal.SIGKILL)

    def _kill_session(self, proc: subprocess.Popen, timeout: float = 15) -> None:
        """SIGKILL every process of the session `proc` leads, until none is left; reap `proc`."""
        deadline = time.monotonic() + timeout
        while True:
            members = [p for p in session_members(proc.pid) if is_alive(p)]
            with _ignore_gone():
                for m in list(members):
                    members += m.children(recursive=True)  # a child that left the session (none seen)
            if not members:
                break
            for p in members:
                self._record(p)
                self._sigkill(p)
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes of session {proc.pid} survived SIGKILL: {[p.pid for p in members]}")
            time.sleep(0.1)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def _wait(
        self,
        ok: Callable[[], Any],
        timeout: float,
        what: str,
        proc: subprocess.Popen | None = None,
        log: Path | None = None,
    ) -> None:
        deadline = time.monotonic() + timeout
        while not ok():
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not ready after {timeout:.0f} s\n{_tail(log)}")
            time.sleep(0.25)


class _ignore_gone:
    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        return typ is not None and issubclass(typ, (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError))


def _http_ok(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
        return True
    except urllib.error.HTTPError:
        return True  # it answers
    except OSError:
        return False


def _tail(log: Path | None, n: int = 4000) -> str:
    if log is None or not log.exists():
        return ""
    return log.read_text(errors="replace")[-n:]
