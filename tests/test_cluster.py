"""cluster.yaml and the GPU presets are checked offline, with Ray's own cluster-config schema."""

import copy
import re
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from sweeps.config import load_sweep_setup
from sweeps.knobs import BY_NAME
from sweeps.search import enqueued_points


def load():
    with open("cluster.yaml") as f:
        return yaml.safe_load(f)


def test_cluster_yaml_validates_with_rays_schema():
    config = prepare_config(load())
    validate_config(config)
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["min_workers"] <= workers["max_workers"] <= config["max_workers"]
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])
    # Every node verifies with the driver's signing key, at the path hybrid.signing reads, private.
    assert config["file_mounts"]["/home/ubuntu/.cache/hybrid-sweep/signing.key"] == "~/.cache/hybrid-sweep/signing.key"
    assert "chmod 600 ~/.cache/hybrid-sweep/signing.key" in config["setup_commands"][1]
    # Issue 33: the record's credentials reach the head alone (`ray rsync-up`), never a worker node.
    everywhere = yaml.safe_dump([config["file_mounts"], config["setup_commands"], config["worker_setup_commands"]])
    assert "hybrid-sweep.env" not in everywhere and "hybrid-sweep.env" in " ".join(config["head_setup_commands"])
    head, worker = (
        config["available_node_types"][n]["node_config"]["IamInstanceProfile"]["Arn"] for n in ("head", "gpu_worker")
    )
    assert head.endswith("/hybrid-sweep-head") and head != worker  # not Ray's default head profile


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c["available_node_types"]["gpu_worker"].update(min_workers=9, max_workers=2),
        lambda c: c.update(head_node_type="nope"),
        lambda c: c["provider"].update(type="not-a-cloud"),
        lambda c: c.update(unknown_key=1),
    ],
)
def test_broken_cluster_yaml_is_rejected(mutate):
    config = copy.deepcopy(load())
    mutate(config)
    with pytest.raises(Exception):
        validate_config(prepare_config(config))


@pytest.mark.parametrize("preset", ["configs/default.yaml", "configs/xlmr-base-gpu.yaml", "configs/labse-gpu.yaml"])
def test_presets_load_and_validate(preset):
    setup = load_sweep_setup(preset)
    assert setup.sweep.trials >= 2 and setup.run.method.batch_size >= 2


@pytest.mark.parametrize("preset", ["configs/xlmr-base-gpu.yaml", "configs/labse-gpu.yaml"])
def test_a_gpu_preset_runs_the_study_as_shipped(preset):
    """Issue 34: a GPU preset carries what the README says a study needs (the references and points at 3
    seeds, every trial evaluated, MLQA-R zero-shot), runs its references and arm whole (no pruning), trains a
    k arm on the first k languages high-resource first, and says what each searched list is, the units, the
    GPUs it needs and an estimate of its GPU hours."""
    setup = load_sweep_setup(preset)
    sweep, run = setup.sweep, setup.run
    assert sweep.reseed_references and sweep.final_eval_all and "mlqa-r" in sweep.zero_shot_datasets
    assert sweep.scheduler == "none" and sum(p.reseed for p in sweep.search.points) >= 3
    points = {(p["mono_ratio"], p["num_train_languages"]) for p in enqueued_points(sweep, run)}
    assert {(0.0, 9), (1.0, 9), (0.25, 9), (0.5, 9), (0.75, 9), (0.5, 2), (0.5, 5)} <= points
    assert run.data.train_languages == load_sweep_setup("configs/cpu-study.yaml").run.data.train_languages
    assert run.data.train_languages[:2] == ("en", "de")  # not ar, de: the alphabet's first two

    text = Path(preset).read_text()
    assert f"GPUs: {sweep.max_concurrent * run.trainer.workers} at once" in text
    assert "ESTIMATE" in text and re.search(r"about \d+ GPU hours", text)
    assert re.search(r"grace_period: \d+ +#.*checkpoints", text) and re.search(r"checkpoint_every: \d+ +# steps", text)
    searched = dict(re.findall(r"^ {4}(\w+): \[.*\] +# (.*)$", text, re.MULTILINE))
    assert {name for name in BY_NAME if getattr(sweep.search, name)} <= set(searched)  # each one given is said
    for name, comment in searched.items():
        values = getattr(sweep.search, name)
        said = "not searched" if not values else "range" if BY_NAME[name].is_range else "choices"
        assert said in comment, f"{preset}: sweep.search.{name}'s comment does not say it is {said}"
