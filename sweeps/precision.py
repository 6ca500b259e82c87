"""The sweep's encoding precision, settled once: `eval.precision: auto` checked at the first start
(`evaluation.precision`), the decision and its figures kept in the sweep's signed settings, so every
`--resume` (on any machine) encodes as the first run did and one sweep's figures never mix precisions.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace

from evaluation.precision import PrecisionCheck, settle
from sweeps import state
from sweeps.config import SweepSetup
from sweeps.early import base_ref, full_eval_config


def settled(setup: SweepSetup) -> tuple[SweepSetup, PrecisionCheck]:
    """`setup` with `eval.precision` fp32 or bf16, and the check behind it (said in one line). Needs Ray."""
    if setup.eval.precision != "auto":
        return setup, PrecisionCheck(setup.eval.precision, "set in eval.precision")
    kept = state.settled_precision(setup)
    if kept:
        check = PrecisionCheck(**kept)
    else:
        from evaluation.datasets import load_eval_set

        print(
            f"{time.strftime('%H:%M:%S')} eval.precision auto: timing bf16 against fp32 encoding and, where it is "
            "faster, evaluating the base model both ways on the held-out set",
            flush=True,
        )
        held_out = full_eval_config(setup, setup.eval.dataset)
        eval_set = load_eval_set(held_out, setup.run.data)
        check = settle(held_out, base_ref(setup), eval_set, setup.sweep.eval_cache_location)
        state.save_precision(setup, asdict(check))
    print(f"{time.strftime('%H:%M:%S')} {check.line()}", flush=True)
    return replace(setup, eval=replace(setup.eval, precision=check.precision)), check
