import numpy as np
import pytest
import torch

from hybrid.model import EncoderSpec, load_encoder, tiny_encoder

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

    reloaded = load_encoder(str(tmp_path / "export"))
    assert reloaded.spec == encoder.spec
    np.testing.assert_allclose(reloaded.encode(TEXTS[:5], "query"), expected, atol=1e-5)
