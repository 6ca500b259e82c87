"""Tests for evaluation.metrics.

Three kinds: hand-computed cases (worked out in the comments), a brute-force reference for the
tie rule (plain sort, one query at a time) that the vectorised ranks must equal, and agreement
with independent implementations (scikit-learn, ranx) on random untied data.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, ndcg_score

from evaluation import metrics as M


def _one_query(scores: list[float], relevant_idx: list[int]) -> tuple[np.ndarray, np.ndarray]:
    s = np.array([scores], dtype=np.float64)
    r = np.zeros_like(s, dtype=bool)
    r[0, relevant_idx] = True
    return s, r


def _random_case(
    rng: np.random.Generator, n_queries: int, n_cands: int, max_rel: int, n_levels: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Random scores (integers in [0, n_levels) when given: many ties) and 1..max_rel relevant."""
    if n_levels is None:
        scores = rng.standard_normal((n_queries, n_cands))
    else:
        scores = rng.integers(0, n_levels, (n_queries, n_cands)).astype(np.float64)
    relevant = np.zeros((n_queries, n_cands), dtype=bool)
    for i in range(n_queries):
        relevant[i, rng.choice(n_cands, rng.integers(1, max_rel + 1), replace=False)] = True
    return scores, relevant


def _reference_ranks(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """The tie rule spelled out: sort by (-score, relevant last, candidate index), row by row."""
    out = np.zeros((scores.shape[0], int(relevant.sum(axis=1).max())), dtype=np.int64)
    for i in range(scores.shape[0]):
        order = sorted(range(scores.shape[1]), key=lambda c: (-scores[i, c], bool(relevant[i, c]), c))
        ranks = [pos + 1 for pos, c in enumerate(order) if relevant[i, c]]
        out[i, : len(ranks)] = ranks
    return out


# Case A, no ties. Ranking = candidate order; relevant {1, 3, 4} sit at ranks r = 2, 4, 5.
CASE_A = _one_query([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [1, 3, 4])


def test_case_a_ranks_and_ap() -> None:
    s, r = CASE_A
    assert M.relevant_ranks(s, r).tolist() == [[2, 4, 5]]
    # precision at each relevant rank: 1/2, 2/4, 3/5 -> AP = (0.5 + 0.5 + 0.6) / 3
    assert M.average_precision(s, r) == pytest.approx([1.6 / 3])
    # AP@k divides by min(k, n): k=2 -> (1/2) / 2; k=3 -> (1/2) / 3; k=4 -> (1/2 + 2/4) / 3
    assert M.average_precision(s, r, k=2) == pytest.approx([0.25])
    assert M.average_precision(s, r, k=3) == pytest.approx([0.5 / 3])
    assert M.average_precision(s, r, k=4) == pytest.approx([1.0 / 3])
    assert M.average_precision(s, r, k=20) == pytest.approx([1.6 / 3])  # k >= C: full AP


def test_case_a_cutoff_metrics() -> None:
    s, r = CASE_A
    assert M.mrr_at_k(s, r, k=10) == pytest.approx([0.5])  # first relevant at rank 2
    assert M.mrr_at_k(s, r, k=2) == pytest.approx([0.5])  # rank == k still counts
    assert M.mrr_at_k(s, r, k=1) == pytest.approx([0.0])
    # recall@k = #{r_i <= k} / 3
    for k, expected in [(1, 0.0), (2, 1 / 3), (3, 1 / 3), (4, 2 / 3), (5, 1.0), (100, 1.0)]:
        assert M.recall_at_k(s, r, k) == pytest.approx([expected]), k
    # nDCG@3: DCG = 1/log2(3) (rank 2 only); IDCG = 1 + 1/log2(3) + 1/log2(4) (3 hits at top)
    idcg3 = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert M.ndcg_at_k(s, r, k=3) == pytest.approx([(1 / math.log2(3)) / idcg3])
    # nDCG@10: DCG = 1/log2(3) + 1/log2(5) + 1/log2(6); IDCG as above (min(10, 3) = 3 hits)
    dcg10 = 1 / math.log2(3) + 1 / math.log2(5) + 1 / math.log2(6)
    assert M.ndcg_at_k(s, r, k=10) == pytest.approx([dcg10 / idcg3])  # ~0.6797
    assert M.rank_distance(s, r) == pytest.approx([5 - 2])


def test_ranking_ignores_candidate_order_without_ties() -> None:
    s, r = CASE_A
    perm = np.array([5, 2, 0, 4, 1, 3])
    assert M.relevant_ranks(s[:, perm], r[:, perm]).tolist() == [[2, 4, 5]]


def test_cutoff_below_number_relevant() -> None:
    # Three relevant at ranks 1, 2, 3 (perfect ranking), k = 2 < n = 3.
    s, r = _one_query([0.9, 0.8, 0.7, 0.1], [0, 1, 2])
    # XTREME-R AP@2 = (1/1 + 2/2) / min(2, 3) = 1 (ranx's map@2 would give 2/3).
    assert M.average_precision(s, r, k=2) == pytest.approx([1.0])
    assert M.ndcg_at_k(s, r, k=2) == pytest.approx([1.0])  # IDCG@2 uses min(2, 3) = 2 hits
    assert M.recall_at_k(s, r, k=2) == pytest.approx([2 / 3])


def test_ties_irrelevant_first() -> None:
    # Candidates 0, 1, 2 tie at 0.5; 1 is irrelevant so it goes first: order 1, 0, 2, 3.
    s, r = _one_query([0.5, 0.5, 0.5, 0.2], [0, 2])
    assert M.relevant_ranks(s, r).tolist() == [[2, 3]]
    # AP = (1/2 + 2/3) / 2 = 7/12 (sklearn, which gives a tied group one threshold, says 2/3)
    assert M.average_precision(s, r) == pytest.approx([7 / 12])
    assert M.mrr_at_k(s, r) == pytest.approx([0.5])
    assert M.recall_at_k(s, r, 1) == pytest.approx([0.0])
    assert M.rank_distance(s, r) == pytest.approx([1.0])


def test_constant_scores_rank_relevant_last() -> None:
    # All tied: the three irrelevant first, then relevant 1 and 4 at ranks 4, 5.
    s, r = _one_query([0.0] * 5, [1, 4])
    assert M.relevant_ranks(s, r).tolist() == [[4, 5]]
    assert M.average_precision(s, r) == pytest.approx([(1 / 4 + 2 / 5) / 2])  # 0.325
    ndcg = (1 / math.log2(5) + 1 / math.log2(6)) / (1 + 1 / math.log2(3))
    assert M.ndcg_at_k(s, r, k=10) == pytest.approx([ndcg])


def test_ties_among_relevant_only() -> None:
    # Relevant 0 and 2 tie at 0.3 behind irrelevant 1 (0.9): index order, ranks 2, 3.
    s, r = _one_query([0.3, 0.9, 0.3, 0.1], [0, 2])
    assert M.relevant_ranks(s, r).tolist() == [[2, 3]]
    # Relevant tied at the top with no irrelevant in the tie: ranks 1, 2, AP = 1.
    s, r = _one_query([1.0, 1.0, 0.0], [0, 1])
    assert M.relevant_ranks(s, r).tolist() == [[1, 2]]
    assert M.average_precision(s, r) == pytest.approx([1.0])
    # Every candidate relevant and tied: ranks 1..5, AP 1, rank distance 5 - 1.
    s, r = _one_query([0.3] * 5, [0, 1, 2, 3, 4])
    assert M.relevant_ranks(s, r).tolist() == [[1, 2, 3, 4, 5]]
    assert M.average_precision(s, r) == pytest.approx([1.0])
    assert M.rank_distance(s, r) == pytest.approx([4.0])


def test_padding_for_unequal_relevant_counts() -> None:
    s = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    r = np.zeros_like(s, dtype=bool)
    r[0, [1, 3, 4]] = True
    r[1, 2] = True  # scores ascend: candidate 2 is 4th
    assert M.relevant_ranks(s, r).tolist() == [[2, 4, 5], [4, 0, 0]]
    assert M.rank_distance(s, r) == pytest.approx([3.0, 0.0])
    assert M.average_precision(s, r) == pytest.approx([1.6 / 3, 0.25])


@pytest.mark.parametrize("chunk_rows", [None, 1, 7])
def test_ranks_match_reference_with_ties(monkeypatch: pytest.MonkeyPatch, chunk_rows: int | None) -> None:
    # Scores in {0, 1, 2, 3}: almost every relevant candidate is tied with others.
    scores, relevant = _random_case(np.random.default_rng(0), 60, 37, max_rel=6, n_levels=4)
    if chunk_rows is not None:  # force several row chunks; results must not depend on them
        monkeypatch.setattr(M, "_CHUNK_BYTES", 32 * scores.shape[1] * chunk_rows)
    expected = _reference_ranks(scores, relevant)
    np.testing.assert_array_equal(M.relevant_ranks(scores, relevant), expected)
    # float32 (what encoders produce) and integer scores rank the same way
    np.testing.assert_array_equal(M.relevant_ranks(scores.astype(np.float32), relevant), expected)
    np.testing.assert_array_equal(M.relevant_ranks(scores.astype(np.int64), relevant), expected)


@pytest.mark.parametrize("shape", [(5, 20), (30, 200), (40, 1000)])
def test_against_sklearn(shape: tuple[int, int]) -> None:
    scores, relevant = _random_case(np.random.default_rng(shape[1]), *shape, max_rel=6)
    assert all(np.unique(row).size == row.size for row in scores)  # no ties: definitions agree
    expected_ap = [average_precision_score(relevant[i], scores[i]) for i in range(shape[0])]
    np.testing.assert_allclose(M.average_precision(scores, relevant), expected_ap, rtol=1e-12)
    # sklearn's nDCG (binary gains, log2 discount, ideal ordering of y_true) at k=10
    expected_ndcg = [ndcg_score(relevant[i : i + 1], scores[i : i + 1], k=10) for i in range(shape[0])]
    np.testing.assert_allclose(M.ndcg_at_k(scores, relevant, 10), expected_ndcg, rtol=1e-12)
    # rank distance from a plain argsort
    pos = np.argsort(np.argsort(-scores, axis=1), axis=1) + 1
    dist = [pos[i, relevant[i]].max() - pos[i, relevant[i]].min() for i in range(shape[0])]
    np.testing.assert_allclose(M.rank_distance(scores, relevant), dist)


def test_against_ranx() -> None:
    import ranx  # numba-compiled: its import and first evaluate are most of this file's runtime

    # One call (ranx's fixed cost is per call). 1..25 relevant per query, so some queries have
    # n > 20, where the two map@20 conventions differ.
    n_queries, n_cands, max_rel = 30, 200, 25
    scores, relevant = _random_case(np.random.default_rng(7), n_queries, n_cands, max_rel)
    qrels = ranx.Qrels({f"q{i}": {f"d{j}": 1 for j in np.flatnonzero(relevant[i])} for i in range(n_queries)})
    run = ranx.Run({f"q{i}": {f"d{j}": float(scores[i, j]) for j in range(n_cands)} for i in range(n_queries)})
    ranx.evaluate(qrels, run, ["mrr@10", "ndcg@10", "recall@10", "map", "map@20"], threads=1)

    def per_query(metric: str) -> np.ndarray:  # ranx keeps per-query scores in the run
        return np.array([run.scores[metric][f"q{i}"] for i in range(n_queries)])

    # ranx: mrr@k = 1/first hit rank within k; ndcg@k binary-gain Jarvelin with IDCG from
    # qrels; recall@k = hits@k / n; map = AP over the whole run (all C candidates). All match
    # ours. ranx's map@k divides by n, ours (XTREME-R) by min(k, n): equal only where n <= 20.
    np.testing.assert_allclose(per_query("mrr@10"), M.mrr_at_k(scores, relevant, 10), rtol=1e-12)
    np.testing.assert_allclose(per_query("ndcg@10"), M.ndcg_at_k(scores, relevant, 10), rtol=1e-12)
    np.testing.assert_allclose(per_query("recall@10"), M.recall_at_k(scores, relevant, 10), rtol=1e-12)
    np.testing.assert_allclose(per_query("map"), M.average_precision(scores, relevant), rtol=1e-12)
    n = relevant.sum(axis=1)
    few = n <= 20
    assert few.any() and (~few).any()
    np.testing.assert_allclose(per_query("map@20")[few], M.average_precision(scores, relevant, k=20)[few], rtol=1e-12)
    # Where n > 20 they differ exactly by the divisor: ranx = ours * min(20, n) / n.
    np.testing.assert_allclose(
        per_query("map@20")[~few], (M.average_precision(scores, relevant, k=20) * 20 / n)[~few], rtol=1e-12
    )


def test_softmax_confidence_hand_values() -> None:
    # softmax([ln 3, 0, 0]) = [3, 1, 1] / 5; at T = 0.5 logits double: [9, 1, 1] / 11
    s, r = _one_query([math.log(3), 0.0, 0.0], [0])
    conf, correct = M.softmax_confidence(s, r, temperature=1.0)
    assert conf == pytest.approx([0.6]) and correct.tolist() == [True]
    conf, _ = M.softmax_confidence(s, r, temperature=0.5)
    assert conf == pytest.approx([9 / 11])
    _, correct = M.softmax_confidence(*_one_query([math.log(3), 0.0, 0.0], [1]), temperature=1.0)
    assert correct.tolist() == [False]
    # Large logits do not overflow: 1000 / 0.01 = 1e5 apart -> confidence 1.
    conf, _ = M.softmax_confidence(*_one_query([1000.0, 0.0], [0]), temperature=0.01)
    assert conf == pytest.approx([1.0])


def test_softmax_correct_follows_tie_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tie at the top with an irrelevant candidate: not correct; tie among relevant only: correct.
    assert M.softmax_confidence(*_one_query([1.0, 1.0, 0.0], [0]), 1.0)[1].tolist() == [False]
    assert M.softmax_confidence(*_one_query([1.0, 1.0, 0.0], [0, 1]), 1.0)[1].tolist() == [True]
    scores, relevant = _random_case(np.random.default_rng(3), 80, 15, max_rel=4, n_levels=3)
    conf, correct = M.softmax_confidence(scores, relevant, 0.7)
    np.testing.assert_array_equal(correct, M.relevant_ranks(scores, relevant)[:, 0] == 1)
    z = np.exp(scores / 0.7)
    np.testing.assert_allclose(conf, z.max(axis=1) / z.sum(axis=1), rtol=1e-12)
    monkeypatch.setattr(M, "_CHUNK_BYTES", 32 * scores.shape[1] * 3)  # 3-row chunks
    chunked = M.softmax_confidence(scores, relevant, 0.7)
    np.testing.assert_allclose(chunked[0], conf, rtol=1e-15)
    np.testing.assert_array_equal(chunked[1], correct)


def test_ece_hand_case() -> None:
    # 15 bins of width 1/15. 0.9 is in bin 13 = (13/15, 14/15]: 4 items, accuracy 2/4, gap 0.4.
    # 0.25 is in bin 3 = (3/15, 4/15]: 2 items, accuracy 0, gap 0.25.
    # ECE = 4/6 * 0.4 + 2/6 * 0.25 = 0.35
    conf = np.array([0.9, 0.9, 0.9, 0.9, 0.25, 0.25])
    correct = np.array([True, True, False, False, False, False])
    ece, table = M.expected_calibration_error(conf, correct, n_bins=15)
    assert ece == pytest.approx(0.35)
    assert table.count.sum() == 6 and table.count[13] == 4 and table.count[3] == 2
    assert table.accuracy[13] == pytest.approx(0.5) and table.confidence[3] == pytest.approx(0.25)
    assert np.isnan(table.accuracy[0])  # empty bin
    assert table.ece == pytest.approx(ece)  # read back from the table (a run's reliability.csv), the same ECE
    assert np.isnan(M.table_ece([0, 0], [np.nan, np.nan], [np.nan, np.nan]))  # no query
    assert table.lower[0] == 0.0 and table.upper[-1] == 1.0 and table.lower.size == 15
    # Bins are (lower, upper]: 0 goes to the first bin, 1 to the last, and a confidence equal
    # to bin 1's upper edge (2/15) to bin 1, not bin 2.
    edge = table.upper[1]
    _, table = M.expected_calibration_error(np.array([0.0, 1.0, edge]), np.array([0, 1, 1]) > 0)
    assert table.count.tolist() == [1, 1] + [0] * 12 + [1]


def test_ece_calibrated_and_miscalibrated() -> None:
    # Every item at confidence 0.75 with 3 of 4 correct: exactly calibrated.
    ece, _ = M.expected_calibration_error(np.full(4, 0.75), np.array([True, True, True, False]))
    assert ece == pytest.approx(0.0, abs=1e-12)
    rng = np.random.default_rng(11)
    conf = rng.uniform(0, 1, 200_000)
    ece, table = M.expected_calibration_error(conf, rng.uniform(0, 1, conf.size) < conf)
    assert ece < 0.01 and table.count.sum() == conf.size
    # Accuracy conf^2 < conf everywhere: ECE -> E[c - c^2] = 1/2 - 1/3 = 1/6 for c ~ U(0, 1).
    ece, _ = M.expected_calibration_error(conf, rng.uniform(0, 1, conf.size) < conf**2)
    assert ece == pytest.approx(1 / 6, abs=0.01)
    # One bin: |mean accuracy - mean confidence| = |0.5 - 0.9|.
    ece, _ = M.expected_calibration_error(np.full(4, 0.9), np.array([1, 0, 1, 0]) > 0, n_bins=1)
    assert ece == pytest.approx(0.4)


def test_summarize_keys_and_values() -> None:
    scores, relevant = _random_case(np.random.default_rng(5), 50, 150, max_rel=30)
    out = M.summarize(scores, relevant, temperature=0.1)
    assert list(out) == [
        "map",
        "map@20",
        "mrr@10",
        "recall@1",
        "recall@10",
        "recall@100",
        "ndcg@10",
        "ece",
        "rank_distance",
    ]
    assert all(isinstance(v, float) for v in out.values())
    assert out["map"] == pytest.approx(M.average_precision(scores, relevant).mean())
    assert out["map@20"] == pytest.approx(M.average_precision(scores, relevant, 20).mean())
    assert out["mrr@10"] == pytest.approx(M.mrr_at_k(scores, relevant, 10).mean())
    for k in (1, 10, 100):
        assert out[f"recall@{k}"] == pytest.approx(M.recall_at_k(scores, relevant, k).mean())
    assert out["ndcg@10"] == pytest.approx(M.ndcg_at_k(scores, relevant, 10).mean())
    assert out["rank_distance"] == pytest.approx(M.rank_distance(scores, relevant).mean())
    ece, _ = M.expected_calibration_error(*M.softmax_confidence(scores, relevant, 0.1))
    assert out["ece"] == pytest.approx(ece)
    # And on case A by hand: one query, ranks 2, 4, 5.
    out = M.summarize(*CASE_A, temperature=1.0)
    assert out["map"] == pytest.approx(1.6 / 3) and out["map@20"] == pytest.approx(1.6 / 3)
    assert out["recall@1"] == 0.0 and out["recall@10"] == 1.0 and out["rank_distance"] == 3.0


def test_invalid_inputs() -> None:
    s, r = CASE_A
    no_rel = np.vstack([r, np.zeros_like(r)])
    with pytest.raises(ValueError, match="query 1 has no relevant"):
        M.relevant_ranks(np.vstack([s, s]), no_rel)
    with pytest.raises(ValueError, match="query 1 has no relevant"):
        M.summarize(np.vstack([s, s]), no_rel, temperature=1.0)
    with pytest.raises(ValueError, match="one shape"):
        M.average_precision(s, r[:, :-1])
    with pytest.raises(ValueError, match="one shape"):
        M.mrr_at_k(s[0], r[0])
    with pytest.raises(ValueError, match="boolean"):
        M.recall_at_k(s, r.astype(int), 1)
    bad = s.copy()
    bad[0, 2] = np.nan
    with pytest.raises(ValueError, match="query 0 has NaN"):
        M.ndcg_at_k(bad, r)
    with pytest.raises(ValueError, match="k must be"):
        M.recall_at_k(s, r, 0)
    with pytest.raises(ValueError, match="temperature"):
        M.softmax_confidence(s, r, 0.0)
    with pytest.raises(ValueError, match="one shape"):
        M.expected_calibration_error(np.array([0.5, 0.5]), np.array([True]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.expected_calibration_error(np.array([1.5]), np.array([True]))
