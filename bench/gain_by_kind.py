"""Where an aligned model's answers got better: answer accuracy per question kind of each run of a
``bench/experiment_worlds.py`` experiment, against the full-data run of the same training seed.

    python bench/gain_by_kind.py --exp data/bench/exp30b/sft --worlds 0 1 2 --runs full-f100 agreement-f050 clip_score-f050

Evaluation only: it reads the held-out split's ``question_kind`` column. Each model answers the same
``--eval-samples`` held-out rows as the experiment's own evaluation (greedy, the experiment's key
match), and the table pools worlds and training seeds: hits per kind over rows asked.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saev_core.configs import DatasetSpec  # noqa: E402
from saev_core.activations.data import Sample, iter_samples, open_dataset  # noqa: E402
from saev_core.alignment.model_eval import generate_answers, names_key  # noqa: E402
from saev_core.activations.modeling import load_model  # noqa: E402


def hits_by_kind(model: Path, heldout: Path, n: int) -> tuple[Counter, Counter]:
    spec = DatasetSpec(path=str(heldout))
    ds = open_dataset(spec)
    samples = [s for s in iter_samples(ds, spec, 0, n) if isinstance(s, Sample)]
    answers = generate_answers(load_model(str(model), device="cpu"), samples)
    hits, asked = Counter(), Counter()
    for s, a in zip(samples, answers):
        kind = ds["question_kind"][s.row_index]
        asked[kind] += 1
        hits[kind] += names_key(a, ds["key"][s.row_index])
    return hits, asked


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--exp", required=True, help="an experiment_worlds.py method directory (holding w<N>/runs)")
    ap.add_argument("--worlds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--runs", nargs="+", default=["full-f100", "agreement-f050", "clip_score-f050"],
                    help="run names without the training-seed suffix")
    ap.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--eval-samples", type=int, default=300)
    args = ap.parse_args()
    totals = {r: (Counter(), Counter()) for r in args.runs}
    for w in args.worlds:
        heldout = Path(f"data/worlds/seed{w}/heldout/clean.parquet")
        for run in args.runs:
            for t in args.train_seeds:
                h, a = hits_by_kind(Path(args.exp) / f"w{w}" / "runs" / f"{run}-t{t}" / "model" / "model", heldout, args.eval_samples)
                totals[run][0].update(h)
                totals[run][1].update(a)
                print(f"world {w} {run}-t{t}: {sum(h.values()) / sum(a.values()):.3f}", flush=True)
    kinds = sorted(totals[args.runs[0]][1])
    print("\n| run | " + " | ".join(f"{k} (n={totals[args.runs[0]][1][k]})" for k in kinds) + " | all |")
    print("| --- |" + " ---: |" * (len(kinds) + 1))
    for run, (h, a) in totals.items():
        print(f"| {run} | " + " | ".join(f"{h[k] / a[k]:.3f}" for k in kinds) + f" | {sum(h.values()) / sum(a.values()):.3f} |")


if __name__ == "__main__":
    main()
