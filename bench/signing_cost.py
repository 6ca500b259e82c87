"""What signing costs a checkpoint: seconds per GB to write and to verify its manifest, signed
(`hybrid.manifest` as it is: sha256 of every file, the manifest HMAC-signed) against the baseline of the
same manifest unsigned (sha256 of every file, the check before signatures), in one run, alternating.

    .venv/bin/python bench/signing_cost.py              # 1 GB checkpoint, 5 rounds, about 1 min
    .venv/bin/python bench/signing_cost.py --gb 0.25    # a quick one

The checkpoint is random bytes in files the size of a small model's shards (256 MB at most), read from
the page cache after a first pass, so the figure is hashing, not the disk.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import tempfile
import time
from pathlib import Path

from hybrid import manifest, signing

OUT = Path(__file__).parent / "results" / "signing_cost.json"


def unsigned_write(folder: Path) -> None:
    """The baseline: the manifest as it was before signatures."""
    files = {
        str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": manifest.sha256(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != manifest.MANIFEST
    }
    (folder.parent / "unsigned.json").write_text(json.dumps({"files": files}))  # beside: not a file it lists


def unsigned_check(folder: Path) -> None:
    for name, expected in json.loads((folder.parent / "unsigned.json").read_text())["files"].items():
        assert manifest.sha256(folder / name) == expected["sha256"]


def signed_write(folder: Path) -> None:
    manifest.write(folder)


def signed_check(folder: Path) -> None:
    manifest.check(folder)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        key = Path(tmp) / "signing.key"
        key.write_text(secrets.token_hex(32))
        key.chmod(0o600)
        os.environ[signing.KEY_ENV] = str(key)
        folder = Path(tmp) / "checkpoint"
        folder.mkdir()
        left, shard = int(args.gb * 2**30), 256 * 2**20
        while left > 0:
            (folder / f"shard-{left}.bin").write_bytes(os.urandom(min(left, shard)))
            left -= shard
        size_gb = sum(p.stat().st_size for p in folder.iterdir()) / 2**30
        unsigned_write(folder)  # a first pass: the files in the page cache for every side
        sides = {
            "signed write": signed_write,
            "unsigned write": unsigned_write,
            "signed check": signed_check,
            "unsigned check": unsigned_check,
        }
        times: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(args.rounds):  # alternate the sides every round
            for name, side in sides.items():
                start = time.perf_counter()
                side(folder)
                times[name].append((time.perf_counter() - start) / size_gb)
    result = {
        "cpu": platform.processor() or platform.machine(),
        "load_average": os.getloadavg(),
        "checkpoint_gb": round(size_gb, 3),
        "rounds": args.rounds,
        "seconds_per_gb": {k: {"median": statistics.median(v), "min": min(v), "max": max(v)} for k, v in times.items()},
    }
    for step in ("write", "check"):
        ratios = [s / u for s, u in zip(times[f"signed {step}"], times[f"unsigned {step}"])]
        result[f"{step}_signed_over_unsigned"] = {
            "median": statistics.median(ratios),
            "min": min(ratios),
            "max": max(ratios),
        }
    with open("/proc/cpuinfo") as f:
        result["cpu"] = next(
            (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), result["cpu"]
        )
    OUT.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
