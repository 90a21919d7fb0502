"""SAE quality on the demo world: the FVU-vs-L0 frontier for relu and topk, SAE-V vs the
text-only SAE per modality, and CE-loss-recovered.

    python bench/bench_sae_quality.py                 # needs data/runs/dump-demo-rlaif-L0 (make run)
    python bench/bench_sae_quality.py --tokens 500000 # quicker

Every SAE trains on the same dump with the same seed; metrics are on the held-out samples.
Prints a JSON report and a Markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saev_core.sae.evaluate import evaluate_run  # noqa: E402
from saev_core.sae.train import TrainConfig, train_sae  # noqa: E402


def run(name: str, work: Path, args, ce: bool, **kw) -> dict:
    cfg = TrainConfig(activations=args.activations, out=str(work / name), expansion_factor=args.expansion,
                      batch_size=args.batch_size, total_tokens=args.tokens, progress=False, device=args.device, **kw)
    t = time.perf_counter()
    m = train_sae(cfg, overwrite=True)
    row = {"name": name, **kw, "train_seconds": round(time.perf_counter() - t, 1), "tokens_per_s": round(m["tokens_per_s"])}
    for group in ("all", "image", "text"):
        h = m["heldout"][group]
        row[f"{group}_fvu"], row[f"{group}_l0"] = h["fvu"], h["l0"]
    row["dead_fraction"] = m["heldout"]["dead_fraction"]
    row["latents_on_both"] = m["heldout"]["latents_firing_on_both"]
    if ce:
        rep = evaluate_run(str(work / name), n_samples=args.ce_samples, device=args.device)
        row["ce_recovered_images"] = rep["ce_with_images"]["ce_loss_recovered"]
        row["ce_recovered_text_only"] = rep["ce_text_only"]["ce_loss_recovered"]
        row["ce"] = {k: rep["ce_with_images"][k] for k in ("ce_clean", "ce_sae", "ce_zero")}
    print(json.dumps(row), file=sys.stderr)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--activations", default="data/runs/dump-demo-rlaif-L0")
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--relu-lr", type=float, default=1e-3)
    ap.add_argument("--l1", type=float, nargs="+", default=[0.5, 1, 2, 4, 8, 16, 32])
    ap.add_argument("--k", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--ce-samples", type=int, default=100)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="saev-quality-"))
    rows = []
    for l1 in args.l1:
        rows.append(run(f"relu-l1-{l1}", work, args, ce=False, architecture="relu", lr=args.relu_lr, l1_coefficient=l1))
    for k in args.k:
        rows.append(run(f"topk-k{k}", work, args, ce=k == 16, architecture="topk", k=k))
    rows.append(run("text-topk-k16", work, args, ce=True, architecture="topk", k=16, modalities="text"))
    best_relu = min((r for r in rows if r["name"].startswith("relu") and r["all_l0"] <= 32), key=lambda r: r["all_fvu"], default=None)
    if best_relu:
        l1 = best_relu["l1_coefficient"]
        rows.append(run(f"relu-l1-{l1}-ce", work, args, ce=True, architecture="relu", lr=args.relu_lr, l1_coefficient=l1))
        rows.append(run(f"text-relu-l1-{l1}", work, args, ce=True, architecture="relu", lr=args.relu_lr, l1_coefficient=l1, modalities="text"))
    report = {"machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}",
              "device": args.device, "tokens": args.tokens, "batch_size": args.batch_size, "expansion_factor": args.expansion,
              "runs": rows}
    print(json.dumps(report, indent=2))
    print("\n| SAE | trained on | L0 | FVU all | FVU image | FVU text | dead | CE rec. (img) | CE rec. (text-only) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        on = r.get("modalities", "image+text")
        ce_i = f"{r['ce_recovered_images']:.3f}" if "ce_recovered_images" in r else ""
        ce_t = f"{r['ce_recovered_text_only']:.3f}" if "ce_recovered_text_only" in r else ""
        print(f"| {r['name']} | {on} | {r['all_l0']:.1f} | {r['all_fvu']:.3f} | {r['image_fvu']:.3f} | {r['text_fvu']:.3f} | "
              f"{r['dead_fraction']:.2f} | {ce_i} | {ce_t} |")


if __name__ == "__main__":
    main()
