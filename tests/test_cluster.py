"""cluster.yaml and the GPU presets are checked offline, with Ray's own cluster-config schema."""

import copy

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from sweeps.config import load_sweep_setup


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
