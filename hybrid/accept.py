"""Accept what was written before signatures, once: `python -m hybrid.accept LOCATION [--yes]`.

Lists the unsigned manifests under LOCATION (a checkpoint or a sweep's folder, local or s3://) and a
sweep's unsigned `sweep_config.json`, checks each manifest's files (sizes and sha256), asks, and signs
them with the deployment's key (`hybrid.signing`). Only for files you wrote: signing is what makes the
sweep trust them.
"""

from __future__ import annotations

import argparse
import json
import sys

from hybrid import manifest, signing, storage


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
        print(f"{len(found)} unsigned file(s) under {args.location}:", *names, sep="\n  ")
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


if __name__ == "__main__":
    raise SystemExit(main())
