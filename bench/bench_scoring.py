"""Scoring throughput: samples/s and tokens/s of `saev score` on a dump, and its peak memory.

Runs the whole scoring stage (encode every shard, cross-modal weights, scores, tables) into a
fresh temporary tables root ``--repeats`` times and reports the medians, for the encoding pass
and end to end. Example (demo world, after `make run`):

    .venv/bin/python bench/bench_scoring.py --activations data/runs/dump-demo-rlaif-L0 \
        --sae data/runs/sae-demo-rlaif-L0-topk
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("TQDM_DISABLE", "1")

from saev_core.scoring.run import ScoreConfig, run_scoring  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--activations", default="data/runs/dump-demo-rlaif-L0")
    ap.add_argument("--sae", default="data/runs/sae-demo-rlaif-L0-topk")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-rows", type=int, default=4096)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    runs = []
    for _ in range(args.repeats):
        root = tempfile.mkdtemp(prefix="saev-bench-score-")
        try:
            t0 = time.perf_counter()
            m = run_scoring(ScoreConfig(activations=args.activations, sae=args.sae, tables=root, batch_rows=args.batch_rows,
                                        device=args.device, progress=False))
            total = time.perf_counter() - t0
        finally:
            shutil.rmtree(root)
        tokens = sum(m["n_tokens"].values())
        runs.append({"encode_tokens_per_s": m["throughput"]["tokens_per_s"], "encode_samples_per_s": m["throughput"]["samples_per_s"],
                     "total_s": total, "samples_per_s": m["n_samples"] / total, "tokens_per_s": tokens / total})
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("| samples | tokens | d_sae | encode tok/s | encode samples/s | end-to-end s | end-to-end samples/s | end-to-end tok/s | peak RSS MB |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| {m['n_samples']} | {tokens} | {m['d_sae']} | {med['encode_tokens_per_s']:,.0f} | {med['encode_samples_per_s']:,.0f} | "
          f"{med['total_s']:.2f} | {med['samples_per_s']:,.0f} | {med['tokens_per_s']:,.0f} | {peak_mb:,.0f} |")
    print(json.dumps({"median": med, "runs": runs, "device": m["throughput"]["device"], "peak_rss_mb": peak_mb}))


if __name__ == "__main__":
    main()
