"""The step-0 validation cache: a later run computes its figures from kept embeddings, equal bit for bit
to embedding again, and a run whose embeddings would differ never reads them, nor an entry this
deployment did not seal."""

from __future__ import annotations

from dataclasses import replace

import pytest
import safetensors.torch
import torch

from hybrid import signing, storage
from hybrid.config import from_dict
from hybrid.loss import InfoNCELoss
from hybrid.sampler import HybridBatchSampler
from hybrid.tiny import tiny_encoder
from trainers.batches import VAL_SEED
from trainers.config import TrainRunConfig
from trainers.validation import cache_key, validate, validate_base

from support import make_pairs


class CountingEngine:
    """The engines' interface (`encoder`, `__call__(*token_groups)`), counting its forward calls."""

    def __init__(self, encoder):
        self.encoder, self.calls = encoder, 0

    def __call__(self, *groups):
        self.calls += 1
        return self.encoder(*[t for g in groups for t in (g["input_ids"], g["attention_mask"])])


@pytest.fixture
def setup(tmp_path):
    pairs = make_pairs({"en": 40, "de": 40, "es": 40})
    encoder = tiny_encoder(
        [p.query for p in pairs] + [p.positive for p in pairs] + [p.negative for p in pairs if p.negative]
    )
    config = from_dict(
        TrainRunConfig,
        {
            "method": {"batch_size": 8, "temperature": 0.1},
            "data": {"hard_negatives": True},
            "trainer": {"workers": 1, "val_batches": 3, "validation_cache": str(tmp_path / "cache")},
        },
    )
    return config, CountingEngine(encoder), HybridBatchSampler(pairs, 8, 0.5, seed=VAL_SEED)


def retuned(config: TrainRunConfig, **method) -> TrainRunConfig:
    return replace(config, method=replace(config.method, **method))


def test_a_later_run_reads_the_embeddings_and_gets_the_figures_it_would_compute(setup, tmp_path):
    config, engine, sampler = setup
    first = validate_base(engine, InfoNCELoss(0.1), sampler, config, rank=0, world=1)
    assert engine.calls == 3 and len(list((tmp_path / "cache").rglob("rank0-of-1.safetensors"))) == 1
    assert first == validate(engine, InfoNCELoss(0.1), sampler, config)

    # Another trial: other alpha, tau, seed and length; same model, data and batch layout.
    other = retuned(config, mono_ratio=0.9, temperature=0.03, seed=7, symmetric=True)
    other = replace(other, optim=replace(other.optim, steps=5, lr=1e-3))
    engine.calls = 0
    cached = validate_base(engine, InfoNCELoss(0.03, symmetric=True), sampler, other, rank=0, world=1)
    assert engine.calls == 0
    assert cached == validate(engine, InfoNCELoss(0.03, symmetric=True), sampler, other)  # bit for bit
    assert cached["val_loss"] != first["val_loss"]  # its own tau


@pytest.mark.parametrize(
    "change",
    [
        lambda c: retuned(c, batch_size=4),
        lambda c: retuned(c, lang_temperature=2.0),
        lambda c: replace(c, model=replace(c.model, max_length=16)),
        lambda c: replace(c, data=replace(c.data, train_languages=("en", "de"))),
        lambda c: replace(c, trainer=replace(c.trainer, val_batches=2)),
        lambda c: replace(c, trainer=replace(c.trainer, pad_group=0)),
    ],
)
def test_what_the_embeddings_depend_on_is_in_the_key(setup, change):
    config = setup[0]
    assert cache_key(change(config), 1, ()) != cache_key(config, 1, ())
    assert cache_key(config, 2, ()) != cache_key(config, 1, ())


def test_the_seed_is_in_the_key_only_for_a_model_with_randomly_initialised_weights(setup):
    config = setup[0]
    assert cache_key(retuned(config, seed=5), 1, ()) == cache_key(config, 1, ())
    assert cache_key(retuned(config, seed=5), 1, ("encoder.layer.0.x",)) != cache_key(config, 1, ("encoder.layer.0.x",))


def test_a_file_cut_short_is_embedded_again(setup, tmp_path):
    config, engine, sampler = setup
    expected = validate_base(engine, InfoNCELoss(0.1), sampler, config, rank=0, world=1)
    [kept] = (tmp_path / "cache").rglob("*.safetensors")
    kept.write_bytes(kept.read_bytes()[:100])
    engine.calls = 0
    assert validate_base(engine, InfoNCELoss(0.1), sampler, config, rank=0, world=1) == expected
    assert engine.calls == 3 and kept.stat().st_size > 100  # embedded and written again


def test_without_a_cache_location_every_run_embeds(setup, tmp_path):
    config, engine, sampler = setup
    config = replace(config, trainer=replace(config.trainer, validation_cache=""))
    for _ in range(2):
        validate_base(engine, InfoNCELoss(0.1), sampler, config, rank=0, world=1)
    assert engine.calls == 6 and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("forgery", ["altered", "unsigned"])
@pytest.mark.parametrize("where", ["local", "s3"])
def test_an_entry_this_deployment_did_not_seal_is_embedded_again(setup, tmp_path, request, where, forgery, capsys):
    """Altered embeddings would move every trial's step-0 baseline: an entry whose bytes changed under its
    seal, or one written without it (plain safetensors of zeros), is said in one line and embedded again."""
    config, engine, sampler = setup
    if where == "s3":
        cache = storage.join(request.getfixturevalue("s3_bucket"), f"validation-{tmp_path.name}")
        config = replace(config, trainer=replace(config.trainer, validation_cache=cache))
    expected = validate_base(engine, InfoNCELoss(0.1), sampler, config, rank=0, world=1)
    name = f"{cache_key(config, 1, engine.encoder.initialised)}/rank0-of-1.safetensors"
    location = storage.join(config.trainer.validation_cache, name)
    sealed = storage.read_bytes(location)
    if forgery == "altered":
        forged = sealed[:-16] + bytes(16)  # the last embedding's last values zeroed
    else:
        kept = safetensors.torch.load(signing.unseal(sealed, f"validation-cache:{name}", location))
        forged = safetensors.torch.save({k: torch.zeros_like(v) for k, v in kept.items()})
    storage.write_bytes(location, forged)
    capsys.readouterr()
    engine.calls = 0
    assert validate_base(engine, InfoNCELoss(0.1), sampler, config, rank=0, world=1) == expected
    assert engine.calls == 3  # embedded again
    said = "bad signature (altered, or signed with another key)" if forgery == "altered" else "not signed"
    assert (
        capsys.readouterr().out == f"[hybrid-sweep] validation cache: {location}: {said}. Ignored; embedding again.\n"
    )
    assert storage.read_bytes(location) == sealed  # rewritten, sealed
