"""Merging two fine-tuned encoders by averaging their weights (a "model soup"): the alternative to hybrid
batching a user will ask about, since a sweep always trains both specialists (alpha = 1: X-X only,
alpha = 0: X-Y only).

    merged = weight * first + (1 - weight) * second     (every floating-point tensor, in first's dtype)

Both must be exports of the same base model: the same architecture, tokenizer and embedding spec; the
merge is written as an export of its own (weights, tokenizer, sentence-transformers files, a signed
manifest) with `merge.json` naming its parents (their manifests' sha256) and the weight.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from hybrid import manifest
from hybrid.model import Encoder, load_encoder

MERGE_FILE = "merge.json"


def merge_weights(
    first: dict[str, torch.Tensor], second: dict[str, torch.Tensor], weight: float
) -> dict[str, torch.Tensor]:
    """`weight * first + (1 - weight) * second` for floating-point tensors (weight 1 or 0 gives a parent's
    tensor bit for bit); other tensors (position ids) must be equal and are kept."""
    if first.keys() != second.keys():
        only = sorted(first.keys() ^ second.keys())[:3]
        raise ValueError(
            f"the two models have different weights (e.g. {', '.join(only)}): merge exports of the same base model."
        )
    merged = {}
    for name, a in first.items():
        b = second[name]
        if a.shape != b.shape:
            raise ValueError(
                f"weight {name} has shape {tuple(a.shape)} in one model and {tuple(b.shape)} in the "
                "other: merge exports of the same base model."
            )
        if a.is_floating_point():
            merged[name] = (weight * a.double() + (1 - weight) * b.double()).to(a.dtype)
        elif torch.equal(a, b):
            merged[name] = a
        else:
            raise ValueError(f"non-float weight {name} differs between the two models: they are not of one base model.")
    return merged


def merge(
    first: str | Path,
    second: str | Path,
    weight: float,
    out: str | Path,
    origins: tuple[str, str] | None = None,
    bound: dict[str, int | str] | None = None,
) -> Path:
    """Write the merge of two local exports to `out`; `weight` is the first's share, in [0, 1]. `origins`:
    where the parents live (their storage locations), recorded instead of the local folders; `bound`: the
    run and step its signed manifest names, as a training checkpoint's does (a sweep's merge: its name)."""
    if not 0 <= weight <= 1:
        raise ValueError(f"--weight must lie in [0, 1] (the first model's share), got {weight}.")
    first, second, out = Path(first), Path(second), Path(out)
    parents = []
    for folder, origin in zip((first, second), origins or (str(first), str(second))):
        manifest.check(folder)  # complete, and written by this deployment (or accepted)
        parents.append({"path": origin, "manifest_sha256": manifest.sha256(folder / manifest.MANIFEST)})
    if manifest.sha256(first / "tokenizer.json") != manifest.sha256(second / "tokenizer.json"):
        raise ValueError(f"{first} and {second} have different tokenizers: merge exports of the same base model.")
    a, b = load_encoder(str(first)), load_encoder(str(second))
    if a.spec != b.spec:
        raise ValueError(
            f"{first} and {second} embed differently ({a.spec} vs {b.spec}): merge exports with the "
            "same pooling, prefixes and max_length."
        )
    a.backbone.load_state_dict(merge_weights(a.backbone.state_dict(), b.backbone.state_dict(), weight))
    merged = Encoder(a.backbone, a.tokenizer, a.spec, pooler_head=a.pooler_head)
    out.mkdir(parents=True, exist_ok=False)
    merged.save(out)
    (out / MERGE_FILE).write_text(json.dumps({"weight": weight, "parents": parents}, indent=2))
    manifest.write(out, **(bound or {}))
    return out
