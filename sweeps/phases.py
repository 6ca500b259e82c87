"""The sweep's phases: (1) Optuna search with pruning, (2) more seeds for the top configurations,
(3) a full evaluation of the best configuration's final checkpoints and of the base model. What is kept
beside them for `--resume` is `sweeps.state`; the table of their trials and its ranking, `sweeps.ranking`.

Each phase is its own Tune experiment under `<storage>/<sweep name>/` (a local folder or s3://...), so
`--resume` restores exactly the phases that did not finish; finished trials are never run again.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import pandas as pd
from ray import tune

from evaluation.checkpoints import CheckpointRef
from evaluation.datasets import load_eval_set
from evaluation.progress import model_lines
from evaluation.runner import evaluate_checkpoints
from hybrid import signing
from sweeps import interrupts, tracking, tune_state
from sweeps.config import SweepSetup
from sweeps.early import EarlyEvaluation, base_ref, final_ref, full_eval_config
from sweeps.ranking import completed, reseeded, row_params, trials_table
from sweeps.search import is_reference, param_space, tune_config
from sweeps.state import search_rounds
from sweeps.stats import mean_ci
from sweeps.tracking import TrialLogger
from sweeps.trial import run_trial


def _run_tuner(
    name: str,
    setup: SweepSetup,
    space: dict[str, Any],
    tune_cfg: tune.TuneConfig,
    runs: tracking.SweepRuns,
    resume: bool,
    trials: int,
    early: EarlyEvaluation,
) -> tune.ResultGrid:
    """Fit one Tune experiment of `trials` trials, restoring it when `resume` and it exists (finished
    trials are kept). Its state lives in the sweep's storage (`<storage>/<sweep name>/<phase>`), local or
    s3://. Raises `interrupts.Interrupted` when the experiment returned with trials that did not end (the first
    Ctrl-C: Tune stops the trials and saves its state), so no later phase starts on a partial table.
    `early` starts the references' final evaluation when they finish (`sweeps.early`)."""
    root, path = setup.sweep.location(), setup.sweep.location(name)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, setup=setup, driver_key=signing.fingerprint()), setup.sweep.trial_bundle
    )
    interrupts.enter(name)  # a Ctrl-C from here on names this phase
    print(f"\n== {name}: {trials} trial(s) ==", flush=True)
    tune_state.never_unpickle_trial_errors()
    tune_state.guard_tune_reads()
    signed = tune_state.purpose(setup.sweep.name, name)
    restorable = tune.Tuner.can_restore(path)
    if restorable and not resume:
        raise FileExistsError(f"sweep phase {path} exists: pass --resume to continue it, or choose another sweep.name.")
    logger = TrialLogger(
        runs, setup.run, setup.sweep.location("train"), setup.sweep.objectives[0], not setup.sweep.verbose
    )
    verified = tune_state.restore_verified(path, signed) if restorable else None  # only what this driver saved
    if verified is not None:
        tuner = _refusing_unsigned(lambda: tune.Tuner.restore(path, trainable=trainable, resume_errored=True))
    else:
        run_config = tune.RunConfig(
            name=name,
            storage_path=root,
            callbacks=[logger, early, tune_state.SignedState(path, name, signed), interrupts.TuneHandlerSet()],
            failure_config=tune.FailureConfig(max_failures=1),  # Tune's tables: --verbose
            verbose=2 if setup.sweep.verbose else 0,
        )  # 0: TrialLogger's lines instead
        tuner = tune.Tuner(trainable, param_space=space, tune_config=tune_cfg, run_config=run_config)
    tune_state.sign_tuner(tuner, verified)  # its tuner.pkl as written or verified here, never as read back
    grid, stopped = _refusing_unsigned(lambda: interrupts.fit(tuner, name))
    runs.flush()  # the phase's MLflow writes, queued by TrialLogger, all done (or their error raised)
    if stopped or not all_ended(grid, trials):
        raise interrupts.Interrupted(name)
    logger.catch_up(grid)  # what a killed driver of this phase had not logged
    runs.flush()
    return grid


def _refusing_unsigned(read: Callable[[], Any]) -> Any:
    """`read()`, where Tune reads a restored phase's state: a file put there after it was verified stops
    the sweep in one line (exit 2), nothing unpickled (`tune_state.guard_tune_reads`)."""
    try:
        return read()
    except tune_state.UnsignedState as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def all_ended(grid: tune.ResultGrid, trials: int) -> bool:
    """Whether every one of (at least) `trials` trials finished or failed. Ctrl-C marks a trial that had not
    started yet TERMINATED: one that never reported and never failed did not end."""
    never_ran = sum(1 for result in grid if result.error is None and not result.metrics)
    return grid.num_terminated + grid.num_errors - never_ran >= max(len(grid), trials)


def search(setup: SweepSetup, runs: tracking.SweepRuns, resume: bool, early: EarlyEvaluation) -> pd.DataFrame:
    """Every search round in order (restored when it exists): the first runs `sweep.trials` trials, the
    references first; each later one (`sweep.trials` raised on `--resume`) runs only the new trials,
    continuing the stored Optuna study of every trial before it."""
    tables: list[pd.DataFrame] = []
    done = 0
    for total in search_rounds(setup):
        cfg = tune_config(setup.sweep, setup.run, total - done, first_round=done == 0)
        grid = _run_tuner(
            "search" if done == 0 else f"search-to-{total}",
            setup,
            param_space(setup.sweep, setup.run),
            cfg,
            runs,
            resume,
            total - done,
            early,
        )
        tables.append(trials_table(grid, setup.sweep.objectives))
        done = total
    return pd.concat(tables, ignore_index=True)


def reseed(
    setup: SweepSetup, table: pd.DataFrame, runs: tracking.SweepRuns, resume: bool, early: EarlyEvaluation
) -> pd.DataFrame:
    """Re-run the `reseeded` configurations with seeds 1..seeds-1 (seed 0 ran in the search)."""
    extra = [table]
    for _, row in reseeded(table, setup).iterrows():
        if setup.sweep.seeds < 2:
            break
        space = row_params(row) | {"seed": tune.grid_search(list(range(1, setup.sweep.seeds)))}
        grid = _run_tuner(
            f"seeds-{row['config_key']}",
            setup,
            space,
            tune.TuneConfig(max_concurrent_trials=setup.sweep.max_concurrent),
            runs,
            resume,
            setup.sweep.seeds - 1,
            early,
        )
        extra.append(trials_table(grid, setup.sweep.objectives))
    return pd.concat(extra, ignore_index=True)


def final_evaluation(
    setup: SweepSetup,
    table: pd.DataFrame,
    best_key: str,
    runs: tracking.SweepRuns,
    extra: list[tuple[CheckpointRef, str]] = (),
) -> dict[str, float]:
    """Full evaluation (all eval languages, all questions) of the final checkpoints of the best
    configuration (one per seed) and of the alpha = 0 / alpha = 1 references (of every completed trial
    with `sweep.final_eval_all`), of the base model (parent run, step 0) and of `extra` models, each
    logged to its run (the merges of the references); then the same on each zero-shot dataset
    (`sweep.zero_shot_datasets`), which took no part in selection. Returns the parent's summary: base and
    best (mean, 95% half-width)."""
    final = completed(table, setup)
    chosen = (
        final
        if setup.sweep.final_eval_all
        else final[(final["config_key"] == best_key) | final["mono_ratio"].map(is_reference)]
    )
    chosen = chosen.drop_duplicates("trial")
    refs = [final_ref(setup, row["checkpoint_path"], row_params(row), row["trial"]) for _, row in chosen.iterrows()]
    summary: dict[str, float] = {}
    for dataset in (setup.eval.dataset, *setup.sweep.zero_shot_datasets):
        full = full_eval_config(setup, dataset)
        models = [base_ref(setup), *refs, *(ref for ref, _ in extra)]
        on_done = model_lines(f"final evaluation on {dataset}", len(models))  # said before its data loads
        results = evaluate_checkpoints(
            models, load_eval_set(full, setup.run.data), full, setup.sweep.eval_cache_location, on_done=on_done
        )
        print(
            f"Final evaluation on {dataset}: {len(results)} models (base + {len(refs)} final checkpoints"
            f"{f' + {len(extra)} merges' if extra else ''}), {sum(r.cached for r in results)} from the evaluation "
            "cache.",
            flush=True,
        )
        runs.log_result(results[0], runs.parent_id)
        run_ids = [runs.trial_run(trial) for trial in chosen["trial"]] + [run_id for _, run_id in extra]
        for result, run_id in zip(results[1:], run_ids):
            runs.log_result(result, run_id)
        best = [r for r, key in zip(results[1:], chosen["config_key"]) if key == best_key]
        scope = "" if dataset == setup.eval.dataset else f"{dataset}/"
        for key, value in results[0].summary.items():
            mean, half = mean_ci([r.summary[key] for r in best])
            summary |= {f"base/{scope}{key}": value, f"best/{scope}{key}": mean, f"best/{scope}{key}/ci95": half}
    return summary
