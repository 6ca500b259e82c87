import json

import numpy as np
import pytest
import torch

from hybrid.model import load_encoder
from hybrid.spec import EncoderSpec
from hybrid.tiny import tiny_encoder

TEXTS = [f"sentence number {i} about topic {i % 7}" + " word" * (i % 5) for i in range(40)]


@pytest.fixture(scope="module")
def encoder():
    return tiny_encoder(TEXTS)


def test_embeddings_are_unit_vectors_in_input_order(encoder):
    out = encoder.encode(TEXTS, "passage", batch_size=7)
    assert out.shape == (40, encoder.dimension) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    one_by_one = np.concatenate([encoder.encode([t], "passage") for t in TEXTS[:10]])
    np.testing.assert_allclose(out[:10], one_by_one, atol=1e-5)  # length-sorted batching keeps order


def test_prefixes_distinguish_sides(encoder):
    assert not np.allclose(encoder.encode(TEXTS[:3], "query"), encoder.encode(TEXTS[:3], "passage"))


def test_one_forward_call_embeds_each_group_at_its_own_padding(encoder):
    """Training passes queries and passages to one forward call, each padded to its own longest text:
    the embeddings are those of separate calls, in order, with fewer padded tokens than one tensor."""
    q, p = encoder.tokenize(TEXTS[:4], "query"), encoder.tokenize(TEXTS[4:12], "passage")
    encoder.eval()  # no dropout: the same weights give the same vectors
    with torch.no_grad():
        both = encoder(q["input_ids"], q["attention_mask"], p["input_ids"], p["attention_mask"])
        apart = torch.cat([encoder(q["input_ids"], q["attention_mask"]), encoder(p["input_ids"], p["attention_mask"])])
    encoder.train()
    torch.testing.assert_close(both, apart)
    np.testing.assert_allclose(both[:4].numpy(), encoder.encode(TEXTS[:4], "query"), atol=1e-5)
    assert q["input_ids"].shape[1] < p["input_ids"].shape[1]  # the queries were not padded to the passages

    groups, order = encoder.tokenize_groups(TEXTS[:10], "passage", 4)  # sorted by length, padded by fours
    assert sorted(order) == list(range(10)) and [len(g["input_ids"]) for g in groups] == [4, 4, 2]
    lengths = [int(g["attention_mask"].sum(1).max()) for g in groups]
    assert lengths == sorted(lengths) and all(g["input_ids"].shape[1] == n for g, n in zip(groups, lengths))
    encoder.eval()
    with torch.no_grad():
        rows = encoder(*[t for g in groups for t in (g["input_ids"], g["attention_mask"])])
    encoder.train()
    np.testing.assert_allclose(rows.numpy(), encoder.encode([TEXTS[i] for i in order], "passage"), atol=1e-5)


def test_cls_pooling_differs_from_mean():
    mean = tiny_encoder(TEXTS, EncoderSpec(pooling="mean", max_length=32))
    cls = tiny_encoder(TEXTS, EncoderSpec(pooling="cls", max_length=32))
    assert not np.allclose(mean.encode(TEXTS[:3], "query"), cls.encode(TEXTS[:3], "query"))
    with pytest.raises(ValueError, match="pooling must be one of"):
        EncoderSpec(pooling="max")


def test_saved_encoder_loads_with_transformers_and_sentence_transformers(encoder, tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    encoder.save(tmp_path / "export")
    expected = encoder.encode(TEXTS[:5], "query")
    assert (tmp_path / "export" / "model.safetensors").exists()

    model, tok = AutoModel.from_pretrained(tmp_path / "export"), AutoTokenizer.from_pretrained(tmp_path / "export")
    batch = tok(["query: " + t for t in TEXTS[:5]], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    plain = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    np.testing.assert_allclose(plain, expected, atol=1e-5)

    st = SentenceTransformer(str(tmp_path / "export"), device="cpu")
    np.testing.assert_allclose(st.encode(TEXTS[:5], prompt_name="query"), expected, atol=1e-5)
    np.testing.assert_allclose(st.encode_query(TEXTS[:5]), expected, atol=1e-5)
    passages = encoder.encode(TEXTS[:5], "passage")  # with its prefix (an empty default prompt once took it)
    np.testing.assert_allclose(st.encode_document(TEXTS[:5]), passages, atol=1e-5)

    reloaded = load_encoder(str(tmp_path / "export"))
    assert reloaded.spec == encoder.spec
    # The added tokens are in tokenizer_config.json (a load then skips re-parsing tokenizer.json), and the
    # reloaded tokenizer is the same: special tokens and ids.
    assert "added_tokens_decoder" in json.loads((tmp_path / "export" / "tokenizer_config.json").read_text())
    assert reloaded.tokenizer.added_tokens_decoder == encoder.tokenizer.added_tokens_decoder
    assert reloaded.tokenizer(TEXTS)["input_ids"] == encoder.tokenizer(TEXTS)["input_ids"]
    np.testing.assert_allclose(reloaded.encode(TEXTS[:5], "query"), expected, atol=1e-5)


def test_a_bf16_model_is_exported_in_fp32(tmp_path):
    """DeepSpeed's bf16 keeps the module in bf16: its export was bf16, so a CPU evaluation (and any plain
    load) ran it in bf16 whatever `eval.precision` said. The export is fp32, its config too."""
    from sentence_transformers import SentenceTransformer

    encoder = tiny_encoder(TEXTS)
    encoder.backbone.to(torch.bfloat16)
    encoder.save(tmp_path / "export")
    assert json.loads((tmp_path / "export" / "config.json").read_text())["dtype"] == "float32"
    assert next(load_encoder(str(tmp_path / "export")).backbone.parameters()).dtype == torch.float32
    assert next(SentenceTransformer(str(tmp_path / "export"), device="cpu").parameters()).dtype == torch.float32


def test_an_export_loads_without_a_load_report_and_keeps_its_bases_pooler(
    encoder, tmp_path, capfd, caplog, monkeypatch
):
    """Issue 34: an export printed transformers' LOAD REPORT (a missing pooler) in every plain load. Now it
    holds a pooler head, the base's when the base had one, else a neutral one, and loads silently in
    transformers, sentence-transformers and here; exported again, the head is the same."""
    import logging

    from safetensors.torch import load_file
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, BertModel

    monkeypatch.setattr(logging.getLogger("transformers"), "propagate", True)  # caplog sees its warnings too
    base = tmp_path / "base"  # a base that has a trained pooler (as LaBSE has), e5's encoder inside it
    with_pooler = BertModel(encoder.backbone.config)
    with_pooler.load_state_dict(encoder.backbone.state_dict(), strict=False)
    with_pooler.save_pretrained(base)
    encoder.tokenizer.save_pretrained(base)

    with caplog.at_level(logging.INFO):
        plain = encoder.save(tmp_path / "plain")  # its base had no pooler (e5's conversion)
        tuned = load_encoder(str(base)).save(tmp_path / "tuned")
        for export in (plain, tuned):
            AutoModel.from_pretrained(export)
            SentenceTransformer(str(export), device="cpu")
            load_encoder(str(export)).save(tmp_path / f"{export.name}-again")
    captured = capfd.readouterr()
    shown = captured.out + captured.err + caplog.text
    for noise in ("LOAD REPORT", "MISSING", "UNEXPECTED", "Consider training", "newly initialized"):
        assert noise not in shown, shown[-2000:]

    heads = {
        name: {k: v for k, v in load_file(tmp_path / name / "model.safetensors").items() if k.startswith("pooler.")}
        for name in ("plain", "plain-again", "tuned", "tuned-again")
    }
    torch.testing.assert_close(heads["plain"]["pooler.dense.weight"], torch.eye(encoder.dimension))
    torch.testing.assert_close(heads["tuned"], {k: v for k, v in with_pooler.state_dict().items() if "pooler" in k})
    torch.testing.assert_close(heads["plain-again"], heads["plain"])
    torch.testing.assert_close(heads["tuned-again"], heads["tuned"])
