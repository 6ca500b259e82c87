"""Retrieval and calibration metrics for LAReQA-style evaluation (XQuAD-R, MLQA-R).

Pure numpy: no I/O, no logging. Every function takes a dense score matrix ``scores`` (Q, C),
higher = more relevant, and a boolean ``relevant`` (Q, C); every query needs >= 1 relevant
candidate. Per-query functions return a (Q,) float64 array; ``summarize`` macro-averages them.

Tie rule (pessimistic, deterministic), used by every function: candidates are ranked by
descending score; among equal scores every irrelevant candidate comes before every relevant
one, and tied relevant candidates keep candidate-index order. So a relevant candidate j gets
    rank_j = 1 + #{c : s_c > s_j} + #{c irrelevant : s_c = s_j} + #{c relevant : s_c = s_j, c < j}.
A model gets no credit from ties: a constant scorer ranks all relevant candidates last.
"""

from dataclasses import dataclass

import numpy as np

# Temporaries per row chunk: rows = budget / (32 bytes * C), room for four float64 (rows, C)
# arrays; 64 MB also keeps chunks cache-friendly. Float inputs are never copied whole.
_CHUNK_BYTES = 64 * 2**20


def _check_inputs(scores: np.ndarray, relevant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores, relevant = np.asarray(scores), np.asarray(relevant)
    if scores.ndim != 2 or relevant.shape != scores.shape or scores.shape[0] == 0:
        raise ValueError(
            f"scores and relevant must be 2-D of one shape (Q, C), Q >= 1, got {scores.shape} and {relevant.shape}"
        )
    if relevant.dtype != np.bool_:
        raise ValueError(f"relevant must be a boolean array, got dtype {relevant.dtype}")
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    # min/max propagate NaN and reach +-inf: a finiteness check without a (Q, C) temporary.
    if not (np.isfinite(scores.min()) and np.isfinite(scores.max())):
        bad = np.flatnonzero(~(np.isfinite(scores.min(axis=1)) & np.isfinite(scores.max(axis=1))))
        raise ValueError(f"scores must be finite; query {bad[0]} has NaN or inf ({bad.size} such queries)")
    empty = np.flatnonzero(~relevant.any(axis=1))
    if empty.size:
        raise ValueError(
            f"query {empty[0]} has no relevant candidate ({empty.size} such queries: {empty[:10].tolist()})"
        )
    return scores, relevant


def _rows_per_chunk(n_candidates: int) -> int:
    return max(1, _CHUNK_BYTES // (32 * n_candidates))


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def _count_below(sorted_rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """#{c : sorted_rows[i, c] < values[i, j]} for every (i, j): numpy.searchsorted 'left', row by
    row, done as one binary search over all rows (about log2 C vectorised steps). NaN sorts last
    and compares False, so NaN padding acts as +inf in sorted_rows and yields 0 in values."""
    n = sorted_rows.shape[1]
    lo, hi = np.zeros(values.shape, np.int64), np.full(values.shape, n, np.int64)
    row_idx = np.arange(values.shape[0])[:, None]
    while np.any(lo < hi):
        mid = (lo + hi) // 2
        below = sorted_rows[row_idx, np.minimum(mid, n - 1)] < values
        active = lo < hi
        lo = np.where(active & below, mid + 1, lo)
        hi = np.where(active & ~below, mid, hi)
    return lo


def relevant_ranks(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """1-based ranks of each query's relevant candidates in its full ranking of all C candidates.

    Ranks follow the module's pessimistic tie rule. Returns an int64 array (Q, R), R = the largest
    number of relevant candidates of any query: row i holds query i's n_i ranks in ascending
    order in columns 0..n_i-1, then zeros (padding). Columns are rank order, not candidate ids.

    Cost: a row sort plus a vectorised binary search, O(Q C log C) time, in row chunks of at most
    _CHUNK_BYTES of temporaries; no Python loop over queries or candidates.
    """
    scores, relevant = _check_inputs(scores, relevant)
    n_queries, n_cands = scores.shape
    n_rel = relevant.sum(axis=1)
    out = np.zeros((n_queries, int(n_rel.max())), dtype=np.int64)
    step = _rows_per_chunk(n_cands)
    for start in range(0, n_queries, step):
        chunk = slice(start, start + step)
        s, m, n = scores[chunk], relevant[chunk], n_rel[chunk]
        width = int(n.max())
        rows, cols = np.nonzero(m)
        pos = np.arange(rows.size) - (np.cumsum(n) - n)[rows]  # slot of each hit within its row
        rel = np.full((s.shape[0], width), np.nan)  # (b, width) relevant scores, NaN padding
        rel[rows, pos] = s[rows, cols]
        rel.sort(axis=1)  # ascending, NaN padding last
        n_ge = n_cands - _count_below(np.sort(s, axis=1), rel)  # G = #{c : s_c >= s_j}
        # g relevant candidates tied at one score (same G) take ranks G-g+1..G: after the tied
        # irrelevant ones. Slot q of a tie group starting at slot a = #{relevant < s} gets
        # rank G - (q - a); in index order or not, the set of ranks is the same.
        slot = np.arange(width)
        ranks = n_ge - (slot - _count_below(rel, rel))
        valid = slot < n[:, None]  # a prefix of each row
        ranks = np.sort(np.where(valid, ranks, np.iinfo(np.int64).max), axis=1)
        out[chunk, :width] = np.where(valid, ranks, 0)
    return out


def _ap_from_ranks(ranks: np.ndarray, k: int | None) -> np.ndarray:
    valid = ranks > 0
    n_rel = valid.sum(axis=1)
    hits = valid if k is None else valid & (ranks <= k)
    # The i-th relevant candidate (1-based, rank order) is at rank r_i: precision there is i / r_i.
    prec = np.arange(1, ranks.shape[1] + 1) / np.where(valid, ranks, 1)
    denom = n_rel if k is None else np.minimum(n_rel, k)
    return np.where(hits, prec, 0.0).sum(axis=1) / denom


def _mrr_from_ranks(ranks: np.ndarray, k: int) -> np.ndarray:
    return np.where(ranks[:, 0] <= k, 1.0 / ranks[:, 0], 0.0)


def _recall_from_ranks(ranks: np.ndarray, k: int) -> np.ndarray:
    valid = ranks > 0
    return (valid & (ranks <= k)).sum(axis=1) / valid.sum(axis=1)


def _ndcg_from_ranks(ranks: np.ndarray, k: int) -> np.ndarray:
    valid = ranks > 0
    gains = np.where(valid & (ranks <= k), 1.0 / np.log2(np.where(valid, ranks, 1) + 1.0), 0.0)
    ideal = np.cumsum(1.0 / np.log2(np.arange(1, k + 1) + 1.0))  # ideal[t-1] = IDCG with t hits
    return gains.sum(axis=1) / ideal[np.minimum(valid.sum(axis=1), k) - 1]


def _rank_distance_from_ranks(ranks: np.ndarray) -> np.ndarray:
    last = ranks[np.arange(ranks.shape[0]), (ranks > 0).sum(axis=1) - 1]
    return (last - ranks[:, 0]).astype(np.float64)


def average_precision(scores: np.ndarray, relevant: np.ndarray, k: int | None = None) -> np.ndarray:
    """Per-query average precision, full ranking (k=None) or at cut-off k.

    With r_1 < ... < r_n the ranks of a query's n relevant candidates, precision at r_i is i / r_i.
    - k=None (LAReQA mAP): AP = (1/n) sum_i i / r_i, over the full ranking of all C candidates.
      Equals sklearn.metrics.average_precision_score when scores have no ties (sklearn groups
      tied scores into one threshold; this module applies its pessimistic tie rule instead).
    - k given (XTREME-R mAP@20): AP@k = (1 / min(k, n)) sum_{i : r_i <= k} i / r_i, following
      ``average_precision_at_k`` in google-research/xtreme third_party/utils_lareqa.py (divisor
      min(len(targets), k)). ranx's map@k divides by n instead; both agree when n <= k.
    """
    if k is not None:
        _check_k(k)
    return _ap_from_ranks(relevant_ranks(scores, relevant), k)


def mrr_at_k(scores: np.ndarray, relevant: np.ndarray, k: int = 10) -> np.ndarray:
    """Per-query reciprocal rank at k: 1 / r_1 if the best-ranked relevant r_1 <= k, else 0."""
    _check_k(k)
    return _mrr_from_ranks(relevant_ranks(scores, relevant), k)


def recall_at_k(scores: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    """Per-query recall at k: #{relevant ranked <= k} / n (fraction of the query's relevant set).

    With a single relevant candidate per query (mono / cross settings) this is the success rate
    (hit rate) at k, so recall@1 is LAReQA's / XTREME-R's Recall@1 (= top-1 accuracy).
    """
    _check_k(k)
    return _recall_from_ranks(relevant_ranks(scores, relevant), k)


def ndcg_at_k(scores: np.ndarray, relevant: np.ndarray, k: int = 10) -> np.ndarray:
    """Per-query nDCG at k with binary gains and log2 discount (Jarvelin & Kekalainen 2002).

    DCG@k = sum_{i : r_i <= k} 1 / log2(r_i + 1); IDCG@k = sum_{t=1}^{min(k, n)} 1 / log2(t + 1)
    (all n relevant candidates at the top); nDCG@k = DCG@k / IDCG@k, in [0, 1].
    """
    _check_k(k)
    return _ndcg_from_ranks(relevant_ranks(scores, relevant), k)


def rank_distance(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Per-query language bias (rank distance, arXiv 2305.09025): r_n - r_1.

    The rank of the lowest-ranked relevant candidate minus that of the highest-ranked one, in the
    ranking over all candidates given. Meaningful in the pooled multilingual setting, where the
    relevant set is the answer sentence in every language; 0 when n = 1. Lower is better.
    """
    return _rank_distance_from_ranks(relevant_ranks(scores, relevant))


def softmax_confidence(scores: np.ndarray, relevant: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 confidence of the softmax over candidates, and whether the top-1 is relevant.

    p_c = exp(s_c / T) / sum_c' exp(s_c' / T) over all C candidates (T = temperature > 0, the
    same convention as an InfoNCE loss with logits s / T); confidence = max_c p_c.
    correct = the top-ranked candidate is relevant under the module's tie rule, i.e. the best
    relevant score is strictly above every irrelevant score (equivalently r_1 = 1).
    Returns (confidence float64 (Q,), correct bool (Q,)).
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    scores, relevant = _check_inputs(scores, relevant)
    n_queries, n_cands = scores.shape
    confidence, correct = np.empty(n_queries), np.empty(n_queries, dtype=bool)
    step = _rows_per_chunk(n_cands)
    for start in range(0, n_queries, step):
        chunk = slice(start, start + step)
        s, m = scores[chunk], relevant[chunk]
        top = s.max(axis=1)
        # max_c p_c = 1 / sum_c exp((s_c - s_max) / T): no overflow. One float64 (b, C) buffer,
        # updated in place (cheaper than a fresh temporary per step).
        z = s.astype(np.float64)
        z -= top[:, None]
        z /= temperature
        np.exp(z, out=z)
        confidence[chunk] = 1.0 / z.sum(axis=1)
        # Top-1 is relevant iff no irrelevant candidate reaches the row maximum (tie rule).
        np.copyto(z, s)
        z[m] = -np.inf
        correct[chunk] = z.max(axis=1) < top
    return confidence, correct


@dataclass(frozen=True)
class ReliabilityTable:
    """Reliability diagram: bin b covers (lower[b], upper[b]] (bin 0 also holds 0); count per bin,
    mean confidence and accuracy (fraction correct) per bin, NaN where a bin is empty."""

    lower: np.ndarray
    upper: np.ndarray
    count: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def ece(self) -> float:
        return table_ece(self.count, self.confidence, self.accuracy)


def table_ece(count, confidence, accuracy) -> float:
    """ECE of a reliability table, sum_b (n_b / N) |acc_b - conf_b| over its non-empty bins (NaN if all
    are empty): a table read back from a run, or several pooled, gives the ECE of its queries."""
    count = np.asarray(count, dtype=np.float64)
    gap = np.abs(np.asarray(accuracy, dtype=np.float64) - np.asarray(confidence, dtype=np.float64))
    return float(np.nansum(count * gap) / count.sum()) if count.sum() else float("nan")


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15
) -> tuple[float, ReliabilityTable]:
    """Expected calibration error with equal-width bins (Guo et al. 2017).

    Bins B_b = ((b-1)/M, b/M], b = 1..M (M = n_bins; a confidence of exactly 0 goes to bin 1);
    ECE = sum_b (n_b / N) |acc(B_b) - conf(B_b)|, acc = fraction correct, conf = mean confidence.
    Returns (ECE, ReliabilityTable).
    """
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct)
    if confidence.ndim != 1 or correct.shape != confidence.shape or confidence.size == 0:
        raise ValueError(
            f"confidence and correct must be non-empty 1-D of one shape, got {confidence.shape} and {correct.shape}"
        )
    if correct.dtype != np.bool_:
        raise ValueError(f"correct must be a boolean array, got dtype {correct.dtype}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if not ((confidence >= 0) & (confidence <= 1)).all():
        raise ValueError("confidence must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # right=True: index b with edges[b] < x <= edges[b+1]; x = 0 falls in bin 0.
    bins = np.digitize(confidence, edges[1:-1], right=True)
    count = np.bincount(bins, minlength=n_bins)
    conf_sum = np.bincount(bins, weights=confidence, minlength=n_bins)
    acc_sum = np.bincount(bins, weights=correct.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf, acc = conf_sum / count, acc_sum / count
    ece = float(np.abs(acc_sum - conf_sum).sum() / confidence.size)  # n_b |acc_b - conf_b| summed
    return ece, ReliabilityTable(edges[:-1], edges[1:], count, mean_conf, acc)


def summarize(scores: np.ndarray, relevant: np.ndarray, temperature: float) -> dict[str, float]:
    """Macro-averaged (mean over queries) metrics under stable names: the evaluation hand-off.

    Keys: map (full-ranking AP, LAReQA), map@20 (XTREME-R), mrr@10, recall@1, recall@10,
    recall@100, ndcg@10, ece (15 bins, softmax over candidates at ``temperature``) and
    rank_distance (meaningful only for pooled multilingual candidates; always computed).
    """
    ranks = relevant_ranks(scores, relevant)
    confidence, correct = softmax_confidence(scores, relevant, temperature)
    ece, _ = expected_calibration_error(confidence, correct, n_bins=15)
    return {
        "map": float(_ap_from_ranks(ranks, None).mean()),
        "map@20": float(_ap_from_ranks(ranks, 20).mean()),
        "mrr@10": float(_mrr_from_ranks(ranks, 10).mean()),
        "recall@1": float(_recall_from_ranks(ranks, 1).mean()),
        "recall@10": float(_recall_from_ranks(ranks, 10).mean()),
        "recall@100": float(_recall_from_ranks(ranks, 100).mean()),
        "ndcg@10": float(_ndcg_from_ranks(ranks, 10).mean()),
        "ece": ece,
        "rank_distance": float(_rank_distance_from_ranks(ranks).mean()),
    }
