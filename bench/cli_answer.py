"""How long the command line takes to answer before Ray starts, against another checkout of the project
(the baseline: e.g. a worktree of an older commit with its own `.venv`), measured in one run.

    .venv/bin/python bench/cli_answer.py --baseline ../base --rounds 5

Three commands, each a refusal or an answer that starts nothing: a bad config value (`--set optim.lr=.inf`),
`--show-config`, and `--help`; and `python -m evaluation --help`. The two checkouts alternate in every
round (the machine's load moves both alike); the median and the spread (min-max) of the wall times go to
`bench/results/cli_answer.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

from trainers.calibrate import cpu_name

HERE = Path(__file__).resolve().parents[1]
COMMANDS = {
    "refusal (--set optim.lr=.inf)": ["sweeps/ratio_search.py", "--set", "optim.lr=.inf"],
    "--show-config": ["sweeps/ratio_search.py", "--show-config"],
    "--help": ["sweeps/ratio_search.py", "--help"],
    "python -m evaluation --help": ["-m", "evaluation", "--help"],
}


def wall(checkout: Path, args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([str(checkout / ".venv/bin/python"), *args], cwd=checkout, capture_output=True, timeout=300)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="another checkout with its own .venv")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sides = {"baseline": args.baseline.resolve(), "this": HERE}
    times: dict[str, dict[str, list[float]]] = {name: {side: [] for side in sides} for name in COMMANDS}
    for _ in range(args.rounds):
        for name, command in COMMANDS.items():
            for side, checkout in sides.items():
                times[name][side].append(wall(checkout, command))
    rows = {}
    for name, by_side in times.items():
        med = {side: statistics.median(t) for side, t in by_side.items()}
        rows[name] = {side: {"median_s": round(med[side], 3), "min_s": round(min(t), 3), "max_s": round(max(t), 3)}
                      for side, t in by_side.items()} | {"speedup": round(med["baseline"] / med["this"], 1)}  # fmt: skip
        print(f"{name:32} baseline {med['baseline']:5.2f} s  this {med['this']:5.2f} s  ({rows[name]['speedup']}x)")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=args.baseline, capture_output=True, text=True)
    out = {"cpu": cpu_name(), "rounds": args.rounds,
           "baseline": commit.stdout.strip(), "results": rows}  # fmt: skip
    (HERE / "bench/results/cli_answer.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
