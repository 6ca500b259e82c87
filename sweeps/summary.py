"""What a finished sweep prints: its trials, its configurations ranked, the held-out evaluation of the
best against the base model, the best alpha with its interval, the time per trial, where its model and its
record are, and its time set beside the estimate. Printing only: `sweeps.driver` runs the sweep and hands the
figures here (the best alpha is read back from its MLflow record, as the report reads it).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from sweeps import estimate, ranking, registry
from sweeps.config import SweepSetup
from sweeps.stats import mean_pm
from sweeps.uris import is_server, redact


@dataclass(frozen=True)
class Times:
    """The driver's seconds: until the trials ended, in all, and the final evaluation's share."""

    trials_s: float
    wall_s: float
    final_s: float


def finished_line(setup: SweepSetup, table: pd.DataFrame, configs: pd.DataFrame, wall_s: float) -> str:
    """ "4 trials in 16.7 min; best multi/map 0.6047 over 2 seed(s) at mono_ratio=0, ...": kept with the
    sweep (`state.save_finished`), shown when it is started again."""
    best, objective = configs.iloc[0], setup.sweep.objectives[0]
    knobs = ", ".join(
        f"{k}={best[k]}" if isinstance(best[k], str) else f"{k}={best[k]:.4g}"
        for k in ranking.PARAM_COLUMNS
        if k in best and k != "seed"
    )
    return (
        f"{len(table)} trials in {wall_s / 60:.1f} min; best {objective} {best[objective]:.4f} over "
        f"{best['seeds']} seed(s) at {knobs}"
    )


def print_tables(
    setup: SweepSetup,
    table: pd.DataFrame,
    configs: pd.DataFrame,
    merges: pd.DataFrame | None,
    summary: dict[str, float],
) -> None:
    """The trials (and why any failed), the configurations ranked with the merges beside them, and the
    held-out evaluation of the best against the base model."""
    s = setup.sweep
    print("\nTrials (proxy evaluation, last checkpoint):")
    print(table.drop(columns=["checkpoint_path", "error"]).to_string(index=False, float_format="%.4f", na_rep="-"))
    for _, row in table[table["error"].notna()].iterrows():
        where = f"after step {row['step']:.0f}" if row["step"] == row["step"] else "before its first checkpoint"
        print(f"  failed: trial {row['trial']} {where}: {row['error']}")
    print(
        f"\nConfigurations ranked by {s.objectives[0]} (mean over seeds, ±95% CI"
        f"{'; merges of the references beside them, never chosen as the best' if merges is not None else ''}):"
    )
    shown = (
        configs
        if merges is None
        else pd.concat([configs, merges], ignore_index=True).sort_values(
            s.objectives[0], ascending=s.modes[0] == "min", ignore_index=True
        )
    )
    print(shown.to_string(float_format="%.4f", na_rep="-"))  # "-": no interval from one seed, not NaN
    for dataset in (setup.eval.dataset, *s.zero_shot_datasets):
        scope = "" if dataset == setup.eval.dataset else f"{dataset}/"
        keys = sorted(k for k in summary if k.startswith(f"best/{scope}") and not k.endswith("/ci95"))
        keys = [k for k in keys if k.count("/") == 2 + bool(scope)]  # the held-out set's own, not a zero-shot's
        if keys:
            what = "held-out" if not scope else "zero-shot (never trained or selected on)"
            print(f"\nFull evaluation on {dataset} ({what}), best configuration vs base model:")
        for key in keys:
            metric = key[len(f"best/{scope}") :]
            print(
                f"  {metric:<22} base {summary[f'base/{scope}{metric}']:.4f}   "
                f"best {mean_pm(summary[key], summary[key + '/ci95'], 4)}"
            )


def print_best_alpha(setup: SweepSetup) -> None:
    """Which alpha to use, per objective and evaluation set, with its 95% interval: the report's estimate
    (`sweeps.report.best_alpha`) from the sweep's MLflow record, its final evaluation just logged."""
    from mlflow import MlflowClient

    from sweeps.report.best_alpha import estimates
    from sweeps.report.data import load_sweep
    from sweeps.report.findings import best_alpha_lines

    sweep = load_sweep(MlflowClient(tracking_uri=setup.sweep.tracking_uri), setup.sweep.name, tables=False)
    print("\n" + "\n".join(best_alpha_lines(estimates(sweep), sweep.main_dataset)))


def print_overhead(overhead: dict[str, float]) -> None:
    """Per trial: its time outside training and evaluation, and the start-up's split (`trial_overhead`)."""
    if not overhead:
        return
    print(
        f"\nPer trial: {overhead['sweep/trial_wall_s']:.0f} s, of which {overhead['sweep/trial_overhead_s']:.0f} s "
        f"({overhead['sweep/trial_overhead_fraction']:.0%}) outside training and evaluation "
        f"(start-up {overhead['sweep/trial_startup_s']:.0f} s: "
        + ", ".join(f"{k.split('/')[-1][:-2]} {v:.1f}" for k, v in overhead.items() if k.startswith("sweep/startup/"))
        + ")."
    )


def print_where(
    setup: SweepSetup, n_trials: int, version: str, times: Times, exp_id: str, expected: estimate.Estimate | None
) -> None:
    """The best model's URI, the sweep's time (beside the estimate), and where its runs and study are."""
    s = setup.sweep
    print(
        f"\nThe best configuration's encoder: models:/{s.name}@{registry.ALIAS} (version {version}), e.g. "
        f"mlflow.sentence_transformers.load_model('models:/{s.name}@{registry.ALIAS}')."
    )
    took = (
        f"{n_trials} trials in {times.wall_s / 60:.1f} min (trials {times.trials_s / 60:.1f}, final evaluation "
        f"{times.final_s / 60:.1f})"
    )
    if expected:
        final = expected.parts["final evaluation"]
        took += (
            f"; estimated {expected.total_s / 60:.1f} ({(expected.total_s - final) / 60:.1f} + {final / 60:.1f}) "
            f"on {expected.speed.cpu}: {(expected.total_s - times.wall_s) / times.wall_s:+.0%}"
        )
    print(f"\nSweep '{s.name}': {took}. Compare the runs in MLflow:")
    if is_server(s.tracking_uri):
        print(f"  {redact(s.tracking_uri).rstrip('/')}/#/experiments/{exp_id}  (the tracking server's UI)")
    else:
        print(f"  mlflow ui --backend-store-uri {redact(s.tracking_uri)} --host 127.0.0.1 --port 5000")
    print(
        f"The search's Optuna study {s.name!r}: optuna-dashboard {redact(s.study_storage)} "
        "(pip install optuna-dashboard), or optuna.load_study."
    )
