"""Search the mono/cross batch ratio (alpha), the contrastive temperature (tau) and related knobs.

    python sweeps/ratio_search.py                       # embedded default: local Ray, e5-small, XQuAD-R
    python sweeps/ratio_search.py --config configs/xlmr-base-gpu.yaml --tracking-uri http://127.0.0.1:5000
    python sweeps/ratio_search.py --resume              # continue an interrupted sweep of the same name

    python sweeps/ratio_search.py --config configs/cpu-study.yaml   # the CPU study (README), ~80 min

Phases: an Optuna search (alpha = 0 and alpha = 1 always enqueued first, then sweep.search.points, then
the sampler's picks), optionally pruned on a proxy evaluation of every checkpoint; the top configurations
(and optionally the references) re-run with more seeds; a full evaluation of the best, the references and
the base model (or of every completed trial). Everything lands in MLflow: a parent run per sweep, a child
run per trial.

This module is the command line: its flags, every check that can run before Ray starts, the sweep's
lease, and Ray started with the checks that need it; `sweeps.driver` runs the phases.
"""

from __future__ import annotations

import signal
import sys

from sweeps import interrupts

# Ctrl-C (and SIGTERM, SIGHUP) from the first moment (the imports below take a second): the stop's lines and
# exit 130, never a traceback; `main` installs the driver's own handlers.
for _signal in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(_signal, lambda signum, frame: interrupts.stopped(interrupts.stage, sys.argv[1:]))

import argparse  # noqa: E402  (after the handler: a Ctrl-C during these imports is a clean stop)
import contextlib  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

# Tune warns when a callback takes over 0.5 s; logging a result with its matrices to MLflow takes about
# 1 s, which is no bottleneck next to a checkpoint's training and evaluation. Read when Tune is imported.
os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "10")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # the best encoder's registration loads it here

import yaml  # noqa: E402

# Only what the checks before Ray starts need: a refusal, --show-config and --help never import torch,
# DeepSpeed, Ray Train, Tune or MLflow (`drive` imports them once the sweep's lease is held).
from hybrid.config import DEFAULT_CONFIG, add_overrides_flag  # noqa: E402
from sweeps import cluster, identity, state  # noqa: E402
from sweeps.config import SweepSetup, load_sweep_setup  # noqa: E402
from sweeps.lease import DriverLease  # noqa: E402
from sweeps.logs import quiet_libraries  # noqa: E402
from sweeps.uris import record_warning, redact  # noqa: E402
from trainers.preflight import check_ray_address, preflight  # noqa: E402


@contextlib.contextmanager
def user_errors(parser: argparse.ArgumentParser, debug: bool):
    """A configuration, data or cluster-setup error is the user's: one line naming the key and the fix, exit
    status 2, no traceback (unless --debug). Any other exception is ours and keeps its traceback."""
    try:
        yield
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        if debug:
            raise
        parser.exit(2, f"error: {e}\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="a preset in configs/")
    add_overrides_flag(parser, "sweep.trials=8")
    parser.add_argument("--name", help="sweep name (MLflow experiment, storage folder); default sweep.name")
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI"),
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sweep.tracking_uri, a local SQLite file)",
    )
    parser.add_argument(
        "--study-storage",
        default=os.environ.get("HYBRID_SWEEP_STUDY_STORAGE"),
        help="the Optuna study's database, e.g. postgresql+psycopg://USER@HOST:5432/optuna (default: "
        "$HYBRID_SWEEP_STUDY_STORAGE, else sweep.study_storage; password from PGPASSWORD or "
        "~/.pgpass)",
    )
    parser.add_argument("--resume", action="store_true", help="continue the interrupted sweep of this name")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a configuration error")
    parser.add_argument(
        "--show-config",
        action="store_true",
        help="print every setting as this run would use it (the preset over the defaults, --set "
        "applied) as YAML, and exit",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also show Ray workers' and tasks' output and every trial result (always in Ray's logs)",
    )
    interrupts.install()  # Ctrl-C: stop, say how to continue, exit 130; a second one exits at once
    try:
        args = parser.parse_args(argv)
        run(args, argv, parser)
    except (interrupts.Interrupted, KeyboardInterrupt) as stop:
        phase = str(stop) if isinstance(stop, interrupts.Interrupted) else interrupts.stage
        interrupts.stopped(phase, argv if argv is not None else sys.argv[1:])


def run(args: argparse.Namespace, argv: list[str] | None, parser: argparse.ArgumentParser) -> None:
    """Check everything that can be checked before Ray starts, take the sweep's lease, then `drive` it."""
    overrides = list(args.overrides)
    overrides += [f"sweep.name={args.name}"] if args.name else []
    overrides += [f"sweep.tracking_uri={args.tracking_uri}"] if args.tracking_uri else []
    overrides += [f"sweep.study_storage={args.study_storage}"] if args.study_storage else []
    overrides += ["sweep.verbose=true"] if args.verbose else []
    with user_errors(parser, args.debug):
        # [1] validated before Ray starts; the model's settings as read said first (a comment in --show-config)
        said = (lambda line: print(f"# {line}")) if args.show_config else print
        setup = load_sweep_setup(args.config, overrides, said).resolved()
        if args.show_config:
            print(redact(yaml.safe_dump(setup.sections(), sort_keys=False, default_flow_style=None)), end="")
            return
        if not setup.sweep.verbose:
            quiet_libraries()  # before MLflow, Ray or DeepSpeed is imported
        cluster.check_reachable(setup)  # storage that answers (a misspelt bucket, an endpoint down)
        started = state.exists(setup)  # its search phase is in storage (Tune's state; read once)
        if args.resume:
            state.check_unchanged(setup)  # its settings, signed, as it started
            state.check_state(setup)  # Tune's state of each phase, signed: nothing else is unpickled
        elif started:
            done = state.finished(setup)
            raise FileExistsError(
                f"sweep {setup.sweep.name!r} finished: {done}. Start another with --name NEW, or add trials with "
                f"--resume --set sweep.trials=N."
                if done
                else f"sweep {setup.sweep.name!r} exists in {setup.sweep.storage_path}, unfinished: pass --resume to "
                "continue it, or --name NEW to start another."
            )
        preflight(setup.run)  # [2] data present, batch fits the questions, languages known
        check_ray_address()  # an empty RAY_ADDRESS, a head that does not answer
        warning = cluster.check_free_space(setup)  # [3] storage on a disk: room for the checkpoints
        lease = DriverLease.acquire(setup.sweep, args.resume)  # [4] one driver per sweep
    interrupts.before_exit(lambda: lease.release(wait=False))  # the printed --resume works at once
    try:
        from sweeps import tune_state  # here: Tune is a heavy import, and a refusal above needs none

        tune_state.write_only_while(lease.held)  # no signed write of Tune's state once the lease is another's
        with user_errors(parser, args.debug):
            sweep_id = state.sweep_id(setup)
            identity.check(setup, sweep_id, args.resume, started)  # [5] the name is this sweep's
        drive(setup, sweep_id, started, args, parser, warning)
    finally:
        lease.release()


def drive(
    setup: SweepSetup,
    sweep_id: str,
    started: bool,
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    warning: str | None,
) -> None:
    """Start (or join) Ray and run the sweep's phases, this driver holding the sweep's lease."""
    import optuna

    from sweeps import driver, estimate, precision, progress
    from sweeps.logs import LogSync
    from trainers import prepare
    from trainers.train import init_ray

    s = setup.sweep
    if not s.verbose:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    for line in (warning, record_warning(s.tracking_uri, s.study_storage)):
        if line:
            print(line, file=sys.stderr)
    for line in prepare.pending():  # a first run's one-time work, said before it makes a silence
        print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)
    start = time.perf_counter()
    logs = init_ray(log_to_driver=s.verbose, quiet=not s.verbose)  # [6] local Ray, or the cluster (RAY_ADDRESS)
    interrupts.install()  # SIGTERM again ours: Ray's core worker installed its own
    if not s.verbose:
        print(
            f"Ray workers' and tasks' output: {logs} (--verbose shows it here; copied to "
            f"{redact(s.location('logs'))} every {s.log_sync_s:g} s)"
        )
        import transformers  # here, not at the top: a config error or --help need not wait for it

        transformers.logging.set_verbosity_error()  # its load report of the registered encoder
        # Tune's own output (a box per phase, "View detailed results", a TensorBoard hint, its restore and
        # save lines, its Ctrl-C advice to call Tuner.restore): the progress view's lines and the sweep's own
        # messages stand for it; --verbose brings it back. Errors still show.
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # read at each fit; with verbose=0 the classic reporter is silent
        for name in ("ray.tune", "ray.train"):
            logging.getLogger(name).setLevel(logging.ERROR)
    sync = LogSync(Path(logs), s.location("logs"), s.log_sync_s)
    with user_errors(parser, args.debug):
        cluster.check_storage(setup)  # [7] storage every node sees
        cluster.check_signing_keys()  # every node verifies with the driver's key
        state.save_settings(setup, sweep_id, started)
        identity.claim(setup, sweep_id, started)  # [8] the name marked as this sweep's
        requested = cluster.wait_for_resources(setup, s.scale_up_timeout_s)  # [9] resources now or after scaling up
    board = progress.Printer(s.name)  # trials' lines from the nodes they run on
    try:
        setup, check = precision.settled(setup)  # eval.precision auto: bf16 where it is as good and faster
        setup = state.bound_to_sweep(setup, sweep_id)  # its checkpoints bound to its id (trainer.sweep_id)
        expected = None if args.resume else estimate.announce(setup, start, check.speedup)
        driver.run_sweep(setup, sweep_id, args.resume, start, expected, check)
    finally:
        state.add_run_time(setup, time.perf_counter() - start)  # the wall time of a resumed sweep sums its runs
        board.close()
        if requested:
            cluster.release()
        sync.close()


if __name__ == "__main__":
    main()
