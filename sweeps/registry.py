"""The sweep's answer as an MLflow model: the best configuration's encoder, logged as a sentence-transformers
model (from its checkpoint in storage, with an input example) in its trial's run and registered under the
sweep's name with the alias `best`, so `models:/<sweep>@best` loads it anywhere MLflow reaches.

Driver only (MLflow and the registry live with the driver); the checkpoint is copied from storage.
"""

from __future__ import annotations

from typing import Any

from hybrid import manifest, storage

ALIAS = "best"
EXAMPLE = ["query: Which team won Super Bowl 50?", "passage: The Denver Broncos defeated the Carolina Panthers."]


def register_best(
    tracking_uri: str,
    sweep_name: str,
    run_id: str,
    encoder_uri: str,
    bound: dict[str, int | str],
    tags: dict[str, Any],
    description: str,
) -> str:
    """Log the encoder at `encoder_uri` (written by the training run and step `bound` names) in run
    `run_id`, register it as a version of model `sweep_name` with `tags`, point the alias `best` at it;
    returns the version. Idempotent: a version already registered from `run_id` (by a driver killed before
    the alias) is that version again, never a second one."""
    from mlflow import MlflowClient

    folder = storage.local_copy(encoder_uri)
    manifest.check(folder, **bound)  # signed by this deployment for this trial and step, every file as written
    client = MlflowClient(tracking_uri)
    found = client.search_model_versions(f"name = '{sweep_name}' and run_id = '{run_id}'")
    version = (
        max((v.version for v in found), key=int)
        if found
        else _log_and_register(tracking_uri, sweep_name, run_id, folder, tags)
    )
    for key, value in tags.items():
        client.set_model_version_tag(sweep_name, version, key, str(value))
    client.update_model_version(sweep_name, version, description=description)
    client.set_registered_model_alias(sweep_name, ALIAS, version)
    return version


def _log_and_register(tracking_uri: str, sweep_name: str, run_id: str, folder, tags: dict[str, Any]) -> str:
    """The encoder logged as a sentence-transformers model in run `run_id` and registered: its version."""
    import mlflow
    from sentence_transformers import SentenceTransformer

    mlflow.set_tracking_uri(tracking_uri)
    model = SentenceTransformer(str(folder), device="cpu")
    with mlflow.start_run(run_id=run_id):
        info = mlflow.sentence_transformers.log_model(
            model,
            name="encoder",
            input_example=EXAMPLE,
            registered_model_name=sweep_name,
            pip_requirements=["sentence-transformers", "transformers", "torch"],  # no inference from the env
            tags={k: str(v) for k, v in tags.items()},
        )
    return str(info.registered_model_version)
