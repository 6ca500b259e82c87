"""Ray Train + DeepSpeed on CPU with 2 workers and a tiny model: learning, export, resume, fault tolerance."""

import json
import re
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import pytest
import ray.train
import torch

from hybrid import manifest
from hybrid.loss import InfoNCELoss
from hybrid.manifest import IncompleteCheckpoint
from hybrid.model import load_encoder
from hybrid.sampler import MONO, HybridBatchSampler
from hybrid.splits import training_pairs
from trainers.config import check_resources, load_run_config
from trainers.engine import deepspeed_config
from trainers.loop import STATE_FILE, NonFiniteLoss
from trainers.preflight import preflight
from trainers.train import build_trainer

from support import tiny_config, with_steps

pytestmark = pytest.mark.slow


@torch.no_grad()
def fixed_batch_loss(encoder, pairs, n_batches: int = 8) -> float:
    """InfoNCE (tau 0.1) of `encoder` on the same 8 training batches of 32, in plain PyTorch."""
    sampler, loss = HybridBatchSampler(pairs, 32, 0.5, seed=99), InfoNCELoss(0.1)
    total = 0.0
    for t in range(n_batches):
        b = sampler.batch(t)
        total += loss(encoder.embed(b.queries, "query"), encoder.embed(b.positives, "passage"))[0].item()
    return total / n_batches


def history(result):
    """Every metrics dict reported by rank 0, in order, from the run's checkpoints and final metrics."""
    return [m for _, m in sorted(((c.path, m) for c, m in result.best_checkpoints), key=lambda x: x[1]["step"])]


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_run_lowers_the_loss_and_exports_a_plain_model(tiny_model_dir, tmp_path, local_ray, stage):
    config = tiny_config(tiny_model_dir, tmp_path, zero_stage=stage)
    result = build_trainer(config, f"zero{stage}").fit()
    ckpts = history(result)
    assert [m["step"] for m in ckpts] == [20, 40]
    state = json.loads((Path(result.checkpoint.path) / STATE_FILE).read_text())
    assert result.metrics["step"] == 40 and state["step"] == 40
    # Each checkpoint keeps the reports since the one before (a restart reports them if its own never reached
    # Tune: `sweeps.trial.report_unreported`), the base model's validation with the first.
    first = json.loads((Path(result.checkpoint.path).parent / "checkpoint_000020" / STATE_FILE).read_text())
    assert [m["step"] for m in first["history"]] == [0, 10, 20] and "val_loss" in first["history"][0]
    assert [m["step"] for m in state["history"]] == [30, 40] and state["history"][-1] == state["metrics"]

    export = Path(result.checkpoint.path) / "encoder"
    from transformers import AutoModel

    trained, base_model = load_encoder(str(export)), load_encoder(str(tiny_model_dir))
    pairs, _ = training_pairs(config.data)
    before, after = fixed_batch_loss(base_model, pairs), fixed_batch_loss(trained, pairs)
    assert after < before - 0.1, (before, after)
    texts = ["Which team won the Super Bowl?", "Welches Team gewann?"]
    plain = AutoModel.from_pretrained(export)
    tokens = trained.tokenize(texts, "query")
    with torch.no_grad():
        hidden = plain(**tokens).last_hidden_state
    mask = tokens["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    np.testing.assert_allclose(trained.encode(texts, "query"), expected, atol=1e-5)
    assert not np.allclose(base_model.encode(texts, "query"), expected, atol=1e-3)  # weights did change


def reports_to_file(path: Path):
    """A callback that runs in Ray's controller and hands rank 0's reports (and whether each had a
    checkpoint) over by file; `.reports()` reads them. Defined in here so Ray pickles the class by value."""

    class ReportsToFile(ray.train.UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            with open(path, "a") as f:
                f.write(json.dumps([metrics[0], checkpoint is not None]) + "\n")

        def reports(self) -> list[tuple[dict, bool]]:
            return [tuple(json.loads(line)) for line in path.read_text().splitlines()]

    return ReportsToFile()


# fp32 on CPU; the engines reduce gradients in different orders (DDP buckets, ZeRO reduce-scatter of
# partitions), so the weights may drift apart by rounding only. Measured: at most 4.8e-7 over 8 steps
# (losses ~3.5) for both stages; 1e-5 leaves 20x room and still fails on any real difference.
LOSS_TOLERANCE = 1e-5


@pytest.mark.timeout(320)  # about 3x its measured time (tests/README.md)
def test_zero2_zero3_and_ddp_follow_the_same_loss_trajectory(tiny_model_dir, tmp_path, local_ray):
    """The same batches (sampler seed, dropout seed, 2 ranks) through DDP, ZeRO-2 and ZeRO-3: the loss of
    every one of 8 steps agrees within LOSS_TOLERANCE, as do the gradient norms (before clipping). Each
    step's update feeds the next, so a difference in averaging, clipping or the schedule would compound."""
    base = replace(
        with_steps(tiny_config(tiny_model_dir, tmp_path), 8),
        trainer=replace(tiny_config(tiny_model_dir, tmp_path).trainer, log_every=1, checkpoint_every=8, val_batches=2),
    )
    runs = {}
    for name, trainer in {
        "ddp": {"strategy": "ddp"},
        "zero2": {"strategy": "deepspeed", "zero_stage": 2},
        "zero3": {"strategy": "deepspeed", "zero_stage": 3},
    }.items():
        reports = reports_to_file(tmp_path / f"{name}.jsonl")
        build_trainer(
            replace(base, trainer=replace(base.trainer, **trainer)), f"same-{name}", callbacks=[reports]
        ).fit()
        runs[name] = [m for m, _ in reports.reports() if m["step"] > 0]
    ddp = runs["ddp"]
    assert [m["step"] for m in ddp] == list(range(1, 9))
    assert np.ptp([m["loss"] for m in ddp]) > 100 * LOSS_TOLERANCE  # batches differ: agreement is not by chance
    for name in ("zero2", "zero3"):
        assert [m["step"] for m in runs[name]] == list(range(1, 9)), name
        np.testing.assert_allclose(
            [m["loss"] for m in runs[name]], [m["loss"] for m in ddp], rtol=0, atol=LOSS_TOLERANCE, err_msg=name
        )
        np.testing.assert_allclose([m["lr"] for m in runs[name]], [m["lr"] for m in ddp], rtol=1e-9, err_msg=name)
    norms = [m["grad_norm"] for m in runs["zero2"]]  # ZeRO-3 on CPU reports no norm
    np.testing.assert_allclose(norms, [m["grad_norm"] for m in ddp], rtol=1e-3)


@pytest.mark.timeout(240)  # about 3x its measured time (tests/README.md)
def test_resume_continues_the_sampler_sequence(tiny_model_dir, tmp_path, local_ray):
    full = tiny_config(tiny_model_dir, tmp_path, strategy="ddp")
    build_trainer(with_steps(full, 20), "resume").fit()
    result = build_trainer(full, "resume").fit()  # same name: continues from step 20
    state = json.loads((Path(result.checkpoint.path) / STATE_FILE).read_text())
    assert result.metrics["resumed_from_step"] == 20 and state["step"] == 40
    assert [m["step"] for m in state["history"]] == [30, 40]  # a resumed run has no step-0 validation
    assert state["sampler"] == {"seed": 3, "step": 40}
    pairs, _ = training_pairs(full.data)
    sampler = HybridBatchSampler(pairs, 16, 0.5, seed=3, world_size=2)
    assert state["mono_steps"] == sum(sampler.batch(t).kind == MONO for t in range(40))

    # A finished run started again (a sweep driver killed before Tune saw the last report) trains no
    # step past the last: it reports its final checkpoint again, by path.
    reports = reports_to_file(tmp_path / "reports.jsonl")
    again = build_trainer(full, "resume", callbacks=[reports]).fit()
    [(metrics, with_checkpoint)] = reports.reports()
    assert (metrics["step"], metrics["resumed_from_step"], with_checkpoint) == (40, 40, False)
    assert metrics["checkpoint_path"] == result.checkpoint.path == again.checkpoint.path
    assert metrics["val_loss"] == result.metrics["val_loss"]  # the final checkpoint's own figures
    assert sorted(p.name for p in (tmp_path / "ray" / "resume").glob("checkpoint_0*")) == [
        "checkpoint_000020",
        "checkpoint_000040",
    ]

    # The final checkpoint cut short (a node lost while uploading, a full disk): the next start finds it
    # against its manifest, says so, and resumes from the one before, rewriting the final one whole.
    weights = Path(result.checkpoint.path) / "encoder" / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    with pytest.raises(IncompleteCheckpoint, match=r"model.safetensors: \d+ bytes, the manifest says \d+ \(cut short"):
        manifest.check(Path(result.checkpoint.path))
    repaired = build_trainer(full, "resume").fit()
    assert repaired.metrics["resumed_from_step"] == 20 and repaired.metrics["step"] == 40
    manifest.check(Path(repaired.checkpoint.path))
    manifest.check(Path(repaired.checkpoint.path) / "encoder")  # the export carries its own
    logs = Path(local_ray._private.worker._global_node.get_logs_dir_path())
    said = "".join(p.read_text(errors="replace") for p in logs.glob("worker-*.out"))
    assert re.search(
        r"resume: \S+checkpoint_000040/encoder/model.safetensors: \d+ bytes, the manifest says \d+ "
        r"\(cut short or altered\). Falling back to the previous checkpoint.",
        said,
    )


def _kill_a_worker_once_a_checkpoint_is_registered(run_dir: Path, raylet: int, killed: list) -> None:
    """SIGKILL one Ray Train worker of this test's Ray (a child of its `raylet`: never another Ray's on the
    machine) as soon as Ray's controller has registered a checkpoint (its snapshot file names one)."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"  # Ray 2.60's record of registered checkpoints
    deadline = time.time() + 300
    while time.time() < deadline and not (snapshot.exists() and "checkpoint_0" in snapshot.read_text()):
        time.sleep(0.1)
    for proc in psutil.Process(raylet).children(recursive=True):
        if any("RayTrainWorker" in part for part in proc.cmdline()):
            proc.kill()
            killed.append(proc.pid)
            return


def _raylet(ray) -> int:
    """The PID of this process's Ray's raylet: the workers it starts are its children."""
    return ray._private.worker._global_node.all_processes["raylet"][0].process.pid


@pytest.mark.timeout(150)  # about 3x its measured time (tests/README.md)
def test_killed_worker_resumes_from_the_last_checkpoint(tiny_model_dir, tmp_path, local_ray):
    # 60 steps: the kill comes once step 20 is registered, 40 steps before the end
    config = with_steps(tiny_config(tiny_model_dir, tmp_path, checkpoint_every=20, max_failures=2), 60)
    killed: list[int] = []
    killer = threading.Thread(
        target=_kill_a_worker_once_a_checkpoint_is_registered,
        args=(tmp_path / "ray" / "faulty", _raylet(local_ray), killed),
        daemon=True,
    )
    killer.start()
    result = build_trainer(config, "faulty").fit()
    killer.join(timeout=1)
    assert killed, "no Ray Train worker process was found to kill"
    resumed = result.metrics["resumed_from_step"]
    assert resumed > 0 and resumed % 20 == 0, resumed  # restarted from a checkpoint, not from scratch
    assert result.metrics["step"] == 60
    state = json.loads((Path(result.checkpoint.path) / STATE_FILE).read_text())
    assert state["sampler"]["step"] == 60


def test_bad_configs_fail_before_workers_start(tmp_path):
    cases = {
        "method.mono_ratio=1.5": "mono_ratio",
        "method.temperature=0": "temperature",
        "trainer.zero_stage=4": "zero_stage",
        "trainer.strategy=fsdp": "strategy",
        "method.batch_size=400": "exceeds the distinct questions",
        "model.pooling=max": "pooling",
        "data.train_languages=[en,xx]": "unknown language code 'xx'",
        "optim.stepz=3": "unknown key",
    }
    for override, message in cases.items():
        with pytest.raises(ValueError, match=message):
            preflight(load_run_config("configs/default.yaml", [override]))
    with pytest.raises(ValueError, match="no GPU"):
        check_resources(load_run_config("configs/default.yaml", ["trainer.use_gpu=true"]), {"CPU": 2.0})
    with pytest.raises(ValueError, match="CPUs"):
        check_resources(load_run_config("configs/default.yaml", ["trainer.workers=4"]), {"CPU": 2.0})


def test_deepspeed_config_follows_ours():
    config = load_run_config("configs/default.yaml", ["trainer.zero_stage=3", "trainer.use_gpu=true"])
    ds = deepspeed_config(config, world_size=4)
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"] is True
    assert ds["train_batch_size"] == 4 * config.method.batch_size
    cpu = deepspeed_config(load_run_config("configs/default.yaml"), world_size=2)
    assert cpu["bf16"]["enabled"] is False


@pytest.mark.timeout(150)  # about 3x its measured time (tests/README.md)
def test_a_last_checkpoint_without_optimizer_state_is_reported_again_but_not_trained_further(
    tiny_model_dir, tmp_path, local_ray
):
    """`trainer.resumable_final: false` (a sweep's trials): the last checkpoint holds the export and the
    run's state, no optimizer state. Started again, the finished run reports it again without loading
    anything; with more steps it is refused by name instead of training on from a fresh optimizer."""
    config = tiny_config(
        tiny_model_dir,
        tmp_path,
        checkpoint_every=2,
        log_every=2,
        max_failures=0,
        strategy="ddp",
        workers=1,
        resumable_final=False,
    )
    first = build_trainer(with_steps(config, 4), "final").fit()
    folder = tmp_path / "ray" / "final"
    assert [(folder / c / "ddp").is_dir() for c in ("checkpoint_000002", "checkpoint_000004")] == [True, False]
    manifest.check(Path(first.checkpoint.path))  # complete as written
    reports = reports_to_file(tmp_path / "reports.jsonl")
    build_trainer(with_steps(config, 4), "final", callbacks=[reports]).fit()
    [(metrics, with_checkpoint)] = reports.reports()
    assert (metrics["step"], metrics["resumed_from_step"], with_checkpoint) == (4, 4, False)
    assert metrics["checkpoint_path"] == first.checkpoint.path
    with pytest.raises(
        Exception,
        match=r"checkpoint_000004 holds no optimizer state \(written as a run's last "
        r"checkpoint with trainer.resumable_final=false\): it cannot be trained further",
    ):
        build_trainer(with_steps(config, 6), "final").fit()


def test_a_diverging_run_stops_at_the_first_non_finite_loss(tiny_model_dir, tmp_path, local_ray, capsys):
    """lr 1e30 blows the weights up after one update: the run fails at step 2 with a named error (step,
    lr, batch), before that step's update, and no checkpoint after step 1 is ever written."""
    config = tiny_config(
        tiny_model_dir, tmp_path, checkpoint_every=1, log_every=1, max_failures=2, strategy="ddp", workers=1
    )
    config = replace(config, optim=replace(config.optim, lr=1e30, warmup_steps=0, steps=4))
    with pytest.raises(
        ray.train.ControllerError,  # raised by StopOnDivergence: no retry
        match=r"controller error:\nnon-finite training loss \(nan\) at step 2, lr [0-9.e+]+, a "
        r"(mono|cross) batch of [a-z, -]+: lower optim.lr",
    ):
        build_trainer(config, "diverges").fit()
    checkpoints = sorted(p.name for p in (tmp_path / "ray" / "diverges").glob("checkpoint_0*"))
    assert checkpoints == ["checkpoint_000001"]
    # Not retried (max_failures=2 would resume it, to diverge again), and not started again under its name.
    with pytest.raises(
        NonFiniteLoss,
        match=r"^non-finite training loss \(nan\) at step 2, .* \(run 'diverges' diverged "
        r"before: not started again\)$",
    ):
        build_trainer(config, "diverges")
    # Issue 33, item 4: a planted record of a divergence, or another run's copied in, fails nothing (was: any
    # text in diverged.txt failed the run).
    runs = tmp_path / "ray"
    for planted, text in (("planted", "non-finite training loss (a forgery)"), ("copied", None)):
        (runs / planted).mkdir()
        (runs / planted / "diverged.txt").write_text(text or (runs / "diverges" / "diverged.txt").read_text())
        build_trainer(config, planted)  # not refused
    said = capsys.readouterr().out
    assert said.count("Not this deployment's record of a divergence: ignored.") == 2, said


def test_check_finite_names_the_step_and_the_pairs():
    from hybrid.sampler import HybridBatch
    from trainers.loop import check_finite

    batch = HybridBatch(
        6, "cross", None, ["q1", "q2"], ["en", "de"], ["de", "en"], ["a", "b"], ["c", "d"], [None, None]
    )
    check_finite(batch, 1e-3, loss=torch.tensor(1.5), gradient_norm=None)  # finite or unknown: nothing happens
    with pytest.raises(NonFiniteLoss, match=r"loss \(inf\) at step 7, lr 0.001, a cross batch of de-en, en-de"):
        check_finite(batch, 1e-3, loss=torch.tensor(float("inf")))
    with pytest.raises(NonFiniteLoss, match=r"training gradient norm \(nan\) at step 7"):
        check_finite(batch, 1e-3, gradient_norm=float("nan"))
