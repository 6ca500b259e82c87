"""Tune's experiment state, signed: what `--resume` unpickles is only ever what this sweep's driver saved.

Tune keeps a phase's state in storage as pickles (`tuner.pkl`, the searcher's state, cloudpickled trials
inside `experiment_state-*.json`) and unpickles them on restore, so anyone who can write to the bucket
could run code in the driver. Tune calls every callback's `get_state` right after it writes those files
to its local staging folder and before it uploads them: there `SignedState` copies them into
`<phase>/signed-state/` in storage, as content-addressed blobs and a signed index written last. Nothing
it signs is read back from storage: the state files from this experiment's own staging folder (named by
its trials, never the newest of the Ray session, which another sweep's driver may share), `tuner.pkl`
from the bytes this driver pickled or verified (`sign_tuner`).
`restore_verified` puts exactly those bytes back before `Tuner.restore`, and deletes any other file of
those kinds (Tune takes the highest name), so nothing unsigned is ever unpickled. And where Tune reads
them (`guard_tune_reads`), each file is checked again, so one dropped in after `restore_verified` returned
is refused, never unpickled. A phase whose index is missing or badly signed is refused before Ray starts
(`check`).

Tune also unpickles a failed trial's `error.pkl` from storage when it builds a phase's results;
`never_unpickle_trial_errors` makes it read the error's text (`error.txt`) instead.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from ray import tune

from hybrid import signing, storage

STATE_FILES = (
    "tuner.pkl",
    "experiment_state-*.json",
    "search_gen_state-*.json",
    "searcher-state-*.pkl",
    "basic-variant-state-*.json",
    "callback-states-*.pkl",
)  # what Tune unpickles on restore
SIGNED, INDEX = "signed-state", "index.json"
# Whether this driver still holds the sweep's lease (`DriverLease.held`), asked before each signed write
_lease_held: Callable[[], bool] | None = None
# sha256 of the state files `restore_verified` verified last: all Tune may read in this process from then on
# (None: no phase restored here, nothing read)
_trusted: set[str] | None = None


def write_only_while(held: Callable[[], bool]) -> None:
    """Sign Tune's state (and delete its old blobs) only while `held()`: the driver's lease is its own."""
    global _lease_held
    _lease_held = held


def purpose(sweep: str, phase: str) -> str:
    return f"tune-state:{sweep}/{phase}"


def _is_state(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in STATE_FILES)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class SignedState(tune.Callback):
    """Signs each save of Tune's state as it happens (see the module's docstring). Tune pickles its
    callbacks into `tuner.pkl`: only the phase's location, name and purpose are kept."""

    def __init__(self, location: str, phase: str, purpose: str):
        self.location, self.phase, self.purpose = location, phase, purpose
        self._signed: dict[str, str] = {}  # name -> sha256 in the index last written
        self._tuner: bytes | None = None  # tuner.pkl as this driver wrote or verified it (`sign_tuner`)
        self._trial: str | None = None  # a trial id of this experiment: finds its staging folder
        self._staging: Path | None = None

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_signed": {}, "_tuner": None, "_trial": None, "_staging": None}

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if self._trial is None and trials:
            self._trial = trials[0].trial_id

    def get_state(self) -> None:
        """Tune's hook after each save (None: no state of this callback's own)."""
        try:
            self._sign()
        except OSError as e:  # storage down for a moment: the next save (seconds later) signs again
            print(f"[hybrid-sweep] could not sign Tune's state of {self.phase}: {e}", flush=True)

    def _sign(self) -> None:
        staging = self._find_staging()
        if staging is None or self._tuner is None:  # a save before the first trial: nothing to resume
            return
        files = {p.name: p.read_bytes() for p in staging.iterdir() if p.is_file() and _is_state(p.name)}
        files["tuner.pkl"] = self._tuner  # written straight to storage when the Tuner was made, never again
        digests = {name: _sha256(data) for name, data in files.items()}
        if digests == self._signed or (_lease_held is not None and not _lease_held()):  # lost: writes nothing more
            return
        for name, data in files.items():
            if digests[name] not in self._signed.values():
                storage.write_bytes(self._blob(digests[name]), data)
        storage.write_text(
            storage.join(self.location, SIGNED, INDEX),
            json.dumps(signing.signed({"files": digests}, self.purpose), indent=1),
        )
        for stale in set(self._signed.values()) - set(digests.values()):
            storage.delete(self._blob(stale))
        self._signed = digests

    def _blob(self, digest: str) -> str:
        return storage.join(self.location, SIGNED, f"{digest}.blob")

    def _find_staging(self) -> Path | None:
        """This experiment's local staging folder, `<Ray session>/artifacts/<start>/<phase>/driver_artifacts`:
        of the phase's folders in this Ray session (another sweep's driver on the cluster, or this sweep's
        earlier start, may have one), the newest whose experiment state names this experiment's trial.
        Tune gives a callback no path, and a restored trial keeps the start time of its first run."""
        from ray.train.constants import _get_ray_train_session_dir

        if self._staging is None and self._trial is not None:
            ours = [
                folder
                for folder in Path(_get_ray_train_session_dir()).glob(f"*/{self.phase}/driver_artifacts")
                if any(self._trial in p.read_text() for p in folder.glob("experiment_state-*.json"))
            ]
            self._staging = max(ours, key=lambda p: p.stat().st_mtime, default=None)
        return self._staging


def sign_tuner(tuner: tune.Tuner, verified: bytes | None = None) -> None:
    """Give the phase's `SignedState` the bytes of `tuner.pkl` to sign: the `verified` ones of a restored
    phase (`restore_verified`), else a new Tuner's state pickled as Tune pickled it into storage a moment
    ago, so a file replaced there in between is never signed."""
    import ray.cloudpickle  # how Tune pickles it (`ray.tune.impl.tuner_internal`)

    local = tuner._local_tuner
    data = verified if verified is not None else ray.cloudpickle.dumps(local.__getstate__())
    for callback in local.get_run_config().callbacks or []:
        if isinstance(callback, SignedState):
            callback._tuner = data


def _present(location: str) -> set[str]:
    """The names of Tune's state files at the top of the phase's folder."""
    return {name for name in storage.names(location) if _is_state(name)}


def check(location: str, purpose: str) -> dict[str, str]:
    """{file name: sha256} of the phase's signed state at `location`, every blob present and intact ({}: a
    phase whose driver stopped before Tune's first save, only `tuner.pkl` there); a one-line ValueError
    (the sweep is not resumed) otherwise. Reads no pickle."""
    index_location = storage.join(location, SIGNED, INDEX)
    refused = "Tune's state cannot be trusted, so the sweep is not resumed (nothing of it was unpickled)"
    if not storage.exists(index_location):
        if _present(location) <= {"tuner.pkl"}:
            return {}
        raise ValueError(
            f"{location}: Tune's state is not signed (saved before signatures, or by someone without "
            f"this deployment's key). {refused}; start it again with --name NEW."
        )
    try:
        files = signing.verified(json.loads(storage.read_text(index_location)), purpose, index_location)["files"]
    except signing.BadSignature as e:
        raise ValueError(f"{e} {refused}.") from None
    except ValueError as e:
        raise ValueError(f"{index_location}: unreadable ({e}). {refused}.") from None
    for name, digest in files.items():
        blob = storage.join(location, SIGNED, f"{digest}.blob")
        if not storage.exists(blob) or _sha256(storage.read_bytes(blob)) != digest:
            raise ValueError(f"{blob} ({name}): missing or altered. {refused}.")
    return files


def restore_verified(location: str, purpose: str) -> bytes | None:
    """Make the phase's state files in storage exactly the signed ones (`check`) before `Tuner.restore`:
    the signed `tuner.pkl` (for `sign_tuner`). None (its files deleted) for a phase Tune never saved: it
    starts afresh."""
    global _trusted
    files = check(location, purpose)
    _trusted = set(files.values())
    present, changed, tuner = _present(location), [], None
    for name, digest in files.items():
        current = storage.join(location, name)
        if name not in present or _sha256(storage.read_bytes(current)) != digest:
            storage.write_bytes(current, storage.read_bytes(storage.join(location, SIGNED, f"{digest}.blob")))
            changed.append(name)
        if name == "tuner.pkl":
            tuner = storage.read_bytes(storage.join(location, SIGNED, f"{digest}.blob"))
    for name in sorted(present - set(files)):
        storage.delete(storage.join(location, name))
        changed.append(name)
    if files and changed:
        print(
            f"[hybrid-sweep] Tune's state of {location}: {', '.join(sorted(changed))} differed from its signed "
            "copy (a driver stopped before Tune's upload, or the files were altered): restored from it.",
            flush=True,
        )
    return tuner


class UnsignedState(BaseException):
    """A state file Tune was about to read that is not in the phase's signed index. Not an `Exception`: Tune
    takes any of those from its resume for "start the experiment afresh", which would run every trial
    again; this one stops the phase (`sweeps.phases`)."""


def _untrusted(raw: bytes) -> bool:
    """Bytes of a state file that a phase restored in this process did not verify (`restore_verified`)."""
    return _trusted is not None and _sha256(raw) not in _trusted


def _trusted_bytes(data: bytes | str, where: str) -> bytes | str:
    if _untrusted(data.encode() if isinstance(data, str) else bytes(data)):
        raise UnsignedState(
            f"{where}: a file of Tune's state that is not in its signed index (put there after it was "
            "verified): not unpickled, the sweep stops. Run the same command again."
        )
    return data


def guard_tune_reads() -> None:
    """Check each state file of a restored phase where Tune reads it: the experiment state, read from storage
    (by `Tuner.restore`'s ExperimentAnalysis and by `TuneController.resume`), and the searcher's and
    callbacks' states, downloaded to its staging folder (an unsigned one there is deleted before Tune
    looks). Once per process; a phase that is not restored reads none."""
    from ray.tune.analysis import experiment_analysis
    from ray.tune.execution import experiment_state, tune_controller

    if getattr(tune_controller, "_hybrid_sweep_guarded", False):
        return
    for module in (experiment_analysis, tune_controller):
        loads = module._loads_with_cloudpickle
        module._loads_with_cloudpickle = lambda data, loads=loads: loads(_trusted_bytes(data, "experiment state"))
    manager = experiment_state._ExperimentCheckpointManager
    sync_down = manager.sync_down_experiment_state

    def verified_sync_down(self) -> None:
        sync_down(self)
        for path in Path(self._storage.experiment_driver_staging_path).iterdir():
            if path.is_file() and _is_state(path.name) and _untrusted(path.read_bytes()):
                path.unlink()

    manager.sync_down_experiment_state = verified_sync_down
    tune_controller._hybrid_sweep_guarded = True


def never_unpickle_trial_errors() -> None:
    """Tune builds a phase's results with each failed trial's `error.pkl`, unpickled from storage; the text
    of the same error (`error.txt`, `Trial.get_error`) is all the sweep uses, so that is what it gets."""
    from ray.tune.experiment.trial import Trial

    Trial.get_pickled_error = lambda self: None
