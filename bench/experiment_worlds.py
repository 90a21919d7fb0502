"""The data-kept experiment over several demo worlds: each world is dumped (prompt + response),
scored with one SAE and run through ``saev experiment`` (with the oracle line); the figures are
then pooled over worlds, training seeds and random seeds: mean ± population std.

    python bench/experiment_worlds.py --worlds 1000 --scorers coverage --fractions 0.5 1.0 --set epochs=4
    python bench/experiment_worlds.py --worlds 0 1 2 --scorers coverage saev cooccurrence --fractions 0.25 0.5 1.0
    python bench/experiment_worlds.py --worlds 0 1 2 --method dpo --scorers coverage --fractions 0.5 1.0

Writes ``<out>/<method>/w<N>/`` per world (the experiment's own outputs) and ``<out>/<method>/pooled.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _worlds import scored  # noqa: E402

from saev_core.demo.defaults import DEMO_ALIGN  # noqa: E402
from saev_core.alignment.experiment import METRIC, ExperimentConfig, run_experiment  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worlds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sae-seed", type=int, default=0)
    ap.add_argument("--variant", choices=["prompt", "response"], default="response")
    ap.add_argument("--method", choices=["sft", "dpo"], default="sft")
    ap.add_argument("--scorers", nargs="+", default=["coverage"])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.5, 1.0])
    ap.add_argument("--random-seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--eval-samples", type=int, default=300)
    ap.add_argument("--no-oracle", dest="oracle", action="store_false", help="leave out the oracle runs (the headroom line)")
    ap.add_argument("--set", action="append", default=[], help="AlignConfig override, e.g. --set epochs=4 (on top of the demo's)")
    ap.add_argument("--out", default="data/bench/experiment")
    ap.add_argument("--clip", action="store_true", help="score clip_score too (each world's demo CLIP), e.g. for --scorers clip_score")
    ap.add_argument("--scored", default="data/bench/validity", help="where the dumps, SAEs and tables go (shared with bench/validity.py)")
    args = ap.parse_args()
    align = {k: v for k, v in DEMO_ALIGN.items() if k != "method"}
    for kv in args.set:
        k, v = kv.split("=", 1)
        align[k] = yaml.safe_load(v)
    root = Path(args.out) / args.method
    per_world = {}
    for w in args.worlds:
        t0 = time.time()
        wdir, tables, m = scored(w, Path(args.scored), variant=args.variant, sae_seed=args.sae_seed, clip=args.clip)
        cfg = ExperimentConfig(tables=str(tables), model=str(wdir / "model"), heldout=str(wdir / "heldout/clean.parquet"),
                               labels=str(wdir / "labels.parquet"), out=str(root / f"w{w}"), dataset="demo-rlaif", sae_id=m["sae_id"],
                               method=args.method, scorers=args.scorers, fractions=args.fractions, random_seeds=args.random_seeds,
                               train_seeds=args.train_seeds, align=align, eval_samples=args.eval_samples, oracle=args.oracle,
                               progress=False)
        per_world[w] = run_experiment(cfg, overwrite=True)
        print(f"world {w}: {per_world[w]['n_runs']} runs in {time.time() - t0:.0f}s\n{per_world[w]['markdown']}\n", flush=True)
    md = pooled(per_world, root, METRIC[args.method])
    (root / "pooled.md").write_text(md + "\n")
    print(md)


def pooled(per_world: dict[int, dict], root: Path, metric: str) -> str:
    """Every run of every world, grouped by (scorer, fraction); 'relative to full' divides each world's
    runs by that world's mean full-data figure, so it is a ratio within worlds."""
    groups: dict[tuple[str, float], list[tuple[float, float]]] = {}
    base = []
    for w, summary in per_world.items():
        rows = [json.loads(x) for x in Path(summary["results"]).read_text().splitlines()]
        full = statistics.mean(r[metric] for r in rows if r["scorer"] == "full")
        base.append((summary["base"], summary["base"] / full))
        for r in rows:
            frac = r["fraction"] if r["scorer"] != "oracle" or r["fraction"] in (0.25, 0.5, 0.75) else "natural"
            groups.setdefault((r["scorer"], frac), []).append((r[metric], r[metric] / full))

    def cell(vals):
        return f"{statistics.mean(vals):.3f} ± {statistics.pstdev(vals):.3f}"
    lines = [f"worlds {sorted(per_world)}; {metric} on each world's held-out split", "",
             f"| subset | kept | runs | {metric} | relative to full |", "| --- | ---: | ---: | ---: | ---: |",
             f"| base model | - | {len(base)} | {cell([b for b, _ in base])} | {cell([r for _, r in base])} |"]
    for (scorer, frac), vals in sorted(groups.items(), key=lambda kv: (kv[0][0] != "full", kv[0][0], str(kv[0][1]))):
        kept = frac if isinstance(frac, str) else f"{frac:.0%}"
        lines.append(f"| {scorer} | {kept} | {len(vals)} | {cell([v for v, _ in vals])} | {cell([r for _, r in vals])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
