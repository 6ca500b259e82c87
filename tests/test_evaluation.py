"""Tests for evaluation/: config, the Ray + FAISS runner against a plain numpy reference, MLflow tracking,
MIRACL from a fixture in MIRACL's own layout, and the CLI. Tiny random BERT, 3 languages, 30 questions."""

import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluation import metrics as M
from evaluation.checkpoints import CheckpointRef, content_hash
from evaluation.config import EvalConfig
from evaluation.eval_set import EvalSet
from evaluation.runner import evaluate_checkpoints
from evaluation.scoring import GPU_MAX_K, PAIR_METRICS, _sharded_search, full_scores, score_query_language
from hybrid import manifest, storage
from hybrid.config import from_dict, read_yaml
from hybrid.data import Candidate, ParallelCorpus, Question, split_by_article
from hybrid.model import load_encoder

LANGS = ("en", "de", "es")
N_QUESTIONS = 30
MIRACL = Path(__file__).parent / "fixtures" / "miracl"


@pytest.fixture(scope="module")
def heldout(xquad):
    return split_by_article(xquad, 0.25, 0)[1].select_languages(LANGS)


def _spread_copy(source: Path, target: Path, seed: int) -> Path:
    """The tiny model with its word embeddings redrawn from N(0, 1). A random BERT's pooled vectors all lie
    near one direction (cosines 0.96 +- 0.02), so scores nearly tie everywhere; redrawn: 0.17 +- 0.18."""
    encoder = load_encoder(str(source))
    torch.manual_seed(seed)
    with torch.no_grad():
        encoder.backbone.get_input_embeddings().weight.normal_(0.0, 1.0)
    return encoder.save(target)


@pytest.fixture(scope="module")
def checkpoints(tiny_model_dir, tmp_path_factory):
    """A base model (step 0, an encoder folder) and a trainer-style checkpoint_000040 with tau 0.1."""
    root = tmp_path_factory.mktemp("run")
    base = _spread_copy(tiny_model_dir, root / "base", seed=1)
    folder = root / "checkpoint_000040"
    encoder = _spread_copy(tiny_model_dir, folder / "encoder", seed=2)
    state = json.dumps({"step": 40, "config": {"model": {"name": "tiny"}, "method": {"temperature": 0.1}}})
    (folder / "trainer_state.json").write_text(state)
    manifest.write_export(encoder, "run0", 40, state)  # signed, as a trainer's export
    return [CheckpointRef.from_path(str(base)), CheckpointRef.from_path(str(folder))]


def _encode_events(ray) -> dict[str, set[str]]:
    """Executed encode tasks per checkpoint label, from Ray's own task events (ray.timeline)."""
    out: dict[str, set[str]] = {}
    for event in ray.timeline():
        if event.get("cat", "").startswith("task::encode:") and "task_id" in event.get("args", {}):
            label = event["cat"][len("task::encode:") :].rsplit(":", 2)[0]
            out.setdefault(label, set()).add(event["args"]["task_id"])
    return out


@pytest.fixture(scope="module")
def evaluated(local_ray, heldout, checkpoints):
    config = EvalConfig(languages=LANGS, max_questions=N_QUESTIONS, batch_size=32)
    before = _encode_events(local_ray)
    results = evaluate_checkpoints(checkpoints, heldout, config)
    executed, deadline = {}, time.time() + 30
    while time.time() < deadline:  # task events reach the GCS asynchronously (about once a second)
        after = _encode_events(local_ray)
        executed = {label: len(ids - before.get(label, set())) for label, ids in after.items()}
        if all(executed.get(ref.label, 0) >= 2 * len(LANGS) for ref in checkpoints):
            break
        time.sleep(1)
    return config, results, executed


def test_a_cached_result_equals_the_recomputed_one_and_encodes_nothing(
    local_ray, evaluated, checkpoints, heldout, tmp_path
):
    """The evaluation cache (keyed by model files + evaluation set + settings): a second evaluation of the
    same files, even under another label, runs no encoding and gives exactly the stored figures."""
    config, computed, _ = evaluated
    cache = str(tmp_path / "eval-cache")
    kept = []  # as each checkpoint is said done, its result is in the cache already: a kill then loses no other

    def on_done(ref: CheckpointRef, seconds: float, from_cache: bool) -> None:
        kept.append((ref.label, len(list((tmp_path / "eval-cache").glob("v*-*.json")))))

    first = evaluate_checkpoints(checkpoints, heldout, config, cache, on_done=on_done, in_flight=1)
    assert not any(r.cached for r in first) and kept == [(ref.label, n) for n, ref in enumerate(checkpoints, 1)]
    before = _encode_events(local_ray)
    again = [dataclasses.replace(ref, label=f"again-{i}") for i, ref in enumerate(checkpoints)]
    second = evaluate_checkpoints(again, heldout, config, cache)
    time.sleep(3)  # task events reach the GCS about once a second
    assert not any(label.startswith("again") for label in _encode_events(local_ray).keys() - before.keys())
    for recomputed, stored, hit, ref in zip(computed, first, second, again):
        assert hit.cached and hit.encode_tasks == 0 and (hit.checkpoint, hit.step) == (ref.label, ref.step)
        assert hit.summary == stored.summary and hit.per_language == stored.per_language
        assert hit.content_hash == stored.content_hash == recomputed.content_hash
        for metric, matrix in recomputed.matrices.items():
            np.testing.assert_array_equal(hit.matrices[metric], stored.matrices[metric])
            np.testing.assert_allclose(hit.matrices[metric], matrix, atol=1e-6)  # and as computed without a cache
        np.testing.assert_array_equal(hit.reliability.accuracy, stored.reliability.accuracy)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_forged_cache_entry_is_ignored_and_the_true_figure_recomputed(
    local_ray, evaluated, checkpoints, heldout, tmp_path, request, where, capsys
):
    """An entry rewritten to favour a checkpoint (its mAP raised, its signature kept or dropped), or another
    checkpoint's signed entry put under this one's key: each said in one line and evaluated again, the
    result the clean run's."""
    from evaluation.results import cache_file

    config, computed, _ = evaluated
    cache = (
        str(tmp_path / "eval-cache")
        if where == "local"
        else storage.join(request.getfixturevalue("s3_bucket"), f"eval-cache-{tmp_path.name}")
    )
    ref = checkpoints[1]
    [clean] = evaluate_checkpoints([ref], heldout, config, cache)
    location = cache_file(cache, clean.content_hash)
    signed = json.loads(storage.read_text(location))
    favoured = signed | {"result": signed["result"] | {"summary": clean.summary | {"multi/map": 0.99}}}
    other = evaluate_checkpoints([checkpoints[0]], heldout, config, cache)[0]
    moved = storage.read_text(cache_file(cache, other.content_hash))
    for forged, said in (
        (json.dumps(favoured), "bad signature (altered, or signed with another key)"),
        (json.dumps({k: v for k, v in favoured.items() if k != "signature"}), "not signed"),
        (moved, "bad signature (altered, or signed with another key)"),
    ):
        storage.write_text(location, forged)
        capsys.readouterr()
        [again] = evaluate_checkpoints([ref], heldout, config, cache)
        assert (
            capsys.readouterr().out
            == f"[hybrid-sweep] evaluation cache: {location}: {said}. Ignored; evaluating again.\n"
        )
        assert not again.cached and again.summary == pytest.approx(clean.summary) and again.summary["multi/map"] != 0.99
        assert again.summary == pytest.approx(computed[1].summary)  # as without any cache
    assert evaluate_checkpoints([ref], heldout, config, cache)[0].cached  # the entry written again, signed


def test_an_imposed_spec_embeds_as_it_says_and_keys_its_own_evaluation(
    local_ray, evaluated, checkpoints, heldout, tmp_path
):
    """A base model evaluated as the run trains it (`CheckpointRef.spec`, e.g. max_length 64 where the
    folder says nothing): the texts are cut where the spec says, and the cache never serves it for the
    folder's own spec (or the other way round)."""
    from hybrid.spec import EncoderSpec

    config, computed, _ = evaluated
    base = checkpoints[0]
    short = dataclasses.replace(base, label="short", spec=EncoderSpec(max_length=8))
    cache = str(tmp_path / "eval-cache")
    [own] = evaluate_checkpoints([base], heldout, config, cache)
    [cut] = evaluate_checkpoints([short], heldout, config, cache)
    assert not cut.cached and cut.content_hash != own.content_hash and cut.model_hash == own.model_hash
    assert cut.summary["multi/map"] != own.summary["multi/map"]  # 8 tokens: most of each sentence is cut
    assert own.summary == computed[0].summary  # the folder's own spec: what the plain evaluation gives
    [again] = evaluate_checkpoints([dataclasses.replace(short, label="again")], heldout, config, cache)
    assert again.cached and again.summary == cut.summary


def test_config_validates_and_loads_from_the_preset():
    preset = read_yaml(Path(__file__).parents[1] / "configs" / "default.yaml")
    assert from_dict(EvalConfig, preset.get("eval"), "eval") == EvalConfig()
    for bad, match in [
        ({"dataset": "squad"}, "xquad-r"),
        ({"languages": ["en", "xx"]}, "ISO 639-1"),
        ({"max_questions": 0}, "max_questions"),
        ({"encode_cpus": 0}, "num_cpus"),
        ({"ece_bins": 0}, "ece_bins"),
        ({"batchsize": 8}, "valid keys"),
    ]:
        with pytest.raises(ValueError, match=match):
            from_dict(EvalConfig, bad, "eval")


def test_proxy_subset_is_the_same_ids_in_every_language(heldout):
    full = EvalSet.from_corpus(heldout)
    proxy = full.restrict(None, N_QUESTIONS)
    expected = sorted({q.id for q in heldout.questions["en"]}, key=lambda i: hashlib.sha256(i.encode()).hexdigest())
    assert proxy.split == f"heldout-proxy{N_QUESTIONS}" and full.split == "heldout"
    for lang in LANGS:
        assert set(proxy.query_ids[lang]) == set(expected[:N_QUESTIONS])
        assert proxy.candidates[lang] == full.candidates[lang]  # candidates are never subsampled
    assert proxy == full.restrict(None, N_QUESTIONS)


def test_each_checkpoint_encodes_each_language_and_side_exactly_once(evaluated, checkpoints):
    _, results, executed = evaluated
    for ref, result in zip(checkpoints, results):
        assert result.encode_tasks == 2 * len(LANGS)
        assert executed[ref.label] == 2 * len(LANGS)  # counted by Ray, not by the runner


def test_checkpoint_lineage(evaluated, checkpoints):
    _, (base, trained), _ = evaluated
    assert (base.step, base.temperature) == (0, 0.05)
    assert (trained.step, trained.temperature, trained.model) == (40, 0.1, "tiny")
    assert base.content_hash != trained.content_hash
    assert content_hash(checkpoints[0].path) != content_hash(checkpoints[1].path)
    assert base.languages == LANGS and base.dataset == "xquad-r"
    assert (base.path, base.model_hash) == (checkpoints[0].path, content_hash(checkpoints[0].path))
    assert base.data_digest == trained.data_digest and len(base.data_digest) == 64


EPS = 1e-6  # FAISS and numpy round float32 products differently (by ~1e-7 here)


def _reference_metrics(scores: np.ndarray, relevant: np.ndarray, temperature: float) -> tuple[dict, dict]:
    """summarize() on numpy scores, and how far a correct runner may differ from it: where a relevant
    candidate's score is within EPS of another's, the two implementations may order them either way. Such a
    query may swing its [0, 1] metrics and ECE term by up to 1, and its rank distance by twice the number
    of those neighbours; every other query must agree to 1e-6."""
    near = np.zeros(scores.shape[0])
    for i, j in zip(*np.nonzero(relevant)):
        near[i] = max(near[i], np.count_nonzero(np.abs(scores[i] - scores[i, j]) < EPS) - 1)
    values = M.summarize(scores, relevant, temperature)
    tolerance = {m: 1e-6 + np.count_nonzero(near) / len(near) for m in values}
    tolerance["rank_distance"] = 1e-6 + 2 * near.sum() / len(near)
    return values, tolerance


def _reference(ref: CheckpointRef, corpus: ParallelCorpus, temperature: float) -> tuple[dict, dict, dict, dict]:
    """Matrices and pooled metrics with no Ray, no FAISS, no EvalSet: numpy products of in-process embeddings.
    Returns (matrices, their tolerances, multi metrics, their tolerances)."""
    encoder = load_encoder(ref.path)
    ids = sorted({q.id for q in corpus.questions["en"]}, key=lambda i: hashlib.sha256(i.encode()).hexdigest())
    keep = set(ids[:N_QUESTIONS])
    questions = {lang: [q for q in corpus.questions[lang] if q.id in keep] for lang in LANGS}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the encode tasks (and the same batches): the same floats
    q = {lang: encoder.encode([x.text for x in questions[lang]], "query", batch_size=32) for lang in LANGS}
    c = {
        lang: encoder.encode([x.sentence for x in corpus.candidates[lang]], "passage", batch_size=32) for lang in LANGS
    }
    torch.set_num_threads(threads)
    shape = (len(LANGS), len(LANGS))
    matrices, tolerances = {m: np.zeros(shape) for m in PAIR_METRICS}, {m: np.zeros(shape) for m in PAIR_METRICS}
    pooled = []
    for i, a in enumerate(LANGS):
        answer = {b: [corpus.answers[x.id][b] for x in questions[a]] for b in LANGS}
        for j, b in enumerate(LANGS):
            relevant = np.eye(len(c[b]), dtype=bool)[answer[b]]  # (Q, C_b): row i is one-hot at its answer
            values, tolerance = _reference_metrics(q[a] @ c[b].T, relevant, temperature)
            for m in PAIR_METRICS:
                matrices[m][i, j], tolerances[m][i, j] = values[m], tolerance[m]
        relevant = np.concatenate([np.eye(len(c[b]), dtype=bool)[answer[b]] for b in LANGS], axis=1)
        pooled.append(_reference_metrics(q[a] @ np.concatenate([c[b] for b in LANGS]).T, relevant, temperature))
    multi = {m: float(np.mean([v[m] for v, _ in pooled])) for m in pooled[0][0]}
    return matrices, tolerances, multi, {m: float(np.mean([t[m] for _, t in pooled])) for m in multi}


def test_runner_matches_a_plain_numpy_reference(evaluated, checkpoints, heldout):
    _, results, _ = evaluated
    for ref, result in zip(checkpoints, results):
        matrices, tolerances, multi, multi_tolerance = _reference(ref, heldout, ref.temperature)
        for m in PAIR_METRICS:
            assert (np.abs(result.matrices[m] - matrices[m]) <= tolerances[m]).all(), m
        for m, value in multi.items():
            assert result.summary[f"multi/{m}"] == pytest.approx(value, abs=multi_tolerance[m]), m
        assert np.mean([t.mean() for t in tolerances.values()]) < 0.02  # the check is mostly exact


def test_summary_settings_are_means_of_the_matrix(evaluated):
    _, results, _ = evaluated
    diagonal = np.eye(len(LANGS), dtype=bool)
    for result in results:
        for m in PAIR_METRICS:
            assert result.summary[f"mono/{m}"] == pytest.approx(result.matrices[m][diagonal].mean())
            assert result.summary[f"cross/{m}"] == pytest.approx(result.matrices[m][~diagonal].mean())
        assert result.summary["multi/map"] == pytest.approx(np.mean([v["map"] for v in result.per_language.values()]))
        assert result.reliability.count.sum() == len(LANGS) * N_QUESTIONS


@pytest.mark.parametrize("n_candidates", [7, GPU_MAX_K + 300])
def test_faiss_full_scores_equal_the_inner_products(n_candidates):
    rng = np.random.default_rng(0)
    queries, candidates = (
        rng.standard_normal((9, 16), dtype=np.float32),
        rng.standard_normal((n_candidates, 16), dtype=np.float32),
    )
    expected = queries @ candidates.T
    np.testing.assert_allclose(full_scores(queries, candidates), expected, atol=1e-5)
    np.testing.assert_allclose(_sharded_search(queries, candidates, lambda index: index), expected, atol=1e-5)


def test_mlqa_style_pairs_use_only_shared_question_ids():
    """MLQA-R: q1 only in en, q2 in en and de. Pair (en, de) scores q2 alone; pooled scores both."""
    questions = {
        "en": [Question("q1", "en", "a", "t"), Question("q2", "en", "b", "t")],
        "de": [Question("q2", "de", "b", "t")],
    }
    candidates = {lang: [Candidate(lang, f"s{i}", "p", "t") for i in range(3)] for lang in ("en", "de")}
    corpus = ParallelCorpus("mlqa-r", questions, candidates, {"q1": {"en": 0}, "q2": {"en": 1, "de": 2}})
    eval_set = EvalSet.from_corpus(corpus)
    assert eval_set.split == "all" and eval_set.positives["en"] == [{"en": (0,)}, {"de": (2,), "en": (1,)}]
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 4), dtype=np.float32)
    cands = {"en": rng.standard_normal((3, 4), dtype=np.float32), "de": rng.standard_normal((3, 4), dtype=np.float32)}
    out = score_query_language(q, eval_set.positives["en"], cands, 0.05, 15)
    expected = M.summarize(q[1:] @ cands["de"].T, np.array([[False, False, True]]), 0.05)
    assert out["pairs"]["de"]["map"] == pytest.approx(expected["map"])
    assert out["confidence"].shape == (2,)


def test_logging_twice_keeps_one_set_of_metrics(evaluated, tmp_path):
    """One LoggedModel per checkpoint with its metrics linked to it and to the evaluation set (a run
    input), L x L tables, and the idempotence key on the model, not among the run's tags; logged again
    after a writer died between the metrics and that key, the metrics are not doubled."""
    from mlflow import MlflowClient

    from evaluation.mlflow_layout import metric_key
    from evaluation.tracking import log_result

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")  # not set_tracking_uri: global state
    experiment = client.create_experiment("eval-test", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    result = evaluated[1][1]
    assert log_result(result, run_id, client) is True
    assert log_result(result, run_id, client) is False  # skipped: the key is on the checkpoint's model
    [model] = client.search_logged_models([experiment])
    client.delete_logged_model_tag(model.model_id, "eval." + result.content_hash)  # a driver killed before the tag
    assert log_result(result, run_id, client) is True  # the tag set, the metrics not logged twice
    history = client.get_metric_history(run_id, metric_key(result.dataset, result.split, "multi/recall@10"))
    assert [(m.step, m.value) for m in history] == [(40, pytest.approx(result.summary["multi/recall@10"]))]
    [model] = client.search_logged_models([experiment])
    assert model.source_run_id == run_id and model.name.endswith("-run0-checkpoint_000040-step-40")
    assert model.params["path"] == result.path and model.params["content_hash"] == result.model_hash
    assert model.tags["mlflow.model.external"] == "true" and "eval." + result.content_hash in model.tags
    linked = {m.key: m for m in model.metrics}
    assert linked[metric_key(result.dataset, result.split, "multi/map")].dataset_name == "xquad-r/heldout-proxy30"
    assert linked[metric_key(result.dataset, result.split, "multi/map")].dataset_digest == result.data_digest[:36]
    run = client.get_run(run_id)
    assert not [t for t in run.data.tags if t.startswith("eval.")]
    [dataset] = run.inputs.dataset_inputs
    assert (dataset.dataset.name, dataset.dataset.digest) == ("xquad-r/heldout-proxy30", result.data_digest[:36])
    assert dataset.tags[0].value == "evaluation" and "lareqa" in dataset.dataset.source
    assert (
        metric_key(result.dataset, result.split, "multi/recall@10") == "eval/xquad-r/heldout-proxy30/multi/recall_at_10"
    )
    folder = "eval/xquad-r/heldout-proxy30/step_40"
    names = {Path(f.path).name for f in client.list_artifacts(run_id, folder)}
    assert {"map.csv", "map.png", "map_at_20.csv", "reliability.csv", "reliability.png", "summary.json"} <= names
    assert "map.json" not in names  # MLflow tables only for full evaluations, a few per run
    full = dataclasses.replace(result, split="heldout", content_hash="f" * 64)
    assert log_result(full, run_id, client) and len(client.search_logged_models([experiment])) == 1
    table = json.loads(
        Path(client.download_artifacts(run_id, "eval/xquad-r/heldout/step_40/map.json", str(tmp_path))).read_text()
    )
    assert table["columns"] == ["query", *result.languages] and [r[0] for r in table["data"]] == list(result.languages)
    np.testing.assert_allclose(np.array([r[1:] for r in table["data"]], dtype=float), result.matrices["map"], atol=1e-6)
    assert client.get_run(run_id).data.params["eval.model"] == "tiny"


def test_miracl_fixture_loads_in_its_own_schema():
    from evaluation.miracl import load_miracl

    pools = load_miracl(None, MIRACL, sample=3)
    assert pools.languages == ("de", "sw") and not pools.parallel and pools.split == "dev"
    assert pools.query_ids["de"] == ["101", "102", "103"]  # 104 has no positive judgement
    assert len(pools.candidates["de"]) == 7 + 3 and len(pools.candidates["sw"]) == 5 + 3
    assert len(pools.positives["de"][2]["de"]) == 2  # 103 has two relevant passages
    assert pools == load_miracl(("de", "sw"), MIRACL, sample=3)  # the sample is seeded
    assert len(load_miracl(("sw",), MIRACL, sample=100).candidates["sw"]) == 10  # the whole small corpus
    with pytest.raises(ValueError, match="available: de, sw"):
        load_miracl(("fr",), MIRACL, sample=3)


def test_miracl_without_a_folder_needs_the_hub(monkeypatch):
    import datasets
    import huggingface_hub.constants

    from evaluation.miracl import load_miracl

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # no 25 s of retries: the hub is down here
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match="--data-dir"):
        load_miracl(("sw",), None, sample=3)


def test_miracl_scores_mono_only(local_ray, checkpoints):
    from evaluation.miracl import load_miracl

    config = EvalConfig(dataset="miracl", data_dir=str(MIRACL), miracl_sample=3)
    (result,) = evaluate_checkpoints(checkpoints[:1], load_miracl(None, MIRACL, 3), config)
    assert {k.split("/")[0] for k in result.summary} == {"mono"}
    assert result.encode_tasks == 4 and result.dataset == "miracl"
    assert np.isnan(result.matrices["map"][0, 1]) and 0 < result.summary["mono/map"] <= 1
    assert set(result.per_language) == {"de", "sw"}


def test_cli_prints_the_tables(local_ray, tiny_model_dir, capsys):
    from evaluation.__main__ import main

    (result,) = main(["--checkpoint", str(tiny_model_dir), "--languages", "en", "de", "--max-questions", "10"])
    out = capsys.readouterr().out
    assert result.encode_tasks == 4 and "encode tasks 4" in out
    for row in ("mono", "cross", "multi", "rank_distance", "mAP (rows: query language"):
        assert row in out


def test_num_cpus_beside_a_running_ray_is_one_line(local_ray, tiny_model_dir):
    """Issue 33: `--num-cpus` with a Ray to join (RAY_ADDRESS) ended in Ray's ValueError traceback; now one
    line before Ray starts."""
    import subprocess
    import sys

    from support import ROOT, driver_env

    env = driver_env() | {"RAY_ADDRESS": local_ray.get_runtime_context().gcs_address}
    done = subprocess.run(
        [sys.executable, "-m", "evaluation", "--checkpoint", str(tiny_model_dir), "--num-cpus", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.startswith("error: --num-cpus=1: this command joins the Ray at RAY_ADDRESS=")
    assert done.stderr.count("\n") == 1 and "RAY_ADDRESS=local" in done.stderr


def test_a_folder_without_a_spec_is_read_as_the_preset_says(checkpoints, tmp_path):
    """The CLI reads a base model (no hybrid_encoder.json) with the preset's model.*, our exports as saved."""
    from evaluation.checkpoints import unless_saved
    from hybrid.spec import EncoderSpec

    spec = EncoderSpec(max_length=16)
    plain = tmp_path / "plain"
    shutil.copytree(checkpoints[0].path, plain)
    (plain / "hybrid_encoder.json").unlink()
    asked = []
    spec_of = lambda path: asked.append(path) or spec  # noqa: E731
    assert unless_saved(CheckpointRef.from_path(str(plain)), spec_of).spec == spec
    assert unless_saved(CheckpointRef.from_path("multilingual-e5-small"), spec_of).spec == spec
    assert unless_saved(checkpoints[0], spec_of).spec is None and unless_saved(checkpoints[1], spec_of).spec is None
    assert asked == [str(plain), "multilingual-e5-small"]  # a saved export's own files are not read again


def test_content_hash_depends_on_the_files_not_their_location(checkpoints, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(checkpoints[1].path, copy)
    assert content_hash(str(copy)) == content_hash(checkpoints[1].path)


def test_result_survives_the_json_hand_off_to_the_driver(evaluated):
    """A trial on a worker node passes its evaluation to the sweep driver as JSON: nothing is lost (NaN
    cells of the matrices and empty reliability bins included)."""
    from evaluation.results import EvalResult

    result = evaluated[1][1]
    back = EvalResult.from_json(result.to_json())
    assert (back.checkpoint, back.step, back.content_hash, back.languages, back.summary, back.per_language) == (
        result.checkpoint,
        result.step,
        result.content_hash,
        result.languages,
        result.summary,
        result.per_language,
    )
    for metric, matrix in result.matrices.items():
        np.testing.assert_array_equal(back.matrices[metric], matrix)
    for name in ("lower", "upper", "count", "confidence", "accuracy"):
        np.testing.assert_array_equal(getattr(back.reliability, name), getattr(result.reliability, name))


def test_a_cut_short_or_altered_export_is_never_evaluated(tiny_model_dir, tmp_path):
    """An export with a manifest (every training checkpoint's encoder/) is checked before it is loaded:
    a truncated or altered file is named; a folder without one (a user's model) is taken as it is."""
    from evaluation.checkpoints import local_model_dir
    from hybrid import manifest

    export = tmp_path / "encoder"
    shutil.copytree(tiny_model_dir, export)
    assert local_model_dir(str(export)) == export  # no manifest: a plain model folder
    manifest.write(export)
    assert local_model_dir(str(export)) == export
    config = export / "config.json"
    original = config.read_text()
    config.write_text(original.replace('"', "'", 1))  # same size, other bytes
    with pytest.raises(manifest.IncompleteCheckpoint, match=r"config.json: sha256 differs from the manifest"):
        local_model_dir(str(export))
    config.write_text(original)
    weights = export / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(100)
    with pytest.raises(manifest.IncompleteCheckpoint, match=r"model.safetensors: 100 bytes, the manifest says"):
        local_model_dir(str(export))


@pytest.mark.timeout(180)  # 60 s on 2 busy cores (Ray's start, 2 models' tasks)
def test_the_cli_says_each_models_progress_and_keeps_rays_start_up_lines_out(tiny_model_dir, tmp_path):
    """Issue 34: three models on MLQA-R printed nothing but Ray's start-up lines for 9.6 minutes, then
    everything at once. Now a line as it starts and one per model as its figures are in, with the time left
    (the sweep's final evaluation's lines), before the tables; Ray's start-up lines only with --verbose."""
    import re
    import subprocess
    import sys

    from hybrid import manifest

    from support import ROOT, driver_env

    models = [str(tiny_model_dir), str(shutil.copytree(tiny_model_dir, tmp_path / "second"))]
    altered = shutil.copytree(tiny_model_dir, tmp_path / "altered")  # issue 33: one line, the others evaluated
    manifest.write(altered)
    (altered / "config.json").write_text((altered / "config.json").read_text().replace('"', "'", 1))
    done = subprocess.run(
        [sys.executable, "-m", "evaluation", "--checkpoint", models[0], str(altered), models[1],
         "--languages", "en", "de", "--max-questions", "5", "--num-cpus", "2"],
        cwd=ROOT, env=driver_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"error: {altered}/config.json: sha256 differs from the manifest (altered). Not evaluated.\n" in done.stderr
    out = done.stdout
    assert re.search(r"^\d\d:\d\d:\d\d evaluation on xquad-r started: 2 models", out, re.MULTILINE), out[:2000]
    for model in models:
        assert re.search(rf"evaluation on xquad-r: {re.escape(model)} done after \d+ s \([12]/2", out), out[:2000]
    assert "(1/2, about " in out and out.index("(2/2)") < out.index("== ")  # the time left; before the tables
    for start_up in ("Started a local Ray instance", "Token authentication", "INFO worker.py"):
        assert start_up not in out + done.stderr, done.stderr[-3000:]


def test_bf16_encoding_is_recorded_and_keyed_apart_and_auto_is_settled_by_its_check(
    local_ray, evaluated, checkpoints, heldout
):
    """eval.precision: bf16 figures carry their precision (result, lineage) and their own cache key; the runner
    refuses an unsettled `auto`; `auto` becomes bf16 only on the check's measured evidence (`evaluation.precision`)."""
    from evaluation import precision
    from evaluation.tracking import lineage

    config, fp32, _ = evaluated
    bf16 = evaluate_checkpoints(checkpoints, heldout, dataclasses.replace(config, precision="bf16"))
    for low, full in zip(bf16, fp32):
        assert (low.precision, full.precision, lineage(low)["precision"]) == ("bf16", "fp32", "bf16")
        assert low.content_hash != full.content_hash and low.model_hash == full.model_hash
        assert max(precision.deltas(full, low, pooled=100).values()) < 0.05  # the same model, to bf16's precision
    with pytest.raises(ValueError, match="settle it first"):
        evaluate_checkpoints(checkpoints, heldout, dataclasses.replace(config, precision="auto"))
    with pytest.raises(ValueError, match=r"eval.precision must be one of \('fp32', 'bf16', 'auto'\)"):
        EvalConfig(precision="fp16")

    check = precision.settle(
        dataclasses.replace(config, precision="auto"), checkpoints[1], EvalSet.from_corpus(heldout)
    )
    if not precision.cpu_has_bf16():
        assert (check.precision, check.speedup) == ("fp32", None) and "AVX-512 BF16" in check.reason
    elif check.speedup < precision.MIN_SPEEDUP:
        assert check.precision == "fp32" and check.max_delta is None and "as fast here" in check.reason
    else:
        assert (check.precision == "bf16") == (check.max_delta <= precision.TOLERANCE), check
    assert precision.settle(config, checkpoints[1], None).precision == "fp32"  # set, not checked
