"""The sweep's phases: (1) Optuna search with pruning, (2) more seeds for the top configurations,
(3) a full evaluation of the best configuration's final checkpoints and of the base model.

Each phase is its own Tune experiment under `<storage>/<sweep name>/` (a local folder or s3://...), so
`--resume` restores exactly the phases that did not finish; finished trials are never run again.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pandas as pd
import pyarrow.fs as pafs
from ray import tune

from evaluation.checkpoints import CheckpointRef
from evaluation.datasets import load_eval_set
from evaluation.runner import evaluate_checkpoints
from hybrid import signing, storage
from sweeps import interrupts, knobs, progress, tracking, tune_state
from sweeps.config import SweepSetup
from sweeps.early import EarlyEvaluation, base_ref, final_ref, full_eval_config
from sweeps.identity import new_id
from sweeps.search import filled, is_reference, param_space, tune_config
from sweeps.stats import mean_ci
from sweeps.tracking import TrialLogger
from sweeps.trial import config_key, run_trial

PARAM_COLUMNS = [*knobs.NAMES, "seed"]


def row_params(row: pd.Series) -> dict[str, Any]:
    """A trial's params from its table row: the knobs it set and its seed, as the Python values Tune gave
    (a table column of numbers with gaps holds floats; NumPy scalars)."""
    def value(k: str) -> Any:
        v = row[k].item() if hasattr(row[k], "item") else row[k]
        return knobs.BY_NAME[k].cast(v) if k in knobs.BY_NAME else int(v)

    return {k: value(k) for k in PARAM_COLUMNS if k in row and pd.notna(row[k])}


def exists(setup: SweepSetup) -> bool:
    """Whether this sweep (its search phase) is already in storage: read before Ray starts."""
    return tune.Tuner.can_restore(setup.sweep.location("search"))


SETTINGS_FILE = signing.SETTINGS_FILE  # the resolved configuration a sweep started with, beside its phases


def _stored(setup: SweepSetup) -> dict[str, Any] | None:
    """{"id": the sweep's id, "settings": flat config, "search_rounds": [trials after each round]} or None
    (a new sweep). Signed by this deployment (`hybrid.signing`), else refused: it decides what --resume
    continues and with which settings."""
    location = setup.sweep.location(SETTINGS_FILE)
    if not storage.exists(location):
        return None
    try:
        return signing.verified(json.loads(storage.read_text(location)), signing.settings_purpose(setup.sweep.name),
                                location)
    except signing.BadSignature as e:
        raise ValueError(f"{e} The sweep's settings cannot be trusted, so it is not resumed. If you wrote it, "
                         f"accept it once: python -m hybrid.accept {setup.sweep.location()}") from None
    except ValueError as e:
        raise ValueError(f"{location}: unreadable ({e}); the sweep is not resumed.") from None


def sweep_id(setup: SweepSetup) -> str:
    """The sweep's id (`sweeps.identity`): the stored one, or a new one for a sweep not stored yet (kept
    by `save_settings`). A sweep stored before ids gets one."""
    return (_stored(setup) or {}).get("id") or new_id()


def save_settings(setup: SweepSetup, sweep_id: str, started: bool) -> None:
    """Store the configuration and the id beside the sweep's phases (once: a resumed sweep keeps the
    original, and a sweep stored without an id gets one), and the search's rounds: `sweep.trials` raised
    on `--resume` adds a round of only the new trials. A start that saved no search phase yet (`started`:
    `exists`) stores the configuration it has now."""
    stored = _stored(setup)
    if stored is None or not started:
        stored = {"settings": setup.settings(), "search_rounds": [setup.sweep.trials]}
    elif setup.sweep.trials > stored["search_rounds"][-1]:
        stored["search_rounds"].append(setup.sweep.trials)
    elif stored.get("id") == sweep_id:
        return
    stored["id"] = sweep_id
    storage.write_text(setup.sweep.location(SETTINGS_FILE),
                       json.dumps(signing.signed(stored, signing.settings_purpose(setup.sweep.name)), indent=1,
                                  sort_keys=True))


FINISHED_FILE = "finished.txt"  # the summary line of a sweep that ran to its end


def save_finished(setup: SweepSetup, line: str) -> None:
    storage.write_text(setup.sweep.location(FINISHED_FILE), line)


def finished(setup: SweepSetup) -> str | None:
    """The summary line of this sweep when it finished (read before Ray starts), else None."""
    location = setup.sweep.location(FINISHED_FILE)
    return storage.read_text(location) if storage.exists(location) else None


def search_rounds(setup: SweepSetup) -> list[int]:
    stored = _stored(setup)
    return stored["search_rounds"] if stored else [setup.sweep.trials]


def check_unchanged(setup: SweepSetup) -> None:
    """`--resume` continues the sweep that was started: a changed setting would rank results of two
    different setups together (or restore the old search with a new one), so it is refused by name.
    `sweep.trials` may only grow: the new trials run as a search round of their own."""
    stored = _stored(setup)
    if stored is None:
        return  # a sweep from before settings were stored: nothing to compare with
    changed = setup.changed_since(stored["settings"])
    if changed:
        raise ValueError(f"--resume of sweep {setup.sweep.name!r} with changed settings: {', '.join(changed)}. "
                         "Resume with the configuration it started with (stored in "
                         f"{SETTINGS_FILE} beside it), or start a new sweep with --name NEW.")
    ran = stored["search_rounds"][-1]
    if setup.sweep.trials < ran:
        raise ValueError(f"sweep.trials={setup.sweep.trials}: sweep {setup.sweep.name!r} has {ran} search trials "
                         f"already; --resume can only raise it (sweep.trials={ran} continues it as it is).")


def check_state(setup: SweepSetup) -> None:
    """Before `--resume` starts Ray: every phase of the sweep in storage has Tune state this deployment
    signed (`sweeps.tune_state`), else a one-line ValueError. Reads no pickle."""
    fs, path = storage.filesystem(setup.sweep.location())
    for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
        phase = info.path.rstrip("/").rsplit("/", 1)[-1]
        if info.type == pafs.FileType.Directory and storage.exists(setup.sweep.location(phase, "tuner.pkl")):
            tune_state.check(setup.sweep.location(phase), tune_state.purpose(setup.sweep.name, phase))


class Interrupted(Exception):
    """A phase stopped before all its trials ended (Ctrl-C: Tune stopped the trials and saved its state)."""


def _run_tuner(name: str, setup: SweepSetup, space: dict[str, Any], tune_cfg: tune.TuneConfig,
               runs: tracking.SweepRuns, resume: bool, trials: int, early: EarlyEvaluation) -> tune.ResultGrid:
    """Fit one Tune experiment of `trials` trials, restoring it when `resume` and it exists (finished
    trials are kept). Its state lives in the sweep's storage (`<storage>/<sweep name>/<phase>`), local or
    s3://. Raises `Interrupted` when the experiment returned with trials that did not end (the first
    Ctrl-C: Tune stops the trials and saves its state), so no later phase starts on a partial table.
    `early` starts the references' final evaluation when they finish (`sweeps.early`)."""
    root, path = setup.sweep.location(), setup.sweep.location(name)
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup), setup.sweep.trial_bundle)
    interrupts.enter(name)  # a Ctrl-C from here on names this phase
    print(f"\n== {name}: {trials} trial(s) ==", flush=True)
    tune_state.never_unpickle_trial_errors()
    signed = tune_state.purpose(setup.sweep.name, name)
    restorable = tune.Tuner.can_restore(path)
    if restorable and not resume:
        raise FileExistsError(f"sweep phase {path} exists: pass --resume to continue it, or choose another sweep.name.")
    logger = TrialLogger(runs, setup.run,
                         setup.sweep.location("train"), setup.sweep.objectives[0], not setup.sweep.verbose)
    if restorable and tune_state.restore_verified(path, signed):  # only what this sweep's driver saved
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        run_config = tune.RunConfig(name=name, storage_path=root,
                                    callbacks=[logger, early, tune_state.SignedState(path, name, signed),
                                               interrupts.TuneHandlerSet()],
                                    failure_config=tune.FailureConfig(max_failures=1),  # Tune's tables: --verbose
                                    verbose=2 if setup.sweep.verbose else 0)  # 0: TrialLogger's lines instead
        tuner = tune.Tuner(trainable, param_space=space, tune_config=tune_cfg, run_config=run_config)
    grid, stopped = interrupts.fit(tuner, name)
    runs.flush()  # the phase's MLflow writes, queued by TrialLogger, all done (or their error raised)
    if stopped or not all_ended(grid, trials):
        raise Interrupted(name)
    logger.catch_up(grid)  # what a killed driver of this phase had not logged
    runs.flush()
    return grid


def all_ended(grid: tune.ResultGrid, trials: int) -> bool:
    """Whether every one of (at least) `trials` trials finished or failed. Ctrl-C marks a trial that had not
    started yet TERMINATED: one that never reported and never failed did not end."""
    never_ran = sum(1 for result in grid if result.error is None and not result.metrics)
    return grid.num_terminated + grid.num_errors - never_ran >= max(len(grid), trials)


def trials_table(grid: tune.ResultGrid, objectives: tuple[str, ...]) -> pd.DataFrame:
    """One row per trial: its parameters, last reported objectives, steps done, checkpoint, and why it
    failed (the last line of its error; None when it did not)."""
    rows = []
    for result in grid:
        if not result.config:
            continue
        metrics = result.metrics or {}
        rows.append({"trial": metrics.get("trial_id", result.path.rstrip("/").rsplit("/", 1)[-1]),
                     **{k: result.config.get(k) for k in PARAM_COLUMNS if k in result.config},
                     "config_key": config_key(result.config), "step": metrics.get("step"),
                     **{o: metrics.get(o) for o in objectives},
                     "checkpoint_path": metrics.get("checkpoint_path"), "error": _last_line(result.error)})
    return pd.DataFrame(rows)


def _last_line(error: BaseException | None) -> str | None:
    lines = [line for line in str(error).splitlines() if line.strip()] if error else []
    return lines[-1].strip()[:300] if lines else None


def completed(table: pd.DataFrame, setup: SweepSetup) -> pd.DataFrame:
    """Trials that trained every step, with a final checkpoint and objective: the only comparable ones
    (a pruned trial's last objective is from an earlier step, and it has no final checkpoint)."""
    if table.empty:
        return table
    done = table[(table["step"] == setup.run.optim.steps) & table["checkpoint_path"].notna()]
    return done.dropna(subset=list(setup.sweep.objectives))


def search(setup: SweepSetup, runs: tracking.SweepRuns, resume: bool, early: EarlyEvaluation) -> pd.DataFrame:
    """Every search round in order (restored when it exists): the first runs `sweep.trials` trials, the
    references first; each later one (`sweep.trials` raised on `--resume`) runs only the new trials,
    continuing the stored Optuna study of every trial before it."""
    tables: list[pd.DataFrame] = []
    done = 0
    for total in search_rounds(setup):
        cfg = tune_config(setup.sweep, setup.run, total - done, first_round=done == 0)
        grid = _run_tuner("search" if done == 0 else f"search-to-{total}", setup,
                          param_space(setup.sweep, setup.run), cfg, runs, resume, total - done, early)
        tables.append(trials_table(grid, setup.sweep.objectives))
        done = total
    return pd.concat(tables, ignore_index=True)


def reseeded(table: pd.DataFrame, setup: SweepSetup) -> pd.DataFrame:
    """The top-k completed configurations by the first objective, then (`sweep.reseed_references`) the
    alpha = 0 / 1 references and the enqueued points marked `reseed` not among them: one row (its seed-0
    trial) each."""
    objective, mode = setup.sweep.objectives[0], setup.sweep.modes[0]
    done = completed(table, setup)
    top = [done.sort_values(objective, ascending=mode == "min").head(setup.sweep.top_k)]
    if setup.sweep.reseed_references:
        top.append(done[done["mono_ratio"].map(is_reference)])
    for point in (p for p in setup.sweep.search.points if p.reseed):
        given = filled(setup.sweep, setup.run, point)
        top.append(done[[all(k in row and knobs.same_value(row[k], v) for k, v in given.items())
                         for _, row in done.iterrows()]])
    return pd.concat(top).drop_duplicates("config_key")


def reseed(setup: SweepSetup, table: pd.DataFrame, runs: tracking.SweepRuns, resume: bool,
           early: EarlyEvaluation) -> pd.DataFrame:
    """Re-run the `reseeded` configurations with seeds 1..seeds-1 (seed 0 ran in the search)."""
    extra = [table]
    for _, row in reseeded(table, setup).iterrows():
        if setup.sweep.seeds < 2:
            break
        space = row_params(row) | {"seed": tune.grid_search(list(range(1, setup.sweep.seeds)))}
        grid = _run_tuner(f"seeds-{row['config_key']}", setup, space,
                          tune.TuneConfig(max_concurrent_trials=setup.sweep.max_concurrent), runs, resume,
                          setup.sweep.seeds - 1, early)
        extra.append(trials_table(grid, setup.sweep.objectives))
    return pd.concat(extra, ignore_index=True)


def ranked(table: pd.DataFrame, setup: SweepSetup) -> pd.DataFrame:
    """Completed configurations ranked by the mean of the first objective over seeds, with 95% intervals."""
    objective, mode = setup.sweep.objectives[0], setup.sweep.modes[0]
    rows = per_configuration(completed(table, setup), [k for k in PARAM_COLUMNS if k != "seed"],
                             setup.sweep.objectives)
    if rows.empty:
        return pd.DataFrame(columns=["config_key", "seeds", *setup.sweep.objectives])
    return rows.sort_values(objective, ascending=mode == "min").reset_index(drop=True)


def per_configuration(runs: pd.DataFrame, columns: list[str], objectives: tuple[str, ...]) -> pd.DataFrame:
    """One row per `config_key` of `runs` (one per seed): its `columns` (from its first run), how many
    seeds, and each objective's mean and 95% half-width over them."""
    rows = []
    for key, group in runs.groupby("config_key"):
        row = {k: group.iloc[0][k] for k in columns if k in group}
        for o in objectives:
            mean, half = mean_ci(group[o].to_numpy())
            row[o], row[f"{o} ±95%"] = mean, half
        rows.append({"config_key": key, "seeds": len(group), **row})
    return pd.DataFrame(rows)


def best_trial(table: pd.DataFrame, setup: SweepSetup, best_key: str) -> pd.Series:
    """The completed trial of the best configuration with the best first objective (its best seed)."""
    objective, mode = setup.sweep.objectives[0], setup.sweep.modes[0]
    final = completed(table, setup)
    return final[final["config_key"] == best_key].sort_values(objective, ascending=mode == "min").iloc[0]


def _final_progress(total: int):
    """A line per model of the final evaluation as its figures are in, with the time left at this pace
    (the models run concurrently, so the first lines come late and the pace firms up)."""
    done: list[float] = []

    def say(ref, elapsed: float, cached: bool) -> None:
        done.append(elapsed)
        more = "" if cached else progress.pace_left(elapsed, len(done), total)
        print(f"{time.strftime('%H:%M:%S')} final evaluation: {ref.label} "
              f"{'from the evaluation cache' if cached else f'done after {elapsed:.0f} s'} ({len(done)}/{total}{more})",
              flush=True)

    return say


def final_evaluation(setup: SweepSetup, table: pd.DataFrame, best_key: str, runs: tracking.SweepRuns,
                     extra: list[tuple[CheckpointRef, str]] = ()) -> dict[str, float]:
    """Full evaluation (all eval languages, all questions) of the final checkpoints of the best
    configuration (one per seed) and of the alpha = 0 / alpha = 1 references (of every completed trial
    with `sweep.final_eval_all`), of the base model (parent run, step 0) and of `extra` models, each
    logged to its run (the merges of the references); then the same on each zero-shot dataset
    (`sweep.zero_shot_datasets`), which took no part in selection. Returns the parent's summary: base and
    best (mean, 95% half-width)."""
    final = completed(table, setup)
    chosen = final if setup.sweep.final_eval_all else \
        final[(final["config_key"] == best_key) | final["mono_ratio"].map(is_reference)]
    chosen = chosen.drop_duplicates("trial")
    refs = [final_ref(setup, row["checkpoint_path"], row_params(row), row["trial"]) for _, row in chosen.iterrows()]
    summary: dict[str, float] = {}
    for dataset in (setup.eval.dataset, *setup.sweep.zero_shot_datasets):
        full = full_eval_config(setup, dataset)
        models = [base_ref(setup), *refs, *(ref for ref, _ in extra)]
        print(f"{time.strftime('%H:%M:%S')} final evaluation on {dataset} started: {len(models)} models, every "
              "language pair", flush=True)
        results = evaluate_checkpoints(models, load_eval_set(full, setup.run.data), full,
                                       setup.sweep.eval_cache_location, on_done=_final_progress(len(models)))
        print(f"Final evaluation on {dataset}: {len(results)} models (base + {len(refs)} final checkpoints"
              f"{f' + {len(extra)} merges' if extra else ''}), {sum(r.cached for r in results)} from the evaluation "
              "cache.", flush=True)
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
