"""`python -m evaluation`: evaluate checkpoints on every language pair and print the tables.

    python -m evaluation                                   # the base multilingual-e5-small, XQuAD-R held-out
    python -m evaluation --checkpoint outputs/.../checkpoint_000040 --languages en de el --max-questions 50
    python -m evaluation --merge A B --weight 0.5    # A and B's weights averaged (hybrid.merge), all three evaluated

The `eval:` and `data:` sections of --config (with --set applied) set the defaults; the flags override
them (re-validated). A model that is not one of our exports (a base model) is read as the preset's
`model:` section says (max_length, prefixes, pooling), else as its own files say (`hybrid.model_settings`),
said in one line, as a sweep reads it; a model that says neither is refused. A bad value stops
with one line naming it, before Ray starts. While it runs, a line per model as its figures are in, with
the time left (`evaluation.progress`, as the sweep's final evaluation); Ray's start-up lines and its tasks'
output only with --verbose (always in Ray's logs).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from evaluation.config import EvalConfig
from evaluation.mlflow_layout import SETTINGS
from hybrid import signing, storage
from hybrid.config import (
    DEFAULT_CONFIG,
    DataConfig,
    ModelConfig,
    add_overrides_flag,
    apply_overrides,
    from_dict,
    read_yaml,
)
from hybrid.model_settings import settle
from hybrid.spec import E5_SMALL_NAME, EncoderSpec

if TYPE_CHECKING:  # the heavy modules (torch, FAISS, Ray) load after the flags and the config are checked
    from evaluation.checkpoints import CheckpointRef
    from evaluation.results import EvalResult


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m evaluation", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--checkpoint",
        nargs="+",
        help="trainer checkpoint folder(s), encoder folder(s) or model name(s); evaluated concurrently "
        "(default: multilingual-e5-small, none with --merge)",
    )
    parser.add_argument(
        "--merge",
        nargs=2,
        metavar=("FIRST", "SECOND"),
        help="two local checkpoint or encoder folders of one base model: their weights averaged into "
        "an export of its own, evaluated beside them",
    )
    parser.add_argument("--weight", type=float, default=0.5, help="the first model's share in --merge, 0 to 1")
    parser.add_argument("--merge-out", help="where --merge writes (default: outputs/merges/<8 hex>-w<weight>)")
    parser.add_argument("--dataset", help="xquad-r, mlqa-r, miracl or a folder of LAReQA-format files")
    parser.add_argument("--languages", nargs="+", help="default: eval.languages, else data.eval_languages")
    parser.add_argument("--max-questions", type=int, help="proxy evaluation on the first N question ids")
    parser.add_argument("--data-dir", help="local copy of MLQA-R or MIRACL")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="preset YAML (data: and eval: sections)")
    add_overrides_flag(parser, "eval.ece_bins=10")
    parser.add_argument(
        "--cache",
        help="evaluation cache folder (local or s3://): a checkpoint already evaluated on "
        "the same data and settings is read from it instead (a sweep's: "
        "<sweep.storage_path>/eval-cache)",
    )
    parser.add_argument(
        "--num-cpus", type=int, help="CPUs of the local Ray this command starts (default: all of this machine's)"
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also show Ray's start-up lines and its tasks' output (always in Ray's logs)",
    )
    return parser.parse_args(argv)


def format_result(result: EvalResult) -> str:
    """Summary (mono / cross / multi x metrics), the L x L mAP matrix, wall time and encode task count."""
    import numpy as np

    from evaluation.scoring import POOLED_METRICS

    header = f"{'':6}" + "".join(f"{m:>15}" for m in POOLED_METRICS)
    lines = [
        f"== {result.checkpoint} (step {result.step}) on {result.dataset}/{result.split}, "
        f"{len(result.languages)} languages, ECE at T={result.temperature:g}",
        header,
    ]
    for setting in SETTINGS:
        if any(k.startswith(f"{setting}/") for k in result.summary):
            cells = [result.summary.get(f"{setting}/{m}") for m in POOLED_METRICS]
            lines.append(f"{setting:6}" + "".join(f"{'-':>15}" if v is None else f"{v:15.4f}" for v in cells))
    lines += [
        "",
        "mAP (rows: query language, columns: candidate language)",
        "      " + "".join(f"{lang:>7}" for lang in result.languages),
    ]
    for lang, row in zip(result.languages, result.matrices["map"]):
        lines.append(f"{lang:6}" + "".join(f"{'-':>7}" if np.isnan(v) else f"{v:7.3f}" for v in row))
    lines += [
        "",
        (
            "from the evaluation cache"
            if result.cached
            else f"wall time {result.wall_s:.1f} s, encode tasks "
            f"{result.encode_tasks} (2 x {len(result.languages)} languages)"
        )
        + f", encoded in {result.precision}",
    ]
    return "\n".join(lines)


def settled_spec(model: ModelConfig, path: str) -> EncoderSpec:
    """How the model at `path` embeds when its folder does not say: `model.*` given, else its own files
    (`hybrid.model_settings`), said in one line."""
    settled = settle(replace(model, name=path), named_by="--checkpoint")
    print(settled.line(training=False), flush=True)
    return settled.config.spec


def usable(checkpoint: str, spec_of: Callable[[str], EncoderSpec]) -> CheckpointRef | None:
    """`--checkpoint`'s model to evaluate, or None once said in one line: a local export cut short, altered,
    forged or bound to another run is refused here, so the other checkpoints are still evaluated (one in
    storage is checked where its task reads it)."""
    from evaluation.checkpoints import CheckpointRef, local_model_dir, unless_saved
    from hybrid.manifest import IncompleteCheckpoint

    try:
        ref = unless_saved(CheckpointRef.from_path(checkpoint), spec_of)
        if not storage.is_uri(ref.path) and Path(ref.path).is_dir():
            local_model_dir(ref.path, ref.signed, ref.bound)
        return ref
    except IncompleteCheckpoint as e:
        print(f"error: {e} Not evaluated.", file=sys.stderr)
        return None


def merged(parents: list[str], weight: float, out: str | None) -> list[CheckpointRef]:
    """The two parents and their merge (`hybrid.merge`), as checkpoints to evaluate; the merge's ECE at the
    first parent's temperature."""
    from evaluation.checkpoints import CheckpointRef
    from hybrid.merge import merge

    first, second = (CheckpointRef.from_path(p) for p in parents)
    for ref in (first, second):
        if storage.is_uri(ref.path) or not Path(ref.path).is_dir():
            raise ValueError(f"--merge {ref.path}: not a local folder (a checkpoint or an encoder export).")
    digest = hashlib.sha256(f"{Path(first.path).resolve()}|{Path(second.path).resolve()}".encode()).hexdigest()[:8]
    path = merge(first.path, second.path, weight, out or Path("outputs") / "merges" / f"{digest}-w{weight:g}")
    ref = replace(first, path=str(path), step=0, label=f"merge w={weight:g} ({path})", signed=True, run="")
    return [replace(first, signed=True), replace(second, signed=True), ref]


def settled_precision(config: EvalConfig, data: DataConfig, model: ModelConfig, cache: str | None) -> EvalConfig:
    """`eval.precision: auto` decided by its check (`evaluation.precision`) on the configured base model and the
    training corpus's held-out set, said in one line; fp32 or bf16 as they are."""
    if config.precision != "auto":
        return config
    from evaluation.checkpoints import CheckpointRef
    from evaluation.datasets import load_eval_set
    from evaluation.precision import settle as check_precision

    base = CheckpointRef(path=model.name, label="base", model=model.name, spec=model.spec)
    held_out = replace(config, dataset=data.dataset, languages=None, max_questions=None)
    check = check_precision(held_out, base, load_eval_set(held_out, data), cache)
    print(check.line(), flush=True)
    return replace(config, precision=check.precision)


def main(argv: list[str] | None = None) -> list[EvalResult]:
    started = time.perf_counter()
    args = parse_args(argv)
    try:
        raw = apply_overrides(read_yaml(args.config), args.overrides)
        data = from_dict(DataConfig, raw.get("data"), "data")
        model = from_dict(ModelConfig, raw.get("model"), "model")
        config = from_dict(EvalConfig, raw.get("eval"), "eval")
        flags = {
            "dataset": args.dataset,
            "max_questions": args.max_questions,
            "data_dir": args.data_dir,
            "languages": tuple(args.languages) if args.languages else None,
        }
        config = replace(config, **{k: v for k, v in flags.items() if v is not None})  # validated again
        address = os.environ.get("RAY_ADDRESS", "")
        if args.num_cpus is not None and address not in ("", "local"):
            raise ValueError(
                f"--num-cpus={args.num_cpus}: this command joins the Ray at RAY_ADDRESS={address}, whose CPUs are its "
                "own. Leave --num-cpus out to use them, or set RAY_ADDRESS=local for a Ray of this command's own."
            )
        signing.ensure_key()  # checkpoints and cache entries are verified with it
        checkpoints = args.checkpoint or ([] if args.merge else [E5_SMALL_NAME])
        refs = [ref for c in checkpoints if (ref := usable(c, lambda path: settled_spec(model, path)))]
        refused = len(checkpoints) - len(refs)
        if refused and not (refs or args.merge):
            raise SystemExit(2)
        if args.merge:
            refs += merged(args.merge, args.weight, args.merge_out)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    from evaluation.datasets import load_eval_set
    from evaluation.progress import model_lines
    from evaluation.runner import evaluate_checkpoints

    on_done = model_lines(f"evaluation on {config.dataset}", len(refs))  # said before the data and Ray start
    eval_set = load_eval_set(config, data)

    import ray

    if not ray.is_initialized():
        try:
            ray.init(
                num_cpus=args.num_cpus,
                include_dashboard=False,
                log_to_driver=args.verbose,
                logging_level=logging.INFO if args.verbose else logging.ERROR,  # its start-up lines, unless asked
            )
        except ValueError as e:  # a Ray runs already (this machine's, or RAY_ADDRESS): its CPUs are its own
            if args.num_cpus is None:
                raise
            print(
                f"error: --num-cpus={args.num_cpus}: this command joins a running Ray ({e}). Leave --num-cpus out "
                "to use its CPUs, or set RAY_ADDRESS=local for a Ray of this command's own.",
                file=sys.stderr,
            )
            raise SystemExit(2) from None
    config = settled_precision(config, data, model, args.cache)
    results = evaluate_checkpoints(refs, eval_set, config, args.cache, on_done)
    for result in results:
        print(format_result(result), end="\n\n")
    print(f"total {time.perf_counter() - started:.1f} s (Ray start, data loading and model hashing included)")
    if refused:  # said above, each in its line; the others are evaluated all the same
        raise SystemExit(2)
    return results


if __name__ == "__main__":
    main()
