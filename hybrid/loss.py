"""InfoNCE over cosine similarities with in-batch (and cross-rank) negatives.

For queries q_i and positives p_i (L2-normalised, so q.p is the cosine), candidates C = all positives of
the global batch plus any hard negatives, and temperature tau (logits are s / tau, so a smaller tau is a
sharper softmax; sentence-transformers' `scale` = 1 / tau):

    L_qp = -1/B sum_i log( exp(q_i.p_i / tau) / sum_{c in C} exp(q_i.c / tau) )

With `symmetric`, the passage-to-query term L_pq (each positive against all queries of the global
batch) is added and the two are averaged: L = (L_qp + L_pq) / 2. Every other item of the batch is a
negative, which is why the sampler never puts two translations of one question in a batch.

In data-parallel training (torch.distributed initialised, world size > 1), queries, positives and
negatives are all-gathered *with gradients* (`torch.distributed.nn.functional.all_gather`), so each rank's
queries see the whole global batch as negatives and gradients flow back to the rank that encoded them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate `x` from all ranks along dim 0, keeping the autograd graph; identity when not distributed."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return x
    if torch.distributed.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


class InfoNCELoss(nn.Module):
    """Contrastive loss of hybrid batch training; returns (loss, in-batch top-1 accuracy of q -> p)."""

    def __init__(self, temperature: float = 0.05, symmetric: bool = False):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature (tau) must be > 0, got {temperature}.")
        self.temperature, self.symmetric = temperature, symmetric

    def forward(
        self, queries: Tensor, positives: Tensor, negatives: Tensor | None = None, negative_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """queries, positives: (B, d); negatives: (B, d) aligned with the items, `negative_mask` (B,) bool
        marking the items that have one (rows of items without a negative are ignored, whatever they hold).
        Aligned shapes keep the all-gather legal: every rank contributes the same number of rows."""
        b = queries.shape[0]
        all_q = gather_with_grad(queries)  # (W*B, d)
        all_p = gather_with_grad(positives)  # (W*B, d)
        labels = torch.arange(b, device=queries.device) + _rank() * b  # this rank's positives in all_p

        logits = queries @ all_p.T / self.temperature  # (B, W*B)
        if negatives is not None:
            mask = torch.ones(b, dtype=torch.bool, device=queries.device) if negative_mask is None else negative_mask
            neg_logits = queries @ gather_with_grad(negatives).T / self.temperature  # (B, W*B)
            all_mask = gather_with_grad(mask.to(queries.dtype)).bool()  # (W*B,)
            logits = torch.cat([logits, neg_logits.masked_fill(~all_mask, float("-inf"))], dim=1)
        loss = F.cross_entropy(logits, labels)
        if self.symmetric:
            logits_pq = positives @ all_q.T / self.temperature  # (B, W*B)
            loss = (loss + F.cross_entropy(logits_pq, labels)) / 2
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        return loss, accuracy.detach()
