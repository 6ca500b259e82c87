"""Which data an evaluation reads: the training corpus's held-out articles, a zero-shot corpus, or MIRACL."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from evaluation.config import EvalConfig
from evaluation.eval_set import EvalSet
from evaluation.miracl import load_miracl
from hybrid.config import DataConfig
from hybrid.data import load_corpus
from hybrid.splits import heldout_corpus


def load_eval_set(config: EvalConfig, data: DataConfig) -> EvalSet:
    """The data `config.dataset` names: held-out articles when it is the training corpus (`data.dataset`),
    else the whole corpus (never trained on: MLQA-R is the zero-shot set), or the MIRACL pool.
    Languages: `config.languages`, else `data.eval_languages` (those the corpus has)."""
    if config.dataset == "miracl":
        return load_miracl(config.languages, config.data_dir, config.miracl_sample)
    data_dir = Path(config.data_dir) if config.data_dir else None
    if config.dataset == data.dataset:
        corpus = heldout_corpus(
            replace(
                data, eval_languages=config.languages or data.eval_languages, data_dir=config.data_dir or data.data_dir
            )
        )
    else:
        corpus = load_corpus(config.dataset, config.languages, data_dir)
        corpus = corpus.select_languages(
            config.languages or [lang for lang in data.eval_languages if lang in corpus.questions]
        )
    return EvalSet.from_corpus(corpus)
