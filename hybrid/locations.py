"""Locations as strings: a local path or a URI (`s3://bucket/prefix?endpoint_override=...`). Pure string
helpers with no dependencies, so configuration can name where things live without importing the
filesystems (`hybrid.storage` reads and writes them).

Never build a location with `pathlib`: `Path("s3://b/p")` is `s3:/b/p`, and a query string must stay at
the end of the URI, not in the middle of a path.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


def is_uri(location: str) -> bool:
    """A URI with a scheme (s3://, gs://, file://): the same on every node. A plain path is node-local."""
    return "://" in location


def resolve(location: str) -> str:
    """A URI as is; a local path made absolute (Ray workers do not share the driver's working directory)."""
    return location if is_uri(location) else str(Path(location).expanduser().resolve())


def join(location: str, *parts: str) -> str:
    """`location` / parts, keeping a URI's query string at the end."""
    if not is_uri(location):
        return os.path.join(location, *parts)
    scheme, netloc, path, query, fragment = urlsplit(location)
    path = "/".join([path.rstrip("/"), *(p.strip("/") for p in parts)])
    return urlunsplit((scheme, netloc, path, query, fragment))


def with_path(location: str, fs_path: str) -> str:
    """The URI of `fs_path` (a path inside `location`'s filesystem, as Ray's `Checkpoint.path` gives it:
    `bucket/prefix/...`, no scheme) with `location`'s scheme and query options; a URI stays as it is."""
    if not is_uri(location) or is_uri(fs_path):
        return fs_path
    scheme, _, _, query, _ = urlsplit(location)
    if scheme == "file":
        return urlunsplit((scheme, "", fs_path, query, ""))
    bucket, _, key = fs_path.partition("/")
    return urlunsplit((scheme, bucket, "/" + key, query, ""))
