"""HMAC-SHA256 signatures on what a sweep writes to storage and reads back.

The bucket is shared: more people and services can write to it than can log in to the cluster, and a
manifest's sha256 catches a cut-short upload, not a forged one. So every manifest, cache entry and
settings file the project reads back carries a signature by the deployment's key, and is verified before
it is used (a checkpoint before anything in it is unpickled).

The key: the file named by `$HYBRID_SWEEP_SIGNING_KEY` (mode 0600), else `<cache>/signing.key`, made once on
the machine that starts the work (`ensure_key`). On a cluster, cluster.yaml ships that file to every node,
the way it ships Ray's token; a node without it fails with a message naming the fix, never makes a key
of its own. The key is never logged, never written to storage, never sent to MLflow.

Each signature covers a purpose ("checkpoint-manifest", "eval-cache:<key>", ...) with the bytes, so a
signed file moved to another role or key does not verify, and names the key that made it (its id, the
`fingerprint`: `<key id>:<hmac>`). `python -m hybrid.signing rotate` makes a new key and keeps the old one
in `<key>.retired/`, where it still verifies what it signed (ship that folder with the key); what is signed
from then on uses the new one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import socket
from pathlib import Path
from typing import Any

from hybrid import storage
from hybrid.cache import cache_dir

KEY_ENV = "HYBRID_SWEEP_SIGNING_KEY"
SIGNATURE = "signature"  # the field a signed JSON document carries
SEAL = b"hybrid-sweep-sealed/2 "  # the first bytes of a sealed blob, then its signature and a newline
SEAL_V1 = b"hybrid-sweep-sealed/1 "  # blobs sealed before key ids: 64 hex characters, no key id


class BadSignature(ValueError):
    """A document or blob without a signature, or with one this deployment's key did not make."""


class SigningKeyError(ValueError):
    """The key is missing or unsafe: a setup problem, named with its fix."""


def key_path() -> Path:
    env = os.environ.get(KEY_ENV)
    return Path(env).expanduser() if env else cache_dir() / "signing.key"


def retired_dir() -> Path:
    """Keys replaced by `rotate`, kept to verify what they signed (`<key id>.key`, mode 0600 each)."""
    path = key_path()
    return path.with_name(path.name + ".retired")


def ensure_key() -> Path:
    """The key file, made (32 random bytes, mode 0600) when there is none: on the machine that starts the
    work, never on a worker node, whose key must be the driver's."""
    path = key_path()
    if not path.exists() and KEY_ENV not in os.environ:
        # Written whole, then linked into place: a process reading it in between never sees it empty (and,
        # told to delete it, would fork the key); two makers racing end with one key (the first's).
        storage.create_exclusive(str(path), secrets.token_hex(32), mode=0o600)
    _key(path)  # readable, private and ours, or a clear error now
    return path


def _key(path: Path | None = None) -> bytes:
    path = path or key_path()
    try:
        mode = path.stat().st_mode
        key = path.read_bytes().strip()
    except FileNotFoundError:
        raise SigningKeyError(
            f"no signing key at {path}: make one with `python -m hybrid.signing key` on the machine that starts "
            f"the work; on a cluster every node needs that same file, mode 0600 (cluster.yaml's file_mounts copy "
            f"it), or {KEY_ENV} set to its path."
        ) from None
    if mode & 0o077:
        raise SigningKeyError(
            f"signing key {path} is readable by other users (mode {mode & 0o777:o}): chmod 600 {path}."
        )
    owner = path.stat().st_uid
    if owner != os.getuid():
        raise SigningKeyError(
            f"signing key {path} belongs to another user (uid {owner}, this process runs as {os.getuid()}): "
            f"whoever owns it can sign anything. Use a key of this user's (chown, or {KEY_ENV})."
        )
    if len(key) < 32:
        raise SigningKeyError(
            f"signing key {path} is {len(key)} bytes; it needs 32 or more (delete it to make a new one "
            f"on the driver, then copy it to every node)."
        )
    return key


def _mac(key: bytes, data: bytes, purpose: str) -> str:
    return hmac.new(key, purpose.encode() + b"\0" + data, hashlib.sha256).hexdigest()


def key_id(key: bytes) -> str:
    """A short id of a key (an HMAC of a fixed text, not the key)."""
    return _mac(key, b"fingerprint", "fingerprint")[:16]


def sign(data: bytes, purpose: str) -> str:
    """`<key id>:<hmac>` of `data` for `purpose`, by the current key."""
    key = _key()
    return f"{key_id(key)}:{_mac(key, data, purpose)}"


def _known_keys() -> dict[str, bytes]:
    """The current key and the retired ones, by id: each checked as the current one is."""
    keys = [_key(), *(_key(p) for p in sorted(retired_dir().glob("*.key")))]
    return {key_id(key): key for key in keys}


def _matches(data: bytes, purpose: str, signature: Any) -> bool:
    """A signature by a key this deployment holds (by its id; one from before key ids: by any of them)."""
    if not isinstance(signature, str):
        return False
    kid, _, mac = signature.rpartition(":")
    keys = _known_keys()
    candidates = ([keys[kid]] if kid in keys else []) if kid else keys.values()
    return any(hmac.compare_digest(_mac(key, data, purpose), mac) for key in candidates)


def _canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def signed(document: dict[str, Any], purpose: str) -> dict[str, Any]:
    """`document` with its signature (over its canonical JSON) in the field `signature`."""
    body = {k: v for k, v in document.items() if k != SIGNATURE}
    return body | {SIGNATURE: sign(_canonical(body), purpose)}


def verified(document: dict[str, Any], purpose: str, where: str) -> dict[str, Any]:
    """`document` less its signature; `BadSignature` naming `where` when it is unsigned or badly signed."""
    body = {k: v for k, v in document.items() if k != SIGNATURE}
    if SIGNATURE not in document:
        raise BadSignature(f"{where}: not signed.")
    if not _matches(_canonical(body), purpose, document[SIGNATURE]):
        raise BadSignature(f"{where}: bad signature (altered, or signed with another key).")
    return body


def seal(data: bytes, purpose: str) -> bytes:
    """`data` behind a header with its signature: for blobs that are not JSON (cached tensors)."""
    return SEAL + sign(data, purpose).encode() + b"\n" + data


def unseal(blob: bytes, purpose: str, where: str) -> bytes:
    """The data of a sealed blob; `BadSignature` naming `where` when it is not sealed or badly signed."""
    header = next((h for h in (SEAL, SEAL_V1) if blob.startswith(h)), None)
    end = blob.find(b"\n", 0, 128) if header else -1
    if end < 0:
        raise BadSignature(f"{where}: not signed.")
    data = blob[end + 1 :]
    if not _matches(data, purpose, blob[len(header) : end].decode("ascii", "replace")):
        raise BadSignature(f"{where}: bad signature (altered, or signed with another key).")
    return data


SETTINGS_FILE = "sweep_config.json"  # a sweep's settings and id, at the top of its folder in storage


def settings_purpose(sweep_name: str) -> str:
    return f"sweep-config:{sweep_name}"


def fingerprint() -> str:
    """The current key's id: nodes compare it to find a wrong key."""
    return key_id(_key())


DRIVER_KEY_ENV = "HYBRID_SWEEP_DRIVER_KEY"  # the driver's fingerprint, in the environment of its workers


def check_same_key(driver: str) -> None:
    """This process verifies with the key of the driver whose `fingerprint` is `driver`: a node added after
    the sweep's start (the autoscaler) with another key would take every checkpoint for a forgery and
    train from step 0. `SigningKeyError` naming the node and the fix; "" checks nothing."""
    if driver and fingerprint() != driver:
        raise SigningKeyError(
            f"node {socket.gethostname()} has another signing key than the driver's ({key_path()}, fingerprint "
            f"{fingerprint()}, the driver's {driver}): copy the driver's key to it (cluster.yaml's file_mounts)."
        )


def rotate() -> tuple[str, str]:
    """A new current key; the old one kept in `retired_dir()` to verify what it signed: (old id, new id)."""
    path = ensure_key()
    old = _key(path)
    retired = retired_dir()
    retired.mkdir(mode=0o700, exist_ok=True)
    storage.create_exclusive(str(retired / f"{key_id(old)}.key"), old.decode(), mode=0o600)
    storage.write_bytes(str(path), secrets.token_hex(32).encode(), mode=0o600)  # whole, then moved into place
    return key_id(old), fingerprint()


def main() -> None:
    """`python -m hybrid.signing key`: make this machine's key if there is none (before `ray up`, which ships
    it to every node) and print its path, never the key. `rotate`: a new key, the old one kept to verify."""
    import sys

    usage = "usage: python -m hybrid.signing key|rotate   (accept old checkpoints: python -m hybrid.accept)"
    if sys.argv[1:] not in (["key"], ["rotate"]):
        raise SystemExit(usage)
    try:
        if sys.argv[1] == "key":
            print(ensure_key())
            retired_dir().mkdir(
                mode=0o700, exist_ok=True
            )  # shipped beside the key (cluster.yaml), empty until a rotation
            return
        old, new = rotate()
        print(
            f"signing key {key_path()} rotated: key {new} signs from now on; key {old}, kept in {retired_dir()}, "
            "still verifies what it signed. Ship both to every node (cluster.yaml's file_mounts) before the next sweep."
        )
    except SigningKeyError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
