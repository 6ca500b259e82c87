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
signed file moved to another role or key does not verify.
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
SEAL = b"hybrid-sweep-sealed/1 "  # the first bytes of a sealed blob, then 64 hex characters and a newline


class BadSignature(ValueError):
    """A document or blob without a signature, or with one this deployment's key did not make."""


class SigningKeyError(ValueError):
    """The key is missing or unsafe: a setup problem, named with its fix."""


def key_path() -> Path:
    env = os.environ.get(KEY_ENV)
    return Path(env).expanduser() if env else cache_dir() / "signing.key"


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


def sign(data: bytes, purpose: str) -> str:
    return hmac.new(_key(), purpose.encode() + b"\0" + data, hashlib.sha256).hexdigest()


def _matches(data: bytes, purpose: str, signature: Any) -> bool:
    return isinstance(signature, str) and hmac.compare_digest(sign(data, purpose), signature)


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
    head = len(SEAL) + 65
    if not blob.startswith(SEAL) or blob[head - 1 : head] != b"\n":
        raise BadSignature(f"{where}: not signed.")
    data = blob[head:]
    if not _matches(data, purpose, blob[len(SEAL) : head - 1].decode("ascii", "replace")):
        raise BadSignature(f"{where}: bad signature (altered, or signed with another key).")
    return data


SETTINGS_FILE = "sweep_config.json"  # a sweep's settings and id, at the top of its folder in storage


def settings_purpose(sweep_name: str) -> str:
    return f"sweep-config:{sweep_name}"


def fingerprint() -> str:
    """A short id of the key (an HMAC of a fixed text, not the key): nodes compare it to find a wrong key."""
    return sign(b"fingerprint", "fingerprint")[:16]


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


def main() -> None:
    """`python -m hybrid.signing key`: make this machine's key if there is none (before `ray up`, which ships
    it to every node) and print its path, never the key."""
    import sys

    if sys.argv[1:] != ["key"]:
        raise SystemExit("usage: python -m hybrid.signing key   (accept old checkpoints: python -m hybrid.accept)")
    try:
        print(ensure_key())
    except SigningKeyError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
