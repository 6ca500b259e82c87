"""The simulated multi-node cluster (tests/cluster_harness.py) behaves like separate machines: worker nodes
cannot see the driver's run directory but share the S3 store, a killed node is noticed and replaced, the
fake autoscaler adds a node on demand, and close() leaves nothing of its own running, and nobody else's
Ray stopped. Every driver runs in a subprocess (never `ray.init` in pytest's process). ~1 minute."""

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cluster_harness import REPO, LocalCluster, free_port, is_alive, require_cluster, session_members, short_tmp

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

# Prepended to every driver script: joins the cluster from driver_env() and prints its result as JSON.
PRELUDE = """
import json, os, sys
sys.path.insert(0, "tests")
import ray
from cluster_harness import run_on_node
ray.init(log_to_driver=False)
ARGS = json.loads(sys.argv[1])
def done(result):
    print("RESULT " + json.dumps(result), flush=True)
"""


def run_driver(cluster: LocalCluster, body: str, timeout: float = 120, **args):
    """Run a driver script against `cluster` in a subprocess; return what it passed to done()."""
    r = subprocess.run(
        [sys.executable, "-c", PRELUDE + body, json.dumps(args)],
        env=cluster.driver_env(),
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert r.returncode == 0 and lines, f"driver failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


def token_file_state():
    path = Path.home() / ".ray" / "auth_token"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


@pytest.fixture(scope="module")
def token_before():
    return token_file_state()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, token_before):
    require_cluster()
    with LocalCluster(tmp_path_factory.mktemp("driver") / "run", worker_nodes=2, cpus_per_node=1) as c:
        yield c


def test_worker_nodes_do_not_see_the_drivers_run_directory(cluster):
    marker = cluster.hidden_dir / "marker.txt"
    marker.write_text("only on the driver's machine")
    seen = run_driver(
        cluster,
        """
def probe(marker, repo_file):
    return {"marker": os.path.exists(marker), "repo": os.path.exists(repo_file),
            "node": ray.get_runtime_context().get_node_id()}
out = {"driver": os.path.exists(ARGS["marker"])}
for node_id in ARGS["nodes"]:
    out[node_id] = run_on_node(node_id, probe, ARGS["marker"], ARGS["repo_file"])
done(out)
""",
        marker=str(marker),
        repo_file=str(REPO / "pyproject.toml"),
        nodes=[cluster.head.node_id, *(n.node_id for n in cluster.nodes)],
    )
    assert seen["driver"] and seen[cluster.head.node_id]["marker"]  # the head is the driver's machine
    for node in cluster.nodes:
        assert seen[node.node_id]["node"] == node.node_id  # the task did run there
        assert not seen[node.node_id]["marker"], "a worker node sees the driver's run directory"
        assert seen[node.node_id]["repo"], "a worker node does not see the code"


def test_nodes_share_the_s3_store(cluster):
    first, second = cluster.nodes[:2]
    out = run_driver(
        cluster,
        """
import pyarrow.fs
def write(uri):
    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    with fs.open_output_stream(path + "/hello.txt") as f:
        f.write(("from " + ray.get_runtime_context().get_node_id()).encode())
def read(uri):
    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    with fs.open_input_stream(path + "/hello.txt") as f:
        return f.read().decode()
run_on_node(ARGS["first"], write, ARGS["uri"])
done(run_on_node(ARGS["second"], read, ARGS["uri"]))
""",
        uri=cluster.storage_uri("shared/probe"),
        first=first.node_id,
        second=second.node_id,
    )
    assert out == f"from {first.node_id}"
    assert cluster.list_keys("shared/") == ["shared/probe/hello.txt"]


def test_a_killed_node_is_marked_dead_and_replaced(cluster):
    victim = cluster.nodes[0]
    assert len(victim.processes()) >= 4  # ray start, raylet, log monitor, agents (and idle workers)
    took = cluster.kill_node(victim)
    print(f"killed node marked dead after {took:.1f} s")
    assert took < cluster.health_check_s + 10, f"Ray took {took:.1f} s to mark the node dead"
    assert victim.processes() == []
    replacement = cluster.add_node()
    assert cluster.node_state(replacement.node_id) == "ALIVE"
    ran_on = run_driver(
        cluster,
        """
done(run_on_node(ARGS["node"], lambda: ray.get_runtime_context().get_node_id(), num_cpus=1))
""",
        node=replacement.node_id,
    )
    assert ran_on == replacement.node_id
    alive = {n["node_id"] for n in cluster.alive_worker_nodes()}
    assert alive == {n.node_id for n in cluster.nodes if not n.killed}


def foreign_ray_processes(cluster: LocalCluster) -> list[psutil.Process]:
    """Ray processes on the machine that the harness did not start (a user's Ray, another test's)."""
    ours, sids = cluster.started_pids(), {n.sid for n in [cluster.head, *cluster.nodes]}
    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error, OSError):
            if (
                p.pid not in ours
                and os.getsid(p.pid) not in sids
                and is_alive(p)
                and (p.info["name"] in ("raylet", "gcs_server") or "ray::" in " ".join(p.info["cmdline"] or []))
            ):
                out.append(p)
    return out


def start_bystander_ray():
    """A Ray head of the test's own, outside the harness (no token file: auth disabled)."""
    tmp = short_tmp("lcby")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--num-cpus=0",
            f"--port={free_port()}",
            f"--temp-dir={tmp}",
            "--include-dashboard=false",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            "--block",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not any(p.name() == "raylet" for p in session_members(proc.pid)):
        assert proc.poll() is None and time.monotonic() < deadline, "the bystander Ray did not start"
        time.sleep(0.3)
    return proc, tmp


def test_close_stops_only_what_it_started(cluster, token_before):
    ours = cluster.started_pids()  # with the workers the drivers above left on the nodes
    bystander, by_tmp = start_bystander_ray()
    try:
        others = foreign_ray_processes(cluster)
        bystanders = [p for p in others if os.getsid(p.pid) == bystander.pid]
        assert bystanders
        t0 = time.monotonic()
        cluster.close()
        print(f"close: {time.monotonic() - t0:.1f} s")
        assert len(ours) > 20 and cluster.alive_started() == [], "close() left processes of the cluster running"
        # Other Ray processes on the machine may end on their own meanwhile: check what the harness signalled.
        assert not {p.pid for p in others} & cluster.signalled, "close() signalled a Ray it did not start"
        assert cluster.signalled <= cluster.started_pids()
        assert all(is_alive(p) for p in bystanders), "close() stopped a Ray it did not start"
        assert not cluster.tmp.exists()
        assert cluster.escaped == set(), f"processes left their node's session: {cluster.escaped}"
        assert token_file_state() == token_before, "~/.ray/auth_token was created or changed"
    finally:
        for p in session_members(bystander.pid):
            if is_alive(p):
                p.send_signal(signal.SIGKILL)
        bystander.wait(timeout=10)
        shutil.rmtree(by_tmp, ignore_errors=True)


def test_the_fake_autoscaler_adds_a_node_for_a_task(tmp_path, token_before):
    require_cluster()
    with LocalCluster(tmp_path / "run", autoscaling=True, max_autoscaled_nodes=2, idle_timeout_s=5) as c:
        assert c.alive_worker_nodes() == []
        out = run_driver(
            c,
            """
import time
@ray.remote(num_cpus=1)
def where():
    return ray.get_runtime_context().get_node_id()
t0 = time.monotonic()
node = ray.get(where.remote(), timeout=90)
done({"node": node, "s": time.monotonic() - t0})
""",
        )
        print(f"autoscaled task done after {out['s']:.1f} s")
        assert out["node"] != c.head.node_id
        assert out["node"] in {n["node_id"] for n in c.api_nodes()}
        # The fake node's processes run in the head's session (children of its autoscaler monitor).
        assert [p.name() for p in c.head.processes()].count("raylet") == 2
        # ... and the autoscaler removes it once idle.
        c._wait(lambda: c.node_state(out["node"]) == "DEAD", 60, "the idle fake node to be removed")
        ours = c.started_pids()
    assert len(ours) > 20 and c.alive_started() == [] and c.escaped == set()
    assert token_file_state() == token_before
