"""Dump throughput against the bare forward pass of the same model on the same batches, and
peak memory of a dump at 1x and 4x the data.

    python bench/bench_dump.py --n 1000 --batch-size 32

Throughput baselines: the bare forward on batches encoded beforehand (full, and stopped at the
hooked layer), and the loop a user writes without saev (processor + full forward with
output_hidden_states). The dump includes reading the dataset, decoding images, the processor,
the hooked forward and writing Parquet. Memory: each dump runs in a fresh subprocess; its peak
RSS is read back.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saev_core.activations.data import DatasetSpec, Sample, batched, iter_samples, open_dataset  # noqa: E402
from saev_core.demo.build import DemoConfig, _pref_columns, _write_dataset, build_world  # noqa: E402
from saev_core.demo.model import TinyLlavaSpec, build_model, build_processor  # noqa: E402
from saev_core.demo.scenes import make_rows  # noqa: E402
from saev_core.activations.dump import DumpConfig, encode_samples, run_dump  # noqa: E402
from saev_core.activations.modeling import StopForward, capture_residual, load_model  # noqa: E402


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


def bench_user_loop(bundle, chunks, layer: int) -> float:
    """The loop a user writes without saev: processor, full forward with output_hidden_states."""
    t = time.perf_counter()
    with torch.inference_mode():
        for samples in chunks:
            inputs = encode_samples(bundle, samples, False)
            out = bundle.model(**inputs, output_hidden_states=True, use_cache=False)
            out.hidden_states[layer + 1][inputs["attention_mask"].bool()].numpy()
    return time.perf_counter() - t


def child_dump(cfg_json: str) -> None:
    """One dump in this fresh process; prints seconds and resident memory (polled every 5 ms)."""
    import threading

    import psutil

    cfg = DumpConfig.model_validate_json(cfg_json)
    proc = psutil.Process()
    bundle = load_model(cfg.model, device="cpu")
    before = proc.memory_info().rss
    peak, done = [before], threading.Event()

    def poll():
        while not done.wait(0.005):
            peak[0] = max(peak[0], proc.memory_info().rss)

    threading.Thread(target=poll, daemon=True).start()
    t = time.perf_counter()
    m = run_dump(cfg, bundle=bundle)
    secs = time.perf_counter() - t
    done.set()
    mb = 1024 * 1024
    print(json.dumps({"seconds": secs, "rows": m["rows"]["total"], "rss_before_dump_mb": before / mb,
                      "peak_rss_during_dump_mb": max(peak[0], proc.memory_info().rss) / mb,
                      "peak_rss_process_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="samples at 1x")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--layer", type=int, default=2)
    ap.add_argument("--world", default="data/demo")
    ap.add_argument("--text-hidden", type=int, default=None,
                    help="bench a randomly initialised LLaVA of the demo architecture with this text width instead of the demo model")
    ap.add_argument("--text-layers", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child_dump(args.child)

    cores = os.cpu_count() or 1
    world = build_world(DemoConfig(), args.world)
    model_dir = str(Path(args.world) / world["model"])
    work = Path(tempfile.mkdtemp(prefix="saev-bench-"))
    if args.text_hidden:
        spec_ = TinyLlavaSpec(text_hidden=args.text_hidden, text_layers=args.text_layers, vision_hidden=256, vision_layers=4)
        processor = build_processor(spec_)
        model_dir = str(work / "model")
        build_model(processor.tokenizer, spec_).save_pretrained(model_dir)
        processor.save_pretrained(model_dir)
    data = work / "bench.parquet"
    _write_dataset(_pref_columns(make_rows(4 * args.n, seed=123), "rlaif_v", 0), data)
    spec = DatasetSpec(path=str(data), limit=args.n)
    bundle = load_model(model_dir, device="cpu")

    samples = [s for s in iter_samples(open_dataset(spec), spec) if isinstance(s, Sample)]
    chunks = list(batched(samples, args.batch_size))
    batches = [encode_samples(bundle, chunk, False) for chunk in chunks]
    # Variants run interleaved (A B C D E, A B C D E, ...) so drifting machine load hits all alike.
    def dump_once(stop: bool) -> tuple[float, int]:
        out = work / "dump"
        shutil.rmtree(out, ignore_errors=True)
        cfg = DumpConfig(model=model_dir, dataset=spec, layer=args.layer, out=str(out), batch_size=args.batch_size,
                         samples_per_shard=10**9, device="cpu", stop_at_layer=stop, progress=False)
        t = time.perf_counter()
        m = run_dump(cfg, bundle=bundle)
        return time.perf_counter() - t, m["rows"]["total"]

    def with_all_cores(fn):
        def run():
            torch.set_num_threads(cores)  # baselines get every core
            return fn()
        return run

    variants = {
        "forward_full": with_all_cores(lambda: bench_forward(bundle, batches, None)),
        "forward_to_layer": with_all_cores(lambda: bench_forward(bundle, batches, args.layer)),
        "user_loop_processor_and_forward": with_all_cores(lambda: (bench_user_loop(bundle, chunks, args.layer), tokens)),
        "dump": lambda: dump_once(True),
        "dump_no_early_stop": lambda: dump_once(False),
    }
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            secs, n = fn()
            assert n == tokens, (name, n, tokens)
            times[name].append(secs)
    results = {
        name: {"median_seconds": statistics.median(ts), "min_seconds": min(ts), "tokens": tokens,
               "tokens_per_s": tokens / statistics.median(ts)}
        for name, ts in times.items()
    }

    memory = {}
    for mult in (1, 4):
        cfg = DumpConfig(model=model_dir, dataset=spec.model_copy(update={"limit": mult * args.n}), layer=args.layer,
                         out=str(work / f"mem{mult}"), batch_size=args.batch_size, samples_per_shard=256, device="cpu", progress=False)
        proc = subprocess.run([sys.executable, __file__, "--child", cfg.model_dump_json()], capture_output=True, text=True, check=True)
        memory[f"{mult}x"] = json.loads(proc.stdout.strip().splitlines()[-1])
    shutil.rmtree(work)

    full, to_layer, user, dump, dump_full = (results[k]["median_seconds"] for k in variants)
    report = {
        "model": f"LLaVA (CLIP + Llama), text d_model {bundle.d_model}, {bundle.n_layers} blocks, "
                 f"{sum(p.numel() for p in bundle.model.parameters()) / 1e6:.1f}M parameters",
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, {platform.python_version()}",
        "samples": args.n,
        "batch_size": args.batch_size,
        "throughput": results,
        "overhead_vs_full_forward": dump / full - 1,
        "overhead_no_early_stop_vs_full_forward": dump_full / full - 1,
        "overhead_vs_forward_to_layer": dump / to_layer - 1,
        "overhead_vs_user_loop": dump / user - 1,
        "memory": memory,
        "peak_rss_ratio_4x_over_1x": memory["4x"]["peak_rss_during_dump_mb"] / memory["1x"]["peak_rss_during_dump_mb"],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
