"""From a `DataConfig` to the texts each stage sees: training pairs, validation pairs, held-out corpus.

One place decides what is train and what is held out, so training and zero-shot evaluation can never
share an article: train = the training articles in the training languages (or the user's dataset, in those languages);
validation = held-out articles in the training languages; evaluation = held-out articles in all
evaluation languages (el and vi, by default, never seen in training).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections import Counter
from pathlib import Path

from hybrid.config import DataConfig
from hybrid.data import ParallelCorpus, TrainingPair, load_corpus, load_training_pairs, split_by_article

logger = logging.getLogger(__name__)


def split_corpus(data: DataConfig) -> tuple[ParallelCorpus, ParallelCorpus]:
    """(train, held-out) article split of the configured corpus, in all its languages."""
    corpus = load_corpus(data.dataset, data_dir=Path(data.data_dir) if data.data_dir else None)
    return split_by_article(corpus, data.heldout_fraction, data.split_seed)


def training_pairs(data: DataConfig) -> tuple[list[TrainingPair], list[TrainingPair]]:
    """(training pairs, held-out validation pairs in the training languages)."""
    train, heldout = split_corpus(data)
    val = heldout.select_languages(data.train_languages).training_pairs(data.hard_negatives)
    if data.train_data:
        return select_languages(load_training_pairs(data.train_data), data.train_languages, data.train_data), val
    return train.select_languages(data.train_languages).training_pairs(data.hard_negatives), val


def select_languages(pairs: list[TrainingPair], languages: tuple[str, ...], source: str) -> list[TrainingPair]:
    """The user's pairs in `data.train_languages` only (so `num_train_languages` acts, and a language kept
    for zero-shot evaluation is never trained on); the rows left out are counted in the log."""
    kept = [p for p in pairs if p.lang in languages]
    dropped = Counter(p.lang for p in pairs if p.lang not in languages)
    if dropped:
        logger.warning(
            "%s: %d rows in languages outside data.train_languages left out: %s",
            source,
            sum(dropped.values()),
            dict(sorted(dropped.items())),
        )
    if not kept:
        raise ValueError(
            f"{source}: no row in data.train_languages {list(languages)} (the data has "
            f"{sorted({p.lang for p in pairs})}); set data.train_languages to languages of the data."
        )
    return kept


@functools.lru_cache(maxsize=16)
def training_digest(data: DataConfig) -> str:
    """sha256 of the training pairs `data` yields (ids, languages, texts): what a run trained on, as a digest
    (kept per config: a sweep's driver asks once per trial, mostly for the same data)."""
    digest = hashlib.sha256()
    for pair in training_pairs(data)[0]:
        digest.update(json.dumps([pair.id, pair.lang, pair.query, pair.positive, pair.negative]).encode())
    return digest.hexdigest()


def heldout_corpus(data: DataConfig) -> ParallelCorpus:
    """The zero-shot evaluation corpus: held-out articles, all evaluation languages."""
    return split_corpus(data)[1].select_languages(data.eval_languages)
