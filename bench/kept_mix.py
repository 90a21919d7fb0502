"""What a scorer keeps: the clean share, the low-quality kinds and the question-kind mix of its top
fraction, against the whole dataset (evaluation only: it reads the demo world's labels).

    python bench/kept_mix.py --worlds 0 1 2 --scored data/bench/validity-eval --scorer agreement

Reads ``<scored>/w<N>-L0-<variant>/<tables>`` as written by ``bench/validity.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saev_core.tables.query import open_views  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worlds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--scored", default="data/bench/validity-eval")
    ap.add_argument("--variant", default="response")
    ap.add_argument("--tables", default="tables-s0-tau0", help="tables directory name inside each world's run")
    ap.add_argument("--scorer", default="agreement")
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--dataset", default="demo-rlaif")
    args = ap.parse_args()
    for w in args.worlds:
        con = open_views(str(Path(args.scored) / f"w{w}-L0-{args.variant}" / args.tables))
        scores = con.execute("SELECT sample_id, score FROM scores WHERE scorer = $s AND dataset = $d",
                             {"s": args.scorer, "d": args.dataset}).df()
        labels = pq.read_table(f"data/worlds/seed{w}/labels.parquet").to_pandas()
        df = scores.merge(labels[labels["dataset"] == args.dataset], on="sample_id")
        top = df.sort_values(["score", "sample_id"], ascending=[False, True]).head(round(len(df) * args.fraction))
        mix = {k: round(float((top["question_kind"] == k).mean() / (df["question_kind"] == k).mean()), 2) for k in sorted(df["question_kind"].unique())}
        print(f"world {w}: top {args.fraction:.0%} by {args.scorer}: {top['is_clean'].mean():.3f} clean (all: {df['is_clean'].mean():.3f}); "
              f"low-quality kept: {top.loc[~top['is_clean'], 'corruption'].value_counts().to_dict()}; question kinds, top / all: {mix}")


if __name__ == "__main__":
    main()
