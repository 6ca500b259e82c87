"""How checkpoints are evaluated: the `eval:` section of a preset.

`EvalConfig` is validated once when built (`hybrid.config.from_dict(EvalConfig, raw["eval"])`), before
Ray starts, so a typo in a dataset name or a language code fails with the list of valid values and costs
nothing. What is evaluated (checkpoint references, their files) is `evaluation.checkpoints`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hybrid.languages import check_language_code

NAMED_DATASETS = ("xquad-r", "mlqa-r", "miracl")
PRECISIONS = ("fp32", "bf16", "auto")
DEFAULT_TEMPERATURE = 0.05  # the InfoNCE tau of the base model's ECE: E5 was trained at 0.01-0.05


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
    - precision: fp32 (the default: figures reproduce to 4 decimals across CPUs), bf16 (autocast), or auto:
      bf16 only where a measured check at start-up finds it faster here and every metric of the base model
      on the held-out set within 0.002 of fp32's (`evaluation.precision`); which was used is recorded.
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
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.dataset not in NAMED_DATASETS and not Path(self.dataset).is_dir():
            raise ValueError(
                f"eval.dataset must be one of {NAMED_DATASETS} or an existing folder of "
                f"LAReQA-format {{lang}}.json files, got {self.dataset!r}."
            )
        if self.languages is not None:
            if not self.languages:
                raise ValueError(
                    "eval.languages must be null (the data config's eval_languages) or a "
                    "non-empty list of language codes."
                )
            for lang in self.languages:
                check_language_code(lang)
            if len(set(self.languages)) != len(self.languages):
                raise ValueError(f"eval.languages has duplicates: {list(self.languages)}.")
        if self.max_questions is not None and self.max_questions < 1:
            raise ValueError(f"eval.max_questions must be null (all questions) or >= 1, got {self.max_questions}.")
        if self.batch_size < 1:
            raise ValueError(f"eval.batch_size must be >= 1, got {self.batch_size}.")
        if not (self.encode_cpus > 0 and self.score_cpus > 0):
            raise ValueError(
                f"eval.encode_cpus and eval.score_cpus must be > 0 (Ray num_cpus), got "
                f"{self.encode_cpus} and {self.score_cpus}."
            )
        if self.ece_bins < 1:
            raise ValueError(f"eval.ece_bins must be >= 1, got {self.ece_bins}.")
        if self.precision not in PRECISIONS:
            raise ValueError(f"eval.precision must be one of {PRECISIONS}, got {self.precision!r}.")
        if self.miracl_sample < 0:
            raise ValueError(f"eval.miracl_sample must be >= 0, got {self.miracl_sample}.")

    @property
    def threads(self) -> tuple[int, int]:
        """(encode, score) threads per task: the task's CPU share, at least one."""
        return max(1, int(self.encode_cpus)), max(1, int(self.score_cpus))
