"""One forward call per batch: the embeddings of its queries, positives and hard negatives, then the
contrastive loss on them. Split in two so validation can keep the embeddings (`trainers.validation`)."""

from __future__ import annotations

import torch
from torch import Tensor

from hybrid.loss import InfoNCELoss
from hybrid.sampler import HybridBatch


def embed_batch(engine, batch: HybridBatch, hard_negatives: bool, pad_group: int) -> Tensor:
    """(2B + M, d): the B queries, the B positives, then the M hard negatives present, in batch order.
    One forward call, each side sorted by length and padded in groups of `pad_group`
    (`Encoder.tokenize_groups`). `hard_negatives` is global (from the config), never per batch: every
    rank must make the same all-gather calls in the loss, even a rank whose items have no negative."""
    b = len(batch.queries)
    negs = [n for n in batch.negatives if n is not None] if hard_negatives else []
    q_groups, q_order = engine.encoder.tokenize_groups(batch.queries, "query", pad_group)
    p_groups, p_order = engine.encoder.tokenize_groups(batch.positives + negs, "passage", pad_group)
    emb = engine(*q_groups, *p_groups)  # rows in group order
    return emb[torch.argsort(torch.tensor(q_order + [b + i for i in p_order], device=emb.device))]


def batch_loss(loss_fn: InfoNCELoss, batch: HybridBatch, emb: Tensor, hard_negatives: bool) -> tuple[Tensor, Tensor]:
    """(loss, accuracy) of a batch from its `embed_batch` rows."""
    b = len(batch.queries)
    q, p = emb[:b], emb[b : 2 * b]
    if not hard_negatives:
        return loss_fn(q, p)
    mask = torch.tensor([n is not None for n in batch.negatives], device=emb.device)
    negatives = torch.zeros_like(q)
    negatives[mask] = emb[2 * b :]  # aligned (B, d): the all-gather needs equal shapes on every rank
    return loss_fn(q, p, negatives, mask)


def forward_batch(
    engine, loss_fn: InfoNCELoss, batch: HybridBatch, hard_negatives: bool, pad_group: int
) -> tuple[Tensor, Tensor]:
    """(loss, accuracy) of one training batch."""
    return batch_loss(loss_fn, batch, embed_batch(engine, batch, hard_negatives, pad_group), hard_negatives)
