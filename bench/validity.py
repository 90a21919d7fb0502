"""Scorer validity on demo worlds: AUROC (clean vs low-quality) of every scorer, per corruption kind,
for prompt-only and prompt+response dumps, over several SAE seeds and world seeds.

Each (world seed, layer, dump variant) is dumped once; each SAE seed trains the pipeline's demo SAE
on it and scores it with every scorer. Labels are read only through ``quality.scorer_quality``.
Pick defaults on a validation world seed (``--worlds 1000``), report on others.

    python bench/validity.py --worlds 1000 --sae-seeds 0 1 2 --variants prompt response --taus 0 0.5
    python bench/validity.py --worlds 0 1 2 --sae-seeds 0 1 2 --variants response --out data/bench/validity-eval
    python bench/validity.py --worlds 0 1 2 --sae-seeds 0 --variants response --clip  # beside clip_score

Writes ``<out>/results.jsonl`` (one row per world, layer, variant, tau, SAE seed and scorer) and prints
mean ± std over the seeds; worlds are built (or reused) under ``data/worlds/seed<N>``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _worlds import scored  # noqa: E402

from saev_core.scoring.quality import scorer_quality  # noqa: E402
from saev_core.tables.query import open_views  # noqa: E402
from saev_core.scoring.scorers import default_scorers  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worlds", type=int, nargs="+", default=[1000])
    ap.add_argument("--sae-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--layers", type=int, nargs="+", default=[0])
    ap.add_argument("--variants", nargs="+", choices=["prompt", "response"], default=["prompt", "response"])
    ap.add_argument("--taus", type=float, nargs="+", default=[0.0], help="co-occurrence tau (cooccurrence, saev, coverage)")
    ap.add_argument("--agreement-taus", type=float, nargs="+", default=[None], help="agreement_tau (default: ScoreConfig's)")
    ap.add_argument("--agreement-refits", type=int, nargs="+", default=[None], help="agreement_refits (default: ScoreConfig's)")
    ap.add_argument("--clip", action="store_true", help="also score clip_score with each world's demo CLIP (saev_core.demo.clip)")
    ap.add_argument("--dataset", default="demo-rlaif")
    ap.add_argument("--out", default="data/bench/validity")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, saes = [], {}
    for w in args.worlds:
        for layer in args.layers:
            for variant in args.variants:
                t0 = time.time()
                for seed in args.sae_seeds:
                    for tau, atau, refits in ((t, a, r) for t in args.taus for a in args.agreement_taus for r in args.agreement_refits):
                        wdir, tables, m = scored(w, out, layer, variant, seed, tau,
                                                 {"agreement_tau": atau, "agreement_refits": refits}, args.dataset, args.clip)
                        trained = json.loads((tables.parent / f"sae-s{seed}" / "manifest.json").read_text())
                        saes[(w, layer, variant, seed)] = {"fvu": trained["heldout"]["all"]["fvu"], **trained.get("metrics", {})}
                        for q in scorer_quality(open_views(str(tables)), str(wdir / "labels.parquet"), args.dataset, m["sae_id"]):
                            rows.append({"world": w, "layer": layer, "variant": variant, "tau": tau,
                                         "agreement_tau": m["identity"]["params"]["agreement"]["tau"],
                                         "agreement_refits": m["identity"]["params"]["agreement"]["refits"], "sae_seed": seed,
                                         "n_cross_modal": m["n_cross_modal"], "n_cross_modal_balanced": m["n_cross_modal_balanced"], **q})
                print(f"world {w} layer {layer} {variant}: {time.time() - t0:.0f}s", flush=True)
    with open(out / "results.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    report(rows)
    print("\n| world | layer | dump | SAE seeds | held-out FVU | dead (training window) | dead (held-out) |\n| ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for key in sorted({k[:3] for k in saes}):
        g = [v for k, v in saes.items() if k[:3] == key]

        def cell(name, fmt):
            vals = [v[name] for v in g if v.get(name) is not None]
            return f"{statistics.mean(vals):{fmt}} ± {statistics.pstdev(vals):{fmt}}" if vals else "-"
        print(f"| {key[0]} | {key[1]} | {key[2]} | {len(g)} | {cell('fvu', '.4f')} | {cell('dead_fraction_window', '.3f')} | "
              f"{cell('dead_fraction_heldout', '.3f')} |")


def report(rows: list[dict]) -> None:
    """Mean ± population std over SAE seeds (and worlds) per (layer, variant, tau, scorer)."""
    metrics = [k for k in rows[0] if k.startswith("auroc")] if rows else []
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["layer"], r["variant"], r["tau"], r["agreement_tau"], r.get("agreement_refits", 0), r["scorer"]), []).append(r)
    print("| layer | dump | tau | agreement tau | refits | scorer | runs | " + " | ".join(m.replace("_", " ") for m in metrics) + " |")
    print("| ---: | --- | ---: | ---: | ---: | --- | ---: |" + " ---: |" * len(metrics))
    order = {s: i for i, s in enumerate(default_scorers())}
    for key in sorted(groups, key=lambda k: (k[0], k[1], k[2], k[3], k[4], order.get(k[5], 99))):
        g = groups[key]
        cells = []
        for m in metrics:
            vals = [r[m] for r in g]
            cells.append(f"{statistics.mean(vals):.3f} ± {statistics.pstdev(vals):.3f}")
        print(f"| {key[0]} | {key[1]} | {key[2]:g} | {key[3]:g} | {key[4]} | {key[5]} | {len(g)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
