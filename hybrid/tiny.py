"""A tiny stand-in encoder: a randomly initialised BERT with a WordPiece vocabulary trained on the texts it
will see, so the tests, the benchmarks and the GPU check's dry run (`bench/gpu_check.py`) train and
evaluate in seconds with the real `Encoder` around it. It retrieves nothing useful: never a model to study."""

from __future__ import annotations

from pathlib import Path

import torch

from hybrid.model import Encoder
from hybrid.spec import EncoderSpec

LANGUAGES = ("en", "de", "es")  # whose XQuAD-R texts the saved tiny encoder's vocabulary is trained on


def tiny_encoder(
    texts: list[str],
    spec: EncoderSpec | None = None,
    vocab_size: int = 2000,
    hidden: int = 32,
    layers: int = 2,
    seed: int = 0,
) -> Encoder:
    """A randomly initialised BERT with a WordPiece vocabulary trained on `texts`: for fast runs only."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    spec = spec or EncoderSpec(max_length=64)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(
        [spec.query_prefix, spec.passage_prefix, *texts],
        trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials),
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=max(spec.max_length, 64),
    )
    return Encoder(BertModel(config, add_pooling_layer=False), tokenizer, spec)


def save_tiny_encoder(folder: Path) -> Path:
    """The tiny encoder the small sweeps train (hidden 32, 2 layers), its vocabulary trained on the packaged
    XQuAD-R questions and answer sentences in `LANGUAGES`, saved like a checkpoint export into `folder`."""
    from hybrid.data import load_corpus

    corpus = load_corpus("xquad-r", languages=LANGUAGES)
    texts = [q.text for qs in corpus.questions.values() for q in qs]
    texts += [c.sentence for cs in corpus.candidates.values() for c in cs]
    tiny_encoder(texts, hidden=32, layers=2).save(folder)
    return Path(folder)
