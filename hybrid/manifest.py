"""Checkpoint manifests: each writer lists the files it wrote (name, size, sha256), written last, so a
partial or altered checkpoint is found before it is loaded, never by a crash halfway through a resume.

A checkpoint folder is written by several processes (Ray merges the training ranks' folders), so each
writes its own manifest (`manifest.rank<r>.json`, naming the world size); an exported encoder carries one
of its own (`manifest.json`), so its folder can be checked wherever it is copied.

Each manifest is signed with the deployment's key (`hybrid.signing`): a writer who can replace a file and
recompute its sha256 cannot sign the manifest, so a forged file (a pickle in the optimizer state) is
refused before anything is loaded. Checkpoints from before signatures are refused with the command that
accepts them once (`python -m hybrid.accept`).

A training checkpoint's manifests are bound to what wrote them: the run (in a sweep, the trial id) and the
step, signed with the files, and its export's manifest pins `trainer_state.json` (`state_sha256`), the file
that sets the step and the temperature it is evaluated at. Whoever knows which run and step a checkpoint
must be checks them (`check(folder, run=..., step=...)`), so a signed checkpoint of another trial or step,
copied in its place, is refused like a forged one.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from hybrid import signing, storage

MANIFEST = "manifest.json"
PURPOSE = "checkpoint-manifest"
RANK_MANIFEST = re.compile(r"manifest\.rank(\d+)\.json")


class IncompleteCheckpoint(ValueError):
    """A checkpoint whose files do not match its manifests (cut short, altered, or never finished)."""


def feed(digest, path: Path) -> None:
    """Stream a file's bytes into `digest` (a hashlib object) in 1 MiB blocks: weights are hundreds of MB."""
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    feed(digest, path)
    return digest.hexdigest()


def write(folder: Path, name: str = MANIFEST, **fields: int | str) -> None:
    """List every file under `folder` (manifests of other writers excepted) in `folder/name`, with `fields`
    (a checkpoint's `run` and `step`, ...) signed beside them."""
    files = {
        str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": sha256(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not _is_manifest(p.name)
    }
    listed = fields | {"files": files, "key": signing.fingerprint()}  # "key": a stripped signature shows
    (folder / name).write_text(json.dumps(signing.signed(listed, PURPOSE), indent=1))


def bound_run(name: str, sweep_id: str = "") -> str:
    """The run a checkpoint's manifests name: its Train run's `name` (in a sweep, the trial id), after the
    id of the sweep that trained it, if any. Trial ids are short and a key signs every sweep of a
    deployment: with the sweep id, a checkpoint copied in from another sweep is another run's."""
    return f"{sweep_id}/{name}" if sweep_id else name


def write_export(folder: Path, run: str, step: int, state: str) -> None:
    """A training checkpoint's export manifest: bound to the `run` and `step` that wrote it, pinning the
    run's state (the text of trainer_state.json beside it)."""
    write(folder, run=run, step=step, state_sha256=hashlib.sha256(state.encode()).hexdigest())


def rank_manifest(rank: int) -> str:
    return f"manifest.rank{rank}.json"


def _is_manifest(name: str) -> bool:
    return name == MANIFEST or RANK_MANIFEST.fullmatch(name) is not None


def check(folder: Path, **bound: int | str) -> None:
    """Raise `IncompleteCheckpoint`, naming the first problem, unless every manifest's files are present
    with their sizes and hashes, a training checkpoint has the manifest of every rank, and each manifest
    was written for the `bound` run and step (when given)."""
    ranks = {int(m.group(1)): p for p in folder.glob("manifest.rank*.json") if (m := RANK_MANIFEST.fullmatch(p.name))}
    manifests = [*ranks.values(), *([folder / MANIFEST] if (folder / MANIFEST).is_file() else [])]
    if not manifests:
        raise IncompleteCheckpoint(f"{folder}: no manifest (the checkpoint was not completely written).")
    for path in manifests:
        listed = read_verified(str(path))
        _check_bound(listed, bound, path)
        world = listed.get("world_size")
        missing = sorted(set(range(world)) - set(ranks)) if world else []
        if missing:
            raise IncompleteCheckpoint(
                f"{folder}: no manifest of rank(s) {missing} of {world} (not completely written)."
            )
        for name, expected in listed["files"].items():
            _check_file(folder / name, expected)


def _check_bound(listed: dict, bound: dict[str, int | str], path: Path) -> None:
    """A checkpoint of another run or step (copied over this one, or written before checkpoints were
    bound) is refused, naming both."""
    found = {key: listed.get(key) for key in bound}
    if found != bound:
        said = ", ".join(f"{k} {v}" for k, v in found.items() if v is not None) or "no run or step (an older version)"
        raise IncompleteCheckpoint(
            f"{path}: written for {said}, not for {', '.join(f'{k} {v}' for k, v in bound.items())}: a checkpoint "
            "of another trial or step in this one's place. Not loaded; delete it to train or evaluate again."
        )


def state_matches(listed: dict, state: bytes, where: str) -> None:
    """The run's state (trainer_state.json's bytes) is the one the export's signed manifest pins."""
    if listed.get("state_sha256") != hashlib.sha256(state).hexdigest():
        raise IncompleteCheckpoint(
            f"{where}: not the state its export was written with (altered, or of another checkpoint; "
            "checkpoints written before the state was pinned are refused too). Not loaded."
        )


def read_verified(where: str) -> dict:
    """The manifest at `where` (a local path or a URI in storage), read and verified (`_verified`)."""
    try:
        listed = json.loads(storage.read_text(where))
    except (OSError, ValueError) as e:
        raise IncompleteCheckpoint(f"{where}: unreadable manifest ({e}).") from None
    return _verified(listed, where)


def _verified(listed: dict, where: str) -> dict:
    """The manifest read from `where` less its signature, once this deployment's key signed it."""
    try:
        return signing.verified(listed, PURPOSE, where)
    except signing.BadSignature as e:
        if signing.SIGNATURE in listed:
            raise IncompleteCheckpoint(f"{e} Not loaded: its files may have been replaced.") from None
        raise IncompleteCheckpoint(
            f"{e} Written before checkpoints were signed, or by someone without this deployment's key. If "
            f"you wrote it, accept it once: python -m hybrid.accept {where.rsplit('/', 1)[0]}"
        ) from None


def unsigned(folder: Path) -> list[Path]:
    """The manifests under `folder` without a signature (checkpoints from before signatures)."""
    return sorted(
        p
        for p in folder.rglob("manifest*.json")
        if _is_manifest(p.name) and signing.SIGNATURE not in json.loads(p.read_text())
    )


def acceptable(path: Path) -> dict:
    """The unsigned manifest at `path`, once its files match it (sizes and sha256). One that names the key
    it was signed with (or a run and step: only signed manifests do) lost its signature since: refused."""
    listed = json.loads(path.read_text())
    if {"key", "run", "state_sha256"} & listed.keys():
        said = f"key {listed['key']}" if "key" in listed else "its run and step"
        raise IncompleteCheckpoint(
            f"{path}: written signed (it names {said}) but its signature is gone: stripped, so its files may "
            "have been replaced. Not accepted."
        )
    for name, expected in listed["files"].items():
        _check_file(path.parent / name, expected)
    return listed


def accept(path: Path) -> None:
    """Sign the unsigned manifest at `path` (`acceptable`)."""
    path.write_text(json.dumps(signing.signed(acceptable(path), PURPOSE), indent=1))


def _check_file(path: Path, expected: dict) -> None:
    if not path.is_file():
        raise IncompleteCheckpoint(f"{path}: missing (listed in the checkpoint's manifest).")
    size = path.stat().st_size
    if size != expected["size"]:
        raise IncompleteCheckpoint(
            f"{path}: {size} bytes, the manifest says {expected['size']} (cut short or altered)."
        )
    if sha256(path) != expected["sha256"]:
        raise IncompleteCheckpoint(f"{path}: sha256 differs from the manifest (altered).")
