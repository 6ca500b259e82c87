"""Data: LAReQA-format corpora (XQuAD-R packaged, MLQA-R on demand), splits, and user training data."""

from hybrid.data.corpus import Candidate, ParallelCorpus, Question, TrainingPair, split_by_article
from hybrid.data.lareqa import DataFormatError, load_lareqa
from hybrid.data.sources import load_corpus
from hybrid.data.user import load_training_pairs
from hybrid.languages import XQUAD_R_LANGUAGES, check_language_code

__all__ = [
    "Candidate",
    "DataFormatError",
    "ParallelCorpus",
    "Question",
    "TrainingPair",
    "XQUAD_R_LANGUAGES",
    "check_language_code",
    "load_corpus",
    "load_lareqa",
    "load_training_pairs",
    "split_by_article",
]
