"""A sweep's phases in order, once its checks have passed and Ray is up (`sweeps.ratio_search` gets it
there): its MLflow record opened, the search, more seeds for the best, the merges of the references, the
full evaluation, the best model registered, and the summary printed and kept for `--resume`.
"""

from __future__ import annotations

import time

import yaml

from evaluation.precision import PrecisionCheck
from hybrid import manifest, storage
from hybrid.layout import ENCODER_DIR
from sweeps import estimate, interrupts, merges, phases, ranking, registry, state, summary, tracking
from sweeps.config import SweepSetup, flatten
from sweeps.early import EarlyEvaluation
from sweeps.records import RESOLVED
from sweeps.stats import mean_pm
from sweeps.uris import redact


def flat_params(raw: dict) -> dict[str, str]:
    """The preset as `section.key` params for the parent run (MLflow caps a value at 6000 characters)."""
    return {key: redact(str(value))[:6000] for key, value in flatten(raw).items()}


def register(setup: SweepSetup, table, configs, runs: tracking.SweepRuns) -> str:
    """The best configuration's best seed, registered as `models:/<sweep>@best` with its settings and the
    configuration's mean and 95% interval over seeds."""
    s, top = setup.sweep, configs.iloc[0]
    trial = ranking.best_trial(table, setup, top["config_key"])
    objective = s.objectives[0]
    knobs = ranking.row_params(trial)
    return registry.register_best(
        s.tracking_uri,
        s.name,
        runs.trial_run(trial["trial"]),
        storage.join(trial["checkpoint_path"], ENCODER_DIR),
        {"run": manifest.bound_run(trial["trial"], setup.run.trainer.sweep_id), "step": setup.run.optim.steps},
        tags={"sweep": s.name, "trial": trial["trial"], "config_key": top["config_key"], **knobs},
        description=f"Sweep {s.name}: the best configuration by {objective} (proxy evaluation) "
        f"{mean_pm(top[objective], top[objective + ' ±95%'], 4)} over {top['seeds']} seed(s); this is "
        f"its seed {knobs.get('seed')} (trial {trial['trial']}, {objective} {trial[objective]:.4f}).",
    )


def run_sweep(
    setup: SweepSetup,
    sweep_id: str,
    resume: bool,
    start: float,
    expected: estimate.Estimate | None = None,
    check: PrecisionCheck | None = None,
) -> None:
    """The sweep from its MLflow record's opening to its summary; `start` is when the driver started Ray,
    `expected` the time estimated before the search (None on `--resume`: set beside the actual at the end),
    `check` how the evaluation's precision was settled (a parameter of the sweep's run)."""
    s = setup.sweep
    resolved = setup.sections()
    runs = tracking.SweepRuns.open(
        s.tracking_uri,
        s.name,
        sweep_id,
        s.artifact_location,
        flat_params(setup.raw) | (check.as_params() if check else {}),
        {
            "preset.yaml": redact(yaml.safe_dump(setup.raw, sort_keys=False)),
            RESOLVED: redact(yaml.safe_dump(resolved, sort_keys=False)),
        },
    )
    early = EarlyEvaluation(setup)  # the references' final evaluation, where the cluster has room
    try:
        table = phases.search(setup, runs, resume, early)  # Tune + Optuna + ASHA
        table = phases.reseed(setup, table, runs, resume, early)  # more seeds for the top-k
    except (interrupts.Interrupted, KeyboardInterrupt):
        runs.kill_running_trials()
        raise
    interrupts.enter("final evaluation")
    trials_s = time.perf_counter() - start
    early.wait()
    configs = ranking.ranked(table, setup)  # best first
    if configs.empty:
        raise SystemExit(
            f"No trial of sweep '{s.name}' completed its {setup.run.optim.steps} steps (errored or "
            "pruned: see Tune's table above); fix the cause and continue with --resume."
        )
    merged = merges.make(setup, table, runs)
    heldout = (
        phases.final_evaluation(
            setup, table, configs.iloc[0]["config_key"], runs, list(zip(merged.refs, merged.run_ids))
        )
        if s.final_eval
        else {}
    )
    for run_id in merged.run_ids:
        runs.end(run_id)
    runs.log_metrics(runs.parent_id, {k: v for k, v in heldout.items() if v == v}, step=0)
    final_s = time.perf_counter() - start - trials_s
    interrupts.enter("registration")
    version = register(setup, table, configs, runs)
    earlier = state.run_times(setup)  # the driver runs before this one (`--resume`s)
    this_run = time.perf_counter() - start
    wall = sum(earlier) + this_run
    overhead = runs.trial_overhead()
    calibration = {"sweep/estimate_s": expected.total_s} | expected.speed.as_metrics() if expected else {}
    times = {"sweep/wall_s": wall, "sweep/driver_runs": len(earlier) + 1, "sweep/trials": len(table)}
    runs.log_metrics(runs.parent_id, times | overhead | calibration, step=0)
    runs.end(runs.parent_id)

    summary.print_tables(setup, table, configs, merged.ranked(s.objectives) if merged.merges else None, heldout)
    summary.print_overhead(overhead)
    state.save_finished(setup, summary.finished_line(setup, table, configs, wall))
    summary.print_best_alpha(setup)  # after the sweep is kept as finished: it reads the MLflow record back
    summary.print_where(setup, len(table), version, summary.Times(trials_s, this_run, final_s), runs.exp_id, expected)
