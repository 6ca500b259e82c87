"""How a model embeds when the preset leaves it out: read from the model's own files, never assumed.

Each of `model.pooling`, `model.query_prefix`, `model.passage_prefix` and `model.max_length` not given
is read before Ray starts, from the first of:

- the packaged multilingual-e5-small: its known settings (`E5_SMALL`);
- a checkpoint of this project: its `hybrid_encoder.json`;
- a sentence-transformers config (`modules.json`): the Pooling module's `config.json`; the prompts of
  `config_sentence_transformers.json` (query: "query"; passage: "document", else "passage", else
  "corpus", the order of `encode_query` / `encode_document`; no prompt: no prefix);
  `sentence_bert_config.json`'s `max_seq_length`, else (as sentence-transformers 6 saves a model) the
  tokenizer's `model_max_length` capped by the model's `max_position_embeddings`.

The model is a local folder, an s3:// folder, or a hub name already in the local Hugging Face cache
(nothing is downloaded). A value given wins over the files. A setting neither given nor found refuses
the model in one line naming what to set: E5's "query: " prefix or 64 tokens, silently given to another
model, would skew every result without a word (issue 34).
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hybrid.config import ModelConfig
from hybrid.layout import ENCODER_CONFIG
from hybrid.locations import is_uri, join
from hybrid.spec import E5_SMALL_NAME, SETTINGS, EncoderSpec

# The packaged default: E5's prefixes and mean pooling, at the token budget the CPU presets train with.
E5_SMALL = {"pooling": "mean", "query_prefix": "query: ", "passage_prefix": "passage: ", "max_length": 64}
DOCUMENT_PROMPTS = ("document", "passage", "corpus")
LEGACY_POOLING = {  # sentence-transformers < 6 wrote one flag per mode
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
APPLIED = ("Transformer", "Pooling", "Normalize")  # the modules `hybrid.model.Encoder` is; others are said
EXAMPLES = {  # the fix a refusal suggests, per setting
    "pooling": "model.pooling=mean",
    "query_prefix": "model.query_prefix=''",
    "passage_prefix": "model.passage_prefix=''",
    "max_length": "model.max_length=256",
}

Found = dict[str, tuple[Any, str]]  # setting -> (value, the file it was read from)


@dataclass(frozen=True)
class Settled:
    """A model config with every encoder setting set, and where each came from."""

    config: ModelConfig
    sources: dict[str, str]  # setting -> "given", or what it was read from
    folder: str = ""  # where the files were read ("": none was)
    unapplied: tuple[str, ...] = ()  # sentence-transformers modules the encoder does not apply (Dense, ...)

    def line(self, training: bool = True) -> str:
        """What a run says at its start: each setting and its source, and (training) freeze_embeddings."""
        groups: list[tuple[str, list[str]]] = []
        for key in SETTINGS:
            shown = f"{key}={getattr(self.config, key)!r}"
            if groups and groups[-1][0] == self.sources[key]:
                groups[-1][1].append(shown)
            else:
                groups.append((self.sources[key], [shown]))
        parts = [f"model {self.config.name}: " + ", ".join(f"{', '.join(s)} ({source})" for source, s in groups)]
        parts += [f"read in {self.folder}"] if self.folder else []
        parts += [f"not applied: {', '.join(self.unapplied)}"] if self.unapplied else []
        parts += [f"freeze_embeddings={str(self.config.freeze_embeddings).lower()}"] if training else []
        return "; ".join(parts)


def settle(model: ModelConfig, named_by: str = "model.name") -> Settled:
    """`model` with every encoder setting set: those given kept, the others read from the model (module
    docstring). A ValueError names the model as `named_by` (the key or flag that gave it) and what to set."""
    name, who = model.name, f"{named_by}={model.name!r}"
    if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().is_dir():
        raise ValueError(
            f"{who}: no such folder. Give an encoder folder, an s3:// folder, {E5_SMALL_NAME} (offline) or a hub name."
        )
    missing = [k for k in SETTINGS if k not in model.given]
    folder, found, unapplied = _read(name, missing, who) if missing else ("", {}, ())
    if absent := [k for k in missing if k not in found]:
        why = f"its sentence-transformers config in {folder} does not give {', '.join(absent)}"
        raise ValueError(_refusal(who, absent, why))
    for key in missing:
        value, source = found[key]
        try:
            EncoderSpec(**{key: value})
        except ValueError as e:
            said = str(e).rstrip(".")
            raise ValueError(
                f"model.{said} (read from {join(folder, source)}); set model.{key} to override it."
            ) from None
    return Settled(
        replace(model, **{k: found[k][0] for k in missing}),
        {k: found[k][1] if k in missing else "given" for k in SETTINGS},
        folder,
        unapplied,
    )


def _read(name: str, missing: list[str], who: str) -> tuple[str, Found, tuple[str, ...]]:
    """(the folder read, {setting: (value, file)}, modules not applied) of the model `name`."""
    if name == E5_SMALL_NAME:
        return "", {k: (v, "e5-small's known settings") for k, v in E5_SMALL.items()}, ()
    folder = _folder(name, missing, who)
    saved = _json(folder, ENCODER_CONFIG)
    if isinstance(saved, dict):
        return folder, {k: (saved[k], ENCODER_CONFIG) for k in SETTINGS if k in saved}, ()
    modules = _json(folder, "modules.json")
    if not isinstance(modules, list):
        why = f"{folder} has no sentence-transformers config (modules.json) to read its settings from"
        raise ValueError(_refusal(who, missing, why))
    return (folder, *_sentence_transformers(folder, modules))


def _sentence_transformers(folder: str, modules: list[dict]) -> tuple[Found, tuple[str, ...]]:
    """The settings a sentence-transformers config gives, and its modules the encoder does not apply."""
    kinds = {m.get("type", "").rsplit(".", 1)[-1]: m.get("path", "") for m in modules}
    found: Found = {}
    if "Pooling" in kinds:
        source = posixpath.join(kinds["Pooling"], "config.json")
        pooling = _json(folder, source) or {}
        modes = pooling.get("pooling_mode") or [m for k, m in LEGACY_POOLING.items() if pooling.get(k)] or "mean"
        found["pooling"] = (modes if isinstance(modes, str) else "+".join(modes), source)
    config = _json(folder, "config_sentence_transformers.json")
    prompts = (config or {}).get("prompts") or {}
    for key, names in (("query_prefix", ("query",)), ("passage_prefix", DOCUMENT_PROMPTS)):
        prompt = next((p for p in names if p in prompts), None)
        source = f"config_sentence_transformers.json prompts.{prompt}" if prompt else f"no {'/'.join(names)} prompt"
        found[key] = ((prompts[prompt] or "") if prompt else "", source)  # null: no prefix
    if length := _max_length(folder, kinds.get("Transformer", "")):
        found["max_length"] = length
    return found, tuple(f"{kind} ({path})" for kind, path in kinds.items() if kind not in APPLIED)


def _max_length(folder: str, root: str) -> tuple[int, str] | None:
    """`max_seq_length` of sentence_bert_config.json, else sentence-transformers 6's: the tokenizer's
    `model_max_length` capped by the model's `max_position_embeddings`."""
    source = posixpath.join(root, "sentence_bert_config.json")
    if isinstance(length := (_json(folder, source) or {}).get("max_seq_length"), int):
        return length, source
    limits = [
        (value, f"{file} {key}")
        for file, key in (("tokenizer_config.json", "model_max_length"), ("config.json", "max_position_embeddings"))
        if isinstance(value := (_json(folder, posixpath.join(root, file)) or {}).get(key), int) and value > 0
    ]
    return min(limits, key=lambda limit: limit[0]) if limits else None


def _folder(name: str, missing: list[str], who: str) -> str:
    """A local or s3:// folder as it is; a hub name's snapshot in the local Hugging Face cache."""
    if is_uri(name) or Path(name).expanduser().is_dir():
        return name if is_uri(name) else str(Path(name).expanduser())
    from huggingface_hub import constants, snapshot_download

    try:
        return snapshot_download(name, local_files_only=True)
    except Exception:  # huggingface_hub raises several unrelated types for "not there"
        why = (
            f"not a folder, and not in the local Hugging Face cache {constants.HF_HUB_CACHE}, so its settings "
            f"cannot be read (nothing is downloaded: `hf download {name}` puts it there)"
        )
        raise ValueError(_refusal(who, missing, why)) from None


def _json(folder: str, name: str) -> Any:
    """A JSON file of the model's folder (local, or in storage), None when it is not there."""
    where = join(folder, name)
    if is_uri(folder):
        from hybrid import storage

        text = storage.read_text(where) if storage.exists(where) else None
    else:
        text = Path(where).read_text() if Path(where).is_file() else None
    try:
        return None if text is None else json.loads(text)
    except ValueError:
        raise ValueError(
            f"{where} is not valid JSON: fix it, or give model.pooling, model.query_prefix, "
            "model.passage_prefix and model.max_length."
        ) from None


def _refusal(who: str, keys: list[str], why: str) -> str:
    """One line: which model (`who`, as the user named it), why it does not say, and the settings to set."""
    return (
        f"{who}: {why}; set {', '.join(f'model.{k}' for k in keys)} as its model card says "
        "(e5-small's are never assumed for another model), e.g. " + " ".join(f"--set {EXAMPLES[k]}" for k in keys) + "."
    )
