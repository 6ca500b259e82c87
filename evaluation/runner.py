"""Evaluate checkpoints on every language pair at once: Ray tasks for encoding and scoring, FAISS, pure metrics.

The task graph, per checkpoint (a window of checkpoints is in flight at once, the next submitted as one is
scored and cached, so several evaluate concurrently and a stop loses only the window):
  [1] one encode task per (language, side in {queries, candidates}): 2 x L tasks. Each returns an (N, d)
      float32 array that stays in Ray's object store; scorers receive the ObjectRefs, nothing is encoded
      twice. A checkpoint in storage (s3://...) is copied once per node into the node's cache; workers
      are reused, so `_cached_encoder` loads it once per worker process (loading e5-small takes ~4 s,
      as long as encoding ~150 sentences on one core). The content hash is computed on a node too:
      the driver never reads a checkpoint's files, so it may run where no checkpoint is (a cluster head).
  [2] one scoring task per query language: FAISS scores its queries against the pooled candidates of all
      languages; the pooled matrix is the multilingual setting and its column blocks are the L pairs.
This module is the task graph only: scoring is `evaluation.scoring` (pure), the result and its cache
`evaluation.results`, the data `evaluation.eval_set`; nothing here logs (evaluation.tracking does, afterwards).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import replace

import faiss
import numpy as np
import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from evaluation.checkpoints import CheckpointRef, content_hash, local_model_dir
from evaluation.config import EvalConfig
from evaluation.eval_set import EvalSet
from evaluation.results import EvalResult, assemble, cached, evaluation_key, write_cached
from evaluation.scoring import score_query_language
from hybrid import storage
from hybrid.data import ParallelCorpus
from hybrid.spec import EncoderSpec


@functools.lru_cache(maxsize=1)
def _cached_encoder(model_dir: str, stamp: str, spec: EncoderSpec | None):
    """One encoder per worker process; `stamp` is part of the key only, so a changed folder reloads."""
    from hybrid.model import load_encoder

    return load_encoder(model_dir, spec)


@ray.remote
def _encode_task(
    model: str,
    signed: bool,
    bound: dict[str, int | str],
    texts: list[str],
    side: str,
    batch_size: int,
    threads: int,
    spec: EncoderSpec | None,
    precision: str,
) -> np.ndarray:
    """Encode on whichever node runs the task: the model's files are copied to this node first when
    they live in storage (`local_model_dir`), never read from the driver's disk."""
    import torch

    torch.set_num_threads(threads)
    folder = str(local_model_dir(model, signed, bound))
    encoder = _cached_encoder(folder, storage.stamp(folder), spec)
    return encoder.encode(texts, side, batch_size=batch_size, progress=False, precision=precision)


@ray.remote
def _hash_task(model: str, signed: bool, bound: dict[str, int | str]) -> str:
    """The model's content hash, computed on the node that holds (a copy of) its files."""
    return content_hash(str(local_model_dir(model, signed, bound)))


@ray.remote
def _score_task(
    queries: np.ndarray,
    positives: list[dict[str, tuple[int, ...]]],
    cand_langs: list[str],
    temperature: float,
    ece_bins: int,
    use_gpu: bool,
    threads: int,
    *candidates: np.ndarray,
) -> dict:
    faiss.omp_set_num_threads(threads)
    return score_query_language(queries, positives, dict(zip(cand_langs, candidates)), temperature, ece_bins, use_gpu)


# Outside any placement group: called from a Tune trial (whose group captures child tasks and is full),
# evaluation tasks would otherwise wait forever for a CPU inside the trial's own bundle.
OUTSIDE_TRIAL = PlacementGroupSchedulingStrategy(placement_group=None)


def _submit(ref: CheckpointRef, eval_set: EvalSet, config: EvalConfig) -> tuple[dict, int]:
    """Submit one checkpoint's tasks; returns ({query language: scoring ObjectRef}, encode task count)."""
    encode_threads, score_threads = config.threads
    # Ray hides GPUs from tasks that do not ask for one, so a GPU index needs the request; and only a GPU free
    # now: during a sweep the trials hold every GPU, and a proxy evaluation beside training that asked for one
    # would wait for it forever (its trial waits for that evaluation). CPU FAISS gives the same scores.
    score_gpus = 1 if config.use_gpu_index and ray.available_resources().get("GPU", 0) >= 1 else 0

    def encode(texts: list[str], side: str, lang: str) -> ray.ObjectRef:
        return _encode_task.options(
            num_cpus=config.encode_cpus, name=f"encode:{ref.label}:{lang}:{side}", scheduling_strategy=OUTSIDE_TRIAL
        ).remote(
            ref.path, ref.signed, ref.bound, texts, side, config.batch_size, encode_threads, ref.spec, config.precision
        )

    # [1] candidates first: every scoring task needs all of them, but only its own queries.
    cands = {lang: encode(eval_set.candidates[lang], "passage", lang) for lang in eval_set.languages}
    queries = {lang: encode(eval_set.queries[lang], "query", lang) for lang in eval_set.languages}
    scoring = {}
    for lang in eval_set.languages:
        cand_langs = list(eval_set.languages) if eval_set.parallel else [lang]
        # [2] ObjectRefs as top-level arguments: Ray resolves them to (zero-copy) arrays in the task.
        scoring[lang] = _score_task.options(
            num_cpus=config.score_cpus,
            num_gpus=score_gpus,
            name=f"score:{ref.label}:{lang}",
            scheduling_strategy=OUTSIDE_TRIAL,
        ).remote(
            queries[lang],
            eval_set.positives[lang],
            cand_langs,
            ref.temperature,
            config.ece_bins,
            config.use_gpu_index,
            score_threads,
            *[cands[b] for b in cand_langs],
        )
    return scoring, len(cands) + len(queries)


def _window(eval_set: EvalSet, config: EvalConfig) -> int:
    """Checkpoints in flight: enough encode tasks to fill the cluster's CPUs, and one more checkpoint, whose
    encoding fills the CPUs while the one before is scored."""
    per_checkpoint = 2 * len(eval_set.languages) * config.encode_cpus
    return max(2, math.ceil(ray.cluster_resources().get("CPU", 1.0) / per_checkpoint) + 1)


def evaluate_checkpoints(
    checkpoints: list[CheckpointRef],
    corpus: ParallelCorpus | EvalSet,
    config: EvalConfig,
    cache: str | None = None,
    on_done: Callable[[CheckpointRef, float, bool], None] | None = None,
    in_flight: int | None = None,
) -> list[EvalResult]:
    """Evaluate every checkpoint on every language pair, concurrently; results in input order.

    `config.languages` and `config.max_questions` are applied to `corpus` here. Uses the current Ray
    (`ray.init` first; Ray starts a local one otherwise). `wall_s` of a result runs from the first
    submission to its checkpoint's last scoring task, so concurrent checkpoints share the machine.
    `cache` (a folder, local or s3://): results are kept there by evaluation key (model files + data +
    settings), and a checkpoint whose key is there is not evaluated again (`cached` True, `wall_s` 0).
    `on_done(ref, seconds since the start, cached)` is called as each checkpoint's figures are in (and
    cached). `in_flight`: checkpoints evaluated at once (default `_window`: enough to keep the cluster busy).
    """
    if config.precision not in ("fp32", "bf16"):
        raise ValueError(f"eval.precision {config.precision!r}: settle it first (evaluation.precision.settle).")
    eval_set = corpus if isinstance(corpus, EvalSet) else EvalSet.from_corpus(corpus)
    eval_set = eval_set.restrict(config.languages, config.max_questions)
    if not any(eval_set.queries.values()):
        raise ValueError(
            f"{eval_set.name}/{eval_set.split}: no query with a relevant candidate in {eval_set.languages}."
        )
    start = time.perf_counter()
    digests = [
        _hash_task.options(
            num_cpus=config.encode_cpus, name=f"hash:{ref.label}", scheduling_strategy=OUTSIDE_TRIAL
        ).remote(ref.path, ref.signed, ref.bound)
        for ref in checkpoints
    ]
    found = {}  # without a cache, hashing overlaps the encoding it does not feed
    if cache:
        found = {
            i: hit
            for i, (ref, model_hash) in enumerate(zip(checkpoints, ray.get(digests)))
            if (hit := cached(cache, evaluation_key(model_hash, eval_set, config, ref.temperature, ref.spec)))
        }
    for i in found:
        if on_done:
            on_done(checkpoints[i], time.perf_counter() - start, True)
    # A window of checkpoints in flight, the next submitted as one is done, each result cached as soon as it is
    # scored: a kill loses the window's work, not the phase's. (All submitted at once, 24 models on MLQA-R had
    # none done after 30 min, and results reached the cache only when the last one was scored.)
    todo = [i for i in range(len(checkpoints)) if i not in found]
    window = in_flight or _window(eval_set, config)
    submitted: dict[int, tuple[dict[str, ray.ObjectRef], int]] = {}
    owner: dict[ray.ObjectRef, int] = {}
    done_results: dict[int, EvalResult] = {}

    def submit_next() -> None:
        i = todo.pop(0)
        submitted[i] = _submit(checkpoints[i], eval_set, config)
        owner.update({r: i for r in submitted[i][0].values()})

    while todo and len(submitted) < window:
        submit_next()
    while owner:
        [ready], _ = ray.wait(list(owner), num_returns=1)
        i = owner.pop(ready)
        if i in owner.values():
            continue
        scoring, n_encode = submitted.pop(i)
        scored = dict(zip(scoring, ray.get(list(scoring.values()))))
        done_results[i] = assemble(
            checkpoints[i], ray.get(digests[i]), eval_set, scored, n_encode, time.perf_counter() - start, config
        )
        if cache:
            write_cached(cache, done_results[i])
        if on_done:
            on_done(checkpoints[i], done_results[i].wall_s, False)
        if todo:
            submit_next()
    results = []
    for i, ref in enumerate(checkpoints):
        if i not in found:
            results.append(done_results[i])
            continue
        results.append(  # the same files on the same data: only the labels are this checkpoint's
            replace(
                found[i],
                checkpoint=ref.label or ref.path,
                step=ref.step,
                path=ref.path,
                model=ref.model or ref.path,
                encode_tasks=0,
                wall_s=0.0,
                cached=True,
            )
        )
    return results
