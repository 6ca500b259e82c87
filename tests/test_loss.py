import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from hybrid.loss import InfoNCELoss

from support import make_pairs


def unit(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1)


def direct_infonce(q, p, tau, negatives=None, mask=None):
    """The formula written out with loops: -mean_i log softmax_i over {p_j} + valid negatives."""
    losses = []
    for i in range(len(q)):
        cands = list(p) + ([n for n, m in zip(negatives, mask) if m] if negatives is not None else [])
        logits = torch.stack([q[i] @ c / tau for c in cands])
        losses.append(-(logits[i] - torch.logsumexp(logits, 0)))
    return torch.stack(losses).mean()


def test_equals_direct_formula():
    q, p = unit(5, 8, seed=1), unit(5, 8, seed=2)
    loss, acc = InfoNCELoss(0.07)(q, p)
    assert loss.item() == pytest.approx(direct_infonce(q, p, 0.07).item(), rel=1e-10)
    assert acc.item() == pytest.approx(((q @ p.T).argmax(1) == torch.arange(5)).double().mean().item())


def test_hard_negatives_with_mask():
    q, p, n = unit(4, 6, seed=3), unit(4, 6, seed=4), unit(4, 6, seed=5)
    mask = torch.tensor([True, False, True, False])
    loss, _ = InfoNCELoss(0.1)(q, p, n, mask)
    assert loss.item() == pytest.approx(direct_infonce(q, p, 0.1, n, mask).item(), rel=1e-10)
    # masked rows carry no weight whatever they hold
    n2 = n.clone()
    n2[1] = q[0]
    assert InfoNCELoss(0.1)(q, p, n2, mask)[0].item() == pytest.approx(loss.item(), rel=1e-12)


def test_symmetric_is_mean_of_both_directions():
    q, p = unit(6, 8, seed=6), unit(6, 8, seed=7)
    loss, _ = InfoNCELoss(0.05, symmetric=True)(q, p)
    expected = (direct_infonce(q, p, 0.05) + direct_infonce(p, q, 0.05)) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)


def test_gradcheck():
    q = unit(4, 5, seed=8).requires_grad_()
    p = unit(4, 5, seed=9).requires_grad_()
    n = unit(4, 5, seed=10).requires_grad_()
    mask = torch.tensor([True, True, False, True])
    loss = InfoNCELoss(0.2, symmetric=True)
    assert torch.autograd.gradcheck(lambda a, b, c: loss(a, b, c, mask)[0], (q, p, n))


def test_rejects_non_positive_temperature():
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(0.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank, world, port, q, p, n, mask, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    b = len(q) // world
    sl = slice(rank * b, (rank + 1) * b)
    qr, pr, nr = (t[sl].clone().requires_grad_() for t in (q, p, n))
    loss, _ = InfoNCELoss(0.1, symmetric=True)(qr, pr, nr, mask[sl])
    loss.backward()
    out[rank] = (loss.detach(), qr.grad, pr.grad, nr.grad)
    torch.distributed.destroy_process_group()


def test_gathered_loss_equals_full_batch_loss_across_two_ranks():
    """Each rank's loss averages to the single-process loss on the global batch, and each rank's input
    gradient is world_size x the full-batch gradient of its slice (DDP's averaging then restores it)."""
    q, p, n = unit(8, 6, seed=11), unit(8, 6, seed=12), unit(8, 6, seed=13)
    mask = torch.tensor([True, False, True, True, False, True, True, True])
    out = mp.Manager().dict()
    mp.spawn(_rank_worker, args=(2, _free_port(), q, p, n, mask, out), nprocs=2, join=True)
    qf, pf, nf = (t.clone().requires_grad_() for t in (q, p, n))
    full, _ = InfoNCELoss(0.1, symmetric=True)(qf, pf, nf, mask)
    full.backward()
    assert ((out[0][0] + out[1][0]) / 2).item() == pytest.approx(full.item(), rel=1e-10)
    for r in range(2):
        sl = slice(4 * r, 4 * r + 4)
        for got, ref in zip(out[r][1:], (qf.grad, pf.grad, nf.grad)):
            torch.testing.assert_close(got, 2 * ref[sl])


def test_training_step_loss_does_not_depend_on_padding_groups():
    """The worker loop sorts each side by length and pads it in groups: its loss must be the loss of the
    same batch embedded in input order, with hard negatives aligned to their items."""
    from hybrid.sampler import HybridBatchSampler
    from hybrid.tiny import tiny_encoder
    from trainers.forward import forward_batch

    class PlainEngine:  # the engines' interface: `encoder` and `__call__(*token_groups)`
        def __init__(self, encoder):
            self.encoder = encoder

        def __call__(self, *groups):
            return self.encoder(*[t for g in groups for t in (g["input_ids"], g["attention_mask"])])

    pairs = make_pairs({"en": 30, "de": 30})
    encoder = tiny_encoder([p.query for p in pairs] + [p.positive for p in pairs]).eval()
    batch = HybridBatchSampler(pairs, 12, 0.5, seed=1).batch(0)
    loss_fn = InfoNCELoss(0.1)
    with torch.no_grad():
        q, p = encoder.embed(batch.queries, "query"), encoder.embed(batch.positives, "passage")
        mask = torch.tensor([n is not None for n in batch.negatives])
        negatives = torch.zeros_like(q)
        negatives[mask] = encoder.embed([n for n in batch.negatives if n is not None], "passage")
        expected = loss_fn(q, p, negatives, mask)[0]
        for group in (0, 1, 5):
            loss, _ = forward_batch(PlainEngine(encoder), loss_fn, batch, True, group)
            assert loss.item() == pytest.approx(expected.item(), abs=1e-5), group
