"""The trials as a table, and what is read from it: one row per trial (its knobs, seed, last objectives,
checkpoint, error), the completed ones, the configurations ranked by their mean over seeds with 95%
intervals, the ones to run with more seeds, and a trial's params read back from its row.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from ray import tune

from sweeps import knobs
from sweeps.config import SweepSetup
from sweeps.records import CHECKPOINT
from sweeps.search import filled, is_reference
from sweeps.stats import seed_summary
from sweeps.trial import config_key

PARAM_COLUMNS = [*knobs.NAMES, "seed"]


def row_params(row: pd.Series) -> dict[str, Any]:
    """A trial's params from its table row: the knobs it set and its seed, as the Python values Tune gave
    (a table column of numbers with gaps holds floats; NumPy scalars)."""

    def value(k: str) -> Any:
        v = row[k].item() if hasattr(row[k], "item") else row[k]
        return knobs.BY_NAME[k].cast(v) if k in knobs.BY_NAME else int(v)

    return {k: value(k) for k in PARAM_COLUMNS if k in row and pd.notna(row[k])}


def trials_table(grid: tune.ResultGrid, objectives: tuple[str, ...]) -> pd.DataFrame:
    """One row per trial: its parameters, last reported objectives, steps done, checkpoint, and why it
    failed (the last line of its error; None when it did not)."""
    rows = []
    for result in grid:
        if not result.config:
            continue
        metrics = result.metrics or {}
        rows.append(
            {
                "trial": metrics.get("trial_id", result.path.rstrip("/").rsplit("/", 1)[-1]),
                **{k: result.config.get(k) for k in PARAM_COLUMNS if k in result.config},
                "config_key": config_key(result.config),
                "step": metrics.get("step"),
                **{o: metrics.get(o) for o in objectives},
                "checkpoint_path": metrics.get(CHECKPOINT),
                "error": _last_line(result.error),
            }
        )
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
        top.append(
            done[
                [all(k in row and knobs.same_value(row[k], v) for k, v in given.items()) for _, row in done.iterrows()]
            ]
        )
    return pd.concat(top).drop_duplicates("config_key")


def ranked(table: pd.DataFrame, setup: SweepSetup) -> pd.DataFrame:
    """Completed configurations ranked by the mean of the first objective over seeds, with 95% intervals."""
    objective, mode = setup.sweep.objectives[0], setup.sweep.modes[0]
    rows = per_configuration(completed(table, setup), [k for k in PARAM_COLUMNS if k != "seed"], setup.sweep.objectives)
    if rows.empty:
        return pd.DataFrame(columns=["config_key", "seeds", *setup.sweep.objectives])
    return rows.sort_values(objective, ascending=mode == "min").reset_index(drop=True)


def per_configuration(runs: pd.DataFrame, columns: list[str], objectives: tuple[str, ...]) -> pd.DataFrame:
    """One row per `config_key` of `runs` (one per seed): its `columns` (from its first run), how many
    seeds, and each objective's mean and 95% half-width over them."""
    return pd.DataFrame(
        [
            {"config_key": key, **seed_summary(group, columns, list(objectives), " ±95%")}
            for key, group in runs.groupby("config_key")
        ]
    )


def best_trial(table: pd.DataFrame, setup: SweepSetup, best_key: str) -> pd.Series:
    """The completed trial of the best configuration with the best first objective (its best seed)."""
    objective, mode = setup.sweep.objectives[0], setup.sweep.modes[0]
    final = completed(table, setup)
    return final[final["config_key"] == best_key].sort_values(objective, ascending=mode == "min").iloc[0]
