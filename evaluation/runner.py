"""Evaluate checkpoints on every language pair at once: Ray tasks for encoding and scoring, FAISS, pure metrics.

The task graph, per checkpoint (all checkpoints are submitted before anything is gathered, so several
evaluate concurrently):
  [1] one encode task per (language, side in {queries, candidates}): 2 x L tasks. Each returns an (N, d)
      float32 array that stays in Ray's object store; scorers receive the ObjectRefs, nothing is encoded
      twice. A checkpoint in storage (s3://...) is copied once per node into the node's cache; workers
      are reused, so `_cached_encoder` loads it once per worker process (loading e5-small takes ~4 s,
      as long as encoding ~150 sentences on one core). The content hash is computed on a node too:
      the driver never reads a checkpoint's files, so it may run where no checkpoint is (a cluster head).
  [2] one scoring task per query language: FAISS scores its queries against the pooled candidates of all
      languages; the pooled matrix is the multilingual setting and its column blocks are the L pairs.
Metrics (evaluation.metrics) are pure; nothing here logs (evaluation.tracking does, afterwards).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import faiss
import numpy as np
import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from evaluation import metrics as M
from evaluation.config import DEFAULT_TEMPERATURE, CheckpointRef, EvalConfig, content_hash, local_model_dir
from hybrid import storage
from hybrid.config import DataConfig
from hybrid.data import ParallelCorpus, load_corpus
from hybrid.splits import heldout_corpus

PAIR_METRICS = ("map", "map@20", "mrr@10", "recall@1", "recall@10", "recall@100", "ndcg@10", "ece")
POOLED_METRICS = (*PAIR_METRICS, "rank_distance")  # rank distance only means something when pooled
GPU_MAX_K = 2048  # FAISS GPU flat search refuses larger k


@dataclass(frozen=True)
class EvalSet:
    """The hand-off from data to runner: texts per language and each query's relevant candidates.

    `positives[lang][i]` maps a candidate language to the indices of query i's relevant candidates there.
    XQuAD-R: one per language (the answer sentence, translated). MLQA-R: languages hold different question
    sets, so a pair (a, b) scores only the queries of a whose id is also in b. `parallel` False (MIRACL):
    only same-language pairs exist, so there is no cross or pooled setting.
    """

    name: str
    split: str
    query_ids: dict[str, list[str]]
    queries: dict[str, list[str]]
    candidates: dict[str, list[str]]
    positives: dict[str, list[dict[str, tuple[int, ...]]]]
    parallel: bool = True

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(self.queries)

    @functools.cached_property
    def digest(self) -> str:
        """sha256 of what an evaluation reads (texts and relevance): the dataset's digest in MLflow, and part of
        the evaluation key, so a changed file is a new evaluation even under the same name."""
        body = json.dumps([self.name, self.split, self.query_ids, self.queries, self.candidates, self.positives,
                           self.parallel], sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()

    @classmethod
    def from_corpus(cls, corpus: ParallelCorpus) -> EvalSet:
        """Questions vs answer *sentences* (not sentence + paragraph: 0.83 vs 0.78 mono mAP for e5-small)."""
        name, _, split = corpus.name.partition("/")
        langs = corpus.languages
        return cls(name, split or "all",
                   {lang: [q.id for q in corpus.questions[lang]] for lang in langs},
                   {lang: [q.text for q in corpus.questions[lang]] for lang in langs},
                   {lang: [c.sentence for c in corpus.candidates[lang]] for lang in langs},
                   {lang: [{b: (i,) for b, i in corpus.relevant(q.id, langs)} for q in corpus.questions[lang]]
                    for lang in langs})

    def restrict(self, languages: tuple[str, ...] | None = None, max_questions: int | None = None) -> EvalSet:
        """A subset of languages, and the proxy subset: the first `max_questions` ids by sha256(id), the same
        ids in every language of a parallel set (per language otherwise). Candidates are all kept."""
        langs = tuple(languages or self.languages)
        unknown = sorted(set(langs) - set(self.languages))
        if unknown:
            raise ValueError(f"{self.name}: unknown language(s) {unknown}; available: {', '.join(self.languages)}.")
        shared = proxy_ids([i for lang in langs for i in self.query_ids[lang]], max_questions)
        query_ids, queries, positives = {}, {}, {}
        for lang in langs:
            keep = shared if self.parallel else proxy_ids(self.query_ids[lang], max_questions)
            rows = [(i, {b: idx for b, idx in self.positives[lang][i].items() if b in langs})
                    for i, qid in enumerate(self.query_ids[lang]) if keep is None or qid in keep]
            rows = [(i, pos) for i, pos in rows if pos]
            query_ids[lang] = [self.query_ids[lang][i] for i, _ in rows]
            queries[lang] = [self.queries[lang][i] for i, _ in rows]
            positives[lang] = [pos for _, pos in rows]
        split = self.split if max_questions is None else f"{self.split}-proxy{max_questions}"
        return replace(self, split=split, query_ids=query_ids, queries=queries,
                       candidates={lang: self.candidates[lang] for lang in langs}, positives=positives)


def proxy_ids(ids: list[str], n: int | None) -> set[str] | None:
    """The first n distinct ids ordered by sha256(id): a fixed, order-free sample (None when n is None)."""
    if n is None:
        return None
    return set(sorted(set(ids), key=lambda i: hashlib.sha256(i.encode()).hexdigest())[:n])


def load_eval_set(config: EvalConfig, data: DataConfig) -> EvalSet:
    """The data `config.dataset` names: held-out articles when it is the training corpus (`data.dataset`),
    else the whole corpus (never trained on: MLQA-R is the zero-shot set), or the MIRACL pool.
    Languages: `config.languages`, else `data.eval_languages` (those the corpus has)."""
    if config.dataset == "miracl":
        from evaluation.miracl import load_miracl

        return load_miracl(config.languages, config.data_dir, config.miracl_sample)
    data_dir = Path(config.data_dir) if config.data_dir else None
    if config.dataset == data.dataset:
        corpus = heldout_corpus(replace(data, eval_languages=config.languages or data.eval_languages,
                                        data_dir=config.data_dir or data.data_dir))
    else:
        corpus = load_corpus(config.dataset, config.languages, data_dir)
        corpus = corpus.select_languages(config.languages or
                                         [lang for lang in data.eval_languages if lang in corpus.questions])
    return EvalSet.from_corpus(corpus)


@dataclass(frozen=True)
class EvalResult:
    """One checkpoint on one evaluation set. `matrices[metric]` is L x L (rows: query language, columns:
    candidate language; NaN where a pair has no query). `summary` keys are "{setting}/{metric}": mono =
    mean of the diagonal, cross = mean off the diagonal, multi = pooled candidates, macro over query
    languages (cross and multi only for parallel sets). `per_language[lang]`: map, rank_distance, ece of
    the pooled setting (mono for non-parallel sets). `reliability`: one table over all queries' widest
    setting (micro, so its ECE can differ slightly from the macro `multi/ece`)."""

    checkpoint: str
    step: int
    content_hash: str  # the idempotence key: model files + the evaluation set's contents + ECE settings
    dataset: str
    split: str
    languages: tuple[str, ...]
    matrices: dict[str, np.ndarray]
    summary: dict[str, float]
    per_language: dict[str, dict[str, float]]
    reliability: M.ReliabilityTable
    encode_tasks: int
    wall_s: float
    model: str = ""
    temperature: float = DEFAULT_TEMPERATURE
    path: str = ""  # the checkpoint's folder (local, s3://, or a model name)
    model_hash: str = ""  # sha256 of the files that decide the embeddings (evaluation.config.content_hash)
    data_digest: str = ""  # EvalSet.digest
    cached: bool = False  # taken from the evaluation cache, not computed in this call

    def to_json(self) -> str:
        """The whole result as JSON (NaN kept): how a trial on a worker node hands an evaluation to the
        sweep driver, the only process that writes it to MLflow."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields |= {"matrices": {k: v.tolist() for k, v in self.matrices.items()},
                   "reliability": {k: v.tolist() for k, v in dataclasses.asdict(self.reliability).items()}}
        return json.dumps(fields)

    @classmethod
    def from_json(cls, text: str) -> EvalResult:
        fields = json.loads(text)
        fields |= {"languages": tuple(fields["languages"]),
                   "matrices": {k: np.array(v, dtype=np.float64) for k, v in fields["matrices"].items()},
                   "reliability": M.ReliabilityTable(**{k: np.array(v) for k, v in fields["reliability"].items()})}
        return cls(**fields)


def evaluation_key(model_hash: str, eval_set: EvalSet, config: EvalConfig, temperature: float) -> str:
    """The idempotence key of one evaluation: same model files + same data + same ECE settings = same key."""
    parts = [model_hash, eval_set.digest, f"{temperature:.6g}", str(config.ece_bins)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def full_scores(queries: np.ndarray, candidates: np.ndarray, use_gpu: bool = False) -> np.ndarray:
    """Every query's exact inner product with every candidate, (Q, C) float32, from a FAISS IndexFlatIP.

    AP runs over the full ranking, so no top-k will do. On CPU a range search with radius -inf returns
    every candidate unsorted: the flat index's BLAS product without k-selection, about 3x faster than
    search(k=C) plus a scatter (279 x 3222 x 384: 0.16 s vs 0.49 s, one thread; 800 x 60k: 5.4 s vs 24 s).
    GPU flat indexes have no range search and cap k at 2048: see `_sharded_search`.
    """
    if use_gpu and faiss.get_num_gpus() > 0:
        return _sharded_search(queries, candidates, faiss.index_cpu_to_all_gpus)
    n = candidates.shape[0]
    lims, dist, ids = _flat_index(candidates).range_search(queries, -np.inf)
    assert (np.diff(lims) == n).all(), "a range search with radius -inf must return every candidate"
    out = np.empty((queries.shape[0], n), dtype=np.float32)
    np.put_along_axis(out, ids.reshape(-1, n), dist.reshape(-1, n), axis=1)
    return out


def _flat_index(vectors: np.ndarray) -> faiss.IndexFlatIP:
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def _sharded_search(queries: np.ndarray, candidates: np.ndarray, place) -> np.ndarray:
    """Exact full scores with k-limited indexes: shards of <= GPU_MAX_K candidates, each searched with
    k = its size and scattered back into the shard's columns. `place` moves an index to its device."""
    out = np.empty((queries.shape[0], candidates.shape[0]), dtype=np.float32)
    for start in range(0, candidates.shape[0], GPU_MAX_K):
        shard = candidates[start:start + GPU_MAX_K]
        dist, ids = place(_flat_index(shard)).search(np.ascontiguousarray(queries), shard.shape[0])
        np.put_along_axis(out[:, start:start + shard.shape[0]], ids, dist, axis=1)
    return out


def _setting_metrics(scores: np.ndarray, relevant: np.ndarray, temperature: float,
                     ece_bins: int) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    summary = M.summarize(scores, relevant, temperature)
    confidence, correct = M.softmax_confidence(scores, relevant, temperature)
    summary["ece"], _ = M.expected_calibration_error(confidence, correct, ece_bins)  # eval.ece_bins, not 15
    return summary, confidence, correct


def score_query_language(queries: np.ndarray, positives: list[dict[str, tuple[int, ...]]],
                         candidates: dict[str, np.ndarray], temperature: float, ece_bins: int,
                         use_gpu: bool = False) -> dict:
    """Metrics of one query language against each candidate language and against all of them pooled.

    `candidates` holds every language for a parallel set, only the query language otherwise. One FAISS call scores
    the pooled candidates; pair (query_lang, b) is the column block of b, restricted to the queries with a
    relevant candidate in b (for MLQA-R: the question ids present in both languages).
    Returns {"pairs": {b: metrics}, "widest": metrics of the pooled setting (or the mono one when only one
    candidate language is given) or None, "confidence": (Q,), "correct": (Q,)}.
    """
    langs = list(candidates)
    sizes = [candidates[b].shape[0] for b in langs]
    offsets = dict(zip(langs, np.cumsum([0, *sizes[:-1]]).tolist()))
    out = {"pairs": {}, "widest": None, "confidence": np.empty(0), "correct": np.empty(0, dtype=bool)}
    if queries.shape[0] == 0:
        return out
    scores = full_scores(queries, np.concatenate([candidates[b] for b in langs]), use_gpu)  # (Q, sum C_b)
    relevant = np.zeros(scores.shape, dtype=bool)
    for i, by_lang in enumerate(positives):
        for b, idx in by_lang.items():
            if b in offsets:
                relevant[i, offsets[b] + np.asarray(idx, dtype=np.int64)] = True
    for b, size in zip(langs, sizes):
        block = slice(offsets[b], offsets[b] + size)
        rows = relevant[:, block].any(axis=1)
        if rows.any():
            out["pairs"][b], conf, correct = _setting_metrics(scores[rows, block], relevant[rows, block],
                                                              temperature, ece_bins)
            if len(langs) == 1:
                out["widest"], out["confidence"], out["correct"] = out["pairs"][b], conf, correct
    if len(langs) > 1:
        rows = relevant.any(axis=1)
        out["widest"], out["confidence"], out["correct"] = _setting_metrics(scores[rows], relevant[rows],
                                                                            temperature, ece_bins)
    return out


@functools.lru_cache(maxsize=1)
def _cached_encoder(model_dir: str, stamp: str):
    """One encoder per worker process; `stamp` is part of the key only, so a changed folder reloads."""
    from hybrid.model import load_encoder

    return load_encoder(model_dir)


@ray.remote
def _encode_task(model: str, texts: list[str], side: str, batch_size: int, threads: int) -> np.ndarray:
    """Encode on whichever node runs the task: the model's files are copied to this node first when
    they live in storage (`local_model_dir`), never read from the driver's disk."""
    import torch

    torch.set_num_threads(threads)
    folder = str(local_model_dir(model))
    return _cached_encoder(folder, storage.stamp(folder)).encode(texts, side, batch_size=batch_size, progress=False)


@ray.remote
def _hash_task(model: str) -> str:
    """The model's content hash, computed on the node that holds (a copy of) its files."""
    return content_hash(str(local_model_dir(model)))


@ray.remote
def _score_task(queries: np.ndarray, positives: list[dict[str, tuple[int, ...]]], cand_langs: list[str],
                temperature: float, ece_bins: int, use_gpu: bool, threads: int, *candidates: np.ndarray) -> dict:
    faiss.omp_set_num_threads(threads)
    return score_query_language(queries, positives, dict(zip(cand_langs, candidates)), temperature, ece_bins,
                                use_gpu)


# Outside any placement group: called from a Tune trial (whose group captures child tasks and is full),
# evaluation tasks would otherwise wait forever for a CPU inside the trial's own bundle.
OUTSIDE_TRIAL = PlacementGroupSchedulingStrategy(placement_group=None)


def _submit(ref: CheckpointRef, eval_set: EvalSet, config: EvalConfig) -> tuple[dict, int]:
    """Submit one checkpoint's tasks; returns ({query language: scoring ObjectRef}, encode task count)."""
    encode_threads, score_threads = config.threads
    # Ray hides GPUs from tasks that do not ask for one, so a GPU index needs the request.
    score_gpus = 1 if config.use_gpu_index and ray.cluster_resources().get("GPU", 0) >= 1 else 0

    def encode(texts: list[str], side: str, lang: str) -> ray.ObjectRef:
        return _encode_task.options(num_cpus=config.encode_cpus, name=f"encode:{ref.label}:{lang}:{side}",
                                    scheduling_strategy=OUTSIDE_TRIAL).remote(
            ref.path, texts, side, config.batch_size, encode_threads)

    # [1] candidates first: every scoring task needs all of them, but only its own queries.
    cands = {lang: encode(eval_set.candidates[lang], "passage", lang) for lang in eval_set.languages}
    queries = {lang: encode(eval_set.queries[lang], "query", lang) for lang in eval_set.languages}
    scoring = {}
    for lang in eval_set.languages:
        cand_langs = list(eval_set.languages) if eval_set.parallel else [lang]
        # [2] ObjectRefs as top-level arguments: Ray resolves them to (zero-copy) arrays in the task.
        scoring[lang] = _score_task.options(num_cpus=config.score_cpus, num_gpus=score_gpus,
                                            name=f"score:{ref.label}:{lang}", scheduling_strategy=OUTSIDE_TRIAL).remote(
            queries[lang], eval_set.positives[lang], cand_langs, ref.temperature, config.ece_bins,
            config.use_gpu_index, score_threads, *[cands[b] for b in cand_langs])
    return scoring, len(cands) + len(queries)


def _nanmean(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else None


def _assemble(ref: CheckpointRef, model_hash: str, eval_set: EvalSet, scored: dict[str, dict], encode_tasks: int,
              wall_s: float, config: EvalConfig) -> EvalResult:
    langs = eval_set.languages
    pos = {lang: i for i, lang in enumerate(langs)}
    matrices = {m: np.full((len(langs), len(langs)), np.nan) for m in PAIR_METRICS}
    for a, out in scored.items():
        for b, values in out["pairs"].items():
            for m in PAIR_METRICS:
                matrices[m][pos[a], pos[b]] = values[m]
    diagonal = np.eye(len(langs), dtype=bool)
    summary: dict[str, float] = {}
    for setting, cells in (("mono", diagonal), ("cross", ~diagonal)):
        for m in PAIR_METRICS:
            value = _nanmean(matrices[m][cells])
            if value is not None:
                summary[f"{setting}/{m}"] = value
    widest = {a: out["widest"] for a, out in scored.items() if out["widest"] is not None}
    if eval_set.parallel and len(langs) > 1:
        summary |= {f"multi/{m}": float(np.mean([w[m] for w in widest.values()])) for m in POOLED_METRICS}
    per_language = {a: {m: w[m] for m in ("map", "rank_distance", "ece")} for a, w in widest.items()}
    _, reliability = M.expected_calibration_error(np.concatenate([o["confidence"] for o in scored.values()]),
                                                  np.concatenate([o["correct"] for o in scored.values()]),
                                                  config.ece_bins)
    return EvalResult(ref.label or ref.path, ref.step, evaluation_key(model_hash, eval_set, config, ref.temperature),
                      eval_set.name, eval_set.split, langs, matrices, summary, per_language, reliability,
                      encode_tasks, wall_s, ref.model or ref.path, ref.temperature, ref.path, model_hash,
                      eval_set.digest)


def evaluate_checkpoints(checkpoints: list[CheckpointRef], corpus: ParallelCorpus | EvalSet, config: EvalConfig,
                         cache: str | None = None) -> list[EvalResult]:
    """Evaluate every checkpoint on every language pair, concurrently; results in input order.

    `config.languages` and `config.max_questions` are applied to `corpus` here. Uses the current Ray
    (`ray.init` first; Ray starts a local one otherwise). `wall_s` of a result runs from the first
    submission to its checkpoint's last scoring task, so concurrent checkpoints share the machine.
    `cache` (a folder, local or s3://): results are kept there by evaluation key (model files + data +
    settings), and a checkpoint whose key is there is not evaluated again (`cached` True, `wall_s` 0).
    """
    eval_set = corpus if isinstance(corpus, EvalSet) else EvalSet.from_corpus(corpus)
    eval_set = eval_set.restrict(config.languages, config.max_questions)
    if not any(eval_set.queries.values()):
        raise ValueError(f"{eval_set.name}/{eval_set.split}: no query with a relevant candidate in {eval_set.languages}.")
    start = time.perf_counter()
    digests = [_hash_task.options(num_cpus=config.encode_cpus, name=f"hash:{ref.label}",
                                  scheduling_strategy=OUTSIDE_TRIAL).remote(ref.path) for ref in checkpoints]
    found = {}  # without a cache, hashing overlaps the encoding it does not feed
    if cache:
        found = {i: hit for i, (ref, model_hash) in enumerate(zip(checkpoints, ray.get(digests)))
                 if (hit := _cached(cache, evaluation_key(model_hash, eval_set, config, ref.temperature)))}
    submitted = {i: _submit(ref, eval_set, config) for i, ref in enumerate(checkpoints) if i not in found}
    owner = {r: i for i, (scoring, _) in submitted.items() for r in scoring.values()}
    remaining = {i: len(scoring) for i, (scoring, _) in submitted.items()}
    finished = dict.fromkeys(submitted, 0.0)
    pending = list(owner)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        i = owner[done[0]]
        remaining[i] -= 1
        if not remaining[i]:
            finished[i] = time.perf_counter() - start
    results = []
    for i, (ref, model_hash) in enumerate(zip(checkpoints, ray.get(digests))):
        if i in found:  # the same files on the same data: only the labels are this checkpoint's
            results.append(replace(found[i], checkpoint=ref.label or ref.path, step=ref.step, path=ref.path,
                                   model=ref.model or ref.path, encode_tasks=0, wall_s=0.0, cached=True))
            continue
        scoring, n_encode = submitted[i]
        scored = dict(zip(scoring, ray.get(list(scoring.values()))))
        results.append(_assemble(ref, model_hash, eval_set, scored, n_encode, finished[i], config))
        if cache:
            storage.write_text(_cache_file(cache, results[-1].content_hash), results[-1].to_json())
    return results


CACHE_FORMAT = 1  # raise when a metric's definition changes: older cached results are then not reused


def _cache_file(cache: str, key: str) -> str:
    return storage.join(cache, f"v{CACHE_FORMAT}-{key}.json")


def _cached(cache: str, key: str) -> EvalResult | None:
    """The cached result of evaluation `key`, or None (absent, or cut short by a crash while written)."""
    location = _cache_file(cache, key)
    if not storage.exists(location):
        return None
    try:
        return EvalResult.from_json(storage.read_text(location))
    except (ValueError, TypeError, KeyError):
        return None
