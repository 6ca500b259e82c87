"""Accept what was written before signatures, once: `python -m hybrid.accept LOCATION [--yes]`.

One checkpoint at a time (or a sweep's unsigned `sweep_config.json`): lists the unsigned manifests of the
checkpoint at LOCATION (local or s3://) with each file's size and sha256, checked against them, asks, and
signs them with the deployment's key (`hybrid.signing`). Only for files you wrote: signing is what makes
the sweep trust them. A manifest whose signature was stripped (it names the key that signed it) is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hybrid import manifest, signing, storage
from hybrid.layout import ENCODER_DIR


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hybrid.accept", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("location", help="a checkpoint folder or a sweep's folder, local or s3://")
    parser.add_argument("--yes", action="store_true", help="do not ask (you wrote these files)")
    args = parser.parse_args(argv)
    try:
        signing.ensure_key()
        folder = storage.local_copy(args.location)
        found = manifest.unsigned(folder)
        settings = folder / signing.SETTINGS_FILE
        if settings.is_file() and signing.SIGNATURE not in json.loads(settings.read_text()):
            found.append(settings)
        if not found:
            print(f"nothing to accept: every manifest under {args.location} is signed (or there is none).")
            return 0
        names = [str(p.relative_to(folder)) for p in found]
        checkpoints = sorted({_checkpoint_of(Path(n)) for n, p in zip(names, found) if p != settings})
        if len(checkpoints) > 1:
            raise manifest.IncompleteCheckpoint(
                f"{len(checkpoints)} checkpoints under {args.location} hold unsigned manifests "
                f"({', '.join(map(str, checkpoints[:3]))}{', ...' if len(checkpoints) > 3 else ''}): accept them "
                f"one at a time, each after reading its files: python -m hybrid.accept {storage.join(args.location, str(checkpoints[0]))}"
            )
        print(f"{len(found)} unsigned file(s) under {args.location}:")
        for path, name in zip(found, names):
            print(f"  {name}")
            for file, entry in ({} if path == settings else manifest.acceptable(path)["files"]).items():
                print(f"    {entry['size']:>12} bytes  sha256 {entry['sha256']}  {file}")
        if not args.yes and input("Sign them with this deployment's key? Only if you wrote them. [yes/no] ") != "yes":
            print("nothing signed.")
            return 1
        for path, name in zip(found, names):
            if path == settings:  # bound to its sweep, named by its folder
                sweep = args.location.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
                path.write_text(
                    json.dumps(
                        signing.signed(json.loads(path.read_text()), signing.settings_purpose(sweep)),
                        indent=1,
                        sort_keys=True,
                    )
                )
            else:
                manifest.accept(path)
            if storage.is_uri(args.location) and not args.location.startswith("file://"):
                storage.write_text(storage.join(args.location, name), path.read_text())
        print(f"signed {len(found)} file(s); they are read again.")
        return 0
    except (signing.SigningKeyError, manifest.IncompleteCheckpoint, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _checkpoint_of(manifest_name: Path) -> Path:
    """The checkpoint a manifest belongs to: its folder, or the checkpoint around an export (`encoder/`)."""
    folder = manifest_name.parent
    return folder.parent if folder.name == ENCODER_DIR else folder


if __name__ == "__main__":
    raise SystemExit(main())
