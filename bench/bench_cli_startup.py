"""Wall time of `saev <command> --help` (import + typer building every command's options), for one
or more source trees, interleaved so that machine load falls on all of them alike.

    git worktree add /tmp/head <commit>
    python bench/bench_cli_startup.py --trees /tmp/head . --repeats 11
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = [["--help"], ["train", "--help"], ["dump", "--help"], ["query", "--help"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trees", nargs="+", default=["."], help="source trees to time (each put first on PYTHONPATH)")
    ap.add_argument("--repeats", type=int, default=11)
    args = ap.parse_args()
    trees = [str(Path(t).resolve()) for t in args.trees]
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for cmd in COMMANDS:
            for tree in trees:
                env = {**os.environ, "PYTHONPATH": tree}
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "saev_core", *cmd], env=env, check=True, capture_output=True)
                times.setdefault((tree, " ".join(cmd)), []).append(time.perf_counter() - t0)
    print(f"| command | {' | '.join(trees)} |\n|---|{'---|' * len(trees)}")
    for cmd in COMMANDS:
        key = " ".join(cmd)
        cells = []
        for tree in trees:
            ts = sorted(times[(tree, key)])
            cells.append(f"{statistics.median(ts):.2f} s ({ts[0]:.2f}-{ts[-1]:.2f})")
        print(f"| saev {key} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
