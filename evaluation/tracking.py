"""Log an `EvalResult` to MLflow 3, once: metrics at the training step, matrices and reliability as artifacts.

Layout in the run:
- metrics `eval/{dataset}/{split}/{setting}/{metric}` and `eval/{dataset}/{split}/lang/{lang}/{metric}`,
  with step = the checkpoint's training step. MLflow refuses "@" in names: recall@10 is logged as
  recall_at_10. The split carries the proxy size ("heldout-proxy50"), so proxy and full evaluations of
  one step never overwrite each other.
- artifacts under `eval/{dataset}/{split}/step_{step}/`: one CSV + annotated heatmap PNG per metric
  matrix, reliability.csv + reliability.png, summary.json (summary, per language, lineage).
- idempotence: the tag `eval.{content_hash}` (value: the lineage JSON) is set after everything else is
  logged; a result whose tag is on the run is skipped. A crash midway leaves no tag, so a retry logs
  everything again.
- lineage: params `eval.model` and `eval.{dataset}.{split}.languages` (write-once in MLflow: an existing
  value is kept), and per evaluation the tag value and summary.json (checkpoint path, content hash, ...).
Nothing here computes a metric; nothing in evaluation.metrics logs.
"""

from __future__ import annotations

import csv
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global backend, nothing shown (Agg canvas)
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from evaluation.runner import EvalResult

TAG_PREFIX = "eval."


def mlflow_name(text: str) -> str:
    """A string MLflow accepts in metric / param names and artifact files ("@" and the like replaced)."""
    return re.sub(r"[^\w.\-/ :]", "_", text.replace("@", "_at_"))


def metric_key(result: EvalResult, name: str) -> str:
    return mlflow_name(f"eval/{result.dataset}/{result.split}/{name}")


def lineage(result: EvalResult) -> dict:
    return {"checkpoint": result.checkpoint, "step": result.step, "model": result.model,
            "content_hash": result.content_hash, "dataset": result.dataset, "split": result.split,
            "languages": list(result.languages), "temperature": result.temperature}


def already_evaluated(run_id: str, content_hash: str, client: MlflowClient | None = None) -> bool:
    """Whether `run_id` already holds the evaluation with this content hash."""
    return TAG_PREFIX + content_hash in (client or MlflowClient()).get_run(run_id).data.tags


def log_result(result: EvalResult, run_id: str, client: MlflowClient | None = None) -> bool:
    """Log `result` to `run_id` unless it is there already; returns whether anything was logged."""
    client = client or MlflowClient()
    run = client.get_run(run_id)
    tag = TAG_PREFIX + result.content_hash
    if tag in run.data.tags:
        return False
    now = int(time.time() * 1000)
    values = dict(result.summary)
    values |= {f"lang/{lang}/{m}": v for lang, by_metric in result.per_language.items() for m, v in by_metric.items()}
    metrics = [Metric(metric_key(result, k), float(v), now, result.step) for k, v in values.items() if np.isfinite(v)]
    params = {"eval.model": result.model,
              mlflow_name(f"eval.{result.dataset}.{result.split}.languages"): ",".join(result.languages)}
    with tempfile.TemporaryDirectory() as tmp:
        write_artifacts(result, Path(tmp))
        client.log_artifacts(run_id, tmp, f"eval/{mlflow_name(result.dataset)}/{mlflow_name(result.split)}/step_{result.step}")
    client.log_batch(run_id, metrics=metrics,
                     params=[Param(k, v) for k, v in params.items() if k not in run.data.params])
    client.set_tag(run_id, tag, json.dumps(lineage(result)))
    return True


def write_artifacts(result: EvalResult, folder: Path) -> None:
    """Matrices (CSV + heatmap), reliability table (CSV + diagram) and summary.json into `folder`."""
    for metric, matrix in result.matrices.items():
        stem = mlflow_name(metric)
        with open(folder / f"{stem}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["query\\candidate", *result.languages])
            for lang, row in zip(result.languages, matrix):
                writer.writerow([lang, *("" if np.isnan(v) else f"{v:.6f}" for v in row)])
        heatmap(matrix, result.languages, f"{metric}, {result.dataset}/{result.split}, step {result.step}",
                folder / f"{stem}.png")
    table = result.reliability
    with open(folder / "reliability.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["lower", "upper", "count", "confidence", "accuracy"])
        writer.writerows(zip(table.lower, table.upper, table.count, table.confidence, table.accuracy))
    reliability_diagram(result, folder / "reliability.png")
    (folder / "summary.json").write_text(json.dumps(
        {"summary": result.summary, "per_language": result.per_language, "lineage": lineage(result)}, indent=2))


def heatmap(matrix: np.ndarray, languages: tuple[str, ...], title: str, path: Path) -> None:
    """Annotated L x L heatmap, rows = query language, columns = candidate language; blank where NaN."""
    side = 1.5 + 0.5 * len(languages)
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis")
    ticks = range(len(languages))
    ax.set_xticks(ticks, languages)
    ax.set_yticks(ticks, languages)
    ax.set_xlabel("candidate language")
    ax.set_ylabel("query language")
    ax.set_title(title, fontsize=9)
    finite = matrix[np.isfinite(matrix)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for (i, j), value in np.ndenumerate(matrix):
        if np.isfinite(value):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value < middle else "black")
    fig.colorbar(image, ax=ax)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def reliability_diagram(result: EvalResult, path: Path) -> None:
    """Accuracy per confidence bin against the diagonal (perfect calibration); bar labels = query counts."""
    table = result.reliability
    ece = float(np.nansum(table.count * np.abs(table.accuracy - table.confidence)) / table.count.sum())
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    centers, width = (table.lower + table.upper) / 2, table.upper - table.lower
    bars = ax.bar(centers, np.nan_to_num(table.accuracy), width=width, edgecolor="black", label="accuracy")
    ax.bar_label(bars, labels=[str(c) if c else "" for c in table.count], fontsize=6)
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_xlabel("top-1 softmax confidence")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title(f"{result.dataset}/{result.split}, step {result.step}: ECE {ece:.3f} (all queries)", fontsize=9)
    ax.legend(loc="upper left")
    fig.savefig(path, dpi=110, bbox_inches="tight")
