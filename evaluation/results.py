"""One checkpoint's evaluation as a result: assembled from the scored query languages, keyed by what
decides it (model files, data, ECE settings), serialised for the hand-off to the sweep driver and kept in
the evaluation cache."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

import numpy as np

from evaluation import metrics as M
from evaluation.checkpoints import CheckpointRef
from evaluation.config import DEFAULT_TEMPERATURE, EvalConfig
from evaluation.eval_set import EvalSet
from evaluation.scoring import PAIR_METRICS, POOLED_METRICS
from hybrid import signing, storage
from hybrid.spec import EncoderSpec


@dataclass(frozen=True)
class EvalResult:
    """One checkpoint on one evaluation set. `matrices[metric]` is L x L (rows: query language, columns:
    candidate language; NaN where a pair has no query). `summary` keys are "{setting}/{metric}": mono =
    mean of the diagonal, cross = mean off the diagonal, multi = pooled candidates, macro over query
    languages (cross and multi only for parallel sets). `per_language[lang]`: map, rank_distance, ece of
    the pooled setting (mono for non-parallel sets). `reliability`: one table over all queries' widest
    setting (micro, so its ECE can differ slightly from the macro `multi/ece`)."""

    checkpoint: str
    step: int
    content_hash: str  # the idempotence key: model files + the evaluation set's contents + ECE settings
    dataset: str
    split: str
    languages: tuple[str, ...]
    matrices: dict[str, np.ndarray]
    summary: dict[str, float]
    per_language: dict[str, dict[str, float]]
    reliability: M.ReliabilityTable
    encode_tasks: int
    wall_s: float
    model: str = ""
    temperature: float = DEFAULT_TEMPERATURE
    path: str = ""  # the checkpoint's folder (local, s3://, or a model name)
    model_hash: str = ""  # sha256 of the files that decide the embeddings (evaluation.checkpoints.content_hash)
    data_digest: str = ""  # EvalSet.digest
    cached: bool = False  # taken from the evaluation cache, not computed in this call
    precision: str = "fp32"  # how the texts were encoded (eval.precision, "auto" settled)

    def to_json(self) -> str:
        """The whole result as JSON (NaN kept): how a trial on a worker node hands an evaluation to the
        sweep driver, the only process that writes it to MLflow."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields |= {
            "matrices": {k: v.tolist() for k, v in self.matrices.items()},
            "reliability": {k: v.tolist() for k, v in dataclasses.asdict(self.reliability).items()},
        }
        return json.dumps(fields)

    @classmethod
    def from_json(cls, text: str) -> EvalResult:
        fields = json.loads(text)
        fields |= {
            "languages": tuple(fields["languages"]),
            "matrices": {k: np.array(v, dtype=np.float64) for k, v in fields["matrices"].items()},
            "reliability": M.ReliabilityTable(**{k: np.array(v) for k, v in fields["reliability"].items()}),
        }
        return cls(**fields)


def evaluation_key(
    model_hash: str, eval_set: EvalSet, config: EvalConfig, temperature: float, spec: EncoderSpec | None = None
) -> str:
    """The idempotence key of one evaluation: same model files + same data + same ECE settings (+ the
    embedding spec when one is imposed on the folder, + the precision when it is not fp32) = same key."""
    parts = [model_hash, eval_set.digest, f"{temperature:.6g}", str(config.ece_bins)]
    parts += [json.dumps(dataclasses.asdict(spec), sort_keys=True)] if spec else []
    parts += [config.precision] if config.precision != "fp32" else []
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _nanmean(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else None


def assemble(
    ref: CheckpointRef,
    model_hash: str,
    eval_set: EvalSet,
    scored: dict[str, dict],
    encode_tasks: int,
    wall_s: float,
    config: EvalConfig,
) -> EvalResult:
    langs = eval_set.languages
    pos = {lang: i for i, lang in enumerate(langs)}
    matrices = {m: np.full((len(langs), len(langs)), np.nan) for m in PAIR_METRICS}
    for a, out in scored.items():
        for b, values in out["pairs"].items():
            for m in PAIR_METRICS:
                matrices[m][pos[a], pos[b]] = values[m]
    diagonal = np.eye(len(langs), dtype=bool)
    summary: dict[str, float] = {}
    for setting, cells in (("mono", diagonal), ("cross", ~diagonal)):
        for m in PAIR_METRICS:
            value = _nanmean(matrices[m][cells])
            if value is not None:
                summary[f"{setting}/{m}"] = value
    widest = {a: out["widest"] for a, out in scored.items() if out["widest"] is not None}
    if eval_set.parallel and len(langs) > 1:
        summary |= {f"multi/{m}": float(np.mean([w[m] for w in widest.values()])) for m in POOLED_METRICS}
    per_language = {a: {m: w[m] for m in ("map", "rank_distance", "ece")} for a, w in widest.items()}
    _, reliability = M.expected_calibration_error(
        np.concatenate([o["confidence"] for o in scored.values()]),
        np.concatenate([o["correct"] for o in scored.values()]),
        config.ece_bins,
    )
    key = evaluation_key(model_hash, eval_set, config, ref.temperature, ref.spec)
    return EvalResult(
        ref.label or ref.path,
        ref.step,
        key,
        eval_set.name,
        eval_set.split,
        langs,
        matrices,
        summary,
        per_language,
        reliability,
        encode_tasks,
        wall_s,
        ref.model or ref.path,
        ref.temperature,
        ref.path,
        model_hash,
        eval_set.digest,
        precision=config.precision,
    )


CACHE_FORMAT = 2  # raise when a metric's definition changes: older cached results are then not reused (2: signed)


def cache_file(cache: str, key: str) -> str:
    return storage.join(cache, f"v{CACHE_FORMAT}-{key}.json")


def _cache_purpose(key: str) -> str:
    return f"eval-cache:{key}"  # the signature covers the key: an entry moved to another key does not verify


def write_cached(cache: str, result: EvalResult) -> None:
    """Keep `result` under its evaluation key, signed (`hybrid.signing`) with that key."""
    entry = {"key": result.content_hash, "result": json.loads(result.to_json())}
    storage.write_text(
        cache_file(cache, result.content_hash), json.dumps(signing.signed(entry, _cache_purpose(result.content_hash)))
    )


def cached(cache: str, key: str) -> EvalResult | None:
    """The cached result of evaluation `key`, or None: absent, cut short by a crash while written, or not
    signed by this deployment for this key (anyone who can write to the bucket could otherwise choose
    which configuration wins); a bad entry is said in one line and evaluated again."""
    location = cache_file(cache, key)
    if not storage.exists(location):
        return None
    try:
        entry = signing.verified(json.loads(storage.read_text(location)), _cache_purpose(key), location)
        return EvalResult.from_json(json.dumps(entry["result"]))
    except signing.BadSignature as e:
        print(f"[hybrid-sweep] evaluation cache: {e} Ignored; evaluating again.", flush=True)
        return None
    except (ValueError, TypeError, KeyError):
        return None
