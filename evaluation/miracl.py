"""MIRACL dev (18 languages, monolingual ad-hoc retrieval over Wikipedia) as an `EvalSet` the runner scores.

The full corpora hold tens of millions of passages (English alone ~33 M), far beyond a CPU evaluation, so
each language is scored against a tractable pool:
    pool(lang) = every passage judged for a dev query (positive and negative qrels)
               + a fixed seeded sample of `sample` other passages of that language's corpus.
The judged negatives are the hard ones (they were retrieved by the pooling systems), the sample stands
for the rest of the corpus. Figures are therefore pool figures: higher than full-corpus MIRACL numbers
and comparable only with the same `sample` and seed. A query's relevant set: its passages with
relevance >= 1; dev queries without one are dropped.
MIRACL is not parallel (each language has its own queries and corpus), so only same-language pairs are
scored: the runner's summary then holds `mono/*` only (no cross, no multi, no rank distance).

Sources: a local folder in MIRACL's own layout, one sub-folder per language, each holding
    topics*.tsv   query_id <TAB> query                 (prefers a file with "dev" in its name)
    qrels*.tsv    query_id Q0 docid relevance           (TREC qrels, whitespace separated)
    **/*.jsonl[.gz]  {"docid", "title", "text"} per line (the corpus; read once, streaming)
or, with no folder, the Hugging Face hub (miracl/miracl dev + miracl/miracl-corpus), which needs network.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Iterator
from pathlib import Path

from evaluation.eval_set import EvalSet

LANGUAGES = ("ar", "bn", "de", "en", "es", "fa", "fi", "fr", "hi", "id", "ja", "ko", "ru", "sw", "te", "th", "yo", "zh")
SEED = 0


def load_miracl(
    languages: tuple[str, ...] | None, data_dir: str | Path | None, sample: int, seed: int = SEED
) -> EvalSet:
    """The MIRACL dev pools of `languages` (None: every language in `data_dir`, or all 18 from the hub)."""
    if data_dir is None:
        return _from_hub(languages or LANGUAGES, sample, seed)
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"MIRACL folder {root} does not exist; it needs one sub-folder per language.")
    available = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name in LANGUAGES)
    unknown = sorted(set(languages or ()) - set(available))
    if unknown or not available:
        raise ValueError(
            f"{root}: no MIRACL language folder for {unknown or 'any language'}; available: "
            f"{', '.join(available) or 'none'} (MIRACL has {', '.join(LANGUAGES)})."
        )
    pools = [_local_language(root / lang, lang, sample, seed) for lang in (languages or available)]
    return _eval_set(pools)


def _one_file(folder: Path, pattern: str) -> Path:
    files = sorted(folder.rglob(pattern))
    dev = [f for f in files if "dev" in f.name]
    chosen = dev or files
    if len(chosen) != 1:
        raise FileNotFoundError(
            f"{folder}: expected one {pattern} file (the dev split), found {[f.name for f in chosen] or 'none'}."
        )
    return chosen[0]


def _read_topics(path: Path) -> dict[str, str]:
    topics = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            qid, sep, query = line.partition("\t")
            if not sep:
                raise ValueError(f"{path}:{n}: expected 'query_id<TAB>query', got {line[:80]!r}.")
            topics[qid] = query
    return topics


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if fields:
            if len(fields) != 4:
                raise ValueError(f"{path}:{n}: expected 'query_id Q0 docid relevance', got {line[:80]!r}.")
            qrels.setdefault(fields[0], {})[fields[2]] = int(fields[3])
    return qrels


def _corpus(folder: Path) -> Iterator[dict]:
    files = sorted([*folder.rglob("*.jsonl"), *folder.rglob("*.jsonl.gz")])
    if not files:
        raise FileNotFoundError(f"{folder}: no corpus *.jsonl / *.jsonl.gz files (docid, title, text per line).")
    for path in files:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8") as f:
            yield from (json.loads(line) for line in f if line.strip())


def _text(doc: dict) -> str:
    return f"{doc.get('title') or ''} {doc['text']}".strip()  # title + text, as E5 and BM25 baselines do


def _local_language(folder: Path, lang: str, sample: int, seed: int) -> tuple:
    topics = _read_topics(_one_file(folder, "topics*.tsv"))
    qrels = {qid: docs for qid, docs in _read_qrels(_one_file(folder, "qrels*.tsv")).items() if qid in topics}
    judged = {docid for docs in qrels.values() for docid in docs}
    passages: dict[str, str] = {}
    reservoir: list[tuple[str, str]] = []
    rng, seen = random.Random(f"{seed}:{lang}"), 0
    for doc in _corpus(folder):  # one pass: judged passages + a uniform reservoir sample of the rest
        if doc["docid"] in judged:
            passages[doc["docid"]] = _text(doc)
            continue
        seen += 1
        if len(reservoir) < sample:
            reservoir.append((doc["docid"], _text(doc)))
        elif (j := rng.randrange(seen)) < sample:
            reservoir[j] = (doc["docid"], _text(doc))
    missing = sorted(judged - set(passages))
    if missing:
        raise ValueError(
            f"{folder}: {len(missing)} judged passages are not in the corpus (e.g. {missing[:3]}); "
            "the corpus files do not match the qrels."
        )
    return lang, topics, qrels, passages | dict(reservoir)


def _from_hub(languages: tuple[str, ...], sample: int, seed: int) -> EvalSet:
    """miracl/miracl dev (queries with their judged passages) + a streamed, shuffle-buffer sample of
    miracl/miracl-corpus (approximately uniform: the hub corpus is too large to read whole)."""
    import datasets

    pools = []
    try:
        for lang in languages:
            dev = datasets.load_dataset("miracl/miracl", lang, split="dev")
            topics = {row["query_id"]: row["query"] for row in dev}
            qrels, passages = {}, {}
            for row in dev:
                for relevance, key in ((1, "positive_passages"), (0, "negative_passages")):
                    for doc in row[key]:
                        qrels.setdefault(row["query_id"], {})[doc["docid"]] = relevance
                        passages[doc["docid"]] = _text(doc)
            corpus = datasets.load_dataset("miracl/miracl-corpus", lang, split="train", streaming=True)
            judged, sampled = len(passages), corpus.shuffle(seed=seed, buffer_size=10_000)
            for doc in sampled:
                if len(passages) >= judged + sample:
                    break
                passages.setdefault(doc["docid"], _text(doc))
            pools.append((lang, topics, qrels, passages))
    except OSError as e:  # what the hub raises when unreachable, offline or missing: ConnectionError, HTTP errors
        raise RuntimeError(
            f"MIRACL needs the Hugging Face hub (miracl/miracl, miracl/miracl-corpus), which is "
            f"unreachable here ({type(e).__name__}: {e}). Offline, pass eval.data_dir / --data-dir: "
            "a folder with one sub-folder per language holding topics*.tsv, qrels*.tsv and the "
            "corpus *.jsonl[.gz] (MIRACL's own files)."
        ) from e
    return _eval_set(pools)


def _eval_set(pools: list[tuple]) -> EvalSet:
    """One language per pool; candidates ordered by docid (deterministic), queries in topic-file order."""
    query_ids, queries, candidates, positives = {}, {}, {}, {}
    for lang, topics, qrels, passages in pools:
        docids = sorted(passages)
        index = {docid: i for i, docid in enumerate(docids)}
        kept = [(qid, tuple(sorted(index[d] for d, rel in qrels.get(qid, {}).items() if rel >= 1))) for qid in topics]
        kept = [(qid, pos) for qid, pos in kept if pos]  # no positive judged: not scoreable
        query_ids[lang] = [qid for qid, _ in kept]
        queries[lang] = [topics[qid] for qid, _ in kept]
        candidates[lang] = [passages[d] for d in docids]
        positives[lang] = [{lang: pos} for _, pos in kept]
    return EvalSet("miracl", "dev", query_ids, queries, candidates, positives, parallel=False)
