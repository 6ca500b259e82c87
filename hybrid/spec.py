"""How texts become vectors: pooling, E5-style prefixes, the token budget.

A dependency-free module: configuration (`hybrid.config`) validates against it without importing torch,
and the encoder (`hybrid.model`) saves it beside the weights, so a checkpoint says how to use it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

POOLINGS = ("mean", "cls")
MAX_TOKENS = 8192  # no supported encoder reads more (e5, XLM-R, LaBSE: 512)
E5_SMALL_NAME = "multilingual-e5-small"  # the packaged default, built offline by hybrid.e5_offline


@dataclass(frozen=True)
class EncoderSpec:
    """Saved beside the weights (`hybrid_encoder.json`). The defaults are E5's, for a folder saved
    elsewhere (a plain Hugging Face model); a training run's spec comes from `model.*` of its config."""

    pooling: str = "mean"
    query_prefix: str = "query: "
    passage_prefix: str = "passage: "
    max_length: int = 128

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}.")
        if not 8 <= self.max_length <= MAX_TOKENS:
            raise ValueError(
                f"max_length must be between 8 and {MAX_TOKENS} tokens (encoders' position limits: e5 "
                f"and XLM-R 512, LaBSE 512), got {self.max_length}."
            )


SETTINGS = tuple(f.name for f in fields(EncoderSpec))  # flat under `model.` in a preset (hybrid.config)
