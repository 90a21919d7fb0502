"""Dead latents of the demo SAE against its step size and AuxK weight, on the validation world.

    python bench/dead_latents.py --worlds 1000 --sae-seeds 0 1

Trains the pipeline's demo SAE (demo.defaults.DEMO_SAE) on each world's dump at lr = m x the
default rule's lr for each ``--lr-mult``, and at the default lr with each ``--aux``; reports the
dead fraction by training's own window (no firing in the last dead_window tokens) and on the
held-out split (never firing on it), with held-out FVU and the latents firing on both
modalities. ``--score`` also scores each SAE and reports the agreement and saev scorers' AUROC
(evaluation labels read only through ``quality.scorer_quality``). A diagnosis, not a default.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _worlds import dumped  # noqa: E402

from saev_core.demo.defaults import DEMO_SAE  # noqa: E402
from saev_core.quality import scorer_quality  # noqa: E402
from saev_core.query import open_views  # noqa: E402
from saev_core.score_dataset import ScoreConfig, run_scoring  # noqa: E402
from saev_core.train import TrainConfig, train_sae  # noqa: E402


def last_logged(run: Path) -> dict:
    return json.loads((run / "train_log.jsonl").read_text().strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worlds", type=int, nargs="+", default=[1000])
    ap.add_argument("--sae-seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--lr-mult", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0])
    ap.add_argument("--aux", type=float, nargs="*", default=[0.0, 0.125], help="aux_coefficient values tried at the default lr")
    ap.add_argument("--out", default="data/bench/dead-latents")
    ap.add_argument("--score", action="store_true", help="also score each SAE and report scorer AUROC")
    args = ap.parse_args()

    rows = []
    for w in args.worlds:
        wdir, run = dumped(w, Path(args.out))
        for seed in args.sae_seeds:
            base = TrainConfig.model_validate({**DEMO_SAE, "activations": str(run / "dump"), "out": "-", "seed": seed})
            # the default first: the other step sizes are multiples of the lr it resolves to
            variants = [("lr", 1.0)] + [("lr", m) for m in args.lr_mult if m != 1.0] + [("aux", a) for a in args.aux]
            default_lr = None
            for kind, value in variants:
                out = run / f"sae-s{seed}-{kind}{value:g}"
                change = {"aux_coefficient": value} if kind == "aux" else {"lr": value * default_lr} if value != 1.0 else {}
                cfg = base.model_copy(update={**change, "out": str(out), "progress": False})
                m = train_sae(cfg, overwrite=True)
                default_lr = default_lr or m["lr"]
                held = m["heldout"]
                rows.append({"world": w, "sae_seed": seed, "kind": kind, "value": value, "lr": m["lr"],
                             "aux_coefficient": cfg.aux_coefficient, "dead_train_window": last_logged(out)["dead_fraction"],
                             "dead_heldout": held["dead_fraction"], "heldout_tokens": held["all"]["n_tokens"],
                             "fvu": held["all"]["fvu"], "on_both": held["latents_firing_on_both"]})
                if args.score:
                    sm = run_scoring(ScoreConfig(activations=str(run / "dump"), sae=str(out), tables=str(out / "tables"),
                                                 dataset_name="demo-rlaif", progress=False), overwrite=True)
                    quality = scorer_quality(open_views(str(out / "tables")), str(wdir / "labels.parquet"), "demo-rlaif", sm["sae_id"])
                    rows[-1] |= {f"auroc_{q['scorer']}": q["auroc"] for q in quality if q["scorer"] in ("agreement", "saev")}
                print(json.dumps(rows[-1]), flush=True)

    extra = [k for k in rows[0] if k.startswith("auroc_")]
    print("\n| variant | lr | dead (train window) | dead (held-out) | held-out FVU | latents on both |"
          + "".join(f" {k.replace('_', ' ')} |" for k in extra) + "\n|---|---|---|---|---|---|" + "---|" * len(extra))
    for kind, value in dict.fromkeys((r["kind"], r["value"]) for r in rows):
        group = [r for r in rows if (r["kind"], r["value"]) == (kind, value)]

        def cell(key, fmt):
            vals = [r[key] for r in group]
            spread = f" ± {statistics.stdev(vals):{fmt}}" if len(vals) > 1 else ""
            return f"{statistics.mean(vals):{fmt}}{spread}"

        name = f"lr x {value:g}" if kind == "lr" else f"aux {value:g}"
        print(f"| {name} | {group[0]['lr']:.2e} | {cell('dead_train_window', '.3f')} | {cell('dead_heldout', '.3f')} | "
              f"{cell('fvu', '.4f')} | {cell('on_both', '.0f')} |" + "".join(f" {cell(k, '.3f')} |" for k in extra))


if __name__ == "__main__":
    main()
