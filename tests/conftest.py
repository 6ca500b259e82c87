"""Shared fixtures: the packaged XQuAD-R corpus (loaded once) and small synthetic training pairs."""

import pytest

from hybrid.data import TrainingPair, load_corpus


@pytest.fixture(scope="session")
def xquad():
    return load_corpus("xquad-r")


def make_pairs(counts: dict[str, int], n_ids: int | None = None) -> list[TrainingPair]:
    """Pairs where language `l` covers the first `counts[l]` ids (so ids overlap across languages)."""
    pairs = []
    for lang, n in counts.items():
        for i in range(n):
            pairs.append(TrainingPair(f"q{i}", lang, f"{lang} question {i}", f"{lang} answer {i}",
                                      f"{lang} negative {i}" if i % 2 else None))
    return pairs
