"""The parallel QA corpus: questions and candidate sentences per language, relevance by shared id.

LAReQA turns a SQuAD-style file per language into a retrieval task: every sentence of every paragraph
is a candidate, and a question's relevant set is the sentence holding its answer in *every* language
that has the question's id. `ParallelCorpus` is that task, independent of where the files came from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Question:
    id: str  # shared across languages: the same id is the same question, translated
    lang: str
    text: str
    article: str


@dataclass(frozen=True)
class Candidate:
    lang: str
    sentence: str
    paragraph: str
    article: str


@dataclass(frozen=True)
class TrainingPair:
    """One (query, positive[, hard negative]) in one language, the unit the sampler draws."""

    id: str
    lang: str
    query: str
    positive: str
    negative: str | None = None


@dataclass
class ParallelCorpus:
    """Questions and candidates per language; `answers[id][lang]` is the index of the relevant candidate."""

    name: str
    questions: dict[str, list[Question]]
    candidates: dict[str, list[Candidate]]
    answers: dict[str, dict[str, int]]

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(sorted(self.questions))

    @property
    def articles(self) -> tuple[str, ...]:
        return tuple(sorted({q.article for qs in self.questions.values() for q in qs}))

    def relevant(self, question_id: str, langs: tuple[str, ...] | None = None) -> list[tuple[str, int]]:
        """(language, candidate index) of every relevant candidate, optionally restricted to `langs`."""
        return [
            (lang, idx) for lang, idx in sorted(self.answers[question_id].items()) if langs is None or lang in langs
        ]

    def select_languages(self, langs: tuple[str, ...] | list[str]) -> ParallelCorpus:
        unknown = sorted(set(langs) - set(self.questions))
        if unknown:
            raise ValueError(
                f"{self.name}: unknown language(s) {unknown}; available: "
                f"{', '.join(self.languages)}. Fix the `languages` list in your config."
            )
        keep = set(langs)
        return ParallelCorpus(
            name=self.name,
            questions={lang: self.questions[lang] for lang in langs},
            candidates={lang: self.candidates[lang] for lang in langs},
            answers={
                qid: {lang: i for lang, i in by_lang.items() if lang in keep}
                for qid, by_lang in self.answers.items()
                if any(lang in keep for lang in by_lang)
            },
        )

    def select_articles(self, articles: set[str], name: str) -> ParallelCorpus:
        """The sub-corpus whose questions *and* candidates come from `articles` (indices renumbered)."""
        questions = {lang: [q for q in qs if q.article in articles] for lang, qs in self.questions.items()}
        candidates: dict[str, list[Candidate]] = {}
        renumber: dict[str, dict[int, int]] = {}
        for lang, cands in self.candidates.items():
            kept = [(i, c) for i, c in enumerate(cands) if c.article in articles]
            candidates[lang] = [c for _, c in kept]
            renumber[lang] = {old: new for new, (old, _) in enumerate(kept)}
        ids = {q.id for qs in questions.values() for q in qs}
        answers = {qid: {lang: renumber[lang][i] for lang, i in self.answers[qid].items()} for qid in ids}
        return ParallelCorpus(name=name, questions=questions, candidates=candidates, answers=answers)

    def training_pairs(self, hard_negatives: bool = False) -> list[TrainingPair]:
        """One pair per (question, language): the question and its answer sentence.

        With `hard_negatives`, the negative is a neighbouring sentence of the same paragraph (topical but
        not the answer), the natural hard negative of this data; single-sentence paragraphs get none.
        """
        pairs = []
        for lang in self.languages:
            cands = self.candidates[lang]
            for q in self.questions[lang]:
                pos = self.answers[q.id][lang]
                negative = None
                if hard_negatives:
                    for j in (pos + 1, pos - 1):
                        if 0 <= j < len(cands) and cands[j].paragraph == cands[pos].paragraph:
                            negative = cands[j].sentence
                            break
                pairs.append(TrainingPair(q.id, lang, q.text, cands[pos].sentence, negative))
        return pairs


def split_by_article(
    corpus: ParallelCorpus, heldout_fraction: float, seed: int
) -> tuple[ParallelCorpus, ParallelCorpus]:
    """Deterministic article-level split into (train, held-out): no text is shared between the two.

    Articles are ordered by a hash of (seed, title), so the split depends only on the seed and the
    titles, not on file order or Python's hash randomisation.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}.")
    articles = sorted(corpus.articles, key=lambda a: hashlib.sha256(f"{seed}:{a}".encode()).hexdigest())
    n_heldout = max(1, round(len(articles) * heldout_fraction))
    heldout = set(articles[:n_heldout])
    train = set(articles[n_heldout:])
    return (
        corpus.select_articles(train, f"{corpus.name}/train"),
        corpus.select_articles(heldout, f"{corpus.name}/heldout"),
    )
