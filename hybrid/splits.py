"""From a `DataConfig` to the texts each stage sees: training pairs, validation pairs, held-out corpus.

One place decides what is train and what is held out, so training and zero-shot evaluation can never
share an article: train = the training articles in the training languages (or the user's dataset);
validation = held-out articles in the training languages; evaluation = held-out articles in all
evaluation languages (el and vi, by default, never seen in training).
"""

from __future__ import annotations

from pathlib import Path

from hybrid.config import DataConfig
from hybrid.data import ParallelCorpus, TrainingPair, load_corpus, load_training_pairs, split_by_article


def split_corpus(data: DataConfig) -> tuple[ParallelCorpus, ParallelCorpus]:
    """(train, held-out) article split of the configured corpus, in all its languages."""
    corpus = load_corpus(data.dataset, data_dir=Path(data.data_dir) if data.data_dir else None)
    return split_by_article(corpus, data.heldout_fraction, data.split_seed)


def training_pairs(data: DataConfig) -> tuple[list[TrainingPair], list[TrainingPair]]:
    """(training pairs, held-out validation pairs in the training languages)."""
    train, heldout = split_corpus(data)
    val = heldout.select_languages(data.train_languages).training_pairs(data.hard_negatives)
    if data.train_data:
        return load_training_pairs(data.train_data), val
    return train.select_languages(data.train_languages).training_pairs(data.hard_negatives), val


def heldout_corpus(data: DataConfig) -> ParallelCorpus:
    """The zero-shot evaluation corpus: held-out articles, all evaluation languages."""
    return split_corpus(data)[1].select_languages(data.eval_languages)
