"""One pass, many SAEs: the wall time of ``train_saes`` (one read and shuffle of the dump for all
SAEs of a sweep) against the same SAEs trained by N separate ``train_sae`` runs.

    .venv/bin/python bench/bench_sweep.py                     # k in 16,32,64, synthetic dump, 2 rounds
    .venv/bin/python bench/bench_sweep.py --ks 16 32 --rounds 1 --rows 50000

Protocol: a synthetic dump (``bench/_synthetic.py``, d_in 512, Parquet shards as ``saev dump``
writes them) is trained as one sweep over k (TopK, d_sae ``--d-sae``, one epoch), once as one pass
and once as N separate runs, each training in its own fresh process with 1 torch thread; the
rounds alternate which comes first. Wall time counts the whole ``train_saes`` call (reading,
shuffling, the input-scale probe, training, checkpoints, the held-out evaluation), since those are
what a sweep shares. Also timed: the read and shuffle alone (iterating ``ShuffledBatches`` with no
SAE), which is the part one pass saves N-1 times. The trained SAEs of both ways are checked to be
identical (the pass is exact, not an approximation).

Prints one JSON report on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _synthetic import write_synthetic_dump  # noqa: E402

# Runs in a fresh process: train the given configs in one pass (or read only), print the wall time.
CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(1)
from saev_core.sae.train import TrainConfig, train_saes
from saev_core.activations.shards import ActivationDump, ShuffledBatches
from saev_core.activations.shards import MODALITY_SETS
cfgs = [TrainConfig.model_validate(c) for c in json.loads(sys.argv[2])]
t0 = time.perf_counter()
if sys.argv[3] == "read":
    c = cfgs[0]
    dump = ActivationDump.open(c.activations, c.heldout_fraction)
    it = iter(ShuffledBatches(dump, MODALITY_SETS[c.modalities], c.batch_size, seed=c.seed, buffer_rows=c.buffer_rows))
    for _ in range(c.steps):
        next(it)
else:
    train_saes(cfgs, overwrite=True)
print(json.dumps({"wall_s": time.perf_counter() - t0, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def child(cfgs: list[dict], mode: str = "train") -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), json.dumps(cfgs), mode], capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"child failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def same_weights(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    wa, wb = (load_file(p / "sae" / "sae_weights.safetensors") for p in (a, b))
    return wa.keys() == wb.keys() and all(bool((wa[n] == wb[n]).all()) for n in wa)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ks", type=int, nargs="+", default=[16, 32, 64], help="the swept k values (one SAE each)")
    p.add_argument("--d-sae", type=int, default=4096)
    p.add_argument("--rows", type=int, default=100_000, help="synthetic rows (one epoch is trained)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=2, help="repeats of (one pass, N runs), order alternating")
    p.add_argument("--data-seed", type=int, default=0)
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp_s:
        tmp = Path(tmp_s)
        dump = tmp / "dump"
        write_synthetic_dump(dump, args.rows, d_in=512, seed=args.data_seed)
        steps = int(args.rows * 0.95) // args.batch_size
        base = dict(activations=str(dump), architecture="topk", d_sae=args.d_sae, batch_size=args.batch_size,
                    total_tokens=steps * args.batch_size, device="cpu", progress=False, checkpoint_every=max(steps // 2, 1),
                    eval_rows=2000, buffer_rows=1 << 17)

        def cfgs(way: str, r: int) -> list[dict]:
            return [{**base, "k": k, "out": str(tmp / f"{way}-{r}" / f"k={k}")} for k in args.ks]

        rounds = []
        for r in range(args.rounds):
            order = ("pass", "separate") if r % 2 == 0 else ("separate", "pass")
            rec = {"round": r, "order": list(order)}
            for way in order:
                if way == "pass":
                    rec["one_pass"] = child(cfgs("pass", r))
                else:
                    runs = [child([c]) for c in cfgs("separate", r)]
                    rec["separate"] = {"wall_s": sum(x["wall_s"] for x in runs), "runs_wall_s": [x["wall_s"] for x in runs],
                                       "peak_rss_mib": max(x["peak_rss_mib"] for x in runs)}
                log(f"round {r} {way}: {rec.get('one_pass' if way == 'pass' else 'separate')['wall_s']:.1f} s")
            rec["read_only"] = child(cfgs("read", r)[:1], mode="read")
            rec["identical"] = all(same_weights(tmp / f"pass-{r}" / f"k={k}", tmp / f"separate-{r}" / f"k={k}") for k in args.ks)
            log(f"round {r}: read+shuffle alone {rec['read_only']['wall_s']:.1f} s; identical SAEs: {rec['identical']}")
            rounds.append(rec)

    one = [r["one_pass"]["wall_s"] for r in rounds]
    sep = [r["separate"]["wall_s"] for r in rounds]
    report = {
        "benchmark": "one pass vs N separate runs (saev train --sweep)",
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "python": platform.python_version(), "threads": 1},
        "args": vars(args), "steps": steps,
        "one_pass_wall_s": statistics.median(one), "separate_wall_s": statistics.median(sep),
        "speedup": round(statistics.median(sep) / statistics.median(one), 3),
        "read_only_wall_s": statistics.median(r["read_only"]["wall_s"] for r in rounds),
        "all_identical": all(r["identical"] for r in rounds),
        "rounds": rounds,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
