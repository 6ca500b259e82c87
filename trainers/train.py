"""Build and run one Ray Train job; also the single-run CLI for debugging outside Tune.

    python -m trainers.train --config configs/default.yaml --set method.mono_ratio=0.3

`build_trainer` is what a Tune trial calls (Train V2: a Tune trial is a function that builds a
`TorchTrainer` and calls `fit()`). `trainers.preflight` checks the config against the data and the
cluster first, so a bad request fails before a worker is scheduled.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any

import ray
import ray.train
from ray.train.torch import TorchTrainer

from hybrid import signing, storage
from hybrid.config import DEFAULT_CONFIG, add_overrides_flag, to_dict
from trainers.config import TrainRunConfig, check_resources, load_run_config
from trainers.loop import CHECKPOINT_NAME, NonFiniteLoss, checkpoint_name, checkpoint_step, train_loop_per_worker
from trainers.preflight import preflight

DIVERGED = "diverged.txt"  # in a Train run's folder: why it stopped (it is not started again), signed
REGISTERED = "registered.json"  # in a Train run's folder: the newest checkpoint Train registered, signed

WORKER_ENV = {
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",  # no bytecode dumps in worker logs
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" bar, once per task and worker
    # Workers import torch, transformers and deepspeed: on a busy 2-core machine that alone can pass
    # Ray's 60 s default, which then fails the run with WorkerGroupStartupTimeoutError.
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "600",
}


def init_ray(log_to_driver: bool = True, quiet: bool = False) -> str:
    """Join a running cluster when there is one (`ray up`, `ray submit`), else start a local Ray; returns
    the folder of Ray's logs on this node (every worker's and task's output, shown here when `log_to_driver`).
    `quiet`: Ray's own start-up lines (its token warning, "Started a local Ray instance") kept out, errors shown."""
    if not ray.is_initialized():
        # The dashboard serves Ray's state API, which Train's placement-group cleaner needs to free a
        # trial's workers when Tune stops it (ASHA); it binds to 127.0.0.1 only.
        ray.init(
            address=os.environ.get("RAY_ADDRESS"),
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            runtime_env={"env_vars": WORKER_ENV},
            log_to_driver=log_to_driver,
            logging_level=logging.ERROR if quiet else logging.INFO,
        )
    return ray._private.worker._global_node.get_logs_dir_path()


def _keep(root: str, name: str, file: str, purpose: str, body: dict) -> None:
    """`body` signed for `purpose` into the run's folder as `file` (a record the run's next start trusts)."""
    storage.write_text(storage.join(root, name, file), json.dumps(signing.signed(body, purpose)))


def _kept(root: str, name: str, file: str, purpose: str, key: str, what: str) -> Any:
    """`key` of the run's `file` as this deployment signed it for `purpose` (`_keep`); None without the file,
    or for one not signed so, said naming `what`: a planted file must neither fail or block a run nor pass
    for its record."""
    location = storage.join(root, name, file)
    if not storage.exists(location):
        return None
    try:
        return signing.verified(json.loads(storage.read_text(location)), purpose, location)[key]
    except (ValueError, KeyError) as e:  # BadSignature among them
        print(f"[hybrid-sweep] {e} Not this deployment's record of {what}: ignored.", flush=True)
        return None


class StopOnDivergence(ray.train.UserCallback):
    """A diverged run (`NonFiniteLoss`) is not retried: it would diverge again from the same checkpoint.
    Runs on the Train controller; an exception raised here fails the run at once (a controller error),
    and the run's folder keeps why (`DIVERGED`), so a restarted Tune trial fails without training."""

    def __init__(self, root: str, name: str):
        self.root, self.name = root, name

    def after_exception(self, run_context, worker_exceptions: dict[int, Exception]) -> None:
        for error in worker_exceptions.values():
            if isinstance(error, NonFiniteLoss):  # the worker's own exception, unpickled
                _keep(self.root, self.name, DIVERGED, _diverged_purpose(self.name), {"error": str(error)})
                raise error
            if isinstance(error, signing.SigningKeyError):  # a node's setup: a retry would meet it again
                raise error


def _diverged_purpose(name: str) -> str:
    """The signing purpose of a run's `DIVERGED` file (`name`: the run's; its folder's last part in a URI is
    not, where a query string follows it)."""
    return f"diverged:{name}"


class KeepRegistered(ray.train.UserCallback):
    """Signs, in the run's folder, the step of each checkpoint Train registers (`REGISTERED`). Train writes its
    snapshot, naming that checkpoint as the latest, before it calls any user callback with its report, so the
    step kept here is never newer than the snapshot's latest: one that is names a rolled-back snapshot
    (`check_snapshot`)."""

    def __init__(self, root: str, name: str):
        self.root, self.name = root, name

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if checkpoint is not None:
            step = {"step": checkpoint_step(checkpoint.path)}
            _keep(self.root, self.name, REGISTERED, _registered_purpose(self.name), step)


def _registered_purpose(name: str) -> str:
    return f"registered:{name}"


SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of a run's registered checkpoints
_SNAPSHOT_LISTS = ("checkpoint_results", "pending_training_results")
_SNAPSHOT_NAMES = (
    "validated_checkpoint_dir_names",
    "timed_out_validation_checkpoint_dir_names",
    "failed_validation_checkpoint_dir_names",
)


def check_snapshot(root: str, name: str) -> int:
    """The step of the run's latest registered checkpoint, -1 for none: the one Train resumes from; a checkpoint
    folder past it was written but never registered (its cluster lost in between), and Train trains it again.

    Ray Train writes its snapshot unsigned and deletes the checkpoints past `trainer.keep_checkpoints` by
    the names it holds, joined to the run's folder: a name that is not one of the run's checkpoint folders
    (`checkpoint_NNNNNN`), a path out of the folder among them, is refused before Train reads it, and so is
    a snapshot whose latest checkpoint is older than the newest one Train registered (`KeepRegistered`):
    rolled back, it would train the run again from there. The checkpoint it resumes from must still pass
    its signed manifest (`trainers.loop.restore`)."""
    location, registered = storage.join(root, name, SNAPSHOT), storage.join(root, name, REGISTERED)
    if not storage.exists(location):  # a run started afresh: Train will register its checkpoints anew
        if storage.exists(registered):
            storage.delete(registered)
        return -1
    fix = "Delete the file to start the run again from step 0 (Train then knows none of its checkpoints)."
    try:
        snapshot = json.loads(storage.read_text(location))
        entries = [r for key in _SNAPSHOT_LISTS for r in snapshot.get(key) or []]
        entries += [snapshot["latest_checkpoint_result"]] if snapshot.get("latest_checkpoint_result") else []
        names = [entry["checkpoint_dir_name"] for entry in entries]
        names += [listed for key in _SNAPSHOT_NAMES for listed in snapshot.get(key) or []]
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ValueError(f"{location}: not Ray Train's snapshot of a run ({e!r}). {fix}") from None
    for listed in names:
        if not (isinstance(listed, str) and CHECKPOINT_NAME.fullmatch(listed)):
            raise ValueError(
                f"{location} names {listed!r}, not one of the run's checkpoint folders (checkpoint_NNNNNN): "
                f"altered, and Ray Train would delete what it names. {fix}"
            )
    latest = snapshot.get("latest_checkpoint_result")
    latest_step = checkpoint_step(latest["checkpoint_dir_name"]) if latest else -1
    newest = _kept(root, name, REGISTERED, _registered_purpose(name), "step", "the run's checkpoints")
    if newest is not None and latest_step < newest:
        raise ValueError(
            f"{location} names {latest['checkpoint_dir_name'] if latest else 'no checkpoint'} as the run's latest, "
            f"but Train registered {checkpoint_name(newest)} (signed in {REGISTERED}): rolled back, it would "
            f"train the run again from there. {fix}"
        )
    return latest_step


def build_trainer(
    config: TrainRunConfig,
    name: str,
    storage_path: str | None = None,
    callbacks: list | None = None,
    prune: bool = True,
    driver_key: str | None = None,
) -> TorchTrainer:
    """The run's `TorchTrainer`; the same name and storage resume it. A run that diverged before fails here.
    `prune`: Ray keeps the latest `trainer.keep_checkpoints`; False keeps every checkpoint (a sweep prunes
    each only once it is evaluated, `sweeps.trial.EvaluateAndReport`). `driver_key`: the fingerprint of
    the key every worker must hold (`signing.check_same_key`); None: this process's (the driver's)."""
    t = config.trainer
    root = storage.resolve(storage_path or t.storage_path)
    why = _kept(root, name, DIVERGED, _diverged_purpose(name), "error", "a divergence")
    if why is not None:
        raise NonFiniteLoss(f"{why} (run {name!r} diverged before: not started again)")
    check_snapshot(root, name)
    resources = {"CPU": t.cpus_per_worker} | ({"GPU": 1} if t.use_gpu else {})
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=to_dict(config),
        scaling_config=ray.train.ScalingConfig(
            num_workers=t.workers, use_gpu=t.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=root,
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.keep_checkpoints if prune else None),
            worker_runtime_env={"env_vars": WORKER_ENV | {signing.DRIVER_KEY_ENV: driver_key or signing.fingerprint()}},
            callbacks=[
                KeepRegistered(root, name),
                *(callbacks or []),
                StopOnDivergence(root, name),  # last: it raises
            ],
        ),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    add_overrides_flag(parser, "optim.steps=100")
    parser.add_argument("--name", default="train", help="run name; the same name resumes that run")
    args = parser.parse_args(argv)
    try:  # a user's error is one line naming the key and the fix, before Ray starts
        config = load_run_config(args.config, args.overrides, say=print)
        preflight(config)
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"error: {e}\n")
    init_ray()
    check_resources(config, ray.cluster_resources())
    result = build_trainer(config, args.name).fit()
    print(f"final metrics: {result.metrics}")
    checkpoint = storage.with_path(storage.resolve(config.trainer.storage_path), result.checkpoint.path)
    print(f"checkpoint: {checkpoint}")
    print(f"export (transformers / sentence-transformers): {storage.join(checkpoint, 'encoder')}")


if __name__ == "__main__":
    main()
