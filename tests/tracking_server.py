"""A real tracking backend on one machine, for tests: PostgreSQL (the MLflow server's backend store and
Optuna's RDBStorage) and `mlflow server` proxying artifacts to an S3 bucket (cluster_harness.S3Server).

- `Postgres`: a fresh cluster (initdb) in a temp folder of its own under /tmp, run as the `postgres` system
  user when this process is root (PostgreSQL refuses root), on 127.0.0.1 and a free port, with a random
  password for the superuser `sweeps` (scram-sha-256). The password never goes into a URL or an argv: the
  clients here get it as PGPASSWORD in their environment, and so must the caller's (`env`).
- `MlflowServer`: `mlflow server` on 127.0.0.1 with that database as backend store and
  `s3://BUCKET/PREFIX` as artifacts destination (runs get `mlflow-artifacts:/...` artifact URIs), one
  uvicorn worker and no huey job consumers (fast start, few processes), optionally with basic auth.

Everything is stopped by PID (never by name): the server by its process group, PostgreSQL with
`pg_ctl stop -m fast` and, failing that, SIGKILL of its postmaster (PID from postmaster.pid) and children.
Each class remembers every process it started (`started_processes()`) so a test can check none survives.

    s3 = S3Server(tmp / "moto.log", {**os.environ, **AWS_ENV})  # no context manager: close() it
    try:
        with Postgres() as pg, MlflowServer(pg, s3, auth=True) as server:
            env = {"MLFLOW_TRACKING_URI": server.url, **server.client_env, **pg.env}
            ...
    finally:
        s3.close()

Facts behind the choices (MLflow 3.17, PostgreSQL 15; shared/notes/tracking-server-on-one-machine.md):
- `mlflow server --workers N` (default 4) starts `python -m uvicorn --workers N`; with N=1 uvicorn runs the
  app in that process (no supervisor). MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false skips the huey job runner
  (its consumers idle at a few % CPU each, ignore SIGTERM for a while, and each start leaves a folder in
  /dev/shm, which `stop()` removes when job_execution=True). Start to /health = 200 measured on a 2-core
  machine, empty database or restart alike: 1 worker, no jobs ~6-8 s (2 processes); 4 workers ~13 s (7);
  4 workers and the job runner ~22-25 s (15).
- Basic auth (`--app-name basic-auth`) reads an ini file named by MLFLOW_AUTH_CONFIG_PATH, section
  [mlflow]: default_permission, database_uri (its user store), admin_username, admin_password (used only
  to create the admin in an empty user store: MLflow ships no default password and refuses to start
  without one) and authorization_function; it also needs MLFLOW_FLASK_SERVER_SECRET_KEY (CSRF) and the
  `mlflow[auth]` extra (Flask-WTF). Clients send MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.
- PostgreSQL's children call setsid() each: the postmaster's process group does not hold them, so they are
  found as the postmaster's children.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from cluster_harness import (
    AWS_ENV,
    ClosedOnExit,
    S3Server,
    _ignore_gone,
    _tail,
    free_port,
    is_alive,
    require,
    session_members,
)

BIN = Path(sys.executable).parent  # the venv's `mlflow`
_HUEY_STORAGE_PATH = "_MLFLOW_HUEY_STORAGE_PATH"  # mlflow.server.constants.HUEY_STORAGE_PATH_ENV_VAR


# -- PostgreSQL ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server binaries: $POSTGRES_BIN, else Debian's newest
    /usr/lib/postgresql/*/bin, else wherever `initdb` is on PATH."""
    if os.environ.get("POSTGRES_BIN"):
        return Path(os.environ["POSTGRES_BIN"])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@functools.lru_cache(maxsize=1)
def postgres_available() -> str | None:
    """Why this machine cannot run `Postgres`, or None when it can."""
    pg = postgres_bin()
    if pg is None or not all((pg / tool).exists() for tool in ("initdb", "pg_ctl", "psql", "pg_dump")):
        return "PostgreSQL is not installed (Debian: apt-get install -y postgresql)"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root needs `runuser` to start PostgreSQL as the `postgres` user"
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, but there is no `postgres` system user to run PostgreSQL as"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -c constraints.txt -e .)"
    return None


def require_postgres() -> None:
    """`Postgres` can run here, or the test is skipped (failed under CI=true: .ci/run installs postgresql)."""
    require(postgres_available(), "tracking-server tests")


_DB_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class Postgres(ClosedOnExit):
    """A PostgreSQL cluster of its own: superuser `sweeps`, a random password, 127.0.0.1 and a free port,
    its Unix socket in its own folder (`-k`). Starts on construction; `close()` (or the `with` block) stops
    it and deletes its folder. As root it runs as the `postgres` system user (`runuser`), else as this user.

    `durable=False` (default) runs with fsync and synchronous commit off: faster, and a crash of the
    machine may lose the last commits, which a test never needs. A killed server process loses nothing."""

    def __init__(
        self, *, user: str = "sweeps", base: str | Path = "/tmp", durable: bool = False, start_timeout: float = 60
    ):
        reason = postgres_available()
        if reason is not None:
            raise RuntimeError(f"Postgres cannot run here: {reason}")
        self.user = user
        self.host = "127.0.0.1"
        self.password = secrets.token_urlsafe(24)
        self.bin = postgres_bin()
        self._as_postgres = os.geteuid() == 0
        self._seen: dict[tuple[int, float], psutil.Process] = {}
        self.signalled: set[int] = set()
        self.postmaster: psutil.Process | None = None
        self.port: int | None = None
        self.initdb_s = self.start_s = float("nan")
        self._closed = False
        # A short path (the socket `DIR/.s.PGSQL.PORT` must fit 107 bytes) that the postgres user can reach:
        # /tmp is world-traversable, unlike pytest's 0700 /tmp/pytest-of-root.
        self.dir = Path(tempfile.mkdtemp(prefix="pg", dir=str(base)))
        try:
            self._prepare_dir()
            self._initdb()
            self._start(durable, start_timeout)
        except BaseException:
            self.close()
            raise

    # -- life cycle ------------------------------------------------------------------------------------
    def _pg_cmd(self, *args: str) -> list[str]:
        """A server-side command (initdb, pg_ctl), as the postgres user when we are root."""
        return (["runuser", "-u", "postgres", "--"] if self._as_postgres else []) + list(args)

    def _run_pg(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        # cwd: a folder the postgres user can enter (initdb complains about an unreadable one).
        return subprocess.run(
            self._pg_cmd(*args),
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env=self._server_env(),
            start_new_session=True,
        )

    def _server_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C.UTF-8", LANG="C.UTF-8")
        return env

    def _prepare_dir(self) -> None:
        if self._as_postgres:
            import pwd

            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        os.chmod(self.dir, 0o700)
        # Every parent must be traversable by the postgres user (base=/tmp is); say so plainly if not.
        probe = self._run_pg("test", "-w", str(self.dir), "-a", "-x", str(self.dir), timeout=20)
        if probe.returncode != 0:
            raise RuntimeError(
                f"the postgres user cannot use {self.dir}: a parent folder is not traversable "
                f"by it (pass base= a folder it can reach, such as /tmp)"
            )

    def _initdb(self) -> None:
        t0 = time.monotonic()
        pwfile = self.dir / "pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.password + "\n")
        try:
            if self._as_postgres:
                shutil.chown(pwfile, "postgres")
            r = self._run_pg(
                str(self.bin / "initdb"),
                "-D",
                str(self.dir / "data"),
                "-U",
                self.user,
                f"--pwfile={pwfile}",
                "-A",
                "scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                timeout=120,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed ({r.returncode}):\n{(r.stderr or r.stdout)[-3000:]}")
        self.initdb_s = time.monotonic() - t0

    def _start(self, durable: bool, timeout: float) -> None:
        t0 = time.monotonic()
        self.port = free_port()
        opts = f"-c listen_addresses={self.host} -p {self.port} -k {self.dir}"
        if not durable:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        r = self._run_pg(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.dir / "data"),
            "-o",
            opts,
            "-l",
            str(self.log),
            "-w",
            "-t",
            str(int(timeout)),
            "start",
            timeout=timeout + 30,
        )
        self._find_postmaster()  # even after a failure: close() must stop what did start
        if r.returncode != 0:
            raise RuntimeError(
                f"pg_ctl start failed ({r.returncode}): {(r.stderr or r.stdout)[-1000:]}\n{_tail(self.log)}"
            )
        if self.postmaster is None:
            raise RuntimeError(f"PostgreSQL started but left no postmaster.pid:\n{_tail(self.log)}")
        self.start_s = time.monotonic() - t0

    def _find_postmaster(self) -> None:
        """The postmaster's PID: the first line of DATA/postmaster.pid (psutil keeps its start time, so a
        reused PID is never mistaken for it)."""
        if self.postmaster is not None:
            return
        try:
            pid = int((self.dir / "data" / "postmaster.pid").read_text().split("\n", 1)[0])
            p = psutil.Process(pid)
            if any(str(self.dir / "data") in a for a in p.cmdline()):
                self.postmaster = p
                self._record(p)
        except (OSError, ValueError, psutil.Error):
            pass
        self._scan()

    def close(self) -> None:
        """Stop the server (`pg_ctl stop -m fast`, else SIGKILL of the postmaster and its children), check
        that no process it ever had survives, delete the folder. Idempotent."""
        if self._closed:
            return
        self._closed = True
        survivors: list[psutil.Process] = []
        try:
            self._find_postmaster()
            if self.postmaster is not None and is_alive(self.postmaster):
                self._scan()
                try:
                    self._run_pg(
                        str(self.bin / "pg_ctl"),
                        "-D",
                        str(self.dir / "data"),
                        "stop",
                        "-m",
                        "fast",
                        "-w",
                        "-t",
                        "20",
                        timeout=40,
                    )
                except subprocess.TimeoutExpired:
                    pass
                survivors = self._wait_gone(10)
                if survivors:  # pg_ctl failed or hung: kill by PID (postmaster first: it restarts children)
                    for p in [self.postmaster, *survivors]:
                        self._sigkill(p)
                    survivors = self._wait_gone(10)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
        if survivors:
            raise RuntimeError(f"Postgres.close: processes survived SIGKILL: {[p.pid for p in survivors]}")

    def _wait_gone(self, timeout: float) -> list[psutil.Process]:
        deadline = time.monotonic() + timeout
        while (alive := [p for p in self._seen.values() if is_alive(p)]) and time.monotonic() < deadline:
            self._scan()
            time.sleep(0.1)
        return alive

    # -- processes -------------------------------------------------------------------------------------
    def _record(self, p: psutil.Process) -> None:
        with _ignore_gone():
            self._seen.setdefault((p.pid, p.create_time()), p)

    def _scan(self) -> None:
        """Remember the postmaster's children now running (background workers, client backends)."""
        if self.postmaster is not None and is_alive(self.postmaster):
            with _ignore_gone():
                for c in self.postmaster.children(recursive=True):
                    self._record(c)

    def _sigkill(self, p: psutil.Process) -> None:
        with _ignore_gone():
            self.signalled.add(p.pid)
            p.send_signal(signal.SIGKILL)

    def started_processes(self) -> list[psutil.Process]:
        """Every process of this server seen so far (the postmaster and its children), alive or not."""
        self._scan()
        return list(self._seen.values())

    # -- clients ---------------------------------------------------------------------------------------
    @property
    def log(self) -> Path:
        return self.dir / "server.log"

    @property
    def env(self) -> dict[str, str]:
        """What a client's environment needs besides `url()`: libpq (psycopg, psql) reads PGPASSWORD."""
        return {"PGPASSWORD": self.password}

    def url(self, db: str = "postgres") -> str:
        """SQLAlchemy's URL of database `db` (MLflow's backend store, Optuna's RDBStorage): no password in
        it, the client takes PGPASSWORD from its environment (`env`)."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{db}"

    def _client_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(
            PGPASSWORD=self.password, PGHOST=self.host, PGPORT=str(self.port), PGUSER=self.user, PGCONNECT_TIMEOUT="10"
        )
        return env

    def psql(self, sql: str, db: str = "postgres", timeout: float = 60) -> str:
        """Run SQL with psql (no ~/.psqlrc, stop at the first error); its output, unaligned, tuples only."""
        r = subprocess.run(
            [str(self.bin / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", db],
            input=sql,
            env=self._client_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if r.returncode != 0:
            raise RuntimeError(f"psql failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
        return r.stdout

    def databases(self) -> list[str]:
        return self.psql("select datname from pg_database where not datistemplate;").split()

    def create_database(self, name: str, exist_ok: bool = False) -> str:
        """Create database `name` (lower-case letters, digits, `_`); its `url()`."""
        if not _DB_NAME.fullmatch(name):
            raise ValueError(f"database name {name!r}: use lower-case letters, digits and _")
        if not (exist_ok and name in self.databases()):
            self.psql(f'create database "{name}";')
        return self.url(name)

    def dump(self, db: str, timeout: float = 120) -> str:
        """pg_dump's plain-text SQL of database `db` (schema and data)."""
        r = subprocess.run(
            [str(self.bin / "pg_dump"), "--no-owner", "-d", db],
            env=self._client_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if r.returncode != 0:
            raise RuntimeError(f"pg_dump failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
        return r.stdout


# -- MLflow tracking server ------------------------------------------------------------------------------------
class MlflowServer(ClosedOnExit):
    """`mlflow server` on 127.0.0.1: backend store `pg.url(database)`, artifacts proxied to
    `s3://BUCKET/PREFIX` on `s3`. Starts (and waits for GET /health) on construction; `stop()` kills it,
    `start()` starts it again on the same port, `close()` (or the `with` block) stops it for good.

    `auth=True`: `--app-name basic-auth` with a random admin password (`username`, `password`, and
    `client_env` for a client's environment). `workers`: uvicorn workers (1: no supervisor process).
    `job_execution=False`: no huey job consumers (MLflow's async jobs: judges, trace archival)."""

    def __init__(
        self,
        pg: Postgres,
        s3: S3Server,
        *,
        database: str = "mlflow",
        prefix: str = "mlflow",
        auth: bool = False,
        workers: int = 1,
        job_execution: bool = False,
        port: int | None = None,
        start_timeout: float = 180,
    ):
        self.pg, self.s3 = pg, s3
        self.auth = auth
        self.workers = workers
        self.start_timeout = start_timeout
        self.port = port or free_port()
        self.backend_store_uri = pg.create_database(database, exist_ok=True)
        self.artifacts_destination = f"s3://{s3.bucket}/{prefix.strip('/')}"
        self.dir = Path(tempfile.mkdtemp(prefix="mlf", dir="/tmp"))
        self.username: str | None = None
        self.password: str | None = None
        self.proc: subprocess.Popen | None = None
        self.start_times: list[float] = []  # seconds from Popen to GET /health == 200, per start
        self._seen: dict[tuple[int, float], psutil.Process] = {}
        self.signalled: set[int] = set()
        self._huey_dirs: set[str] = set()  # job_execution=True: each start makes one (/dev/shm/tmpXXXX)
        self._closed = False
        # The server's own environment: none of this process's MLFLOW_*/PG*/AWS_* leaks in (a test's
        # MLFLOW_TRACKING_URI, say), and only it gets the database password and the S3 credentials.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PG", "AWS_"))}
        env.update(AWS_ENV)
        env.update(pg.env)
        env.update(
            MLFLOW_S3_ENDPOINT_URL=s3.endpoint,
            MLFLOW_DISABLE_TELEMETRY="true",
            DO_NOT_TRACK="true",
            MLFLOW_SERVER_ENABLE_JOB_EXECUTION="true" if job_execution else "false",
        )
        if auth:
            self.username, self.password = "admin", secrets.token_urlsafe(24)
            ini = self.dir / "basic_auth.ini"
            fd = os.open(ini, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(
                    "[mlflow]\n"
                    "default_permission = READ\n"
                    f"database_uri = sqlite:///{self.dir / 'basic_auth.db'}\n"
                    f"admin_username = {self.username}\n"
                    f"admin_password = {self.password}\n"
                    "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                )
            env.update(MLFLOW_AUTH_CONFIG_PATH=str(ini), MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(32))
        self.env = env
        self.cmd = [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            self.backend_store_uri,
            "--serve-artifacts",
            "--artifacts-destination",
            self.artifacts_destination,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(workers),
        ]
        if auth:
            self.cmd += ["--app-name", "basic-auth"]
        try:
            self.start()
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.dir / "server.log"

    @property
    def client_env(self) -> dict[str, str]:
        """A client's credentials (empty without auth); the tracking URI is `url`."""
        if not self.auth:
            return {}
        return {"MLFLOW_TRACKING_USERNAME": self.username, "MLFLOW_TRACKING_PASSWORD": self.password}

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> float:
        """Start the server (on `self.port`, also after `stop()`) and wait for /health; the seconds taken."""
        if self._closed:
            raise RuntimeError("MlflowServer is closed")
        if self.running():
            raise RuntimeError("MlflowServer is already running")
        t0 = time.monotonic()
        with self.log.open("a") as log:
            log.write(f"\n==== start {time.strftime('%H:%M:%S')}: port {self.port}\n")
            log.flush()
            self.proc = subprocess.Popen(
                self.cmd,
                env=self.env,
                cwd=self.dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._scan()
        try:
            self.wait_ready(self.start_timeout)
        except BaseException:
            self.stop()
            raise
        self.start_times.append(time.monotonic() - t0)
        self._scan()
        return self.start_times[-1]

    def wait_ready(self, timeout: float = 180) -> None:
        """Poll GET /health until it answers 200; raise (with the log's tail) if the server exits first or
        `timeout` passes."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.HTTPError):
                pass
            self._scan()
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise RuntimeError(f"mlflow server exited ({code}) before /health answered:\n{_tail(self.log)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"mlflow server: /health not ready after {timeout:.0f} s\n{_tail(self.log)}")
            time.sleep(0.25)

    def stop(self, timeout: float = 15) -> None:
        """SIGKILL every process of the server's session (SIGTERM leaves huey consumers alive), and their
        descendants, until none is alive; reap the server. A no-op when it is not running."""
        if self.proc is None:
            return
        deadline = time.monotonic() + timeout
        while True:
            members = [p for p in session_members(self.proc.pid) if is_alive(p)]
            with _ignore_gone():
                for m in list(members):
                    members += [c for c in m.children(recursive=True) if is_alive(c)]
            members += [p for p in self._seen.values() if is_alive(p) and p not in members]
            if not members:
                break
            for p in members:
                self._record(p)
                with _ignore_gone():
                    self.signalled.add(p.pid)
                    p.send_signal(signal.SIGKILL)
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server processes survived SIGKILL: {[p.pid for p in members]}")
            time.sleep(0.1)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for path in self._huey_dirs:  # the job queue's folder, which the killed server cannot remove
            shutil.rmtree(path, ignore_errors=True)
        self._huey_dirs.clear()

    def close(self) -> None:
        """Stop the server for good and delete its folder (log, auth config and user store). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _record(self, p: psutil.Process) -> None:
        with _ignore_gone():
            self._seen.setdefault((p.pid, p.create_time()), p)

    def _scan(self) -> None:
        """Remember the server's processes now running, and the job queue's folder their environment names
        (`mlflow server` makes it with tempfile.mkdtemp, in /dev/shm when there is one)."""
        if self.proc is None:
            return
        for p in session_members(self.proc.pid):
            self._record(p)
            with _ignore_gone():
                for c in p.children(recursive=True):
                    self._record(c)
        for p in self._seen.values():
            with _ignore_gone():
                path = p.environ().get(_HUEY_STORAGE_PATH) if is_alive(p) else None
                if path and Path(path).parent in (Path("/dev/shm"), Path(tempfile.gettempdir())):
                    self._huey_dirs.add(path)

    def started_processes(self) -> list[psutil.Process]:
        """Every process of the server seen so far (all starts), alive or not."""
        self._scan()
        return list(self._seen.values())


class RecordStack:
    """A team's record on one machine, shared by the tests that need it (conftest's session fixture
    `record_stack`): moto's S3, PostgreSQL with databases `mlflow` and `optuna`, and `mlflow server` with basic
    auth over them, its artifacts in the bucket. Each test uses experiments, study names and bucket prefixes
    of its own."""

    def __init__(self, s3: S3Server, pg: Postgres, server: MlflowServer):
        self.s3, self.pg, self.server = s3, pg, server

    @property
    def driver_env(self) -> dict[str, str]:
        """What a sweep driver needs of the record: where it is and its credentials (nothing else)."""
        return (
            self.pg.env
            | self.server.client_env
            | {"MLFLOW_TRACKING_URI": self.server.url, "HYBRID_SWEEP_STUDY_STORAGE": self.pg.url("optuna")}
        )
