"""Hybrid batch sampling (arXiv 2408.10536): each step is monolingual (X-X) or cross-lingual (X-Y).

At step t, with probability alpha (`mono_ratio`) the whole *global* batch is X-X: one language l, drawn
with p(l) proportional to n_l^(1/T), for every query and passage. Otherwise it is X-Y: every pair gets a
query language and a different passage language (query language drawn by p, passage language by p
renormalised over the question's other languages). T = inf is uniform (the paper), T = 1 follows data size.

Global decisions: the batch of step t is drawn for all `world_size` ranks at once from an RNG seeded by
(seed, t), and rank r takes its slice. So every rank sees the same batch type and language, gathered
negatives stay monolingual in an X-X step, and no question id occurs twice across ranks (its
translations would be false negatives). The state is just (seed, step): resuming is exact.

An alpha schedule decides *when* the X-X batches come, not how many: `constant` (the paper) draws each
step at alpha; `mono_first` moves the step's probability linearly from alpha + d down to alpha - d over
training, `cross_first` from alpha - d up, with d = min(alpha, 1 - alpha). So the expected share of X-X
batches stays alpha, alpha = 0.5 goes from 1 to 0 (or 0 to 1), and the references (alpha 0 and 1) are the
same under every schedule.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from hybrid.data.corpus import TrainingPair

MONO, CROSS = "mono", "cross"
SCHEDULES = ("constant", "mono_first", "cross_first")


def scheduled_alpha(alpha: float, schedule: str, step: int, steps: int) -> float:
    """The probability that `step` (0-based, of `steps`) is X-X under `schedule` (module docstring)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"alpha schedule {schedule!r} is not one of {', '.join(SCHEDULES)}.")
    if schedule == "constant" or steps < 2:
        return alpha
    span = min(alpha, 1.0 - alpha) * (1.0 - 2.0 * min(step, steps - 1) / (steps - 1))  # +d ... -d
    return alpha + span if schedule == "mono_first" else alpha - span


@dataclass(frozen=True)
class HybridBatch:
    """One rank's share of a step's batch: `queries[i]` matches `positives[i]`."""

    step: int
    kind: str  # MONO or CROSS, identical on every rank
    language: str | None  # the X-X language, None for X-Y
    ids: list[str]
    query_langs: list[str]
    passage_langs: list[str]
    queries: list[str]
    positives: list[str]
    negatives: list[str | None]  # hard negative (passage language) per item, None where there is none


def language_probabilities(counts: dict[str, int], temperature: float) -> dict[str, float]:
    """p(l) proportional to n_l^(1/T); T = inf gives the uniform distribution."""
    langs = sorted(counts)
    exponent = 0.0 if math.isinf(temperature) else 1.0 / temperature
    weights = np.array([counts[lang] ** exponent for lang in langs], dtype=np.float64)
    return dict(zip(langs, weights / weights.sum()))


class HybridBatchSampler:
    """Draws hybrid batches of (query, positive[, negative]) pairs, deterministic from (seed, step)."""

    def __init__(
        self,
        pairs: Sequence[TrainingPair],
        batch_size: int,
        mono_ratio: float,
        lang_temperature: float = math.inf,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        schedule: str = "constant",
        steps: int = 1,
    ):
        if not 0.0 <= mono_ratio <= 1.0:
            raise ValueError(f"mono_ratio (alpha) must be in [0, 1], got {mono_ratio}.")
        scheduled_alpha(mono_ratio, schedule, 0, steps)  # names an unknown schedule
        if lang_temperature <= 0:
            raise ValueError(f"lang_temperature must be > 0 (use inf for uniform), got {lang_temperature}.")
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size=}, {rank=}, {world_size=}."
            )
        self.batch_size, self.mono_ratio, self.lang_temperature = batch_size, mono_ratio, lang_temperature
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.schedule, self.steps = schedule, steps
        self.step = 0

        self._by_id: dict[str, dict[str, TrainingPair]] = {}
        for p in pairs:
            self._by_id.setdefault(p.id, {})[p.lang] = p
        self._ids = sorted(self._by_id)
        self.languages = sorted({lang for by_lang in self._by_id.values() for lang in by_lang})
        counts = {lang: sum(lang in self._by_id[i] for i in self._ids) for lang in self.languages}
        self.probs = language_probabilities(counts, lang_temperature)
        # Per language, the ids that have it (X-X candidates); ids in >= 2 languages (X-Y candidates).
        self._ids_in = {lang: [i for i in self._ids if lang in self._by_id[i]] for lang in self.languages}
        self._multi_ids = [i for i in self._ids if len(self._by_id[i]) >= 2]
        self._check_enough_ids()

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def _check_enough_ids(self) -> None:
        need = self.global_batch_size
        if self.mono_ratio > 0:
            short = {lang: len(ids) for lang, ids in self._ids_in.items() if len(ids) < need}
            if short:
                raise ValueError(
                    f"global batch {need} (batch_size x world_size) exceeds the distinct questions "
                    f"of language(s) {short}; lower batch_size or drop those languages."
                )
        if self.mono_ratio < 1 and len(self._multi_ids) < need:
            raise ValueError(
                f"global batch {need} exceeds the {len(self._multi_ids)} questions available in "
                "two or more languages (needed for X-Y batches); lower batch_size."
            )

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["seed"] != self.seed:
            raise ValueError(
                f"sampler state has seed {state['seed']}, this sampler {self.seed}: "
                "resume with the configuration the checkpoint was trained with."
            )
        self.step = int(state["step"])

    def batch(self, step: int) -> HybridBatch:
        """This rank's slice of the global batch of `step` (a pure function of seed and step)."""
        rng = np.random.default_rng([self.seed, step])
        n = self.global_batch_size
        langs = list(self.probs)
        p = np.array([self.probs[lang] for lang in langs])
        if rng.random() < scheduled_alpha(self.mono_ratio, self.schedule, step, self.steps):
            kind = MONO
            language = langs[rng.choice(len(langs), p=p)]
            pool = self._ids_in[language]
            ids = [pool[j] for j in rng.choice(len(pool), size=n, replace=False)]
            q_langs = p_langs = [language] * n
        else:
            kind, language = CROSS, None
            ids = [self._multi_ids[j] for j in rng.choice(len(self._multi_ids), size=n, replace=False)]
            q_langs, p_langs = zip(*(self._cross_pair(rng, i) for i in ids))
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        ids, q_langs, p_langs = ids[lo:hi], list(q_langs[lo:hi]), list(p_langs[lo:hi])
        q_pairs = [self._by_id[i][lang] for i, lang in zip(ids, q_langs)]
        p_pairs = [self._by_id[i][lang] for i, lang in zip(ids, p_langs)]
        return HybridBatch(
            step=step,
            kind=kind,
            language=language,
            ids=ids,
            query_langs=q_langs,
            passage_langs=p_langs,
            queries=[q.query for q in q_pairs],
            positives=[pp.positive for pp in p_pairs],
            negatives=[pp.negative for pp in p_pairs],
        )

    def _cross_pair(self, rng: np.random.Generator, qid: str) -> tuple[str, str]:
        """(query language, passage language), different, both available for `qid`, weighted by p."""
        available = sorted(self._by_id[qid])
        w = np.array([self.probs[lang] for lang in available])
        qi = rng.choice(len(available), p=w / w.sum())
        w[qi] = 0.0
        pi = rng.choice(len(available), p=w / w.sum())
        return available[qi], available[pi]

    def __iter__(self) -> Iterator[HybridBatch]:
        """Endless batches from the current step on; `self.step` always names the next batch to draw."""
        while True:
            batch = self.batch(self.step)
            self.step += 1
            yield batch
