"""A test fake: a randomly initialised 2-layer BERT with a WordPiece vocabulary trained on the texts it
will see, so tests and benchmarks train and evaluate in seconds with the real `Encoder` around it."""

from __future__ import annotations

import torch

from hybrid.model import Encoder
from hybrid.spec import EncoderSpec


def tiny_encoder(
    texts: list[str],
    spec: EncoderSpec | None = None,
    vocab_size: int = 2000,
    hidden: int = 32,
    layers: int = 2,
    seed: int = 0,
) -> Encoder:
    """A randomly initialised BERT with a WordPiece vocabulary trained on `texts`: for fast tests only."""
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
