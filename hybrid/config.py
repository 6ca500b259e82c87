"""Typed configuration of the method, one dataclass per concern, validated when built.

YAML presets (configs/*.yaml) map section by section onto these dataclasses; unknown keys and bad values
fail with a message that lists what is valid. Other packages add their own sections (trainer, eval,
sweep) with the same `from_dict`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from hybrid.languages import PAPER_TRAIN_LANGUAGES, XQUAD_R_LANGUAGES, check_language_code
from hybrid.sampler import SCHEDULES
from hybrid.spec import E5_SMALL_NAME, SETTINGS, EncoderSpec

T = TypeVar("T")

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"  # the embedded default


def _coerce(value: Any, kind: Any, where: str) -> Any:
    """Convert YAML scalars to the annotated type (tuples from lists, floats from ints and 'inf')."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(kind)
        if value is None and type(None) in args:
            return None
        kind = next(a for a in args if a is not type(None))
        origin = typing.get_origin(kind)
    if dataclasses.is_dataclass(kind):
        return from_dict(kind, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}.")
        args = typing.get_args(kind)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: any length, each item an X
            args = (args[0],) * len(value)
        elif len(value) != len(args):
            raise ValueError(f"{where}: expected a list of {len(args)} values, got {list(value)!r}.")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if kind is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{where}: expected a number, got {value!r}.") from None
        if math.isnan(number):
            raise ValueError(f"{where}: NaN is not a setting; give a number.")
        return number
    if kind in (int, bool, str) and type(value) is not kind:
        raise ValueError(f"{where}: expected {kind.__name__}, got {value!r}.")
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass `cls` from a plain dict, rejecting unknown keys with the list of valid ones."""
    data = data or {}
    if not isinstance(data, dict):
        raise ValueError(f"{where or cls.__name__}: expected a mapping, got {data!r}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{where or cls.__name__}: unknown key(s) {unknown}; valid keys: {', '.join(names)}.")
    return cls(**{k: _coerce(v, hints[k], f"{where}.{k}".lstrip(".")) for k, v in data.items()})


def to_dict(config: Any) -> dict[str, Any]:
    """Plain dict (lists, not tuples) that crosses into Ray and MLflow and rebuilds with `from_dict`."""

    def plain(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))


def read_yaml(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} not found; presets live in configs/ (e.g. configs/default.yaml).")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ValueError(
            f"config file {path}: the top level must be a mapping of sections (data:, model:, "
            f"method:, ...), got a {type(raw).__name__}."
        )
    return raw


def add_overrides_flag(parser: argparse.ArgumentParser, example: str) -> None:
    """The command lines' `--set SECTION.KEY=VALUE` (repeatable), read by `apply_overrides`."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help=f"override a value of the preset, e.g. --set {example} (repeatable)",
    )


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`section.key=value` strings (nested: `sweep.search.mono_ratio=[0, 0.5]`; values parsed as YAML)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.split(".")
        if not sep or len(parts) < 2 or not all(parts):
            raise ValueError(f"override {item!r}: use section.key=value, e.g. method.mono_ratio=0.3.")
        node = raw
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                key = ".".join(parts[: depth + 1])
                raise ValueError(
                    f"override {item!r}: {key} is a value ({node!r}), not a section; set it directly, e.g. {key}=VALUE."
                )
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ValueError(
                f"override {item!r}: the value is not valid YAML (quote strings, lists as [a, b])."
            ) from None
    return raw


@dataclass(frozen=True)
class DataConfig:
    """Which corpus trains and which evaluates; the split is by article, so no text leaks across."""

    dataset: str = "xquad-r"  # packaged; or mlqa-r, or a folder of LAReQA-format {lang}.json files
    train_languages: tuple[str, ...] = PAPER_TRAIN_LANGUAGES  # el and vi stay unseen (zero-shot)
    eval_languages: tuple[str, ...] = XQUAD_R_LANGUAGES
    heldout_fraction: float = 0.25  # of the articles (12 of XQuAD-R's 48), split by article: no text in both
    split_seed: int = 0
    hard_negatives: bool = False  # a neighbouring sentence of the answer's paragraph as each pair's negative
    train_data: str | None = (
        None  # your own pairs: a `datasets` path or hub name (id, lang, query, positive[, negative])
    )
    data_dir: str | None = None  # a local copy of a corpus that is downloaded otherwise (MLQA-R)

    def __post_init__(self) -> None:
        for lang in self.train_languages + self.eval_languages:
            check_language_code(lang)
        if len(self.train_languages) < 2:
            raise ValueError(f"data.train_languages needs >= 2 languages for X-Y batches, got {self.train_languages}.")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"data.heldout_fraction must be in (0, 1), got {self.heldout_fraction}.")


@dataclass(frozen=True)
class ModelConfig:
    """The encoder to fine-tune, and how it encodes: `pooling` .. `max_length` are its `EncoderSpec`, flat
    under `model.` in a preset and checked by the spec itself. Left out (null), each is read from the
    model's own files, or is e5-small's for e5-small (`hybrid.model_settings.settle`, before Ray starts):
    another model is never silently given e5's prefixes, pooling or length."""

    name: str = E5_SMALL_NAME  # a local path, an s3:// folder, a hub name, or the offline e5-small
    pooling: str | None = None  # mean | cls
    query_prefix: str | None = None  # e.g. "query: " (E5); "" for none
    passage_prefix: str | None = None
    max_length: int | None = None  # tokens per text
    freeze_embeddings: bool = True  # the 96 M-row table: ~30% faster on CPU, ~1.6 GB less memory

    def __post_init__(self) -> None:
        try:
            EncoderSpec(**self.given)  # the encoder's own checks: one place says what a valid pooling and length are
        except ValueError as e:
            raise ValueError(f"model.{e}") from None

    @property
    def given(self) -> dict[str, Any]:
        """The encoder settings this config sets (the others are read from the model when it is settled)."""
        return {k: getattr(self, k) for k in SETTINGS if getattr(self, k) is not None}

    @property
    def spec(self) -> EncoderSpec:
        """How this model turns texts into vectors, as the trained encoder saves it beside its weights."""
        if len(self.given) < len(SETTINGS):  # a caller that skipped `settle`: never fill in E5's defaults
            raise RuntimeError(f"model {self.name}: settings not settled ({self}); call hybrid.model_settings.settle.")
        return EncoderSpec(**self.given)


@dataclass(frozen=True)
class MethodConfig:
    """The knobs the sweep searches: alpha, tau, T, and the batch they act on."""

    mono_ratio: float = 0.5  # alpha: probability that a step's batch is X-X
    alpha_schedule: str = "constant"  # when the X-X batches come: constant | mono_first | cross_first (sampler)
    temperature: float = 0.05  # tau of InfoNCE
    lang_temperature: float = math.inf  # T of p(l) ~ n_l^(1/T); inf = uniform
    batch_size: int = 32  # per worker; negatives are gathered across workers
    symmetric: bool = False  # add the passage -> query InfoNCE term
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.mono_ratio <= 1.0:
            raise ValueError(f"method.mono_ratio (alpha) must be in [0, 1], got {self.mono_ratio}.")
        if self.alpha_schedule not in SCHEDULES:
            raise ValueError(
                f"method.alpha_schedule={self.alpha_schedule!r} is not one of {', '.join(SCHEDULES)}; "
                "constant is the paper's."
            )
        if not 0 < self.temperature < math.inf:
            raise ValueError(
                f"method.temperature (tau) must be a finite number > 0, e.g. 0.05, got {self.temperature}."
            )
        if self.lang_temperature <= 0:
            raise ValueError(f"method.lang_temperature (T) must be > 0 (inf = uniform), got {self.lang_temperature}.")
        if self.batch_size < 2:
            raise ValueError(f"method.batch_size must be >= 2 (in-batch negatives), got {self.batch_size}.")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with a linear warmup, then linear decay to 0 at `steps`."""

    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_steps: int = 10
    steps: int = 100

    def __post_init__(self) -> None:
        if (
            not (0 < self.lr < math.inf and 0 <= self.weight_decay < math.inf)
            or self.steps < 1
            or self.warmup_steps < 0
        ):
            raise ValueError(
                f"optim needs a finite lr > 0, steps >= 1, warmup_steps >= 0 and a finite weight_decay >= 0; "
                f"got {self}."
            )
