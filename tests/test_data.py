import copy
import functools
import gzip
import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest

from hybrid.data import (
    XQUAD_R_LANGUAGES,
    DataFormatError,
    load_corpus,
    load_lareqa,
    load_training_pairs,
    sources,
    split_by_article,
)

XQUAD = Path(sources.PACKAGED_DATA) / "xquad-r"


def test_xquad_r_counts(xquad):
    assert xquad.languages == XQUAD_R_LANGUAGES
    assert {lang: len(qs) for lang, qs in xquad.questions.items()} == {lang: 1190 for lang in xquad.languages}
    assert sum(len(c) for c in xquad.candidates.values()) == 13_014
    assert len(xquad.candidates["th"]) == 852
    assert len(xquad.answers) == 1190
    assert all(len(xquad.relevant(qid)) == 11 for qid in xquad.answers)  # pooled multilingual setting
    assert len(xquad.articles) == 48


def test_relevant_candidate_holds_the_answer(xquad):
    raw = json.loads(gzip.open(XQUAD / "en.json.gz", "rt", encoding="utf-8").read())
    qa = raw["data"][0]["paragraphs"][0]["qas"][0]
    sentence = xquad.candidates["en"][xquad.answers[qa["id"]]["en"]].sentence
    assert qa["answers"][0]["text"] in sentence


def test_split_is_disjoint_by_article_and_deterministic(xquad):
    train, heldout = split_by_article(xquad, 0.25, seed=0)
    assert set(train.articles).isdisjoint(heldout.articles)
    assert len(train.articles) + len(heldout.articles) == 48 and len(heldout.articles) == 12
    for part in (train, heldout):
        arts = set(part.articles)
        assert all(c.article in arts for cs in part.candidates.values() for c in cs)
        for qid in part.answers:  # renumbered indices still point at the right sentence
            for lang, idx in part.answers[qid].items():
                assert part.candidates[lang][idx].article in arts
    assert set(train.answers).isdisjoint(heldout.answers)
    sentences = {c.sentence for c in train.candidates["en"]}
    assert not sentences & {c.sentence for c in heldout.candidates["en"]}
    again, _ = split_by_article(xquad, 0.25, seed=0)
    assert again.articles == train.articles
    assert split_by_article(xquad, 0.25, seed=1)[0].articles != train.articles


def test_select_languages_keeps_el_vi_unseen(xquad):
    train = xquad.select_languages(["ar", "de", "en", "es", "hi", "ru", "th", "tr", "zh"])
    assert "el" not in train.languages and "vi" not in train.languages
    assert all(set(by_lang) <= set(train.languages) for by_lang in train.answers.values())
    with pytest.raises(ValueError, match="available: ar, de"):
        xquad.select_languages(["en", "xx"])


def _write(folder: Path, lang: str, doc) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{lang}.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def _good_doc():
    return {
        "version": "1.1",
        "data": [
            {
                "title": "T",
                "paragraphs": [
                    {
                        "context": "One two. Three four.",
                        "sentences": ["One two.", "Three four."],
                        "sentence_breaks": [[0, 8], [9, 20]],
                        "qas": [{"id": "q1", "question": "What?", "answers": [{"answer_start": 9, "text": "Three"}]}],
                    }
                ],
            }
        ],
    }


def test_malformed_json_names_the_file(tmp_path):
    _write(tmp_path, "en", '{"data": [')
    with pytest.raises(DataFormatError, match=r"en\.json: not valid .*JSON"):
        load_lareqa(tmp_path, "x")


def test_answer_outside_every_sentence_names_the_record(tmp_path):
    doc = _good_doc()
    doc["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 99
    _write(tmp_path, "en", doc)
    with pytest.raises(DataFormatError, match=r"en\.json.*'q1'.*outside every sentence.*Fix `answer_start`"):
        load_lareqa(tmp_path, "x")


def test_missing_field_names_the_record(tmp_path):
    doc = _good_doc()
    del doc["data"][0]["paragraphs"][0]["qas"][0]["question"]
    _write(tmp_path, "en", doc)
    with pytest.raises(DataFormatError, match=r"question 'q1'.*missing or malformed field 'question'"):
        load_lareqa(tmp_path, "x")


def test_unknown_language_code(tmp_path):
    _write(tmp_path, "en", _good_doc())
    with pytest.raises(ValueError, match="unknown language code 'english'.*ISO 639-1"):
        load_lareqa(tmp_path, "x", languages=("english",))
    with pytest.raises(ValueError, match=r"no file for language\(s\) \['de'\].*available: en"):
        load_lareqa(tmp_path, "x", languages=("de",))


def test_empty_language(tmp_path):
    _write(tmp_path, "de", {"version": "1.1", "data": []})
    with pytest.raises(DataFormatError, match=r"de\.json: language 'de' has no questions"):
        load_lareqa(tmp_path, "x")


def test_good_file_loads(tmp_path):
    _write(tmp_path, "en", _good_doc())
    doc = _good_doc()
    doc["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 0
    _write(tmp_path, "de", doc)
    corpus = load_lareqa(tmp_path, "x")
    assert corpus.answers == {"q1": {"de": 0, "en": 1}}


@pytest.fixture
def mlqa_server(tmp_path, monkeypatch):
    """A local HTTP server on 127.0.0.1 serving fake MLQA-R files whose sha256 the loader expects."""
    served = tmp_path / "served"
    digests = {}
    for lang in ("en", "de"):
        doc = copy.deepcopy(_good_doc())
        doc["data"][0]["title"] = f"T-{lang}"
        digests[lang] = hashlib.sha256(_write(served, lang, doc).read_bytes()).hexdigest()
    monkeypatch.setattr(sources, "MLQA_R_SHA256", digests)
    monkeypatch.setenv("HYBRID_SWEEP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(sources.MLQA_R_ENV, raising=False)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_mlqa_download_checks_sha256_and_caches(mlqa_server, tmp_path):
    served, url = mlqa_server
    folder = sources.mlqa_r_dir(base_url=url)
    assert folder == tmp_path / "cache" / "data" / "mlqa-r"
    assert sorted(p.name for p in folder.iterdir()) == ["de.json", "en.json"]
    corpus = load_lareqa(folder, "mlqa-r")
    assert corpus.languages == ("de", "en")
    (served / "en.json").write_text("tampered")  # verified files are not fetched again
    assert sources.mlqa_r_dir(base_url=url) == folder


def test_mlqa_download_rejects_a_bad_checksum(mlqa_server, monkeypatch):
    _, url = mlqa_server
    monkeypatch.setitem(sources.MLQA_R_SHA256, "en", "0" * 64)
    with pytest.raises(ValueError, match="sha256 mismatch"):
        sources.mlqa_r_dir(base_url=url)


def test_mlqa_offline_without_mirror_says_how_to_provide_one(mlqa_server):
    with pytest.raises(ConnectionError, match="--data-dir or the HYBRID_SWEEP_MLQA_R_DIR"):
        sources.mlqa_r_dir(base_url="http://127.0.0.1:9")  # nothing listens on the discard port


def test_mlqa_local_mirror(tmp_path, monkeypatch):
    _write(tmp_path / "mirror", "en", _good_doc())
    monkeypatch.setenv(sources.MLQA_R_ENV, str(tmp_path / "mirror"))
    assert load_corpus("mlqa-r").languages == ("en",)
    monkeypatch.setenv(sources.MLQA_R_ENV, str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no MLQA-R"):
        load_corpus("mlqa-r")


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'squad'"):
        load_corpus("squad")


def test_user_training_data_schema(tmp_path):
    rows = [
        {"id": "a", "lang": "en", "query": "q?", "positive": "p.", "negative": "n."},
        {"id": "a", "lang": "de", "query": "f?", "positive": "a.", "negative": None},
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    pairs = load_training_pairs(str(path))
    assert [(p.id, p.lang, p.negative) for p in pairs] == [("a", "en", "n."), ("a", "de", None)]
    path.write_text(json.dumps({"id": "a", "language": "en", "query": "q", "positive": "p"}))
    with pytest.raises(ValueError, match=r"missing column\(s\) \['lang'\]"):
        load_training_pairs(str(path))
    path.write_text(json.dumps({"id": "a", "lang": "EN", "query": "q", "positive": "p"}))
    with pytest.raises(ValueError, match="row 0: unknown language code 'EN'"):
        load_training_pairs(str(path))
    path.write_text(json.dumps({"id": "a", "lang": "en", "query": "", "positive": "p"}))
    with pytest.raises(ValueError, match="row 0 has an empty or non-text 'query'"):
        load_training_pairs(str(path))


def test_user_data_follows_the_training_languages(tmp_path, caplog):
    """Rows outside data.train_languages (e.g. a zero-shot language) never reach training, with a count in
    the log; the searched `num_train_languages` narrows user data like the packaged corpus."""
    from hybrid.config import DataConfig
    from hybrid.splits import training_pairs

    rows = [
        {"id": str(i), "lang": lang, "query": f"{lang} q{i}", "positive": f"{lang} p{i}"}
        for i in range(4)
        for lang in ("en", "de", "el")
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    train, _ = training_pairs(DataConfig(train_languages=("en", "de"), train_data=str(path)))
    assert sorted({p.lang for p in train}) == ["de", "en"] and len(train) == 8
    assert "4 rows in languages outside data.train_languages left out: {'el': 4}" in caplog.text
    with pytest.raises(
        ValueError, match=r"no row in data.train_languages \['ar', 'zh'\] \(the data has \['de', 'el', 'en'\]\)"
    ):
        training_pairs(DataConfig(train_languages=("ar", "zh"), train_data=str(path)))
    path.write_text(json.dumps({"id": "a", "lang": "en", "query": "q", "positive": "p", "negative": 3}))
    with pytest.raises(ValueError, match="row 0 has a non-text 'negative' \\(3\\)"):
        load_training_pairs(str(path))


def test_mlqa_r_loads_from_the_real_files(mlqa_r_dir):
    """The pinned files themselves: 7 languages, 4,199 questions, 20,534 candidate sentences, each question
    with a correct sentence in each of its 2-4 languages (MLQA's questions exist in 2-4 languages)."""
    from collections import Counter

    from evaluation.eval_set import EvalSet

    for lang, digest in sources.MLQA_R_SHA256.items():
        assert hashlib.sha256((mlqa_r_dir / f"{lang}.json").read_bytes()).hexdigest() == digest, lang
    eval_set = EvalSet.from_corpus(load_corpus("mlqa-r", data_dir=mlqa_r_dir))
    assert eval_set.languages == ("ar", "de", "en", "es", "hi", "vi", "zh")
    assert sum(map(len, eval_set.queries.values())) == 4199
    assert sum(map(len, eval_set.candidates.values())) == 20534
    correct = Counter(sum(map(len, pos.values())) for lang in eval_set.languages for pos in eval_set.positives[lang])
    assert sorted(correct) == [2, 3, 4] and correct.total() == 4199
