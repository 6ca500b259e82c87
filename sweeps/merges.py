"""Merges of the references (`sweep.merge_references`): is averaging the two specialists as good as
hybrid batching? A sweep always trains both (alpha = 1: X-X only, alpha = 0: X-Y only), so the answer
costs evaluations, not training.

Per seed whose alpha = 1 and alpha = 0 references both completed (equal in every other knob), their final
encoders are averaged at each weight w of the alpha = 1 model (`hybrid.merge`) into a signed export under
`<storage>/<sweep>/merges/merge-w<w>-s<seed>/`. Each is evaluated like a trial's final checkpoint: the
proxy evaluation for the ranked table, then the full one in the final phase, logged to a run of its own
(`sweep.role` merge, config_key `merge w=0.5`) whose model names both parents. Driver only; a merge
already in storage with a valid manifest is reused (`--resume`).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from evaluation.checkpoints import CheckpointRef
from evaluation.datasets import load_eval_set
from evaluation.results import EvalResult
from evaluation.runner import evaluate_checkpoints
from evaluation.tracking import checkpoint_model
from hybrid import manifest, merge, storage
from hybrid.config import to_dict
from hybrid.layout import ENCODER_DIR
from sweeps import tracking
from sweeps.config import SweepSetup
from sweeps.knobs import BY_NAME, MERGE_WEIGHT, same_value
from sweeps.ranking import PARAM_COLUMNS, completed, per_configuration, row_params
from sweeps.records import CONFIG_KEY
from sweeps.trial import trial_run_config


@dataclass(frozen=True)
class Merge:
    weight: float
    seed: int
    mono: pd.Series  # the alpha = 1 reference trial (a row of the trials table)
    cross: pd.Series  # the alpha = 0 reference trial, same seed and knobs

    @property
    def key(self) -> str:
        """Its configuration: the merges of every seed at one weight."""
        return f"merge w={self.weight:g}"

    @property
    def name(self) -> str:
        return f"merge-w{self.weight:g}-s{self.seed}"

    def parent(self, alpha: int) -> str:
        return storage.join((self.mono if alpha else self.cross)["checkpoint_path"], ENCODER_DIR)


def planned(table: pd.DataFrame, setup: SweepSetup) -> list[Merge]:
    """The merges to make: per seed whose two references completed, one per weight. The references are
    the sweep's own (every other knob at the run config's value, as the search enqueued them), not an
    alpha = 0 or 1 at another tau."""
    if not setup.sweep.merge_references:
        return []
    done = completed(table, setup)
    base = {k: BY_NAME[k].base_value(setup.run) for k in PARAM_COLUMNS if k in BY_NAME and k in done}
    ours = [
        all(pd.isna(row[k]) or same_value(row[k], v) for k, v in base.items() if k != "mono_ratio")
        for _, row in done.iterrows()
    ]
    refs = done[ours]
    alpha = refs["mono_ratio"].astype(float)
    pairs: dict[int, tuple[pd.Series, pd.Series]] = {}
    for _, one in refs[np.isclose(alpha, 1.0)].iterrows():
        for _, zero in refs[np.isclose(alpha, 0.0)].iterrows():
            if zero["seed"] == one["seed"]:
                pairs.setdefault(int(one["seed"]), (one, zero))
    return [
        Merge(w, seed, one, zero) for w in setup.sweep.merge_references for seed, (one, zero) in sorted(pairs.items())
    ]


def bound(setup: SweepSetup, m: Merge) -> dict[str, int | str]:
    """What a merge's signed manifest names, as a training checkpoint's names its run and step: checked
    wherever it is loaded (`ref`), so another merge copied in its place is refused."""
    return {"run": manifest.bound_run(m.name, setup.run.trainer.sweep_id), "step": setup.run.optim.steps}


def _valid(location: str, setup: SweepSetup, m: Merge) -> bool:
    """`m` as this deployment wrote it: the signed manifest matches every file and names `m`, and its signed
    `merge.json` names `m`'s weight and parents (their checkpoints in this sweep's storage). Not so: a merge
    cut short, altered, of a sweep before merges were bound, or another one (of other parents, another
    weight, another sweep) copied into its place."""
    try:
        folder = storage.local_copy(location)
        manifest.check(folder, **bound(setup, m))
        made = json.loads((folder / merge.MERGE_FILE).read_text())
        return made["weight"] == m.weight and [p["path"] for p in made["parents"]] == [m.parent(1), m.parent(0)]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def build(setup: SweepSetup, m: Merge) -> str:
    """The merge's export in the sweep's storage, made unless a valid one is there; its location."""
    location = setup.sweep.location("merges", m.name)
    if storage.exists(location):
        if _valid(location, setup, m):
            return location
        storage.delete(location)  # cut short, altered or another merge: made again
    mono, cross = m.parent(1), m.parent(0)
    with tempfile.TemporaryDirectory() as tmp:
        out = merge.merge(
            storage.local_copy(mono),
            storage.local_copy(cross),
            m.weight,
            Path(tmp) / "merge",
            origins=(mono, cross),
            bound=bound(setup, m),
        )
        storage.upload_tree(out, location, last=manifest.MANIFEST)
    return location


def ref(setup: SweepSetup, m: Merge, location: str) -> CheckpointRef:
    """The merge's export, as a model trained with the knobs its parents share (the alpha = 1 parent's)."""
    run = trial_run_config(setup.run, row_params(m.mono))
    return CheckpointRef.trained(location, setup.run.optim.steps, to_dict(run), m.name, run=bound(setup, m)["run"])


def params(m: Merge) -> dict:
    """The merge run's params: its weight and seed, the knobs its parents share, and the parents."""
    knobs = {k: v for k, v in row_params(m.mono).items() if k not in ("mono_ratio", "seed")}
    return {
        MERGE_WEIGHT: m.weight,
        "seed": m.seed,
        CONFIG_KEY: m.key,
        **knobs,
        "merge.alpha1_trial": m.mono["trial"],
        "merge.alpha0_trial": m.cross["trial"],
    }


def log_lineage(runs: tracking.SweepRuns, run_id: str, m: Merge, result: EvalResult) -> None:
    """The merge's LoggedModel names both parents: their trials, runs and checkpoints, and the weight."""
    client = runs.client
    model = checkpoint_model(client, client.get_run(run_id), result)
    tags = {"merge.weight": f"{m.weight:g}"}
    for alpha, row in ((1, m.mono), (0, m.cross)):
        tags |= {
            f"merge.alpha{alpha}.trial": str(row["trial"]),
            f"merge.alpha{alpha}.run_id": runs.trial_run(row["trial"]) or "",
            f"merge.alpha{alpha}.checkpoint": m.parent(alpha),
        }
    client.set_logged_model_tags(model.model_id, tags)


@dataclass
class Merged:
    """The merges made and proxy-evaluated: each with its evaluation ref and run, and their figures."""

    merges: list[Merge]
    refs: list[CheckpointRef]
    run_ids: list[str]
    results: list[EvalResult]

    def ranked(self, objectives: tuple[str, ...]) -> pd.DataFrame:
        """One row per weight, as `ranking.ranked` gives the trained configurations: mean ± 95% over seeds."""
        runs = pd.DataFrame(
            [
                {"config_key": m.key, MERGE_WEIGHT: m.weight, **{o: r.summary.get(o, math.nan) for o in objectives}}
                for m, r in zip(self.merges, self.results)
            ]
        )
        return per_configuration(runs, [MERGE_WEIGHT], objectives)


def make(setup: SweepSetup, table: pd.DataFrame, runs: tracking.SweepRuns) -> Merged:
    """Every planned merge built, proxy-evaluated and logged to its run (with the lineage of its model)."""
    merges = planned(table, setup)
    if not merges:
        if setup.sweep.merge_references:
            print("No merge of the references: no seed has both alpha = 0 and alpha = 1 completed.", flush=True)
        return Merged([], [], [], [])
    print(
        f"{time.strftime('%H:%M:%S')} merging the references: {len(merges)} merges "
        f"(w = {', '.join(f'{w:g}' for w in setup.sweep.merge_references)} of alpha = 1; "
        f"seeds {', '.join(str(s) for s in sorted({m.seed for m in merges}))})",
        flush=True,
    )
    refs = [ref(setup, m, build(setup, m)) for m in merges]
    # The proxy's data, at the final phase's CPUs: nothing trains beside it now.
    proxy = replace(setup.proxy_eval, encode_cpus=setup.eval.encode_cpus, score_cpus=setup.eval.score_cpus)
    results = evaluate_checkpoints(refs, load_eval_set(proxy, setup.run.data), proxy, setup.sweep.eval_cache_location)
    run_ids = []
    for m, result in zip(merges, results):
        run_id = runs.merge(m.name, params(m))
        runs.log_result(result, run_id)
        log_lineage(runs, run_id, m, result)
        run_ids.append(run_id)
    return Merged(merges, refs, run_ids, results)
