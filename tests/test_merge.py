"""Merging two encoders by weight averaging (`hybrid.merge`, `python -m evaluation --merge`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hybrid import manifest
from hybrid.merge import MERGE_FILE, merge
from hybrid.model import load_encoder

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["Who won the game?", "Wer hat das Spiel gewonnen?", "El partido terminó en empate."]


@pytest.fixture(scope="module")
def parents(tiny_model_dir, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny model and a fine-tuned-like sibling (every float weight moved), each a signed export."""
    root = tmp_path_factory.mktemp("parents")
    first, second = root / "first", root / "second"
    shutil.copytree(tiny_model_dir, first)
    encoder = load_encoder(str(tiny_model_dir))
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in encoder.backbone.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    encoder.save(second)
    for folder in (first, second):
        manifest.write(folder)
    return first, second


def test_a_merge_at_the_ends_is_a_parent_and_between_them_the_average(parents, tmp_path):
    first, second = parents
    for weight, parent in ((1.0, first), (0.0, second)):
        merged = load_encoder(str(merge(first, second, weight, tmp_path / f"w{weight}")))
        assert np.array_equal(merged.encode(TEXTS, "query"), load_encoder(str(parent)).encode(TEXTS, "query"))
    out = merge(first, second, 0.5, tmp_path / "half")
    a, b = (load_encoder(str(p)).backbone.state_dict() for p in (first, second))
    half = load_encoder(str(out)).backbone.state_dict()
    assert half.keys() == a.keys()
    for name, value in half.items():
        expected = (
            ((a[name].double() + b[name].double()) / 2).to(a[name].dtype) if value.is_floating_point() else a[name]
        )
        assert torch.equal(value, expected), name
    manifest.check(out)  # a signed export of its own
    record = json.loads((out / MERGE_FILE).read_text())
    assert record["weight"] == 0.5
    assert [p["path"] for p in record["parents"]] == [str(first), str(second)]
    assert record["parents"][0]["manifest_sha256"] == manifest.sha256(first / manifest.MANIFEST)


def test_models_that_cannot_be_merged_are_refused_by_name(parents, tmp_path):
    first, second = parents
    with pytest.raises(ValueError, match=r"--weight must lie in \[0, 1\] \(the first model's share\), got 1.5"):
        merge(first, second, 1.5, tmp_path / "bad")
    shallow = load_encoder(str(first))
    shallow.backbone.encoder.layer = shallow.backbone.encoder.layer[:1]
    shallow.backbone.config.num_hidden_layers = 1
    shallow.save(tmp_path / "shallow")
    manifest.write(tmp_path / "shallow")
    with pytest.raises(ValueError, match=r"the two models have different weights \(e.g. encoder.layer.1.\S+"):
        merge(first, tmp_path / "shallow", 0.5, tmp_path / "bad")
    altered = tmp_path / "altered"
    shutil.copytree(second, altered)
    (altered / "model.safetensors").write_bytes(b"not the signed file")
    with pytest.raises(manifest.IncompleteCheckpoint, match=r"model.safetensors"):
        merge(first, altered, 0.5, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_the_evaluation_cli_merges_and_evaluates_the_merge_beside_its_parents(parents, tmp_path):
    first, second = parents
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "evaluation",
            "--merge",
            str(first),
            str(first),
            "--weight",
            "0.25",
            "--merge-out",
            str(tmp_path / "soup"),
            "--languages",
            "en",
            "de",
            "--max-questions",
            "5",
            "--num-cpus",
            "2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"== merge w=0.25 ({tmp_path / 'soup'}) (step 0)" in done.stdout
    assert done.stdout.count("== ") == 3  # both parents and the merge
    maps = [float(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("multi ")]
    assert len(maps) == 3 and maps[0] == maps[1] == maps[2]  # a model merged with itself is itself


def test_a_sweep_merges_each_seeds_references_into_its_storage_once(parents, tmp_path):
    """`sweeps.merges`: one merge per weight and per seed whose two references completed with equal knobs
    (a boundary alpha at another tau is no reference); built into the sweep's storage with its manifest
    written last; found valid and reused on --resume, made again when a file was cut short."""
    import pandas as pd

    from sweeps import merges
    from sweeps.config import load_sweep_setup

    setup = load_sweep_setup(
        ROOT / "configs/default.yaml",
        [f"sweep.storage_path={tmp_path / 'sweeps'}", "sweep.merge_references=[0.25, 0.5]", "optim.steps=6"],
    )
    first, second = parents  # as if trained: checkpoint_.../encoder
    for parent, trial in ((first, "t1"), (second, "t0"), (second, "t0b"), (second, "t9")):
        shutil.copytree(parent, tmp_path / trial / "checkpoint_000006" / "encoder")
    rows = [
        ("t0", 0.0, 0.05, 0),
        ("t1", 1.0, 0.05, 0),
        ("t0b", 0.0, 0.05, 1),
        ("t9", 0.0, 0.02, 2),
        ("t1b", 1.0, 0.05, 2),
        ("tx", 0.4, 0.05, 0),
    ]
    table = pd.DataFrame(
        [
            {
                "trial": t,
                "mono_ratio": a,
                "temperature": tau,
                "seed": seed,
                "step": 6,
                "multi/map": 0.5,
                "checkpoint_path": str(tmp_path / t / "checkpoint_000006"),
            }
            for t, a, tau, seed in rows
        ]
    )
    planned = merges.planned(table, setup)
    assert [(m.name, m.mono["trial"], m.cross["trial"]) for m in planned] == [
        ("merge-w0.25-s0", "t1", "t0"),
        ("merge-w0.5-s0", "t1", "t0"),
    ]  # seed 1: no alpha = 1; seed 2: other tau
    assert merges.params(planned[1]) == {
        "merge_weight": 0.5,
        "seed": 0,
        "config_key": "merge w=0.5",
        "temperature": 0.05,
        "merge.alpha1_trial": "t1",
        "merge.alpha0_trial": "t0",
    }

    location = merges.build(setup, planned[1])
    assert location == str(tmp_path / "sweeps" / setup.sweep.name / "merges" / "merge-w0.5-s0")
    built = Path(location)
    assert (built / "1_Pooling" / "config.json").is_file()  # subfolders too
    manifest.check(built)
    expected = load_encoder(str(merge(first, second, 0.5, tmp_path / "direct"))).encode(TEXTS, "query")
    assert np.array_equal(load_encoder(location).encode(TEXTS, "query"), expected)
    assert json.loads((built / MERGE_FILE).read_text())["parents"][0]["path"] == planned[1].parent(1)

    stamp = (built / "model.safetensors").stat().st_mtime_ns
    assert merges.build(setup, planned[1]) == location  # valid: reused, not made again
    assert (built / "model.safetensors").stat().st_mtime_ns == stamp
    with open(built / "model.safetensors", "r+b") as f:  # cut short
        f.truncate(100)
    merges.build(setup, planned[1])
    manifest.check(built)
    assert np.array_equal(load_encoder(location).encode(TEXTS, "query"), expected)

    # Another merge of this deployment's copied into its place (issue 33: merges were checked whole, not
    # bound): made again at --resume, and refused by name where an evaluation loads it.
    from evaluation.checkpoints import local_model_dir

    other = Path(merges.build(setup, planned[0]))
    shutil.rmtree(built)
    shutil.copytree(other, built)
    merges.build(setup, planned[1])
    assert json.loads((built / MERGE_FILE).read_text())["weight"] == 0.5
    manifest.check(built, **merges.bound(setup, planned[1]))
    shutil.rmtree(built)
    shutil.copytree(other, built)
    ref = merges.ref(setup, planned[1], location)
    with pytest.raises(
        manifest.IncompleteCheckpoint, match=r"written for run merge-w0.25-s0, step 6, not for run merge-w0.5-s0"
    ):
        local_model_dir(ref.path, ref.signed, ref.bound)
