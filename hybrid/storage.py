"""Storage locations: a local folder or a URI (`s3://bucket/prefix?endpoint_override=...&scheme=http`,
`gs://...`, `file:///shared/...`), read through pyarrow's filesystems, the ones Ray Train and Tune use.

On a cluster no disk is shared but the storage URI, so everything that must outlive a node (Tune state,
Train checkpoints) lives there, and a process that needs a checkpoint's files copies them to its own node
(`local_copy`). Locations are strings, built with `hybrid.locations` (re-exported here).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
from filelock import FileLock

from hybrid.cache import cache_dir
from hybrid.locations import is_uri, join, resolve, with_path  # noqa: F401  (storage.join etc. for callers)

CACHED_CHECKPOINTS = 8  # per node: checkpoints kept in the node-local cache (least recently used go first)
COMPLETE = ".complete"  # written last into a cached copy: a copy without it was interrupted


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of `location` and the path inside it (query options applied)."""
    if not is_uri(location):
        return pafs.LocalFileSystem(), resolve(location)
    return pafs.FileSystem.from_uri(location)


def exists(location: str) -> bool:
    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(location: str) -> bytes:
    """A whole file as one version of it. On s3:// one GET (boto3): pyarrow asks for the size first and
    then reads that many bytes, so an object overwritten in between (the lease's heartbeat) came back torn,
    the new bytes with a tail that was never written."""
    if location.startswith("s3://"):
        return _s3_get(location)[0]
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(location: str) -> str:
    return read_bytes(location).decode()


def write_bytes(location: str, data: bytes, mode: int = 0o666) -> None:
    """Write a whole file: a reader sees the old bytes or the new, never part (an object store's put; a
    local or mounted folder writes a temporary file beside it, with `mode` less the umask, and renames it)."""
    fs, path = filesystem(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        os.replace(_written_beside(Path(path), data, mode), path)
        return
    with fs.open_output_stream(path) as f:
        f.write(data)


def write_text(location: str, text: str) -> None:
    write_bytes(location, text.encode())


def create_exclusive(location: str, text: str, mode: int = 0o644) -> bool:
    """Write `text` at `location` only if nothing is there, atomically: two writers racing, one wins.
    False when something already is. A local or mounted folder (file://) links a written temporary file
    into place (as O_EXCL, but never seen empty); s3:// a
    conditional put (`If-None-Match: *`, boto3; query options as pyarrow's: endpoint_override, scheme,
    region). `mode`: a local file's permissions. Other schemes have no such operation here:
    NotImplementedError."""
    if not is_uri(location) or location.startswith("file://"):
        path = Path(filesystem(location)[1])
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = _written_beside(path, text.encode(), mode)
        try:
            os.link(temporary, path)  # atomic, whole: a reader never sees it empty or half-written
        except FileExistsError:
            return False
        finally:
            os.unlink(temporary)
        return True
    if not location.startswith("s3://"):
        raise NotImplementedError(f"{location}: no atomic create on this storage (local folders, file:// and s3://)")
    from botocore.exceptions import ClientError

    client, bucket, key = _s3(location)
    try:
        client.put_object(Bucket=bucket, Key=key, Body=text.encode(), IfNoneMatch="*")
    except ClientError as e:
        if _precondition_failed(e):
            return False
        raise OSError(f"{location}: {e}") from None
    return True


def read_versioned(location: str) -> tuple[bytes, str]:
    """A whole file and its version, for `replace_if`: the object's ETag on s3://; on a local or mounted
    folder its inode and modification time (`write_bytes` and `replace_if` write a new inode each time).
    FileNotFoundError when nothing is there; OSError when the read failed."""
    return read_aged(location)[:2]


def read_aged(location: str) -> tuple[bytes, str, float]:
    """`read_versioned`, and how many seconds ago the file was written by the store's own clock, never the
    writer's or this reader's: on s3:// the response's Date less the object's LastModified (both rounded to
    the second: less one second, so never more than it is); on a folder now less its modification time."""
    if location.startswith("s3://"):
        return _s3_get(location)
    path = _local_path(location)
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        return f.read(), _file_version(st), time.time() - st.st_mtime


def replace_if(location: str, data: bytes, version: str) -> str | None:
    """Write `data` at `location` only if the file there is still at `version` (from `read_versioned` or
    an earlier `replace_if`): a compare-and-swap, so a writer that lost the file to another since it last
    looked never overwrites the other's bytes. Returns the new version, or None when the file changed or is
    gone. s3:// uses a conditional put (`If-Match` on the ETag); a local or mounted folder an exclusive lock
    beside the file around the check and the rename. Other schemes: NotImplementedError."""
    if location.startswith("s3://"):
        return _s3_if_unchanged(
            location,
            lambda client, bucket, key: client.put_object(Bucket=bucket, Key=key, Body=data, IfMatch=version)["ETag"],
        )
    path = _local_path(location)
    with _locked_at(path, version) as unchanged:
        if not unchanged:
            return None
        os.replace(_written_beside(path, data), path)
        return _file_version(os.stat(path))


def delete_if(location: str, version: str) -> bool:
    """Delete the file at `location` only if it is still at `version`; whether it was deleted."""
    if location.startswith("s3://"):
        deleted = _s3_if_unchanged(
            location, lambda client, bucket, key: client.delete_object(Bucket=bucket, Key=key, IfMatch=version)
        )
        return deleted is not None
    path = _local_path(location)
    with _locked_at(path, version) as unchanged:
        if unchanged:
            path.unlink()
        return unchanged


def _s3_get(location: str) -> tuple[bytes, str, float]:
    """An object's bytes, ETag and age by the store's clock (`read_aged`) in one GET (boto3): pyarrow asks for
    the size first and then reads that many bytes, so an object overwritten in between (the lease's heartbeat)
    came back torn. FileNotFoundError when it is not there, OSError (as pyarrow raises) when the request failed."""
    from email.utils import parsedate_to_datetime

    from botocore.exceptions import BotoCoreError, ClientError

    client, bucket, key = _s3(location)
    try:
        got = client.get_object(Bucket=bucket, Key=key)
        now = parsedate_to_datetime(got["ResponseMetadata"]["HTTPHeaders"]["date"])
        return got["Body"].read(), got["ETag"], max(0.0, (now - got["LastModified"]).total_seconds() - 1.0)
    except client.exceptions.NoSuchKey:
        raise FileNotFoundError(f"{location}: no such object") from None
    except (BotoCoreError, ClientError) as e:
        raise OSError(f"{location}: {e}") from None


def _written_beside(path: Path, data: bytes, mode: int = 0o666) -> str:
    """`data` written whole to a temporary file beside `path` (its permissions `mode`, less the umask), to be renamed or
    linked into place: a reader of `path` never sees part of it."""
    temporary = f"{path}.{os.getpid()}-{threading.get_ident()}.tmp"
    with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as f:
        f.write(data)
    return temporary


def _s3_if_unchanged(location: str, call: Callable[[Any, str, str], Any]) -> Any:
    """`call(client, bucket, key)`, a conditional request on s3://: its response, or None when its condition
    failed or the object is gone; OSError when the request did not get through."""
    from botocore.exceptions import BotoCoreError, ClientError

    client, bucket, key = _s3(location)
    try:
        return call(client, bucket, key)
    except ClientError as e:
        if _precondition_failed(e) or e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise OSError(f"{location}: {e}") from None
    except BotoCoreError as e:
        raise OSError(f"{location}: {e}") from None


@contextlib.contextmanager
def _locked_at(path: Path, version: str) -> Iterator[bool]:
    """The lock beside a local file held: whether the file is still at `version`."""
    with FileLock(f"{path}.lock", timeout=60):
        try:
            unchanged = _file_version(os.stat(path)) == version
        except FileNotFoundError:
            unchanged = False
        yield unchanged


def _local_path(location: str) -> Path:
    """The path of a local or mounted folder's file; other schemes have no conditional writes here."""
    if is_uri(location) and not location.startswith("file://"):
        raise NotImplementedError(
            f"{location}: no conditional write on this storage (local folders, file:// and s3://)"
        )
    return Path(filesystem(location)[1])


def _file_version(st: os.stat_result) -> str:
    return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"


def _precondition_failed(e) -> bool:
    return e.response.get("Error", {}).get("Code") in (
        "PreconditionFailed",
        "ConditionalRequestConflict",
    ) or e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412)


def _s3(location: str):
    """(boto3 client, bucket, key) of an s3:// location with pyarrow's query options; credentials as
    boto3 finds them (environment, instance profile)."""
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(location)
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    endpoint = options.get("endpoint_override")
    if endpoint and "://" not in endpoint:
        endpoint = f"{options.get('scheme', 'https')}://{endpoint}"
    credentials = tuple(
        os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
    )
    return _s3_client(endpoint, options.get("region"), credentials), parts.netloc, parts.path.lstrip("/")


_clients: dict[tuple, object] = {}
_clients_lock = threading.Lock()


def _s3_client(endpoint: str | None, region: str | None, credentials: tuple):
    """One boto3 client per endpoint, region and credentials in the environment (building one takes tens
    of milliseconds; a client is thread-safe, making one is not)."""
    import boto3

    key = (endpoint, region, credentials)
    with _clients_lock:
        if key not in _clients:
            _clients[key] = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region)
        return _clients[key]


def names(location: str, folders: bool = False) -> list[str]:
    """The names of the files (or the `folders`) directly in the folder at `location`, sorted ([] when there
    is none)."""
    fs, path = filesystem(location)
    found = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    kind = pafs.FileType.Directory if folders else pafs.FileType.File
    return sorted(info.base_name for info in found if info.type == kind)


def upload(folder: Path, location: str, pattern: str = "*") -> int:
    """Copy the non-empty files of a local `folder` matching `pattern` into the folder `location` (local or
    in a bucket); returns how many."""
    fs, path = filesystem(location)
    fs.create_dir(path, recursive=True)
    files = [f for f in sorted(folder.glob(pattern)) if f.is_file() and f.stat().st_size]
    for f in files:
        pafs.copy_files(str(f), f"{path}/{f.name}", destination_filesystem=fs)
    return len(files)


def upload_tree(folder: Path, location: str, last: str = "") -> None:
    """Copy a local `folder` with its subfolders into the folder `location`; the file named `last` (a
    manifest) goes after every other, so a copy cut short has none and reads as incomplete."""
    fs, path = filesystem(location)
    files = sorted((f for f in folder.rglob("*") if f.is_file()), key=lambda f: (f.name == last, str(f)))
    for f in files:
        target = f"{path}/{f.relative_to(folder).as_posix()}"
        fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(str(f), target, destination_filesystem=fs)


def delete(location: str) -> None:
    """Delete a file, or a folder with everything in it."""
    fs, path = filesystem(location)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)
    else:
        fs.delete_file(path)


def stamp(location: str) -> str:
    """A cheap identity of a folder's (or a file's) files: names, sizes, modification times, from one
    listing, no download. Rewritten files get a new stamp, so caches keyed on it reload."""
    fs, path = filesystem(location)
    return _stamp(fs, path, fs.get_file_info(path))


def _stamp(fs: pafs.FileSystem, path: str, info: pafs.FileInfo) -> str:
    if info.type == pafs.FileType.File:
        return f":{info.size}:{info.mtime_ns}"
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    files = sorted((i.path[len(path) :], i.size, i.mtime_ns) for i in infos if i.type == pafs.FileType.File)
    if not files:
        raise FileNotFoundError(f"{path}: no such folder, or it is empty.")
    return ";".join(f"{name}:{size}:{mtime}" for name, size, mtime in files)


def local_copy(location: str) -> Path:
    """A folder (or file) on this node with `location`'s files: itself when it is local, else a copy in
    the node's cache (`$HYBRID_SWEEP_CACHE/checkpoints`), made once per node and version of the files
    (several processes of a node asking at once copy it once, under a file lock)."""
    if not is_uri(location) or location.startswith("file://"):
        return Path(filesystem(location)[1])
    root = cache_dir() / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    fs, path = filesystem(location)
    info = fs.get_file_info(path)
    key = hashlib.sha256(f"{location}|{_stamp(fs, path, info)}".encode()).hexdigest()[:20]
    target = root / key
    copy = target / path.rsplit("/", 1)[-1] if info.type == pafs.FileType.File else target
    with FileLock(str(root / f"{key}.lock")):
        if not (target / COMPLETE).exists():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            pafs.copy_files(path, str(copy), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
            (target / COMPLETE).write_text(location)
        os.utime(target)  # recently used: evicted last
    _evict(root, keep=target)
    return copy


def _evict(root: Path, keep: Path) -> None:
    """Bound the node-local cache to `CACHED_CHECKPOINTS` copies (a large model's checkpoints are GBs)."""
    copies = sorted((p for p in root.iterdir() if p.is_dir() and p != keep), key=lambda p: p.stat().st_mtime)
    for old in copies[: max(0, len(copies) - (CACHED_CHECKPOINTS - 1))]:
        if time.time() - old.stat().st_mtime > 60:  # not one another process of this node just copied
            with FileLock(str(root / f"{old.name}.lock")):
                shutil.rmtree(old, ignore_errors=True)
