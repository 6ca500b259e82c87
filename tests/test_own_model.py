"""Bring your own model and data (issue 34): a model's encoder settings (`model.pooling`, the two prefixes,
`max_length`) not given are read from its own files (`hybrid.model_settings`), said in one line at the
start of a run, or the model is refused in one line naming what to set; e5-small's are never assumed for
another model. Shown on three real models: the packaged e5-small, the tiny test model (a checkpoint of
this project: hybrid_encoder.json and a sentence-transformers config), and a folder with a
sentence-transformers config of its own, cross-checked against sentence-transformers itself. Then the
worked example of one's own data (examples/own-data), as the README shows it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hybrid.config import ModelConfig
from hybrid.model_settings import settle

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "own-data"
PLAIN_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
ASK = (  # the fix every refusal below ends with
    "as its model card says (e5-small's are never assumed for another model), e.g. --set model.pooling=mean "
    "--set model.query_prefix='' --set model.passage_prefix='' --set model.max_length=256."
)
ALL = "model.pooling, model.query_prefix, model.passage_prefix, model.max_length"


@pytest.fixture
def plain(tmp_path, tiny_model_dir) -> Path:
    """The tiny model as a plain Hugging Face folder: weights, tokenizer, config.json, nothing that says
    how it embeds."""
    folder = tmp_path / "plain"
    folder.mkdir()
    for name in PLAIN_FILES:
        shutil.copy(tiny_model_dir / name, folder / name)
    return folder


def write_sentence_transformers_config(folder: Path, pooling: dict, modules: tuple[str, ...] = ()) -> Path:
    """A sentence-transformers config of the folder's own: `pooling` as 1_Pooling/config.json, a search
    model's prompts, 32 tokens; `modules` (e.g. Dense) added between pooling and normalisation."""
    kinds = [("Transformer", ""), ("Pooling", "1_Pooling"), *((m, f"2_{m}") for m in modules), ("Normalize", "3_Norm")]
    listed = [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (kind, path) in enumerate(kinds)
    ]
    (folder / "modules.json").write_text(json.dumps(listed))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 32, **pooling}))
    (folder / "3_Norm").mkdir()
    prompts = {"query": "search_query: ", "document": "search_document: "}
    (folder / "config_sentence_transformers.json").write_text(json.dumps({"prompts": prompts}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32, "do_lower_case": False}))
    return folder


@pytest.fixture
def own(plain) -> Path:
    """A folder with a sentence-transformers config of its own: cls pooling, other prompts, 32 tokens."""
    return write_sentence_transformers_config(plain, {"pooling_mode": "cls"})


def test_e5_small_keeps_its_known_settings_by_its_name():
    """The packaged default reads as it always has; its converted folder carries no sentence-transformers
    config, so given by path it is another model and is refused like any plain folder."""
    from hybrid.e5_offline import ensure_e5_small

    assert settle(ModelConfig()).line() == (
        "model multilingual-e5-small: pooling='mean', query_prefix='query: ', passage_prefix='passage: ', "
        "max_length=64 (e5-small's known settings); freeze_embeddings=true"
    )
    assert settle(ModelConfig()).config.spec.max_length == 64
    folder = str(ensure_e5_small())
    with pytest.raises(ValueError) as refused:
        settle(ModelConfig(name=folder))
    assert str(refused.value) == (
        f"model.name={folder!r}: {folder} has no sentence-transformers config (modules.json) to read its "
        f"settings from; set {ALL} {ASK}"
    )


def test_the_tiny_test_model_says_how_it_embeds_as_our_checkpoints_do(tiny_model_dir):
    """A checkpoint of this project: its hybrid_encoder.json is read, the settings given win (the tests'
    32 tokens), freeze_embeddings is said."""
    assert {"hybrid_encoder.json", "modules.json", "config_sentence_transformers.json"} <= {
        p.name for p in tiny_model_dir.iterdir()
    }
    settled = settle(ModelConfig(name=str(tiny_model_dir), max_length=32, freeze_embeddings=False))
    assert settled.line() == (
        f"model {tiny_model_dir}: pooling='mean', query_prefix='query: ', passage_prefix='passage: ' "
        f"(hybrid_encoder.json), max_length=32 (given); read in {tiny_model_dir}; freeze_embeddings=false"
    )


def test_a_plain_folder_is_refused_naming_only_the_settings_not_given(plain):
    with pytest.raises(ValueError) as refused:
        settle(ModelConfig(name=str(plain)))
    assert str(refused.value) == (
        f"model.name={str(plain)!r}: {plain} has no sentence-transformers config (modules.json) to read its "
        f"settings from; set {ALL} {ASK}"
    )
    with pytest.raises(
        ValueError, match=r"; set model.max_length as its model card says .* e.g. --set model.max_length=256\.$"
    ):
        settle(ModelConfig(name=str(plain), pooling="cls", query_prefix="", passage_prefix=""))
    given = settle(ModelConfig(name=str(plain), pooling="cls", query_prefix="", passage_prefix="", max_length=48))
    assert given.line(training=False) == (
        f"model {plain}: pooling='cls', query_prefix='', passage_prefix='', max_length=48 (given)"
    )


def test_a_sentence_transformers_config_of_its_own_is_read_and_given_settings_win(own):
    assert settle(ModelConfig(name=str(own))).line() == (
        f"model {own}: pooling='cls' (1_Pooling/config.json), query_prefix='search_query: ' "
        "(config_sentence_transformers.json prompts.query), passage_prefix='search_document: ' "
        "(config_sentence_transformers.json prompts.document), max_length=32 (sentence_bert_config.json); "
        f"read in {own}; freeze_embeddings=true"
    )
    settled = settle(ModelConfig(name=str(own), query_prefix="query: ", max_length=16))
    assert settled.line().startswith(
        f"model {own}: pooling='cls' (1_Pooling/config.json), query_prefix='query: ' (given), "
        "passage_prefix='search_document: ' (config_sentence_transformers.json prompts.document), max_length=16 "
        "(given); "
    )


def test_older_and_newer_sentence_transformers_files_are_read(plain):
    """Pooling as sentence-transformers < 6 wrote it (a flag per mode), no prompts file (no prefixes), and
    no max_seq_length (sentence-transformers 6: the tokenizer's limit, capped by the model's positions)."""
    write_sentence_transformers_config(plain, {"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True})
    (plain / "config_sentence_transformers.json").unlink()
    (plain / "sentence_bert_config.json").write_text(json.dumps({"do_lower_case": False}))
    assert settle(ModelConfig(name=str(plain))).line(training=False) == (
        f"model {plain}: pooling='mean' (1_Pooling/config.json), query_prefix='' (no query prompt), "
        "passage_prefix='' (no document/passage/corpus prompt), max_length=64 (config.json "
        f"max_position_embeddings); read in {plain}"
    )


def test_what_the_encoder_cannot_apply_is_said_or_refused(plain):
    write_sentence_transformers_config(plain, {"pooling_mode": "lasttoken"}, modules=("Dense",))
    with pytest.raises(ValueError) as refused:
        settle(ModelConfig(name=str(plain)))
    assert str(refused.value) == (
        "model.pooling must be one of ('mean', 'cls'), got 'lasttoken' (read from "
        f"{plain}/1_Pooling/config.json); set model.pooling to override it."
    )
    assert (
        settle(ModelConfig(name=str(plain), pooling="mean"))
        .line()
        .endswith(f"; read in {plain}; not applied: Dense (2_Dense); freeze_embeddings=true")
    )


def test_what_is_read_is_what_sentence_transformers_applies(own):
    """The folder's own embeddings, by sentence-transformers' encode_query / encode_document, equal the
    encoder's with the settings read: pooling, both prompts and the length are theirs."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from hybrid.model import load_encoder

    texts = ["How high is Uhuru Peak?", "Kilimanjaro is the highest mountain in Africa. " * 4]
    encoder = load_encoder(str(own), settle(ModelConfig(name=str(own))).config.spec)
    theirs = SentenceTransformer(str(own), device="cpu")
    for side, encode in (("query", theirs.encode_query), ("passage", theirs.encode_document)):
        assert np.allclose(encoder.encode(texts, side), encode(texts), atol=1e-5), side


def test_a_hub_name_is_read_from_the_local_cache_and_never_downloaded(own, tmp_path, monkeypatch):
    import huggingface_hub

    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny-retriever"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(own, snapshot)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert settle(ModelConfig(name="acme/tiny-retriever")).config.spec.pooling == "cls"
    assert f"; read in {snapshot}; " in settle(ModelConfig(name="acme/tiny-retriever")).line()
    with pytest.raises(ValueError) as refused:
        settle(ModelConfig(name="BAAI/bge-m3"))
    assert str(refused.value) == (
        f"model.name='BAAI/bge-m3': not a folder, and not in the local Hugging Face cache {cache}, so its "
        "settings cannot be read (nothing is downloaded: `hf download BAAI/bge-m3` puts it there); set "
        f"{ALL} {ASK}"
    )
    settle(ModelConfig(name="BAAI/bge-m3", pooling="cls", query_prefix="", passage_prefix="", max_length=512))


def test_a_folder_in_storage_is_read_where_it_is(own, s3_bucket):
    """An s3:// model (the GPU presets' kind), read before any node copies it."""
    from hybrid import storage
    from hybrid.spec import EncoderSpec

    from support import upload

    uri = storage.join(s3_bucket, "own-model")
    upload(own, uri)
    settled = settle(ModelConfig(name=uri))
    assert settled.config.spec == EncoderSpec("cls", "search_query: ", "search_document: ", 32)
    assert f"; read in {uri}; " in settled.line()


def _command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=180)


def test_show_config_says_what_was_read_and_imports_nothing_heavy(own):
    done = _command("-X", "importtime", "sweeps/ratio_search.py", "--show-config", "--set", f"model.name={own}")
    assert done.returncode == 0, done.stderr[-2000:]
    first = done.stdout.splitlines()[0]
    assert first == f"# {settle(ModelConfig(name=str(own))).line()}"
    shown = yaml.safe_load(done.stdout)["model"]
    assert shown == {
        "name": str(own),
        "pooling": "cls",
        "query_prefix": "search_query: ",
        "passage_prefix": "search_document: ",
        "max_length": 32,
        "freeze_embeddings": True,
    }
    loaded = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert not {m for m in loaded if m.split(".")[0] in ("torch", "ray", "transformers", "mlflow", "deepspeed")}


def _main(module: str, argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `python -m module ARGV`, run in this process: the sweep's command
    line runs in its own (it takes over the signals), these two would spend seconds importing Ray again."""
    import importlib

    with pytest.raises(SystemExit) as stop:
        importlib.import_module(module).main(argv)
    out, err = capsys.readouterr()
    return stop.value.code, out, err


def test_each_command_refuses_a_model_that_does_not_say_in_one_line(plain, capsys):
    refusal = (
        f"error: model.name={str(plain)!r}: {plain} has no sentence-transformers config (modules.json) to read "
        f"its settings from; set {ALL} {ASK}\n"
    )
    sweep = _command("sweeps/ratio_search.py", "--set", f"model.name={plain}")
    assert (sweep.returncode, sweep.stdout, sweep.stderr) == (2, "", refusal)
    assert _main("trainers.train", ["--set", f"model.name={plain}"], capsys) == (2, "", refusal)
    refusal = refusal.replace("model.name=", "--checkpoint=")  # named as the command was given it
    assert _main("evaluation.__main__", ["--checkpoint", str(plain)], capsys) == (2, "", refusal)


def test_training_and_evaluation_say_what_was_read_before_anything_starts(own, capsys):
    """The line comes first: here a later check then stops each command, before Ray starts."""
    settled = settle(ModelConfig(name=str(own)))
    status, out, err = _main("trainers.train", ["--set", f"model.name={own}", "--set", "method.batch_size=400"], capsys)
    assert (status, out) == (2, f"{settled.line()}\n") and "exceeds the distinct questions" in err
    merge = ["--merge", "/no/first", "/no/second"]
    status, out, err = _main("evaluation.__main__", ["--checkpoint", str(own), *merge], capsys)
    assert (status, out) == (2, f"{settled.line(training=False)}\n") and "--merge /no/first: not a local" in err


def test_the_worked_example_of_ones_own_data(tmp_path):
    """examples/own-data as the README shows it: training rows in the documented schema (`negative`
    optional: a text, null, "" or left out), and an evaluation folder of LAReQA files whose held-out
    article validates and evaluates while the rows train."""
    from evaluation.config import EvalConfig
    from evaluation.datasets import load_eval_set
    from hybrid.config import DataConfig
    from hybrid.data import TrainingPair, load_corpus, load_training_pairs
    from hybrid.splits import heldout_corpus, training_pairs

    rows = load_training_pairs(str(EXAMPLE / "train.jsonl"))
    assert rows == [
        TrainingPair(
            "bridge-1",
            "en",
            "When did the Golden Gate Bridge open?",
            "The Golden Gate Bridge opened to traffic in 1937.",
            "The bridge is painted a colour called International Orange.",
        ),
        TrainingPair(
            "bridge-1",
            "de",
            "Wann wurde die Golden Gate Bridge eröffnet?",
            "Die Golden Gate Bridge wurde 1937 für den Verkehr freigegeben.",
        ),
        TrainingPair("danube-1", "en", "Into which sea does the Danube flow?", "The Danube flows into the Black Sea."),
        TrainingPair("danube-1", "de", "In welches Meer mündet die Donau?", "Die Donau mündet ins Schwarze Meer."),
    ]
    folder = str(EXAMPLE / "eval")
    corpus = load_corpus(folder)
    assert corpus.languages == ("de", "en") and corpus.articles == ("Kilimanjaro", "Rhine")
    assert corpus.candidates["de"][1].sentence.startswith("Sein Gipfel")
    assert corpus.relevant("kili-1") == [("de", 1), ("en", 1)]  # the answer's sentence, in every language
    data = DataConfig(
        dataset=folder,
        train_data=str(EXAMPLE / "train.jsonl"),
        train_languages=("en", "de"),
        eval_languages=("en", "de"),
    )
    train, validation = training_pairs(data)
    heldout = heldout_corpus(data)
    assert train == rows and len(heldout.articles) == 1  # 0.25 of 2 articles: at least one
    assert {p.id for p in validation} == {q.id for q in heldout.questions["en"]}
    evaluated = load_eval_set(EvalConfig(dataset=folder), data)  # eval.dataset = data.dataset: the held-out part
    assert evaluated.split == heldout.name.split("/")[-1] and evaluated.query_ids["de"] == [
        q.id for q in heldout.questions["de"]
    ]
    whole = load_eval_set(EvalConfig(dataset=folder), DataConfig())  # another corpus trains: all of it evaluates
    assert sorted(whole.query_ids["en"]) == ["kili-1", "rhine-1"]
