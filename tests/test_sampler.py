import math

import numpy as np
import pytest

from hybrid.sampler import CROSS, MONO, HybridBatchSampler, language_probabilities, scheduled_alpha

from support import make_pairs

COUNTS = {"ar": 400, "de": 100, "en": 25}


def binomial_interval_99(n: int, p: float) -> tuple[float, float]:
    half = 2.5758 * math.sqrt(p * (1 - p) / n)
    return p - half - 1e-12, p + half + 1e-12


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_mono_fraction_matches_alpha(alpha):
    sampler = HybridBatchSampler(make_pairs(COUNTS), batch_size=4, mono_ratio=alpha, seed=7)
    n = 10_000
    mono = sum(sampler.batch(t).kind == MONO for t in range(n))
    lo, hi = binomial_interval_99(n, alpha)
    assert lo <= mono / n <= hi, (alpha, mono / n)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_a_schedule_moves_the_x_x_batches_in_time_and_keeps_their_share(alpha):
    """mono_first: X-X early, X-Y late; cross_first the reverse; the share over training stays alpha, and
    alpha = 0.5 runs from 1 to 0. The references (alpha 0 and 1) are the same batches under every schedule."""
    steps = 2000
    d = min(alpha, 1 - alpha)
    assert scheduled_alpha(alpha, "mono_first", 0, steps) == pytest.approx(alpha + d)
    assert scheduled_alpha(alpha, "mono_first", steps - 1, steps) == pytest.approx(alpha - d)
    assert scheduled_alpha(alpha, "cross_first", 0, steps) == pytest.approx(alpha - d)
    assert scheduled_alpha(alpha, "constant", 123, steps) == alpha
    kinds = {}
    for schedule in ("constant", "mono_first", "cross_first"):
        sampler = HybridBatchSampler(
            make_pairs(COUNTS), batch_size=4, mono_ratio=alpha, seed=7, schedule=schedule, steps=steps
        )
        kinds[schedule] = [sampler.batch(t).kind == MONO for t in range(steps)]
        lo, hi = binomial_interval_99(steps, alpha)
        assert lo <= np.mean(kinds[schedule]) <= hi, (schedule, np.mean(kinds[schedule]))
    if d == 0:
        assert kinds["mono_first"] == kinds["constant"] == kinds["cross_first"]
        return
    first, last = slice(0, steps // 4), slice(-steps // 4, None)
    assert np.mean(kinds["mono_first"][first]) > alpha + d / 2 > np.mean(kinds["mono_first"][last]) + d
    assert np.mean(kinds["cross_first"][first]) < alpha - d / 2 < np.mean(kinds["cross_first"][last]) - d


@pytest.mark.parametrize("temperature", [1.0, 2.0, math.inf])
def test_language_frequencies_follow_n_to_the_one_over_t(temperature):
    sampler = HybridBatchSampler(make_pairs(COUNTS), batch_size=4, mono_ratio=1.0, lang_temperature=temperature, seed=3)
    n = 6000
    seen = [sampler.batch(t).language for t in range(n)]
    weights = {lang: c ** (0 if math.isinf(temperature) else 1 / temperature) for lang, c in COUNTS.items()}
    total = sum(weights.values())
    for lang, w in weights.items():
        lo, hi = binomial_interval_99(n, w / total)
        assert lo <= seen.count(lang) / n <= hi, (temperature, lang, seen.count(lang) / n, w / total)


def test_language_probabilities_formula():
    p = language_probabilities({"a": 9, "b": 1}, 2.0)
    assert p["a"] == pytest.approx(3 / 4) and p["b"] == pytest.approx(1 / 4)
    assert language_probabilities({"a": 9, "b": 1}, math.inf) == {"a": 0.5, "b": 0.5}


def test_batches_are_pure_x_x_or_x_y_without_duplicate_ids():
    sampler = HybridBatchSampler(make_pairs(COUNTS), batch_size=8, mono_ratio=0.5, seed=1)
    for t in range(2000):
        b = sampler.batch(t)
        assert len(set(b.ids)) == len(b.ids) == 8
        if b.kind == MONO:
            assert set(b.query_langs) == set(b.passage_langs) == {b.language}
        else:
            assert b.kind == CROSS and b.language is None
            assert all(q != p for q, p in zip(b.query_langs, b.passage_langs))
        assert all(q.startswith(lang) for q, lang in zip(b.queries, b.query_langs))
        assert all(p.startswith(lang) for p, lang in zip(b.positives, b.passage_langs))
        # the positive is the answer to the same question id
        assert all(p.split()[-1] == q.split()[-1] for q, p in zip(b.queries, b.positives))


def test_ranks_agree_on_every_decision_and_never_share_an_id():
    pairs = make_pairs(COUNTS)
    ranks = [HybridBatchSampler(pairs, 4, 0.5, seed=5, rank=r, world_size=2) for r in range(2)]
    for t in range(2000):
        b0, b1 = ranks[0].batch(t), ranks[1].batch(t)
        assert (b0.kind, b0.language) == (b1.kind, b1.language)
        assert not set(b0.ids) & set(b1.ids)


def test_resume_reproduces_the_sequence():
    pairs = make_pairs(COUNTS)
    run = HybridBatchSampler(pairs, 4, 0.3, seed=11)
    it = iter(run)
    for _ in range(37):
        next(it)
    state = run.state_dict()
    expected = [next(it) for _ in range(20)]
    resumed = HybridBatchSampler(pairs, 4, 0.3, seed=11)
    resumed.load_state_dict(state)
    assert state == {"seed": 11, "step": 37}
    assert [next(iter(resumed)) for _ in range(1)][0] == expected[0]
    it2 = iter(resumed)
    assert [next(it2) for _ in range(19)] == expected[1:]
    with pytest.raises(ValueError, match="seed"):
        HybridBatchSampler(pairs, 4, 0.3, seed=12).load_state_dict(state)


def test_hard_negatives_are_aligned_with_items():
    b = HybridBatchSampler(make_pairs(COUNTS), 8, 0.0, seed=2).batch(0)
    for p, n in zip(b.positives, b.negatives):
        assert n is None or (n.split()[0] == p.split()[0] and n.split()[-1] == p.split()[-1])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mono_ratio=1.2), "mono_ratio"),
        (dict(mono_ratio=-0.1), "mono_ratio"),
        (dict(lang_temperature=0.0), "lang_temperature"),
        (dict(batch_size=30, mono_ratio=1.0), "exceeds the distinct questions"),
        (dict(batch_size=200, mono_ratio=0.0), "two or more languages"),
        (dict(schedule="mono_last"), "alpha schedule 'mono_last' is not one of constant, mono_first, cross_first"),
    ],
)
def test_bad_arguments_fail_clearly(kwargs, message):
    args = dict(batch_size=4, mono_ratio=0.5) | kwargs
    with pytest.raises(ValueError, match=message):
        HybridBatchSampler(make_pairs(COUNTS), **args)


def test_xquad_training_pairs_feed_the_sampler(xquad):
    pairs = xquad.select_languages(["en", "de", "zh"]).training_pairs(hard_negatives=True)
    b = HybridBatchSampler(pairs, 16, 0.5, seed=0).batch(1)
    assert len(b.queries) == 16 and np.mean([n is not None for n in b.negatives]) > 0.5
