"""Where a sweep's record is: MLflow tracking URIs and Optuna storage URIs, what kind each is, and the
same URIs with their credentials hidden for anything printed, logged or reported."""

from __future__ import annotations

import re
from pathlib import Path

CREDENTIALS = re.compile(r"(://)[^/@\s]+@")
# A secret in a query string (`?password=x`, `&aws_secret_access_key=...`, `&token=...`).
SECRET_PARAMETER = re.compile(
    r"([?&;](?:password|passwd|pwd|secret|secret_key|access_key|aws_secret_access_key|session_token|token)=)[^&;#\s'\"]*",
    re.IGNORECASE,
)
PASSWORD = re.compile(r"://[^/@:\s]*:[^/@\s]*@")  # scheme://user:password@host


def carries_secret(uri: str) -> bool:
    """A password or key in a URI: `user:password@`, or a secret in its query string."""
    return bool(PASSWORD.search(uri) or SECRET_PARAMETER.search(uri))


def redact(text: str) -> str:
    """`scheme://user:secret@host` -> `scheme://***@host`, `?password=x` -> `?password=***`: credentials in a
    URI are never logged, printed or put in a report."""
    return SECRET_PARAMETER.sub(r"\1***", CREDENTIALS.sub(r"\1***@", text))


def absolute_tracking_uri(uri: str) -> str:
    """A SQLite URI made absolute, so Ray actors (other working directories) write to the same file."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def is_server(tracking_uri: str) -> bool:
    """An MLflow tracking server (http(s)://...): the record lives off this machine, artifacts behind it."""
    return tracking_uri.startswith(("http://", "https://"))


def is_local_file(uri: str) -> bool:
    """A SQLite file (MLflow store or Optuna study): it lives and dies with this machine's disk."""
    return uri.startswith("sqlite:")


def study_beside(tracking_uri: str) -> str:
    """optuna.db in the folder of a SQLite MLflow store (./optuna.db otherwise): the study lives where the runs do."""
    prefix = "sqlite:///"
    folder = Path(tracking_uri[len(prefix) :]).parent if tracking_uri.startswith(prefix) else Path(".")
    return prefix + str(folder / "optuna.db")


def record_warning(tracking_uri: str, study_storage: str) -> str | None:
    """A tracking server outlives the cluster; a study file beside the driver does not."""
    if is_server(tracking_uri) and is_local_file(study_storage):
        return (
            f"warning: the Optuna study is in {redact(study_storage)}, on this machine: it will not survive the "
            "head. Set sweep.study_storage (or --study-storage) to postgresql+psycopg://USER@HOST:PORT/DB."
        )
    return None
