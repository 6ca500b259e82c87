"""What an exported encoder folder holds beside its weights, so that it loads without this project: the
tokenizer (fast to load), the sentence-transformers description (pooling, normalisation, E5 prompts), and
a pooler head, so that plain `transformers` finds every weight it builds."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from hybrid.spec import EncoderSpec

POOLER_WEIGHT, POOLER_BIAS = "pooler.dense.weight", "pooler.dense.bias"


def holds_pooler(folder: str | Path) -> bool:
    """Whether a local folder's safetensors weights (one file or shards) hold a pooler head. False for a hub
    name or `.bin` weights: such a base loads without one, as before."""
    from safetensors import safe_open

    folder = Path(folder)
    index, single = folder / "model.safetensors.index.json", folder / "model.safetensors"
    if index.is_file():
        names = json.loads(index.read_text())["weight_map"]
    elif single.is_file():
        with safe_open(single, "pt") as weights:
            names = weights.keys()
    else:
        return False
    return any(name.endswith(POOLER_WEIGHT) for name in names)


def neutral_pooler(hidden: int) -> dict[str, torch.Tensor]:
    """A pooler head for an export whose base had none (e5's conversion, xlm-roberta-base): identity weight
    and zero bias, so `pooler_output` is tanh of the [CLS] state, the same on every load, where transformers
    would draw a random head and print a load report. Mean and CLS pooling never read it."""
    return {POOLER_WEIGHT: torch.eye(hidden), POOLER_BIAS: torch.zeros(hidden)}


def save_tokenizer(tokenizer, path: Path) -> None:
    """`tokenizer.save_pretrained`, plus its added tokens in `tokenizer_config.json` (which transformers 5
    leaves out): without them, every load parses the whole `tokenizer.json` a second time in Python to
    find them (0.8 s of 1.9 s for e5-small's 250k-token vocabulary, in every worker and encode task)."""
    tokenizer.save_pretrained(path)
    add_tokens_to_config(tokenizer, Path(path))


def add_tokens_to_config(tokenizer, path: Path) -> None:
    """Write `added_tokens_decoder` into `tokenizer_config.json` (transformers 5 leaves it out): without
    it every load parses the whole tokenizer.json a second time (1.9 s -> 1.1 s for e5-small)."""
    config_file = path / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    if "added_tokens_decoder" not in config:
        config["added_tokens_decoder"] = {
            str(i): t.__getstate__() for i, t in sorted(tokenizer.added_tokens_decoder.items())
        }
        config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def write_sentence_transformers_config(path: Path, spec: EncoderSpec, dimension: int) -> None:
    """modules.json (Transformer -> Pooling -> Normalize), pooling config and prompts for E5 prefixes: the
    passages' under "document" too, the prompt `encode_document` takes first (sentence-transformers 6 fills
    in an empty one otherwise, and passages were embedded without their prefix)."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (path / "modules.json").write_text(json.dumps(modules, indent=2))
    (path / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": spec.max_length, "do_lower_case": False})
    )
    (path / "1_Pooling").mkdir(exist_ok=True)
    (path / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": dimension,
                "pooling_mode_cls_token": spec.pooling == "cls",
                "pooling_mode_mean_tokens": spec.pooling == "mean",
            },
            indent=2,
        )
    )
    (path / "2_Normalize").mkdir(exist_ok=True)
    (path / "config_sentence_transformers.json").write_text(
        json.dumps(
            {
                "prompts": {
                    "query": spec.query_prefix,
                    "document": spec.passage_prefix,
                    "passage": spec.passage_prefix,
                },
                "default_prompt_name": None,
                "similarity_fn_name": "cosine",
            },
            indent=2,
        )
    )
