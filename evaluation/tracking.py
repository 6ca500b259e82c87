"""Log an `EvalResult` to MLflow 3, once: the checkpoint as a LoggedModel, metrics linked to it and to the
evaluation set, matrices as tables and heatmaps (drawn by `evaluation.plots`).

Layout in the run (`evaluation.mlflow_layout` builds and parses its names):
- the checkpoint: a LoggedModel `{label}-step-{step}` of the run (external: the weights stay in sweep
  storage; params: path, step, content hash, base model), found again by run and name.
- the evaluation set: a dataset input (`{dataset}/{split}`, digest = `EvalSet.digest`, source = the
  corpus's public URL or folder, context `evaluation`).
- metrics (`metric_key`) with step = the checkpoint's training step, each linked to the LoggedModel and
  the dataset. The split carries the proxy size ("heldout-proxy50"), so proxy and full evaluations of one
  step never overwrite each other.
- artifacts in `artifact_folder`: per metric matrix a CSV and an annotated heatmap PNG, and for a full
  evaluation an MLflow table (`{metric}.json`, shown as a table in the UI; not per proxy checkpoint: the
  run lists its tables in one tag of at most 8000 characters); the reliability table (CSV + diagram),
  summary.json (summary, per language, lineage).
- idempotence: the LoggedModel's tag `LOGGED_TAG` + the result's content hash (value: the lineage JSON),
  set after everything else is logged; a result whose tag is there is skipped. A crash midway leaves no
  tag, so a retry logs again.
- lineage: params `MODEL_PARAM` and `languages_param` (write-once in MLflow: an existing value is kept), and per evaluation the tag value and summary.json (checkpoint path, content hash, ...).
Nothing here computes a metric; nothing in evaluation.metrics logs.
"""

from __future__ import annotations

import csv
import json
import re
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag, LoggedModel, LoggedModelStatus, Metric, Param, Run

from evaluation.mlflow_layout import (
    FULL,
    LOGGED_TAG,
    MODEL_PARAM,
    RELIABILITY,
    artifact_folder,
    artifact_stem,
    language_metric,
    languages_param,
    metric_key,
    source,
)
from evaluation.plots import heatmap, reliability_diagram
from evaluation.results import EvalResult
from hybrid.data.sources import origin

DIGEST_CHARS = 36  # MLflow's limit for a dataset digest


def lineage(result: EvalResult) -> dict:
    return {
        "checkpoint": result.checkpoint,
        "path": result.path,
        "step": result.step,
        "model": result.model,
        "model_hash": result.model_hash,
        "content_hash": result.content_hash,
        "data_digest": result.data_digest,
        "dataset": result.dataset,
        "split": result.split,
        "languages": list(result.languages),
        "temperature": result.temperature,
        "precision": result.precision,
    }


def dataset_input(name: str, digest: str, source: str, context: str) -> DatasetInput:
    """A run input for MLflow's Datasets column: `source` a URL or a folder, `context` e.g. training."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # a folder "can be interpreted in multiple ways": all of them local
        warnings.simplefilter("ignore", UserWarning)
        where = resolve_dataset_source(source)
    return DatasetInput(
        MetaDataset(where, name=name, digest=digest[:DIGEST_CHARS])._to_mlflow_entity(),
        tags=[InputTag("mlflow.data.context", context)],
    )


def model_name(result: EvalResult) -> str:
    """`{label}-step-{step}` as a LoggedModel name may be (no / : . % or quotes; a path keeps its end)."""
    return re.sub(r"[/:.%\"'\s]+", "-", f"{result.checkpoint}-step-{result.step}").strip("-")[-100:]


def checkpoint_model(client: MlflowClient, run: Run, result: EvalResult) -> LoggedModel:
    """The evaluated checkpoint as a LoggedModel of `run`, created once. External: MLflow records it (and
    links metrics to it) but its weights stay where the sweep wrote them."""
    name = model_name(result)
    found = client.search_logged_models(
        [run.info.experiment_id],
        max_results=1,
        filter_string=f"source_run_id = '{run.info.run_id}' AND name = '{name}'",
    )
    if found:
        return found[0]
    model = client.create_logged_model(
        run.info.experiment_id,
        name=name,
        source_run_id=run.info.run_id,
        tags={"mlflow.model.external": "true"},
        model_type="encoder",
        params={
            "path": result.path,
            "step": str(result.step),
            "base_model": result.model,
            "content_hash": result.model_hash,
        },
    )
    return client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)


def log_result(result: EvalResult, run_id: str, client: MlflowClient | None = None) -> bool:
    """Log `result` to `run_id` unless it is there already; returns whether anything was logged."""
    client = client or MlflowClient()
    run = client.get_run(run_id)
    model = checkpoint_model(client, run, result)
    tag = LOGGED_TAG + result.content_hash
    if tag in model.tags:
        return False
    dataset = f"{result.dataset}/{result.split}"
    digest = result.data_digest[:DIGEST_CHARS]
    now = int(time.time() * 1000)
    values = dict(result.summary)
    values |= {
        language_metric(lang, m): v for lang, by_metric in result.per_language.items() for m, v in by_metric.items()
    }
    metrics = [
        Metric(
            metric_key(result.dataset, result.split, k),
            float(v),
            now,
            result.step,
            model_id=model.model_id,
            dataset_name=dataset,
            dataset_digest=digest,
        )
        for k, v in values.items()
        if np.isfinite(v)
    ]
    params = {MODEL_PARAM: result.model, languages_param(result.dataset, result.split): ",".join(result.languages)}
    folder = artifact_folder(result.dataset, result.split, result.step)
    with tempfile.TemporaryDirectory() as tmp:
        write_artifacts(result, Path(tmp))
        client.log_artifacts(run_id, tmp, folder)
    if source(result.split) == FULL:  # a full evaluation: a few per run (the run's table list is one tag)
        logged = {f.path for f in client.list_artifacts(run_id, folder)}
        for metric, matrix in result.matrices.items():
            path = f"{folder}/{artifact_stem(metric)}.json"
            if path not in logged:  # log_table appends to an existing table: a retry must not double it
                client.log_table(run_id, matrix_table(matrix, result.languages), path)
    client.log_inputs(
        run_id, datasets=[dataset_input(dataset, result.data_digest, origin(result.dataset), "evaluation")]
    )
    if metrics and _logged_already(client, run_id, metrics[0]):  # a writer stopped before the tag below
        metrics = []
    client.log_batch(
        run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items() if k not in run.data.params]
    )
    client.set_logged_model_tags(model.model_id, {tag: json.dumps(lineage(result))})
    return True


def _logged_already(client: MlflowClient, run_id: str, metric: Metric) -> bool:
    """Whether `metric` (this step, this value) is in the run: its batch was logged but the driver died
    before the idempotence tag (a killed driver, a lost head), and a resumed trial reports it again."""
    return any(m.step == metric.step and m.value == metric.value for m in client.get_metric_history(run_id, metric.key))


def matrix_table(matrix: np.ndarray, languages: tuple[str, ...]) -> pd.DataFrame:
    """An L x L matrix as rows of (query language, one column per candidate language); NaN cells empty."""
    table = pd.DataFrame(np.round(matrix, 6), columns=list(languages)).astype(object)
    return table.where(table.notna(), None).assign(query=list(languages))[["query", *languages]]


def write_artifacts(result: EvalResult, folder: Path) -> None:
    """Matrices (CSV + heatmap), reliability table (CSV + diagram) and summary.json into `folder`."""
    for metric, matrix in result.matrices.items():
        stem = artifact_stem(metric)
        with open(folder / f"{stem}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["query\\candidate", *result.languages])
            for lang, row in zip(result.languages, matrix):
                writer.writerow([lang, *("" if np.isnan(v) else f"{v:.6f}" for v in row)])
        heatmap(
            matrix,
            result.languages,
            f"{metric}, {result.dataset}/{result.split}, step {result.step}",
            folder / f"{stem}.png",
        )
    table = result.reliability
    with open(folder / f"{RELIABILITY}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["lower", "upper", "count", "confidence", "accuracy"])
        writer.writerows(zip(table.lower, table.upper, table.count, table.confidence, table.accuracy))
    reliability_diagram(result, folder / f"{RELIABILITY}.png")
    (folder / "summary.json").write_text(
        json.dumps(
            {"summary": result.summary, "per_language": result.per_language, "lineage": lineage(result)}, indent=2
        )
    )
