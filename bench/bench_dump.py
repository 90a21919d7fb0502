"""Dump throughput against the bare forward pass of the same model on the same batches, and
peak memory of a dump at 1x and 4x the data.

    python bench/bench_dump.py --n 1000 --batch-size 32

Throughput: the bare forward runs on batches encoded beforehand (the cost any user pays);
the dump includes reading the dataset, decoding images, the processor, the hooked forward and
writing Parquet. Memory: each dump runs in a fresh subprocess; its peak RSS is read back.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saev_core.data import DatasetSpec, Sample, iter_samples, open_dataset  # noqa: E402
from saev_core.demo.build import DemoConfig, _pref_columns, _write_dataset, build_world  # noqa: E402
from saev_core.demo.scenes import make_rows  # noqa: E402
from saev_core.dump import DumpConfig, _batches, encode_batch, run_dump  # noqa: E402
from saev_core.modeling import StopForward, capture_residual, load_model  # noqa: E402


def bench_forward(bundle, batches, layer: int | None) -> tuple[float, int]:
    """Seconds and tokens for a plain forward over pre-encoded batches (to ``layer`` if given)."""
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    t = time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            if layer is None:
                bundle.model(**b, use_cache=False)
            else:
                with capture_residual(bundle.layers, layer, stop=True), contextlib.suppress(StopForward):
                    bundle.model(**b, use_cache=False)
    return time.perf_counter() - t, tokens


def child_dump(cfg_json: str) -> None:
    cfg = DumpConfig.model_validate_json(cfg_json)
    t = time.perf_counter()
    m = run_dump(cfg)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": time.perf_counter() - t, "rows": m["rows"]["total"], "peak_rss_mb": rss_mb}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="samples at 1x")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--layer", type=int, default=2)
    ap.add_argument("--world", default="data/demo")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child_dump(args.child)

    torch.set_num_threads(os.cpu_count() or 1)
    world = build_world(DemoConfig(), args.world)
    model_dir = str(Path(args.world) / world["model"])
    work = Path(tempfile.mkdtemp(prefix="saev-bench-"))
    data = work / "bench.parquet"
    _write_dataset(_pref_columns(make_rows(4 * args.n, seed=123), "rlaif_v", 0), data)
    spec = DatasetSpec(path=str(data), limit=args.n)
    bundle = load_model(model_dir, device="cpu")

    samples = [s for s in iter_samples(open_dataset(spec), spec) if isinstance(s, Sample)]
    batches = [encode_batch(bundle, chunk, False, bundle.max_length)[0] for chunk in _batches(samples, args.batch_size)]
    batches = [dict(b) for b in batches]
    results = {}
    for name, layer in (("forward_full", None), ("forward_to_layer", args.layer)):
        bench_forward(bundle, batches[:2], layer)  # warm-up
        runs = [bench_forward(bundle, batches, layer) for _ in range(args.repeats)]
        secs, tokens = min(runs)
        results[name] = {"seconds": secs, "tokens": tokens, "tokens_per_s": tokens / secs}

    for name, stop in (("dump", True), ("dump_no_early_stop", False)):
        runs = []
        for r in range(args.repeats):
            out = work / f"{name}-{r}"
            cfg = DumpConfig(model=model_dir, dataset=spec, layer=args.layer, out=str(out), batch_size=args.batch_size,
                             samples_per_shard=10**9, device="cpu", stop_at_layer=stop, progress=False)
            t = time.perf_counter()
            m = run_dump(cfg, bundle=bundle)
            runs.append(time.perf_counter() - t)
            shutil.rmtree(out)
        results[name] = {"seconds": min(runs), "tokens": m["rows"]["total"], "tokens_per_s": m["rows"]["total"] / min(runs)}

    memory = {}
    for mult in (1, 4):
        cfg = DumpConfig(model=model_dir, dataset=spec.model_copy(update={"limit": mult * args.n}), layer=args.layer,
                         out=str(work / f"mem{mult}"), batch_size=args.batch_size, samples_per_shard=256, device="cpu", progress=False)
        proc = subprocess.run([sys.executable, __file__, "--child", cfg.model_dump_json()], capture_output=True, text=True, check=True)
        memory[f"{mult}x"] = json.loads(proc.stdout.strip().splitlines()[-1])
    shutil.rmtree(work)

    full, to_layer, dump, dump_full = (results[k]["seconds"] for k in ("forward_full", "forward_to_layer", "dump", "dump_no_early_stop"))
    report = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, {platform.python_version()}",
        "samples": args.n,
        "batch_size": args.batch_size,
        "throughput": results,
        "overhead_vs_full_forward": dump / full - 1,
        "overhead_no_early_stop_vs_full_forward": dump_full / full - 1,
        "overhead_vs_forward_to_layer": dump / to_layer - 1,
        "memory": memory,
        "peak_rss_ratio_4x_over_1x": memory["4x"]["peak_rss_mb"] / memory["1x"]["peak_rss_mb"],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
