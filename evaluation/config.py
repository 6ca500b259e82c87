"""What is evaluated and how: the `eval:` section of a preset, and references to checkpoints.

`EvalConfig` is validated once when built (`hybrid.config.from_dict(EvalConfig, raw["eval"])`), before
Ray starts, so a typo in a dataset name or a language code fails with the list of valid values and costs
nothing. `CheckpointRef` names a model to evaluate; `content_hash` identifies its files (the basis of
idempotent logging).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from hybrid import manifest, storage
from hybrid.data.languages import check_language_code

NAMED_DATASETS = ("xquad-r", "mlqa-r", "miracl")
DEFAULT_TEMPERATURE = 0.05  # the InfoNCE tau of the base model's ECE: E5 was trained at 0.01-0.05
STATE_FILE = "trainer_state.json"  # trainers.loop.STATE_FILE (not imported: that module pulls in DeepSpeed)
_HASHED = ("*.safetensors", "*.bin", "tokenizer*", "special_tokens_map.json", "vocab.*", "*.model",
           "merges.txt", "config.json", "hybrid_encoder.json")


@dataclass(frozen=True)
class EvalConfig:
    """How checkpoints are evaluated.

    - dataset: xquad-r (held-out articles of the training corpus), mlqa-r (out-of-domain, whole corpus),
      miracl (monolingual only, a tractable pool per language, see evaluation.miracl), or the path of a
      folder of LAReQA-format {lang}.json files.
    - languages: None = the data config's eval_languages (for MIRACL: every language available).
    - max_questions: proxy evaluation during sweeps: the first N question ids ordered by sha256(id),
      the same ids in every language; candidates are never subsampled (the ranking stays as hard).
    - encode_cpus / score_cpus: Ray `num_cpus` of each encode and scoring task (also their threads).
    - use_gpu_index: FAISS indexes on every visible GPU when one is present (CPU otherwise).
    - data_dir: a local copy of MLQA-R or MIRACL (no download / hub).
    - miracl_sample: non-judged passages sampled (seeded) into each MIRACL language's pool.
    """

    dataset: str = "xquad-r"
    languages: tuple[str, ...] | None = None
    max_questions: int | None = None
    batch_size: int = 16  # texts per forward, sorted by length: on CPU 16 is ~20% faster than 64 (less padding)
    encode_cpus: float = 1.0
    score_cpus: float = 1.0
    use_gpu_index: bool = False
    ece_bins: int = 15
    data_dir: str | None = None
    miracl_sample: int = 1000

    def __post_init__(self) -> None:
        if self.dataset not in NAMED_DATASETS and not Path(self.dataset).is_dir():
            raise ValueError(f"eval.dataset must be one of {NAMED_DATASETS} or an existing folder of "
                             f"LAReQA-format {{lang}}.json files, got {self.dataset!r}.")
        if self.languages is not None:
            if not self.languages:
                raise ValueError("eval.languages must be null (the data config's eval_languages) or a "
                                 "non-empty list of language codes.")
            for lang in self.languages:
                check_language_code(lang)
            if len(set(self.languages)) != len(self.languages):
                raise ValueError(f"eval.languages has duplicates: {list(self.languages)}.")
        if self.max_questions is not None and self.max_questions < 1:
            raise ValueError(f"eval.max_questions must be null (all questions) or >= 1, got {self.max_questions}.")
        if self.batch_size < 1:
            raise ValueError(f"eval.batch_size must be >= 1, got {self.batch_size}.")
        if not (self.encode_cpus > 0 and self.score_cpus > 0):
            raise ValueError(f"eval.encode_cpus and eval.score_cpus must be > 0 (Ray num_cpus), got "
                             f"{self.encode_cpus} and {self.score_cpus}.")
        if self.ece_bins < 1:
            raise ValueError(f"eval.ece_bins must be >= 1, got {self.ece_bins}.")
        if self.miracl_sample < 0:
            raise ValueError(f"eval.miracl_sample must be >= 0, got {self.miracl_sample}.")

    @property
    def threads(self) -> tuple[int, int]:
        """(encode, score) threads per task: the task's CPU share, at least one."""
        return max(1, int(self.encode_cpus)), max(1, int(self.score_cpus))


@dataclass(frozen=True)
class CheckpointRef:
    """What to evaluate: an encoder folder or model name, its training step and its InfoNCE temperature."""

    path: str  # an encoder folder or its URI in storage, multilingual-e5-small, or a hub name in the HF cache
    step: int = 0  # 0 = the base model
    temperature: float = DEFAULT_TEMPERATURE  # softmax temperature for ECE: the trained tau
    label: str = ""  # how reports name it; defaults to `path`
    model: str = ""  # the base model's name, for lineage; defaults to `path`

    @classmethod
    def from_path(cls, path_or_name: str) -> CheckpointRef:
        """A trainer checkpoint folder or URI (encoder/ + trainer_state.json) or, as step 0, a model folder
        / name."""
        state_file = storage.join(path_or_name, STATE_FILE)
        if (storage.is_uri(path_or_name) or Path(path_or_name).is_dir()) and storage.exists(state_file):
            state = json.loads(storage.read_text(state_file))
            config = state.get("config", {})
            return cls(storage.join(path_or_name, "encoder"), int(state["step"]),
                       float(config.get("method", {}).get("temperature", DEFAULT_TEMPERATURE)),
                       label=path_or_name, model=config.get("model", {}).get("name", path_or_name))
        return cls(path_or_name, 0, DEFAULT_TEMPERATURE, label=path_or_name, model=path_or_name)


def local_model_dir(model: str) -> Path:
    """A folder on this node with `model`'s files: a copy of a checkpoint in storage (once per node), else
    `resolve_model_dir`; checked against its manifest when it has one (`IncompleteCheckpoint` names the
    file), so a cut-short or altered export is never evaluated. Called where the files are used, never on
    the driver for a cluster's checkpoints."""
    folder = storage.local_copy(model) if storage.is_uri(model) else resolve_model_dir(model)
    if (folder / manifest.MANIFEST).is_file():
        _checked(str(folder), storage.stamp(str(folder)))
    return folder


@functools.lru_cache(maxsize=16)
def _checked(folder: str, stamp: str) -> None:
    """Hash a folder once per process and version of its files (an evaluation opens it once per task)."""
    manifest.check(Path(folder))


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
        raise ValueError(f"checkpoint {name_or_path!r} is not a folder, not {E5_SMALL_NAME!r}, and not in the "
                         f"local Hugging Face cache ({type(e).__name__}). Pass an encoder folder.") from e


def content_hash(name_or_path: str) -> str:
    """sha256 over the files that decide the embeddings: weights, tokenizer, config, hybrid_encoder.json."""
    folder = resolve_model_dir(name_or_path)
    files = sorted({f for pattern in _HASHED for f in folder.glob(pattern) if f.is_file()})
    if not any(f.suffix in (".safetensors", ".bin") for f in files):
        raise ValueError(f"{folder}: no weights (*.safetensors or *.bin); not an encoder folder.")
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + b"\0")
        with open(f, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()
