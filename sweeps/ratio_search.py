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
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from pathlib import Path

# Tune warns when a callback takes over 0.5 s; logging a result with its matrices to MLflow takes about
# 1 s, which is no bottleneck next to a checkpoint's training and evaluation. Read when Tune is imported.
os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "10")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # the best encoder's registration loads it here

import optuna
import ray
import yaml

from hybrid.config import DEFAULT_CONFIG, to_dict
from hybrid import storage
from hybrid.layout import ENCODER_DIR
from sweeps import (cluster, estimate, identity, interrupts, merges, phases, progress, ranking, registry, state,
                    summary, tracking)
from sweeps.config import SweepSetup, flatten, is_local_file, is_server, load_sweep_setup, redact
from sweeps.early import EarlyEvaluation
from sweeps.lease import DriverLease
from sweeps.logs import LogSync
from sweeps.records import RESOLVED
from sweeps.stats import mean_pm
from trainers import prepare
from trainers.train import check_ray_address, init_ray, preflight


def flat_params(raw: dict) -> dict[str, str]:
    """The preset as `section.key` params for the parent run (MLflow caps a value at 6000 characters)."""
    return {key: redact(str(value))[:6000] for key, value in flatten(raw).items()}


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
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value, e.g. --set sweep.trials=8 (repeatable)")
    parser.add_argument("--name", help="sweep name (MLflow experiment, storage folder); default sweep.name")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sweep.tracking_uri, a local "
                             "SQLite file)")
    parser.add_argument("--study-storage", default=os.environ.get("HYBRID_SWEEP_STUDY_STORAGE"),
                        help="the Optuna study's database, e.g. postgresql+psycopg://USER@HOST:5432/optuna (default: "
                             "$HYBRID_SWEEP_STUDY_STORAGE, else sweep.study_storage; password from PGPASSWORD or "
                             "~/.pgpass)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted sweep of this name")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a configuration error")
    parser.add_argument("--show-config", action="store_true",
                        help="print every setting as this run would use it (the preset over the defaults, --set "
                             "applied) as YAML, and exit")
    parser.add_argument("--verbose", action="store_true",
                        help="also show Ray workers' and tasks' output and every trial result (always in Ray's logs)")
    args = parser.parse_args(argv)
    interrupts.install()  # Ctrl-C: stop, say how to continue, exit 130; a second one exits at once
    try:
        run(args, argv, parser)
    except (phases.Interrupted, KeyboardInterrupt) as stop:
        phase = str(stop) if isinstance(stop, phases.Interrupted) else interrupts.stage
        command = " ".join(["python", "sweeps/ratio_search.py", *(argv if argv is not None else sys.argv[1:])])
        print(f"\nSweep interrupted in its {phase} phase: its trials were stopped and its state saved; nothing "
              f"finished is lost. Continue with:\n  {command.replace(' --resume', '')} --resume",
              file=sys.stderr, flush=True)
        raise SystemExit(130) from None


def run(args: argparse.Namespace, argv: list[str] | None, parser: argparse.ArgumentParser) -> None:
    """Check everything that can be checked before Ray starts, take the sweep's lease, then `drive` it."""
    overrides = list(args.overrides)
    overrides += [f"sweep.name={args.name}"] if args.name else []
    overrides += [f"sweep.tracking_uri={args.tracking_uri}"] if args.tracking_uri else []
    overrides += [f"sweep.study_storage={args.study_storage}"] if args.study_storage else []
    overrides += ["sweep.verbose=true"] if args.verbose else []
    with user_errors(parser, args.debug):
        setup = load_sweep_setup(args.config, overrides).resolved()  # [1] validated before Ray starts
        if args.show_config:
            print(redact(yaml.safe_dump(resolved_config(setup), sort_keys=False, default_flow_style=None)), end="")
            return
        preflight(setup.run)  # [2] data present, batch fits the questions, languages known
        check_ray_address()  # an empty RAY_ADDRESS, a head that does not answer
        cluster.check_reachable(setup)  # storage that answers (a misspelt bucket, an endpoint down)
        warning = cluster.check_free_space(setup)  # [3] storage on a disk: room for the checkpoints
        started = state.exists(setup)  # its search phase is in storage (Tune's state; read once)
        if args.resume:
            state.check_unchanged(setup)  # its settings, signed, as it started
            state.check_state(setup)  # Tune's state of each phase, signed: nothing else is unpickled
        elif started:
            done = state.finished(setup)
            raise FileExistsError(
                f"sweep {setup.sweep.name!r} finished: {done}. Start another with --name NEW, or add trials with "
                f"--resume --set sweep.trials=N." if done else
                f"sweep {setup.sweep.name!r} exists in {setup.sweep.storage_path}, unfinished: pass --resume to "
                "continue it, or --name NEW to start another.")
        if not setup.sweep.verbose:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
        lease = DriverLease.acquire(setup.sweep, args.resume)  # [4] one driver per sweep
    try:
        with user_errors(parser, args.debug):
            sweep_id = state.sweep_id(setup)
            identity.check(setup, sweep_id, args.resume, started)  # [5] the name is this sweep's
        drive(setup, sweep_id, started, args, parser, warning)
    finally:
        lease.release()


def drive(setup: SweepSetup, sweep_id: str, started: bool, args: argparse.Namespace, parser: argparse.ArgumentParser,
          warning: str | None) -> None:
    """Start (or join) Ray and run the sweep's phases, this driver holding the sweep's lease."""
    s = setup.sweep
    for line in (warning, record_warning(setup)):
        if line:
            print(line, file=sys.stderr)
    for line in prepare.pending():  # a first run's one-time work, said before it makes a silence
        print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)
    start = time.perf_counter()
    logs = init_ray(log_to_driver=s.verbose)  # [6] local Ray, or the cluster when RAY_ADDRESS is set
    if not s.verbose:
        print(f"Ray workers' and tasks' output: {logs} (--verbose shows it here; copied to "
              f"{redact(s.location('logs'))} every {s.log_sync_s:g} s)")
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
        expected = None if args.resume else estimated(setup, start)
        run_sweep(setup, sweep_id, args.resume, start, expected)
    finally:
        board.close()
        if requested:
            cluster.release()
        sync.close()


def estimated(setup: SweepSetup, start: float) -> estimate.Estimate | None:
    """This machine's speed measured and the sweep's time estimated from it, printed before the search
    (a CPU training only: the calibration times CPU steps)."""
    if setup.run.trainer.use_gpu:
        return None
    interrupts.enter("calibration")
    print(f"{time.strftime('%H:%M:%S')} measuring this machine's speed at the sweep's work (a few training steps, "
          "about 20 s)", flush=True)
    speed = estimate.calibrate(setup)
    guess = estimate.estimate(setup, speed, ray.cluster_resources().get("CPU", 1), time.perf_counter() - start)
    print(f"{time.strftime('%H:%M:%S')} {guess.line()}", flush=True)
    return guess


def record_warning(setup: SweepSetup) -> str | None:
    """A tracking server outlives the cluster; a study file beside the driver does not."""
    s = setup.sweep
    if is_server(s.tracking_uri) and is_local_file(s.study_storage):
        return (f"warning: the Optuna study is in {redact(s.study_storage)}, on this machine: it will not survive the "
                "head. Set sweep.study_storage (or --study-storage) to postgresql+psycopg://USER@HOST:PORT/DB.")
    return None


def register(setup: SweepSetup, table, configs, runs: tracking.SweepRuns) -> str:
    """The best configuration's best seed, registered as `models:/<sweep>@best` with its settings and the
    configuration's mean and 95% interval over seeds."""
    s, top = setup.sweep, configs.iloc[0]
    trial = ranking.best_trial(table, setup, top["config_key"])
    objective = s.objectives[0]
    knobs = ranking.row_params(trial)
    return registry.register_best(
        s.tracking_uri, s.name, runs.trial_run(trial["trial"]),
        storage.join(trial["checkpoint_path"], ENCODER_DIR),
        tags={"sweep": s.name, "trial": trial["trial"], "config_key": top["config_key"], **knobs},
        description=f"Sweep {s.name}: the best configuration by {objective} (proxy evaluation) "
                    f"{mean_pm(top[objective], top[objective + ' ±95%'], 4)} over {top['seeds']} seed(s); this is "
                    f"its seed {knobs.get('seed')} (trial {trial['trial']}, {objective} {trial[objective]:.4f}).")


def resolved_config(setup: SweepSetup) -> dict:
    """Every setting, sections as in a preset: what `--show-config` prints and the parent run keeps."""
    return to_dict(setup.run) | {"eval": to_dict(setup.eval), "sweep": to_dict(setup.sweep)}


def run_sweep(setup: SweepSetup, sweep_id: str, resume: bool, start: float,
              expected: estimate.Estimate | None = None) -> None:
    s = setup.sweep
    resolved = resolved_config(setup)
    runs = tracking.SweepRuns.open(s.tracking_uri, s.name, sweep_id, s.artifact_location, flat_params(setup.raw),
                                   {"preset.yaml": redact(yaml.safe_dump(setup.raw, sort_keys=False)),
                                    RESOLVED: redact(yaml.safe_dump(resolved, sort_keys=False))})
    early = EarlyEvaluation(setup)  # the references' final evaluation, where the cluster has room
    try:
        table = phases.search(setup, runs, resume, early)  # [6] Tune + Optuna + ASHA
        table = phases.reseed(setup, table, runs, resume, early)  # [7] more seeds for the top-k
    except (phases.Interrupted, KeyboardInterrupt):
        runs.kill_running_trials()
        raise
    interrupts.enter("final evaluation")
    trials_s = time.perf_counter() - start
    early.wait()
    configs = ranking.ranked(table, setup)  # best first
    if configs.empty:
        raise SystemExit(f"No trial of sweep '{s.name}' completed its {setup.run.optim.steps} steps (errored or "
                         "pruned: see Tune's table above); fix the cause and continue with --resume.")
    merged = merges.make(setup, table, runs)
    heldout = phases.final_evaluation(setup, table, configs.iloc[0]["config_key"], runs,
                                      list(zip(merged.refs, merged.run_ids))) if s.final_eval else {}
    for run_id in merged.run_ids:
        runs.end(run_id)
    runs.log_metrics(runs.parent_id, {k: v for k, v in heldout.items() if v == v}, step=0)
    final_s = time.perf_counter() - start - trials_s
    interrupts.enter("registration")
    version = register(setup, table, configs, runs)
    wall = time.perf_counter() - start
    overhead = runs.trial_overhead()
    calibration = {"sweep/estimate_s": expected.total_s} | expected.speed.as_metrics() if expected else {}
    runs.log_metrics(runs.parent_id, {"sweep/wall_s": wall, "sweep/trials": len(table)} | overhead | calibration,
                     step=0)
    runs.end(runs.parent_id)

    summary.print_tables(setup, table, configs, merged.ranked(s.objectives) if merged.merges else None, heldout)
    summary.print_overhead(overhead)
    state.save_finished(setup, summary.finished_line(setup, table, configs, wall))
    summary.print_where(setup, len(table), version, summary.Times(trials_s, wall, final_s), runs.exp_id, expected)


if __name__ == "__main__":
    main()
