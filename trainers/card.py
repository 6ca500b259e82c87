"""The model card (`README.md`) of an exported encoder: what it was trained from, on what, how, and under
which data licence, so a folder copied out of a sweep still says what it is."""

from __future__ import annotations

from trainers.config import TrainRunConfig

DATA_LICENCES = {
    "xquad-r": "CC BY-SA 4.0 (XQuAD-R, google-research-datasets/lareqa)",
    "mlqa-r": "CC BY-NC 4.0, non-commercial (MLQA-R, google-research-datasets/lareqa)",
}


def model_card(config: TrainRunConfig, step: int) -> str:
    m, o, d = config.method, config.optim, config.data
    data = d.train_data or d.dataset
    licence = "that of your data" if d.train_data else DATA_LICENCES.get(d.dataset, "that of the dataset folder")
    usage = (
        f'SentenceTransformer(FOLDER).encode(["{config.model.query_prefix}..."])'
        if config.model.query_prefix
        else "SentenceTransformer(FOLDER).encode([...])"
    )
    return f"""---
library_name: sentence-transformers
base_model: {config.model.name}
tags: [sentence-transformers, retrieval, multilingual, hybrid-batch-training]
---

# {config.model.name}, fine-tuned with hybrid batch training (step {step} of {o.steps})

A multilingual retrieval encoder trained with hybrid batches (arXiv 2408.10536): each batch is
monolingual (question and passage in one language) with probability alpha, cross-lingual otherwise,
with an InfoNCE loss and in-batch negatives gathered over workers. Made by hybrid-sweep.

| setting | value |
| --- | --- |
| base model | {config.model.name} ({config.model.pooling} pooling, prefixes "{config.model.query_prefix}" / "{config.model.passage_prefix}") |
| training data | {data}, languages {", ".join(d.train_languages)} (held-out articles: fraction {d.heldout_fraction}, seed {d.split_seed}) |
| alpha (mono ratio) | {m.mono_ratio:g} ({m.alpha_schedule} schedule) |
| tau (temperature) | {m.temperature:g} |
| language sampling T | {m.lang_temperature:g} |
| batch | {m.batch_size} per worker x {config.trainer.workers} workers |
| optimiser | AdamW, lr {o.lr:g}, weight decay {o.weight_decay:g}, {o.warmup_steps} warm-up of {o.steps} steps |
| seed | {m.seed} |

Use: `{usage}` (sentence-transformers), or `transformers.AutoModel` with {config.model.pooling} pooling.
Evaluation results are in the sweep's MLflow runs (every language pair, with 95% intervals over seeds).

Data licence: {licence}.
"""
