"""Compare sweeps from MLflow: a terminal summary and a self-contained HTML report that answers the research
questions (ratio vs retrieval, high-resource pairs, number of languages, calibration, robustness).

    python sweeps/compare.py                                   # the default sweep in ./mlflow.db
    python sweeps/compare.py --experiment sweep-a --experiment sweep-b --out outputs/report
    python sweeps/compare.py --tracking-uri http://127.0.0.1:5000 --high-resource en de zh

Reads runs only through the MLflow API; writes `<out>/report.html` (images embedded, opens offline) and
each figure as `<out>/<sweep>/<figure>.png` and `.pdf` (vector, at a paper's column width), and logs them
and the HTML to each sweep's parent run under `report/`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hybrid.config import DEFAULT_CONFIG, read_yaml
from hybrid.languages import HIGH_RESOURCE
from sweeps.config import SweepConfig
from sweeps.uris import absolute_tracking_uri, redact

if TYPE_CHECKING:
    from sweeps.report.findings import Findings


def default_experiment(config: Path = DEFAULT_CONFIG) -> str:
    """`sweep.name` of the preset, else the sweep section's default (as ratio_search resolves it)."""
    return str((read_yaml(config).get("sweep") or {}).get("name") or SweepConfig().name)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--experiment",
        action="append",
        metavar="NAME",
        help="sweep name = MLflow experiment (repeat to compare sweeps side by side); "
        "default: sweep.name of configs/default.yaml",
    )
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
    )
    parser.add_argument(
        "--out", default="outputs/report", help="folder for report.html and the PNGs (default: %(default)s)"
    )
    parser.add_argument(
        "--high-resource",
        nargs="+",
        default=list(HIGH_RESOURCE),
        metavar="LANG",
        help="high-resource languages for question 2 (default: %(default)s; intersected with the evaluated languages)",
    )
    parser.add_argument("--no-log", action="store_true", help="do not log the report to the parent runs")
    return parser.parse_args(argv)


def safe_name(name: str) -> str:
    return re.sub(r"[^\w.\-]", "_", name)


def print_summary(f: Findings) -> None:
    import pandas as pd

    from sweeps.report.findings import best_alpha_lines, trials_table
    from sweeps.report.glance import glance
    from sweeps.report.questions import QUESTIONS

    s = f.sweep
    print(
        f"\n=== Sweep {s.name!r} (experiment {s.experiment_id}): {len(s.runs)} trial runs, objective "
        f"{f.objective}; metrics: {f.selection.source} evaluation on {f.dataset} "
        "(full where every compared run has it, else proxy)"
    )
    table = trials_table(f)
    if not table.empty:
        with pd.option_context("display.width", 250, "display.max_columns", 40, "display.max_colwidth", 30):
            print(table.to_string(index=False))
    if lines := best_alpha_lines(f.best_alpha, f.dataset):
        print("\n" + "\n".join(lines))
    print("\nAnswers at a glance (95% CI over seeds):")
    for _, row in glance(f).iterrows():
        print(f"  {row['question']}\n    {row['finding (95% CI over seeds)']}\n    -> {row['verdict']}")
    for key, question in QUESTIONS.items():
        print(f"\n{question}")
        for line in f.answers[key]:
            print(f"  - {line}")


def build_report(
    client, experiments: list[str], out: Path, high_resource: tuple[str, ...], log: bool = True, tracking_uri: str = ""
) -> tuple[Path, list[Findings]]:
    """Load and analyse each sweep, write `out/report.html` and the PNGs, log them to the parent runs."""
    from sweeps.report import figures
    from sweeps.report.data import load_sweep, log_report_artifacts
    from sweeps.report.findings import analyse
    from sweeps.report.html import build_html

    try:
        sweeps = [load_sweep(client, name) for name in experiments]
    except ValueError as e:
        raise SystemExit(str(e)) from None
    found = [analyse(s, high_resource) for s in sweeps]
    images: dict[str, dict[str, bytes]] = {}
    files: dict[str, list[Path]] = {}
    for f in found:
        drawn = figures.render(f)
        images[f.sweep.name] = {key: formats["png"] for key, formats in drawn.items()}
        files[f.sweep.name] = [
            path
            for key, formats in drawn.items()
            for path in write_formats(out / safe_name(f.sweep.name) / key, formats)
        ]
    comparison = figures.render_comparison(found)
    shared = write_formats(out / "compare", comparison) if comparison else []
    report = out / "report.html"
    report.write_text(
        build_html(found, images, comparison["png"] if comparison else None, redact(tracking_uri)), encoding="utf-8"
    )
    if log:
        for f in found:
            log_report_artifacts(client, f.sweep, files[f.sweep.name] + [report] + shared)
    return report, found


def write_formats(stem: Path, formats: dict[str, bytes]) -> list[Path]:
    """`stem.png`, `stem.pdf`, ... from a figure's bytes by format; the paths written."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(f".{fmt}") for fmt in formats]
    for path, data in zip(paths, formats.values()):
        path.write_bytes(data)
    return paths


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    from mlflow import MlflowClient  # after argument errors are out of the way, as the report's modules

    from sweeps.report.html import overview

    uri = absolute_tracking_uri(args.tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).exists():
        raise SystemExit(
            f"no MLflow store at {uri[len('sqlite:///') :]}: run a sweep first "
            "(python sweeps/ratio_search.py) or pass --tracking-uri."
        )
    client = MlflowClient(tracking_uri=uri)
    report, found = build_report(
        client,
        args.experiment or [default_experiment()],
        Path(args.out),
        tuple(args.high_resource),
        not args.no_log,
        uri,
    )
    for f in found:
        print_summary(f)
    if len(found) > 1:
        print("\nSweeps side by side:")
        print(overview(found).to_string(index=False))
    logged = "" if args.no_log else " (figures and HTML also logged to each sweep's parent run under report/)"
    print(f"\nReport: {report.resolve()}{logged}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
