"""Nothing read back from storage is used unless this deployment signed it (`hybrid.signing`): the key's
life, and the forgeries a writer to the bucket could make, each refused with its message, on a local
folder and on moto S3. (The optimizer-state canary: tests/test_trainers.py; evaluation and validation
cache entries: tests/test_evaluation.py, tests/test_validation.py; Tune's state: tests/test_sweeps.py.)"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hybrid import manifest, signing, storage
from hybrid.layout import ENCODER_DIR, STATE_FILE

from support import ROOT, driver_env, sweep_command, tiny_config, tiny_sweep_config, with_steps


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> str:
    """A storage root: a local folder, or a prefix of its own in a moto S3 bucket."""
    if request.param == "local":
        return str(tmp_path / "store")
    return storage.join(request.getfixturevalue("s3_bucket"), tmp_path.name)


def test_the_key_is_made_once_private_and_never_by_a_worker(tmp_path, monkeypatch):
    monkeypatch.delenv(signing.KEY_ENV)
    monkeypatch.setenv("HYBRID_SWEEP_CACHE", str(tmp_path / "cache"))
    path = signing.ensure_key()
    assert path == tmp_path / "cache" / "signing.key" and path.stat().st_mode & 0o777 == 0o600
    key = path.read_bytes()
    assert signing.ensure_key() == path and path.read_bytes() == key  # made once
    signature = signing.sign(b"data", "purpose")
    assert signing.sign(b"data", "other purpose") != signature and signing.sign(b"datb", "purpose") != signature

    path.chmod(0o644)
    with pytest.raises(signing.SigningKeyError, match=r"readable by other users \(mode 644\): chmod 600 "):
        signing.sign(b"data", "purpose")
    # A worker node whose key was not shipped: a clear error, never a key of its own.
    monkeypatch.setenv(signing.KEY_ENV, str(tmp_path / "shipped.key"))
    with pytest.raises(signing.SigningKeyError, match=r"no signing key at \S+shipped.key: make one with "):
        signing.ensure_key()
    assert not (tmp_path / "shipped.key").exists()


def test_two_processes_making_the_key_at_once_end_with_one_and_a_key_of_another_user_is_refused(tmp_path, monkeypatch):
    """Issue 33: the key was created empty, then written: a reader in between was told to delete it (and
    would fork the key). Now it is written whole and linked into place: 6 processes racing, each reading the
    key right after, all read the one key. A key owned by another user is refused."""
    monkeypatch.delenv(signing.KEY_ENV)
    monkeypatch.setenv("HYBRID_SWEEP_CACHE", str(tmp_path / "cache"))
    race = (
        "import sys, time; from hybrid import signing\n"
        "time.sleep(max(0.0, float(sys.argv[1]) - time.time()))\n"
        "print(signing._key(signing.ensure_key()).decode())"
    )
    at = str(time.time() + 3)  # every process past its imports, then all at once
    makers = [
        subprocess.Popen([sys.executable, "-c", race, at], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    keys = [m.communicate(timeout=60) for m in makers]
    assert all(m.returncode == 0 for m in makers), [err for _, err in keys]
    assert len({out.strip() for out, _ in keys}) == 1 and len(keys[0][0].strip()) == 64
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["signing.key"]  # no temporary file left
    if os.getuid() == 0:  # only root can give the file away
        os.chown(tmp_path / "cache" / "signing.key", 12345, -1)
        with pytest.raises(signing.SigningKeyError, match=r"belongs to another user \(uid 12345"):
            signing.sign(b"data", "purpose")


def test_signed_documents_and_sealed_blobs_verify_only_unchanged_and_for_their_purpose(tmp_path, monkeypatch):
    document = signing.signed({"a": 1, "b": [0.5, 1e-300]}, "p")
    assert signing.verified(json.loads(json.dumps(document)), "p", "doc") == {"a": 1, "b": [0.5, 1e-300]}
    for bad, message in ((document | {"a": 2}, "doc: bad signature"), ({"a": 1}, "doc: not signed")):
        with pytest.raises(signing.BadSignature, match=message):
            signing.verified(bad, "p", "doc")
    with pytest.raises(signing.BadSignature, match="bad signature"):
        signing.verified(document, "q", "doc")  # another role
    blob = signing.seal(b"\x00tensors", "p")
    assert signing.unseal(blob, "p", "blob") == b"\x00tensors"
    for bad, message in ((blob[:-1] + b"!", "bad signature"), (b"\x00tensors", "not signed"), (b"", "not signed")):
        with pytest.raises(signing.BadSignature, match=f"blob: {message}"):
            signing.unseal(bad, "p", "blob")
    other = tmp_path / "other.key"  # another deployment's key
    other.write_text("f" * 64)
    other.chmod(0o600)
    monkeypatch.setenv(signing.KEY_ENV, str(other))
    with pytest.raises(signing.BadSignature, match="signed with another key"):
        signing.verified(document, "p", "doc")


def _checkpoint(
    tiny_model_dir: Path, store: str, work: Path, signed: bool = True, run: str = "trial_a", step: int = 6
) -> str:
    """A trainer checkpoint of `run` at `step` in `store` (`<run>/checkpoint_000006`), as
    `trainers.loop.save_checkpoint` writes one: an export (the tiny encoder) whose manifest pins the state,
    and rank 0's manifest, both bound to the run and step."""
    local = work / "written"
    shutil.copytree(tiny_model_dir, local / ENCODER_DIR)
    state = json.dumps({"step": step, "config": {"method": {"temperature": 0.05}}})
    (local / STATE_FILE).write_text(state)
    manifest.write_export(local / ENCODER_DIR, run, step, state)
    manifest.write(local, manifest.rank_manifest(0), world_size=1, run=run, step=step)
    if not signed:  # as written before signatures (and so before key ids and bound runs)
        listed = json.loads((local / ENCODER_DIR / manifest.MANIFEST).read_text())
        (local / ENCODER_DIR / manifest.MANIFEST).write_text(json.dumps({"files": listed["files"]}))
    location = storage.join(store, run, f"checkpoint_{step:06d}")
    for path in [p for p in local.rglob("*") if p.is_file()]:
        storage.write_bytes(storage.join(location, str(path.relative_to(local))), path.read_bytes())
    shutil.rmtree(local)
    return location


def test_an_export_altered_with_its_manifest_rewritten_is_neither_evaluated_nor_registered(
    tiny_model_dir, store, tmp_path
):
    """Row 6: the export's weights changed and its manifest's sha256 recomputed (its signature cannot be)."""
    from evaluation.checkpoints import local_model_dir
    from sweeps.registry import register_best

    export = storage.join(_checkpoint(tiny_model_dir, store, tmp_path), ENCODER_DIR)
    weights = storage.join(export, "model.safetensors")
    forged = bytearray(storage.read_bytes(weights))
    forged[-64:] = bytes(64)  # the last weights zeroed
    storage.write_bytes(weights, bytes(forged))
    listed = json.loads(storage.read_text(storage.join(export, manifest.MANIFEST)))
    listed["files"]["model.safetensors"]["sha256"] = hashlib.sha256(forged).hexdigest()
    storage.write_text(storage.join(export, manifest.MANIFEST), json.dumps(listed))

    refused = r"manifest.json: bad signature \(altered, or signed with another key\)\. Not loaded: its files may have been replaced\."
    with pytest.raises(manifest.IncompleteCheckpoint, match=refused):
        local_model_dir(export, signed=True)
    with pytest.raises(manifest.IncompleteCheckpoint, match=refused):
        local_model_dir(export)  # its manifest is there: checked all the same
    with pytest.raises(manifest.IncompleteCheckpoint, match=refused):
        register_best(f"sqlite:///{tmp_path}/mlflow.db", "forged", "run", export, {}, {}, "")
    assert not (tmp_path / "mlflow.db").exists()  # refused before MLflow was touched


def test_a_checkpoint_of_another_trial_or_step_or_with_an_edited_state_is_refused(
    tiny_model_dir, store, tmp_path, capsys
):
    """Issue 33, item 3: trial A's signed checkpoint copied over trial B's, or over a later step of A's, and a
    checkpoint whose trainer_state.json was edited (the step and the temperature ECE is read at): the
    evaluation's tasks, the registration, the CLI's reading of the state and a resume refuse each, naming
    the run and step, or the state. (On 29bd854 each was loaded as B's, or at step 9999.)"""
    import ray.train

    from evaluation.checkpoints import CheckpointRef, local_model_dir
    from sweeps.registry import register_best
    from trainers.loop import restore

    a = _checkpoint(tiny_model_dir, store, tmp_path, run="trial_a")
    b = storage.join(store, "trial_b", "checkpoint_000006")
    later = storage.join(store, "trial_a", "checkpoint_000012")
    for copy in (b, later):
        storage.upload_tree(storage.local_copy(a), copy)
    assert CheckpointRef.from_path(a).bound == {"run": "trial_a", "step": 6}
    assert CheckpointRef.from_path(b).bound == {"run": "trial_a", "step": 6}  # the CLI names what it is

    another = r"written for run trial_a, step 6, not for run trial_b, step 6: a checkpoint of another trial or step"
    with pytest.raises(manifest.IncompleteCheckpoint, match=another):
        local_model_dir(storage.join(b, ENCODER_DIR), signed=True, bound={"run": "trial_b", "step": 6})
    with pytest.raises(manifest.IncompleteCheckpoint, match=another):
        register_best(
            f"sqlite:///{tmp_path}/mlflow.db",
            "s",
            "run",
            storage.join(b, ENCODER_DIR),
            {"run": "trial_b", "step": 6},
            {},
            "",
        )
    assert not (tmp_path / "mlflow.db").exists()  # refused before MLflow was touched

    def resumed(location: str, run: str):
        fs, path = storage.filesystem(location)
        return restore(ray.train.Checkpoint(path, filesystem=fs), None, 6, run)  # type: ignore[arg-type]

    state, path = resumed(later, "trial_a")  # step 12's folder holding step 6: the earlier one is taken
    assert state["step"] == 6 and path.endswith("trial_a/checkpoint_000006")
    assert resumed(b, "trial_b") == (None, None)  # trial A's only: none of B's own, step 0
    said = capsys.readouterr().out
    assert "written for run trial_a, step 6, not for run trial_a, step 12" in said
    assert "written for run trial_a, step 6, not for run trial_b, step 6" in said
    assert said.count("Falling back to the previous checkpoint.") == 2 and "training starts from step 0" in said

    edited = json.loads(storage.read_text(storage.join(a, STATE_FILE)))
    edited["step"], edited["config"]["method"]["temperature"] = 9999, 1.0
    storage.write_text(storage.join(a, STATE_FILE), json.dumps(edited))
    with pytest.raises(
        manifest.IncompleteCheckpoint, match=r"trainer_state.json\S*: not the state its export was written with"
    ):
        CheckpointRef.from_path(a)
    cli = subprocess.run(
        [sys.executable, "-m", "evaluation", "--checkpoint", a],
        cwd=ROOT,
        env=driver_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 2 and cli.stderr.count("\n") == 1, cli.stderr
    assert cli.stderr.startswith("error: ") and re.search(
        r"trainer_state.json\S*: not the state its export was written with", cli.stderr
    )


def test_a_checkpoint_from_before_signatures_is_refused_until_accepted(tiny_model_dir, store, tmp_path):
    """Row 7: refused with the command that accepts it; that command asks, then signs what is there (after
    checking its files), and the checkpoint loads."""
    from evaluation.checkpoints import local_model_dir

    location = _checkpoint(tiny_model_dir, store, tmp_path, signed=False)
    export = storage.join(location, ENCODER_DIR)
    with pytest.raises(
        manifest.IncompleteCheckpoint,
        match=r"manifest.json: not signed\. Written before checkpoints were signed, or by someone without "
        r"this deployment's key\. If you wrote it, accept it once: python -m hybrid\.accept ",
    ):
        local_model_dir(export)

    accept = [sys.executable, "-m", "hybrid.accept", location]
    declined = subprocess.run(accept, cwd=ROOT, input="no\n", capture_output=True, text=True, timeout=120)
    assert declined.returncode == 1 and declined.stdout.endswith("[yes/no] nothing signed.\n"), declined.stdout
    assert "1 unsigned file(s) under" in declined.stdout and "encoder/manifest.json" in declined.stdout
    with pytest.raises(manifest.IncompleteCheckpoint, match="not signed"):
        local_model_dir(export)
    accepted = subprocess.run(accept, cwd=ROOT, input="yes\n", capture_output=True, text=True, timeout=120)
    assert accepted.returncode == 0 and accepted.stdout.endswith("signed 1 file(s); they are read again.\n"), (
        accepted.stdout + accepted.stderr
    )
    assert (local_model_dir(export) / "model.safetensors").is_file()
    again = subprocess.run([*accept, "--yes"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout.startswith("nothing to accept"), again.stdout


def test_a_rotated_key_still_verifies_what_it_signed_and_accept_takes_one_checkpoint_at_a_time(
    tiny_model_dir, tmp_path, monkeypatch
):
    """Issue 33, item 7: every signature names its key; `python -m hybrid.signing rotate` makes a new key and
    keeps the old one, which still verifies its checkpoints, sealed blobs and documents (and one signed
    before key ids), until it is removed. `hybrid.accept` shows each file's size and sha256, takes one
    checkpoint at a time, and refuses a manifest whose signature was stripped (29bd854 signed it again)."""
    key = tmp_path / "deploy.key"
    shutil.copy(signing.key_path(), key)
    monkeypatch.setenv(signing.KEY_ENV, str(key))
    old = signing.fingerprint()
    location = _checkpoint(tiny_model_dir, str(tmp_path / "store"), tmp_path, run="trial_a")
    sealed, document = signing.seal(b"tensors", "cache"), signing.signed({"a": 1}, "doc")
    assert document[signing.SIGNATURE].startswith(f"{old}:") and sealed.startswith(signing.SEAL + old.encode())
    before_ids = {"a": 1, signing.SIGNATURE: document[signing.SIGNATURE].split(":")[1]}  # signed before key ids

    env = os.environ | {signing.KEY_ENV: str(key)}
    rotated = subprocess.run(
        [sys.executable, "-m", "hybrid.signing", "rotate"], env=env, capture_output=True, text=True
    )
    new = signing.fingerprint()
    assert rotated.returncode == 0 and new != old, rotated.stderr
    assert rotated.stdout.startswith(f"signing key {key} rotated: key {new} signs from now on; key {old}, kept in ")
    assert (tmp_path / "deploy.key.retired" / f"{old}.key").stat().st_mode & 0o777 == 0o600
    assert key.stat().st_mode & 0o777 == 0o600 and old not in key.read_text()

    from evaluation.checkpoints import local_model_dir

    assert local_model_dir(str(Path(location) / ENCODER_DIR), signed=True, bound={"run": "trial_a", "step": 6})
    assert signing.unseal(sealed, "cache", "blob") == b"tensors"
    assert signing.verified(document, "doc", "doc") == signing.verified(before_ids, "doc", "doc") == {"a": 1}
    assert signing.signed({"a": 1}, "doc")[signing.SIGNATURE].startswith(f"{new}:")
    shutil.rmtree(tmp_path / "deploy.key.retired")  # the old key gone: what it signed is not trusted
    with pytest.raises(manifest.IncompleteCheckpoint, match=r"bad signature \(altered, or signed with another key\)"):
        manifest.check(Path(location) / ENCODER_DIR)
    with pytest.raises(signing.BadSignature, match="bad signature"):
        signing.unseal(sealed, "cache", "blob")

    store = tmp_path / "unsigned"
    for run in ("trial_a", "trial_b"):
        shutil.rmtree(tmp_path / "written", ignore_errors=True)
        _checkpoint(tiny_model_dir, str(store), tmp_path, signed=False, run=run)
    accept = [sys.executable, "-m", "hybrid.accept", "--yes"]
    both = subprocess.run([*accept, str(store)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert both.returncode == 2 and both.stderr == (
        f"error: 2 checkpoints under {store} hold unsigned manifests (trial_a/checkpoint_000006, "
        "trial_b/checkpoint_000006): accept them one at a time, each after reading its files: python -m "
        f"hybrid.accept {store}/trial_a/checkpoint_000006\n"
    ), both.stderr
    one = store / "trial_a" / "checkpoint_000006"
    done = subprocess.run([*accept, str(one)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    weights = hashlib.sha256((tiny_model_dir / "model.safetensors").read_bytes()).hexdigest()
    assert done.returncode == 0 and f"bytes  sha256 {weights}  model.safetensors\n" in done.stdout, done.stdout

    stripped = store / "trial_b" / "checkpoint_000006" / manifest.rank_manifest(0)
    listed = json.loads(stripped.read_text())
    stripped.write_text(json.dumps({k: v for k, v in listed.items() if k != signing.SIGNATURE}))
    refused = subprocess.run([*accept, str(stripped.parent)], env=env, cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert f"written signed (it names key {new}) but its signature is gone: stripped" in refused.stderr
    assert signing.SIGNATURE not in json.loads(stripped.read_text())


def test_an_edited_sweep_config_refuses_resume_before_ray_starts(tmp_path, store, tiny_model_dir):
    """Row 4: `sweep_config.json` decides what --resume continues and with which settings."""
    from sweeps import state
    from sweeps.config import load_sweep_setup

    config = tiny_sweep_config(tmp_path, tiny_model_dir, "edited", sweep={"storage_path": store})
    setup = load_sweep_setup(str(config), []).resolved()
    state.save_settings(setup, "an-id", started=False)
    location = setup.sweep.location(state.SETTINGS_FILE)
    stored = json.loads(storage.read_text(location))
    assert state.search_rounds(setup) == [3]  # signed and read back
    stored["search_rounds"] = [1]
    storage.write_text(location, json.dumps(stored))  # its signature kept, no longer matching
    done = subprocess.run(
        sweep_command(config, "--resume"), cwd=tmp_path, env=driver_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2 and done.stderr == (
        f"error: {location}: bad signature (altered, or signed with another key). The sweep's settings cannot be "
        f"trusted, so it is not resumed. If you wrote it, accept it once: python -m hybrid.accept "
        f"{setup.sweep.location()}\n"
    ), done.stderr
    assert not (tmp_path / "mlflow.db").exists()  # before Ray and MLflow


class Canary:
    """A pickle that, unpickled, creates the file `path` (what a forged Tune state or optimizer state does)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_tune_state_is_restored_only_from_its_signed_copy(s3_bucket, local_ray, store, tmp_path, capsys):
    """Row 5: Tune's pickles in storage replaced by a canary (`tuner.pkl`) and a newer-named state file
    added: unverified, `Tuner.restore` runs the canary; `restore_verified` puts the signed bytes back and
    deletes the stranger first, and the phase restores with no canary. A forged index refuses.
    Issue 33: `tuner.pkl` replaced before Tune's first save, and another sweep's newer staging folder of the
    same phase in this Ray session (a canary in its searcher state): neither is signed (on 29bd854 both were:
    the first read back from storage, the second taken as the newest)."""
    from ray import tune
    from ray.train.constants import _get_ray_train_session_dir

    from sweeps import tune_state

    def _count_to(config):  # defined in here: Ray pickles it by value (workers cannot import this module)
        for step in range(1, 3):
            tune.report({"value": config["a"] * step})

    canary = tmp_path / "canary"
    location, purpose = storage.join(store, "phase"), tune_state.purpose("sweep", "phase")
    run_config = tune.RunConfig(
        name="phase", storage_path=store, verbose=0, callbacks=[tune_state.SignedState(location, "phase", purpose)]
    )
    tuner = tune.Tuner(_count_to, param_space={"a": tune.grid_search([1, 2])}, run_config=run_config)
    tune_state.sign_tuner(tuner)
    original = storage.read_bytes(storage.join(location, "tuner.pkl"))
    storage.write_bytes(storage.join(location, "tuner.pkl"), pickle.dumps(Canary(canary)))  # before the first save
    other = Path(_get_ray_train_session_dir()) / "9999-12-31_23-59-59" / "phase" / "driver_artifacts"
    other.mkdir(parents=True, exist_ok=True)
    (other / "experiment_state-9999-12-31_23-59-59.json").write_text('{"trial_data": []}')
    (other / "searcher-state-9999-12-31_23-59-59.pkl").write_bytes(pickle.dumps(Canary(canary)))
    os.utime(other, (time.time() + 3600,) * 2)  # the newest of the session's, as a later sweep's would be
    grid = tuner.fit()
    shutil.rmtree(other.parents[1])
    assert sorted(r.metrics["value"] for r in grid) == [2, 4]
    signed = tune_state.check(location, purpose)
    assert signed["tuner.pkl"] == hashlib.sha256(original).hexdigest()  # the driver's bytes, not the canary
    assert any(n.startswith("experiment_state-") for n in signed) and not any("9999" in n for n in signed)
    assert not canary.exists()

    with pytest.raises(Exception):  # the threat, unverified: Tune unpickles the forgery
        tune.Tuner.restore(location, trainable=_count_to)
    assert canary.exists()
    canary.unlink()
    stranger = storage.join(location, "basic-variant-state-9999-12-31_23-59-59.json")  # Tune takes the highest name
    storage.write_bytes(stranger, pickle.dumps(Canary(canary)))
    capsys.readouterr()
    assert tune_state.restore_verified(location, purpose) == original
    assert capsys.readouterr().out == (
        f"[hybrid-sweep] Tune's state of {location}: basic-variant-state-9999-12-31_23-59-59.json, tuner.pkl differed "
        "from its signed copy (a driver stopped before Tune's upload, or the files were altered): restored from it.\n"
    )
    assert storage.read_bytes(storage.join(location, "tuner.pkl")) == original and not storage.exists(stranger)
    again = tune.Tuner.restore(location, trainable=_count_to).fit()
    assert sorted(r.metrics["value"] for r in again) == [2, 4] and not canary.exists()

    # Issue 33: a canary state file dropped in after `restore_verified` returned, where Tune reads it (the
    # highest name wins): checked at the read, refused, never unpickled (29bd854 unpickled it).
    from ray.tune.utils.serialization import TuneFunctionEncoder

    assert tune_state.restore_verified(location, purpose) == original
    late = storage.join(location, "experiment_state-9999-12-31_23-59-59.json")
    storage.write_text(late, json.dumps({"runner_data": Canary(canary)}, cls=TuneFunctionEncoder))
    tune_state.guard_tune_reads()
    with pytest.raises(tune_state.UnsignedState, match="experiment state: a file of Tune's state that is not in"):
        tune.Tuner.restore(location, trainable=_count_to).fit()
    assert not canary.exists()
    storage.delete(late)

    index = storage.join(location, tune_state.SIGNED, tune_state.INDEX)
    forged = json.loads(storage.read_text(index))
    forged["files"]["tuner.pkl"] = hashlib.sha256(pickle.dumps(Canary(canary))).hexdigest()
    storage.write_text(index, json.dumps(forged))
    with pytest.raises(
        ValueError,
        match=r"index.json\S*: bad signature \(altered, or signed with another key\)\. Tune's "
        r"state cannot be trusted, so the sweep is not resumed \(nothing of it was "
        r"unpickled\)\.$",
    ):
        tune_state.check(location, purpose)
    assert not canary.exists()


def test_ray_trains_unsigned_snapshot_cannot_make_train_delete_outside_the_run_or_roll_it_back(
    tiny_model_dir, store, tmp_path, capsys
):
    """Issue 33: Ray Train's `checkpoint_manager_snapshot.json` is written unsigned, and Train joins the names it
    holds to the run's folder, deletes those past `trainer.keep_checkpoints` and resumes from its latest: a
    name that is not one of the run's checkpoint folders, or a latest older than the newest checkpoint Train
    registered (signed by `KeepRegistered` after each registration), is refused before Train reads it
    (`check_snapshot`), naming the file and the fix."""
    from types import SimpleNamespace

    from trainers.train import REGISTERED, SNAPSHOT, KeepRegistered, build_trainer, check_snapshot

    def registered(run: str, step: int) -> None:  # as Train's report of a registered checkpoint reaches it
        KeepRegistered(store, run).after_report(None, [{}], SimpleNamespace(path=f"b/{run}/checkpoint_{step:06d}"))

    _checkpoint(tiny_model_dir, store, tmp_path, run="trial_a", step=3)
    snapshot = storage.join(store, "trial_a", SNAPSHOT)
    entry = {"version": 0, "checkpoint_dir_name": "checkpoint_000003", "metrics": {"step": 3}}
    written = {
        "ray_version": "2.60.0",
        "checkpoint_results": [entry],
        "checkpoint_report_indices": [0],
        "latest_checkpoint_result": entry,
        "pending_training_results": [],
        "pending_validation_specs": [],
        "current_report_index": 1,
        "validated_checkpoint_dir_names": [],
        "timed_out_validation_checkpoint_dir_names": [],
        "failed_validation_checkpoint_dir_names": [],
    }
    storage.write_text(snapshot, json.dumps(written))
    registered("trial_a", 3)
    check_snapshot(store, "trial_a")  # as Train writes it: only the run's own names, its latest registered

    registered("trial_a", 6)  # Train went on to step 6; the snapshot is put back to step 3's
    rolled_back = "names checkpoint_000003 as the run's latest, but Train registered checkpoint_000006"
    with pytest.raises(ValueError, match=f"{re.escape(snapshot)} {rolled_back} .*: rolled back.*from step 0"):
        check_snapshot(store, "trial_a")
    registered("trial_b", 9)  # another run's record copied in: not this run's, said and ignored
    storage.write_text(
        storage.join(store, "trial_a", REGISTERED), storage.read_text(storage.join(store, "trial_b", REGISTERED))
    )
    check_snapshot(store, "trial_a")
    assert "Not this deployment's record of the run's checkpoints: ignored." in capsys.readouterr().out
    registered("trial_a", 6)
    storage.delete(snapshot)  # the fix the refusal names: the run starts afresh, its record with it
    check_snapshot(store, "trial_a")
    assert not storage.exists(storage.join(store, "trial_a", REGISTERED))
    storage.write_text(snapshot, json.dumps(written))

    outside = json.loads(json.dumps(written))
    outside["checkpoint_results"][0]["checkpoint_dir_name"] = "../../keep-me"
    storage.write_text(snapshot, json.dumps(outside))
    names = "names '../../keep-me', not one of the run's checkpoint folders"
    with pytest.raises(
        ValueError, match=f"{re.escape(snapshot)} {names}.*Delete the file to start the run again from step 0"
    ):
        check_snapshot(store, "trial_a")
    storage.write_text(snapshot, "[1, 2]")
    with pytest.raises(ValueError, match="not Ray Train's snapshot of a run"):
        check_snapshot(store, "trial_a")
    config = tiny_config(tiny_model_dir, tmp_path)
    with pytest.raises(ValueError, match="not Ray Train's snapshot of a run"):
        build_trainer(config, "trial_a", storage_path=store)  # before Ray Train reads it


def test_a_restarted_trial_reports_again_only_checkpoints_train_registered(tiny_model_dir, store, tmp_path):
    """A trial whose cluster was lost: each registered checkpoint whose report never reached the record is
    evaluated and reported before it trains on (`sweeps.trial.unreported_checkpoints`), but not one written
    and never registered (the cluster lost before Train's report of it): Train resumes from its latest
    registered and trains that step again, whose report is then its only one (seen in CI: a trial's step 6
    reported by the catch-up and again by training, its `train/loss` at step 6 twice). Nor the last step
    (Train reports it again itself), one already reported, or one bound to another run."""
    from sweeps.records import report_file
    from sweeps.trial import unreported_checkpoints
    from trainers.train import SNAPSHOT

    def unreported() -> list[str]:
        said = []
        found = unreported_checkpoints(store, "trial_a", "trial_a", 9, said.append)
        return [name for name, _, _ in found] + said

    snapshot = storage.join(store, "trial_a", SNAPSHOT)

    def registered(*steps: int) -> None:  # Train's snapshot of a run that registered `steps`, the last its latest
        entries = [{"checkpoint_dir_name": f"checkpoint_{s:06d}", "metrics": {"step": s}} for s in steps]
        storage.write_text(
            snapshot, json.dumps({"checkpoint_results": entries, "latest_checkpoint_result": entries[-1]})
        )

    for step in (3, 6, 9):  # a checkpoint at 3, 6 and 9 (the last) in storage, none reported
        _checkpoint(tiny_model_dir, store, tmp_path, run="trial_a", step=step)
    registered(3, 6, 9)
    assert unreported() == ["checkpoint_000003", "checkpoint_000006"]
    storage.write_text(report_file(store, "trial_a", 3), "{}")  # reported (whether it verifies: `reported`)
    assert unreported() == ["checkpoint_000006"]

    registered(3)  # Train registered step 3 when the cluster was lost; step 6 was written after it
    assert unreported() == []
    storage.delete(report_file(store, "trial_a", 3))
    assert unreported() == ["checkpoint_000003"]
    storage.delete(snapshot)  # none registered: Train starts the run afresh
    assert unreported() == []

    registered(3, 6, 9)
    assert unreported() == ["checkpoint_000003", "checkpoint_000006"]
    said = []  # the same trial id in another sweep (`manifest.bound_run`): its checkpoints are not this run's
    assert unreported_checkpoints(store, "trial_a", "trial_a in another sweep", 9, said.append) == [] == said


@pytest.mark.parametrize("forgery", ["unsigned", "bad index"])
def test_resume_with_unsigned_or_forged_tune_state_is_refused_before_ray_starts(
    tmp_path, store, tiny_model_dir, forgery
):
    """Row 5, as a user meets it: `--resume` of a sweep whose search phase holds a canary `tuner.pkl`, its
    state unsigned (saved before signatures) or its index forged: one line, exit 2, the canary never run."""
    from sweeps import state, tune_state
    from sweeps.config import load_sweep_setup

    config = tiny_sweep_config(tmp_path, tiny_model_dir, "forged", sweep={"storage_path": store})
    setup = load_sweep_setup(str(config), []).resolved()
    state.save_settings(setup, "an-id", started=False)
    search, canary = setup.sweep.location("search"), tmp_path / "canary"
    storage.write_bytes(storage.join(search, "tuner.pkl"), pickle.dumps(Canary(canary)))
    storage.write_text(storage.join(search, "experiment_state-2026-12-02_10-00-00.json"), "{}")
    if forgery == "bad index":
        storage.write_text(
            storage.join(search, tune_state.SIGNED, tune_state.INDEX),
            json.dumps({"files": {"tuner.pkl": "0" * 64}, "signature": "0" * 64}),
        )
    done = subprocess.run(
        sweep_command(config, "--resume"), cwd=tmp_path, env=driver_env(), capture_output=True, text=True, timeout=300
    )
    said = (
        (
            f"{search}: Tune's state is not signed (saved before signatures, or by someone without this deployment's "
            "key). Tune's state cannot be trusted, so the sweep is not resumed (nothing of it was unpickled); start "
            "it again with --name NEW."
        )
        if forgery == "unsigned"
        else (
            f"{storage.join(search, tune_state.SIGNED, tune_state.INDEX)}: bad signature (altered, or signed with another "
            "key). Tune's state cannot be trusted, so the sweep is not resumed (nothing of it was unpickled)."
        )
    )
    assert done.returncode == 2 and done.stderr == f"error: {said}\n", done.stderr
    assert not canary.exists() and not (tmp_path / "mlflow.db").exists()


WEIGHTS_ONLY = """
import os, socket, sys, torch
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from hybrid.config import from_dict
from hybrid.tiny import tiny_encoder
from trainers.config import TrainRunConfig
from trainers.engine import DeepSpeedEngine

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(s.getsockname()[1]), RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0")
torch.distributed.init_process_group("gloo", rank=0, world_size=1)
texts = [f"sentence {i} about topic {i % 7}" for i in range(40)]
config = from_dict(TrainRunConfig, {"model": {"name": "unused", "max_length": 16}, "method": {"batch_size": 4},
                                    "optim": {"steps": 4, "warmup_steps": 1}, "trainer": {"workers": 1}})
def engine(seed):
    return DeepSpeedEngine(tiny_encoder(texts, vocab_size=200, hidden=32, layers=1, seed=seed), config, world_size=1)
first, out = engine(0), Path(sys.argv[1])
first.step(first(first.encoder.tokenize(texts[:4], "query"))[:, :3].sum())
first.save(out)
second = engine(1)
second.load(out)  # a real checkpoint loads, weights only
assert torch.equal(next(second.encoder.parameters()), next(first.encoder.parameters()))
class Canary:
    def __reduce__(self):
        return open, (sys.argv[3], "w")
[optimizer] = (out / "deepspeed").rglob("*optim_states.pt")
torch.save({"optimizer_state_dict": Canary()}, optimizer)
try:
    engine(2).load(out)
except Exception as e:
    print("REFUSED", type(e).__name__, str(e).splitlines()[0])
"""


def test_deepspeed_state_is_unpickled_weights_only(tmp_path):
    """Behind the signature, a second gate: DeepSpeed's resume state loads with `weights_only=True` (three
    plain-data DeepSpeed classes allowed by name), so even a forged file that matched a manifest could not
    run code. A real checkpoint loads bit for bit; a canary in the optimizer state is refused unrun."""
    canary = tmp_path / "canary"
    done = subprocess.run(
        [sys.executable, "-c", WEIGHTS_ONLY, str(tmp_path / "ckpt"), str(ROOT / "tests"), str(canary)],
        cwd=ROOT,
        env=driver_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "REFUSED UnpicklingError Weights only load failed." in done.stdout, done.stdout + done.stderr[-2000:]
    assert not canary.exists()


@pytest.mark.timeout(150)  # about 3x its measured time (tests/README.md)
def test_a_forged_optimizer_state_is_skipped_for_the_previous_checkpoint(
    s3_bucket, local_ray, store, tiny_model_dir, tmp_path
):
    """Row 1: the last checkpoint's optimizer state replaced by a canary pickle, its rank manifest's size and
    sha256 recomputed to match: the restart refuses it by its signature, says so, resumes from the checkpoint
    before, and the canary never runs."""

    from trainers.train import build_trainer

    config = tiny_config(
        tiny_model_dir, tmp_path, workers=1, checkpoint_every=2, log_every=2, val_batches=2, storage_path=store
    )
    build_trainer(with_steps(config, 4), "forged").fit()
    last = storage.join(store, "forged", "checkpoint_000004")
    listed_at = storage.join(last, manifest.rank_manifest(0))
    listed = json.loads(storage.read_text(listed_at))
    [name] = [n for n in listed["files"] if n.endswith("optim_states.pt")]
    canary = tmp_path / "canary"
    forged = pickle.dumps(Canary(canary))
    storage.write_bytes(storage.join(last, name), forged)
    listed["files"][name] = {"size": len(forged), "sha256": hashlib.sha256(forged).hexdigest()}
    storage.write_text(listed_at, json.dumps(listed))  # every sha256 matches; the signature cannot

    result = build_trainer(with_steps(config, 6), "forged").fit()
    assert result.metrics["resumed_from_step"] == 2 and result.metrics["step"] == 6
    assert not canary.exists()
    logs = Path(local_ray._private.worker._global_node.get_logs_dir_path())
    said = "".join(p.read_text(errors="replace") for p in logs.glob("worker-*.out"))
    assert re.search(
        r"resume: \S*checkpoint_000004/manifest.rank0.json\S*: bad signature \(altered, or signed with another "
        r"key\)\. Not loaded: its files may have been replaced\. Falling back to the previous checkpoint\.",
        said,
    )


def test_a_node_with_another_key_is_refused_before_any_trial(
    s3_bucket, local_ray, tmp_path, monkeypatch, tiny_model_dir
):
    """Every node must verify with the driver's key: here the driver's is another than the (one) node's.
    Issue 33: a node that joins after the start (the autoscaler's) is checked too, by the trial and by every
    Train worker, before a step: refused in one line, not retried (on 29bd854 it trained from step 0)."""
    import ray.train

    from sweeps.cluster import check_signing_keys
    from sweeps.trial import run_trial
    from trainers.train import build_trainer

    late = r"node \S+ has another signing key than the driver's \(\S+, fingerprint [0-9a-f]{16}, the driver's 0{16}\)"
    with pytest.raises(signing.SigningKeyError, match=f"^{late}: copy the driver's key to it"):
        run_trial({}, None, "0" * 16)  # type: ignore[arg-type]  (refused before it reads anything)
    config = tiny_config(tiny_model_dir, tmp_path, workers=1, checkpoint_every=2, log_every=2, val_batches=2)
    with pytest.raises(ray.train.ControllerError, match=f"controller error:\n{late}"):  # not retried
        build_trainer(with_steps(config, 2), "late", driver_key="0" * 16).fit()
    assert not list((tmp_path / "ray" / "late").glob("checkpoint_*"))

    check_signing_keys()  # the same key everywhere
    other = tmp_path / "other.key"
    other.write_text("e" * 64)
    other.chmod(0o600)
    monkeypatch.setenv(signing.KEY_ENV, str(other))
    with pytest.raises(
        ValueError,
        match=r"^node [\d.]+: has another signing key than the driver's\. Every node needs "
        r"the driver's \S+other.key \(cluster.yaml's file_mounts ship it\)\.$",
    ):
        check_signing_keys()
