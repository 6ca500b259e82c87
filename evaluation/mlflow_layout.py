"""Where an evaluation lives in an MLflow run: the metric keys, the artifact folder and files, and the
idempotence tag, each with its builder and its parser. `evaluation.tracking` writes through the builders,
the report (`sweeps.report.data`) reads through the parsers; no other module spells the layout.

- metrics `eval/{dataset}/{split}/{setting}/{metric}` and `eval/{dataset}/{split}/lang/{lang}/{metric}`,
  at the checkpoint's step. MLflow refuses "@" in names: recall@10 is logged as recall_at_10. A split
  holding "proxy" (heldout-proxy50) is the sweep-time proxy evaluation, any other a full evaluation.
- artifacts under `eval/{dataset}/{split}/step_{step}/`: `{metric}.csv` an L x L matrix (first column the
  query language, header the candidate languages), `reliability.csv` the reliability table, each with a
  PNG of the same stem, and `summary.json`; for a full evaluation `{metric}.json` MLflow tables.
- the LoggedModel's tag `eval.{content hash}` marks an evaluation logged in full.
- lineage params, written once per run: `eval.model` and `eval.{dataset}.{split}.languages`.

Pure: no MLflow import, so the report's tests and the configuration can use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SETTINGS = ("mono", "cross", "multi")  # same-language pairs, other-language pairs, all candidates pooled
PROXY, FULL = "proxy", "full"
RELIABILITY = "reliability"  # the stem of the reliability table's files
LOGGED_TAG = "eval."  # + the result's content hash
MODEL_PARAM = "eval.model"  # the base model the evaluated checkpoints were trained from


def mlflow_name(text: str) -> str:
    """A string MLflow accepts in metric / param names and artifact files ("@" and the like replaced)."""
    return re.sub(r"[^\w.\-/ :]", "_", text.replace("@", "_at_"))


def languages_param(dataset: str, split: str) -> str:
    """The param naming the languages of dataset/split's evaluations, comma-separated."""
    return mlflow_name(f"eval.{dataset}.{split}.languages")


def _metric_name(logged: str) -> str:
    """The metric as `evaluation.metrics` names it, from its logged form (recall_at_10 -> recall@10)."""
    return logged.replace("_at_", "@")


def source(split: str) -> str:
    """PROXY for a sweep-time proxy split (heldout-proxy50), else FULL."""
    return PROXY if PROXY in split else FULL


def metric_key(dataset: str, split: str, name: str) -> str:
    """The key of `name` ("multi/map", or `language_metric(...)`) of an evaluation on dataset/split."""
    return mlflow_name(f"eval/{dataset}/{split}/{name}")


def language_metric(lang: str, metric: str) -> str:
    return f"lang/{lang}/{metric}"


@dataclass(frozen=True)
class MetricKey:
    source: str  # PROXY or FULL
    dataset: str
    split: str
    scope: str  # "setting" or "lang"
    group: str  # one of SETTINGS, or a language code
    metric: str  # as evaluation.metrics names it: recall@10, not recall_at_10


def parse_metric_key(key: str) -> MetricKey | None:
    """The evaluation metric a logged key holds, or None for anything else (train/, base/, best/, ...)."""
    parts = key.split("/")
    if len(parts) < 5 or parts[0] != "eval":
        return None
    dataset, split, rest = parts[1], parts[2], parts[3:]
    if len(rest) == 2 and rest[0] in SETTINGS:
        return MetricKey(source(split), dataset, split, "setting", rest[0], _metric_name(rest[1]))
    if len(rest) == 3 and rest[0] == "lang":
        return MetricKey(source(split), dataset, split, "lang", rest[1], _metric_name(rest[2]))
    return None


def artifact_folder(dataset: str, split: str, step: int) -> str:
    return f"eval/{mlflow_name(dataset)}/{mlflow_name(split)}/step_{step}"


def artifact_stem(metric: str) -> str:
    """A matrix's file name without its extension (map, recall_at_10)."""
    return mlflow_name(metric)


@dataclass(frozen=True)
class ArtifactKey:
    source: str
    dataset: str
    split: str
    step: int
    kind: str  # "matrix" or "reliability"
    metric: str  # the matrix's metric ("" for reliability)


_ARTIFACT = re.compile(r"^eval/([^/]+)/([^/]+)/step_(\d+)/([^/]+)\.csv$")


def parse_artifact_path(path: str) -> ArtifactKey | None:
    """What an evaluation's CSV artifact holds, from its path alone; None when it is not one."""
    found = _ARTIFACT.match(path)
    if found is None:
        return None
    dataset, split, step, stem = found.groups()
    if stem == RELIABILITY:
        return ArtifactKey(source(split), dataset, split, int(step), "reliability", "")
    return ArtifactKey(source(split), dataset, split, int(step), "matrix", _metric_name(stem))
