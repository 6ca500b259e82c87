"""What a sweep keeps beside its phases in storage, and what `--resume` checks before Ray starts: the
settings it started with and its id (signed), its search rounds (`sweep.trials` raised on `--resume`),
the summary line of a finished sweep, and the signed Tune state of every phase.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from typing import Any

import pyarrow.fs as pafs

from hybrid import signing, storage
from sweeps.config import SweepSetup
from sweeps.identity import new_id


def exists(setup: SweepSetup) -> bool:
    """Whether this sweep (its search phase) is already in storage: read before Ray starts (what
    `Tuner.can_restore` looks for, without importing Tune)."""
    return storage.exists(setup.sweep.location("search", TUNER_FILE))


TUNER_FILE = "tuner.pkl"  # Tune's experiment, in each phase's folder from the phase's start
SETTINGS_FILE = signing.SETTINGS_FILE  # the resolved configuration a sweep started with, beside its phases
BINDS_SWEEP_ID = "binds_sweep_id"  # in the stored settings: this sweep binds its checkpoints to its id


def _stored(setup: SweepSetup) -> dict[str, Any] | None:
    """{"id": the sweep's id, "settings": flat config, "search_rounds": [trials after each round]} or None
    (a new sweep). Signed by this deployment (`hybrid.signing`), else refused: it decides what --resume
    continues and with which settings."""
    location = setup.sweep.location(SETTINGS_FILE)
    if not storage.exists(location):
        return None
    try:
        return signing.verified(
            json.loads(storage.read_text(location)), signing.settings_purpose(setup.sweep.name), location
        )
    except signing.BadSignature as e:
        raise ValueError(
            f"{e} The sweep's settings cannot be trusted, so it is not resumed. If you wrote it, "
            f"accept it once: python -m hybrid.accept {setup.sweep.location()}"
        ) from None
    except ValueError as e:
        raise ValueError(f"{location}: unreadable ({e}); the sweep is not resumed.") from None


def sweep_id(setup: SweepSetup) -> str:
    """The sweep's id (`sweeps.identity`): the stored one, or a new one for a sweep not stored yet (kept
    by `save_settings`)."""
    return (_stored(setup) or {}).get("id") or new_id()


def save_settings(setup: SweepSetup, sweep_id: str, started: bool) -> None:
    """Store the configuration and the id beside the sweep's phases (once: a resumed sweep keeps the
    original), and the search's rounds: `sweep.trials` raised
    on `--resume` adds a round of only the new trials. A start that saved no search phase yet (`started`:
    `exists`) stores the configuration it has now."""
    stored = _stored(setup)
    if stored is None or not started:
        stored = {"settings": setup.settings(), "search_rounds": [setup.sweep.trials], BINDS_SWEEP_ID: True}
    elif setup.sweep.trials > stored["search_rounds"][-1]:
        stored["search_rounds"].append(setup.sweep.trials)
    elif stored.get("id") == sweep_id:
        return
    stored["id"] = sweep_id
    _write_settings(setup, stored)


def _write_settings(setup: SweepSetup, stored: dict[str, Any]) -> None:
    storage.write_text(
        setup.sweep.location(SETTINGS_FILE),
        json.dumps(signing.signed(stored, signing.settings_purpose(setup.sweep.name)), indent=1, sort_keys=True),
    )


def bound_to_sweep(setup: SweepSetup, sweep_id: str) -> SweepSetup:
    """`setup` with `trainer.sweep_id` set, so its trials' checkpoints and merges are bound to (sweep id, trial
    id, step), where this sweep's signed settings say it binds them so: every sweep stored since (issue 33).
    One stored before binds them to the trial id alone, as its checkpoints already are, to the end."""
    if not (_stored(setup) or {}).get(BINDS_SWEEP_ID):
        return setup
    return replace(setup, run=replace(setup.run, trainer=replace(setup.run.trainer, sweep_id=sweep_id)))


def settled_precision(setup: SweepSetup) -> dict[str, Any] | None:
    """The encoding precision this sweep settled at its first start (`sweeps.precision`), or None."""
    return (_stored(setup) or {}).get("precision")


def save_precision(setup: SweepSetup, check: dict[str, Any]) -> None:
    """Keep the settled precision with the signed settings: every `--resume` encodes as the first run did."""
    stored = _stored(setup)
    if stored is None:
        raise ValueError(f"{setup.sweep.location(SETTINGS_FILE)}: the settings are saved before the precision.")
    stored["precision"] = check
    _write_settings(setup, stored)


FINISHED_FILE = "finished.txt"  # the summary line of a sweep that ran to its end


def save_finished(setup: SweepSetup, line: str) -> None:
    storage.write_text(setup.sweep.location(FINISHED_FILE), line)


def finished(setup: SweepSetup) -> str | None:
    """The summary line of this sweep when it finished (read before Ray starts), else None."""
    location = setup.sweep.location(FINISHED_FILE)
    return storage.read_text(location) if storage.exists(location) else None


RUN_TIMES_FILE = "run_times.json"  # each driver run's seconds: a sweep's wall time sums its --resumes


def run_times(setup: SweepSetup) -> list[float]:
    """The seconds of every earlier driver run of this sweep (a run killed with SIGKILL is not in it), as
    signed by those runs: a file not signed by this deployment counts for nothing (it would go to MLflow)."""
    location = setup.sweep.location(RUN_TIMES_FILE)
    if not storage.exists(location):
        return []
    try:
        document = json.loads(storage.read_text(location))
        return [float(x) for x in signing.verified(document, _run_times_purpose(setup), location)["runs"]]
    except (ValueError, KeyError, TypeError) as e:
        print(f"[hybrid-sweep] earlier runs' times not counted: {str(e).splitlines()[0][:200]}", file=sys.stderr)
        return []


def _run_times_purpose(setup: SweepSetup) -> str:
    return f"run-times:{setup.sweep.name}"


def add_run_time(setup: SweepSetup, seconds: float) -> None:
    """Keep this driver run's seconds, at its end however it ends (finished, failed, Ctrl-C, SIGTERM). Storage
    that fails now (perhaps why the run ends) costs only this figure, never the error that ended the run."""
    try:
        runs = {"runs": [*run_times(setup), round(seconds, 1)]}
        storage.write_text(
            setup.sweep.location(RUN_TIMES_FILE), json.dumps(signing.signed(runs, _run_times_purpose(setup)))
        )
    except (OSError, ValueError) as e:
        print(f"[hybrid-sweep] this run's time was not kept ({str(e).splitlines()[0][:200]}).", file=sys.stderr)


def search_rounds(setup: SweepSetup) -> list[int]:
    stored = _stored(setup)
    return stored["search_rounds"] if stored else [setup.sweep.trials]


def check_unchanged(setup: SweepSetup) -> None:
    """`--resume` continues the sweep that was started: a changed setting would rank results of two
    different setups together (or restore the old search with a new one), so it is refused by name.
    `sweep.trials` may only grow: the new trials run as a search round of their own."""
    stored = _stored(setup)
    if stored is None and exists(setup):  # save_settings runs before any phase: a sweep of an older version
        raise ValueError(
            f"--resume of sweep {setup.sweep.name!r}: its phases are in {setup.sweep.location()} but "
            f"not the settings it started with ({SETTINGS_FILE}), so nothing proves the same sweep "
            "would continue. Start a new sweep with --name NEW."
        )
    if stored is None:
        return  # a sweep not started yet: --resume starts it
    changed = setup.changed_since(stored["settings"])
    if changed:
        raise ValueError(
            f"--resume of sweep {setup.sweep.name!r} with changed settings: {', '.join(changed)}. "
            "Resume with the configuration it started with (stored in "
            f"{SETTINGS_FILE} beside it), or start a new sweep with --name NEW."
        )
    ran = stored["search_rounds"][-1]
    if setup.sweep.trials < ran:
        raise ValueError(
            f"sweep.trials={setup.sweep.trials}: sweep {setup.sweep.name!r} has {ran} search trials "
            f"already; --resume can only raise it (sweep.trials={ran} continues it as it is)."
        )


def check_state(setup: SweepSetup) -> None:
    """Before `--resume` starts Ray: every phase of the sweep in storage has Tune state this deployment
    signed (`sweeps.tune_state`), else a one-line ValueError. Reads no pickle."""
    from sweeps import tune_state  # Tune: only a --resume pays for its import before Ray starts

    fs, path = storage.filesystem(setup.sweep.location())
    for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
        phase = info.path.rstrip("/").rsplit("/", 1)[-1]
        if info.type == pafs.FileType.Directory and storage.exists(setup.sweep.location(phase, TUNER_FILE)):
            tune_state.check(setup.sweep.location(phase), tune_state.purpose(setup.sweep.name, phase))
