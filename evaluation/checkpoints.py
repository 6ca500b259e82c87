"""What is evaluated: a reference to a checkpoint (or a base model) and its files on this node.

`CheckpointRef` names a model to evaluate; `local_model_dir` finds its files where they are used (copied
from storage, checked against the manifest); `content_hash` identifies them (the basis of idempotent
logging and the evaluation cache).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation.config import DEFAULT_TEMPERATURE
from hybrid import manifest, storage
from hybrid.layout import ENCODER_CONFIG, ENCODER_DIR, STATE_FILE
from hybrid.spec import EncoderSpec

_HASHED = (
    "*.safetensors",
    "*.bin",
    "tokenizer*",
    "special_tokens_map.json",
    "vocab.*",
    "*.model",
    "merges.txt",
    "config.json",
    ENCODER_CONFIG,
)


@dataclass(frozen=True)
class CheckpointRef:
    """What to evaluate: an encoder folder or model name, its training step and its InfoNCE temperature."""

    path: str  # an encoder folder or its URI in storage, multilingual-e5-small, or a hub name in the HF cache
    step: int = 0  # 0 = the base model
    temperature: float = DEFAULT_TEMPERATURE  # softmax temperature for ECE: the trained tau
    label: str = ""  # how reports name it; defaults to `path`
    model: str = ""  # the base model's name, for lineage; defaults to `path`
    # How to embed (pooling, prefixes, max_length) where the folder does not say, e.g. a base model
    # evaluated as the run trains it (`model.*`); None: the folder's hybrid_encoder.json, else E5's defaults.
    spec: EncoderSpec | None = None
    # Written by a training run of this deployment (a sweep's trial, a trainer checkpoint): evaluated only
    # once its signed manifest matches its files, wherever it is read from (`local_model_dir`).
    signed: bool = False
    # The training run that wrote it (in a sweep, the trial id): its signed manifest must name this run
    # and `step`, so another trial's or step's checkpoint in its place is refused. "": not checked (a merge).
    run: str = ""

    @property
    def bound(self) -> dict[str, int | str]:
        """What its manifest must say it was written for (`manifest.check`)."""
        return {"run": self.run, "step": self.step} if self.run else {}

    @classmethod
    def from_path(cls, path_or_name: str) -> CheckpointRef:
        """A trainer checkpoint folder or URI (encoder/ + trainer_state.json) or, as step 0, a model folder
        / name. A checkpoint's state is read only once its export's signed manifest pins it (the state sets
        the step and the temperature), and the ref is bound to the run and step that manifest names."""
        if _holds(path_or_name, STATE_FILE):
            state, run = verified_state(path_or_name)
            encoder = storage.join(path_or_name, ENCODER_DIR)
            return cls.trained(encoder, int(state["step"]), state.get("config", {}), path_or_name, run)
        return cls(path_or_name, 0, DEFAULT_TEMPERATURE, label=path_or_name, model=path_or_name)

    @classmethod
    def trained(cls, encoder: str, step: int, run_config: dict[str, Any], label: str, run: str = "") -> CheckpointRef:
        """A trained encoder folder or URI (a checkpoint's `encoder/`, a merge's export) of a run whose config
        is `run_config` (as a dict, as trainer_state.json keeps it): ECE at the run's own tau, lineage to its
        base model, its signed manifest checked (bound to the training `run` and `step` when `run` is given).
        The one way a trial, the early and final evaluations, the merges and this CLI name a trained model."""
        return cls(
            encoder,
            step,
            float(run_config.get("method", {}).get("temperature", DEFAULT_TEMPERATURE)),
            label=label,
            model=run_config.get("model", {}).get("name", encoder),
            signed=True,
            run=run,
        )


def verified_state(checkpoint: str) -> tuple[dict[str, Any], str]:
    """A trainer checkpoint's state (trainer_state.json: step, config, metrics), read only once its export's
    signed manifest pins it, and the run that manifest binds it to."""
    listed = manifest.read_verified(storage.join(checkpoint, ENCODER_DIR, manifest.MANIFEST))
    text = storage.read_text(storage.join(checkpoint, STATE_FILE))
    manifest.state_matches(listed, text.encode(), storage.join(checkpoint, STATE_FILE))
    return json.loads(text), str(listed["run"])


def unless_saved(ref: CheckpointRef, spec_of: Callable[[str], EncoderSpec]) -> CheckpointRef:
    """`ref` embedding with `spec_of(ref.path)` unless its folder says how (`hybrid_encoder.json`: our
    exports): a base model then reads texts as the preset's runs do (`model.*`, else its own files), as a
    sweep evaluates it. `spec_of` is asked only then."""
    return ref if _holds(ref.path, ENCODER_CONFIG) else dataclasses.replace(ref, spec=spec_of(ref.path))


def _holds(location: str, name: str) -> bool:
    """A folder (local, or a URI in storage) with the file `name`; False for a model name."""
    return (storage.is_uri(location) or Path(location).is_dir()) and storage.exists(storage.join(location, name))


def local_model_dir(model: str, signed: bool = False, bound: dict[str, int | str] | None = None) -> Path:
    """A folder on this node with `model`'s files: a copy of a checkpoint in storage (once per node), else
    `resolve_model_dir`; checked against its signed manifest (`IncompleteCheckpoint` names the file) when
    it is `signed` (a run's export: see `CheckpointRef.signed`), sits in a trainer checkpoint, or has a
    manifest, so a cut-short, altered or forged export is never evaluated, nor one of another run or step
    than `bound` (`CheckpointRef.bound`). A model of the user's own (a
    folder or a bucket prefix without a manifest, a model name) is taken as it is. Called where the files
    are used, never on the driver for a cluster's checkpoints."""
    folder = storage.local_copy(model) if storage.is_uri(model) else resolve_model_dir(model)
    if signed or (folder.parent / STATE_FILE).is_file() or (folder / manifest.MANIFEST).is_file():
        _checked(str(folder), storage.stamp(str(folder)), tuple(sorted((bound or {}).items())))
    return folder


@functools.lru_cache(maxsize=16)
def _checked(folder: str, stamp: str, bound: tuple[tuple[str, int | str], ...]) -> None:
    """Hash a folder once per process and version of its files (an evaluation opens it once per task)."""
    manifest.check(Path(folder), **dict(bound))


def resolve_model_dir(name_or_path: str) -> Path:
    """The local folder of a checkpoint, of multilingual-e5-small (converted once), or of a cached hub model."""
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    from hybrid.e5_offline import E5_SMALL_NAME, ensure_e5_small

    if name_or_path == E5_SMALL_NAME:
        return ensure_e5_small()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name_or_path, local_files_only=True))
    except Exception as e:  # huggingface_hub raises several unrelated types for "not there"
        raise ValueError(
            f"checkpoint {name_or_path!r} is not a folder, not {E5_SMALL_NAME!r}, and not in the "
            f"local Hugging Face cache ({type(e).__name__}). Pass an encoder folder."
        ) from e


def content_hash(name_or_path: str) -> str:
    """sha256 over the files that decide the embeddings: weights, tokenizer, config, hybrid_encoder.json."""
    folder = resolve_model_dir(name_or_path)
    files = sorted({f for pattern in _HASHED for f in folder.glob(pattern) if f.is_file()})
    if not any(f.suffix in (".safetensors", ".bin") for f in files):
        raise ValueError(f"{folder}: no weights (*.safetensors or *.bin); not an encoder folder.")
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + b"\0")
        manifest.feed(digest, f)
    return digest.hexdigest()
