"""Dead latents of an SAE recipe: the demo SAE on a validation world, or the synthetic case.

    python bench/dead_latents.py --worlds 1000 --sae-seeds 0 1 --variant default: --variant lr_mult=0.25
    python bench/dead_latents.py --case synthetic --tokens 2000000 --variant default:

Each ``--variant`` is ``field=value,field=value`` over the train config (``lr_mult=m`` multiplies
the lr the defaults resolve to; ``default:`` or an empty spec is the defaults). The demo case
trains the pipeline's demo SAE (``demo.defaults.DEMO_SAE``) on each world's response dump at layer
0. It reports three dead fractions:
- ``window``: no firing in training's last dead_window tokens (the OpenAI TopK paper's count);
- ``held-out``: never firing on the dump's held-out split (about 4,000 tokens on the demo);
- ``probe``: never firing on ``--probe-rows`` fresh rows of the same world (about 80,000 tokens
  at 2,000 rows, enough to see a latent that fires once in 10,000), which no SAE trained on.
With held-out FVU, L0 and the latents firing on both modalities. ``--score`` also scores each SAE
and reports the agreement and saev scorers' AUROC (evaluation labels read only through
``quality.scorer_quality``). Choose on validation worlds only (seed 1000 and up).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _worlds import dumped, probe_dump  # noqa: E402

from saev_core.activations.shards import ActivationDump  # noqa: E402
from saev_core.sae.checkpoint import load_sae  # noqa: E402
from saev_core.demo.defaults import DEMO_SAE  # noqa: E402
from saev_core.sae.optim import default_lr  # noqa: E402
from saev_core.scoring.quality import scorer_quality  # noqa: E402
from saev_core.tables.query import open_views  # noqa: E402
from saev_core.sae.evaluate import reconstruction_metrics  # noqa: E402
from saev_core.scoring.run import ScoreConfig, run_scoring  # noqa: E402
from saev_core.sae.train import TrainConfig, train_sae  # noqa: E402

SYNTHETIC_SAE = {"architecture": "topk", "k": 32, "d_sae": 8192, "batch_size": 1024, "heldout_fraction": 0.1}


def parse_variant(spec: str) -> tuple[str, dict]:
    """``name:field=v,...`` or ``field=v,...`` -> (name, {field: value}); values parsed as JSON where they can be."""
    name, _, body = spec.rpartition(":") if ":" in spec else ("", "", spec)
    fields = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        try:
            fields[key] = json.loads(value)
        except json.JSONDecodeError:
            fields[key] = value
    return name or body or "default", fields


def never_fired(sae_dir: Path, dump: Path) -> tuple[float, int]:
    """(fraction of latents that never fire on every row of ``dump``, its token count)."""
    m = reconstruction_metrics(load_sae(sae_dir / "sae"), ActivationDump.open(dump), max_rows=None)
    return m["dead_fraction"], m["all"]["n_tokens"]


def train_variant(base: dict, fields: dict, out: Path, seed: int) -> dict:
    fields = dict(fields)
    mult = fields.pop("lr_mult", None)
    cfg = TrainConfig.model_validate({**base, **fields, "out": str(out), "seed": seed, "progress": False})
    if mult is not None:
        d_sae = cfg.width(ActivationDump.open(cfg.activations).d_in)
        cfg = cfg.model_copy(update={"lr": mult * default_lr(cfg.optimizer, cfg.sae.architecture, d_sae, cfg.batch_size, cfg.total_tokens)})
    return train_sae(cfg, overwrite=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=["demo", "synthetic"], default="demo")
    ap.add_argument("--worlds", type=int, nargs="+", default=[1000], help="demo: validation world seeds")
    ap.add_argument("--sae-seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--variant", action="append", default=None, help="field=value,... over the train config (repeat)")
    ap.add_argument("--tokens", type=int, default=None, help="training tokens (default: the case's own)")
    ap.add_argument("--synthetic-rows", type=int, default=200_000, help="synthetic: rows in the dump")
    ap.add_argument("--probe-rows", type=int, default=2000, help="demo: fresh rows the probe dump holds (0: none)")
    ap.add_argument("--out", default="data/bench/dead-latents")
    ap.add_argument("--score", action="store_true", help="demo: also score each SAE and report scorer AUROC")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    variants = [parse_variant(v) for v in (args.variant or ["default:"])]

    rows = []
    sources = []  # (label, run dir, probe dump, world dir, SAE config base)
    if args.case == "demo":
        for w in args.worlds:
            wdir, run = dumped(w, Path(args.out))
            probe = probe_dump(w, Path(args.out), args.probe_rows) if args.probe_rows else None
            sources.append((f"world {w}", run, probe, wdir, DEMO_SAE))
    else:
        from _synthetic import write_synthetic_dump

        run = Path(args.out) / f"synthetic-{args.synthetic_rows}"
        if not (run / "dump" / "manifest.json").exists():
            with tempfile.TemporaryDirectory(dir=args.out if Path(args.out).exists() else None) as tmp:
                write_synthetic_dump(Path(tmp), args.synthetic_rows, d_in=512, seed=0)
                run.mkdir(parents=True, exist_ok=True)
                Path(tmp).rename(run / "dump")
        sources.append(("synthetic", run, None, None, SYNTHETIC_SAE))
    for label, run, probe, wdir, sae_base in sources:
        base = {**sae_base, "activations": str(run / "dump")}
        if args.tokens:
            base["total_tokens"] = args.tokens
        for seed in args.sae_seeds:
            for name, fields in variants:
                out = run / f"sae-s{seed}-{name.replace('=', '').replace(',', '-')}"
                m = train_variant(base, fields, out, seed)
                held = m["heldout"]
                row = {"source": label, "sae_seed": seed, "variant": name, "lr": m["lr"], "tokens": m["tokens"],
                       "dead_window": m["metrics"]["dead_fraction_window"],
                       "dead_heldout": held["dead_fraction"], "heldout_tokens": held["all"]["n_tokens"],
                       "fvu": held["all"]["fvu"], "l0": held["all"]["l0"], "on_both": held["latents_firing_on_both"],
                       "tokens_per_s": m["tokens_per_s"]}
                if probe is not None:
                    row["dead_probe"], row["probe_tokens"] = never_fired(out, probe)
                if args.score and wdir is not None:
                    sm = run_scoring(ScoreConfig(activations=str(run / "dump"), sae=str(out), tables=str(out / "tables"),
                                                 dataset_name="demo-rlaif", progress=False), overwrite=True)
                    quality = scorer_quality(open_views(str(out / "tables")), str(wdir / "labels.parquet"), "demo-rlaif", sm["sae_id"])
                    row |= {f"auroc_{q['scorer']}": q["auroc"] for q in quality if q["scorer"] in ("agreement", "saev")}
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))

    cols = [("dead_window", "dead (window)", ".3f"), ("dead_heldout", "dead (held-out)", ".3f"),
            ("dead_probe", "dead (probe)", ".3f"), ("fvu", "held-out FVU", ".4f"), ("on_both", "on both", ".0f"),
            ("auroc_agreement", "agreement AUROC", ".3f"), ("auroc_saev", "saev AUROC", ".3f")]
    cols = [c for c in cols if c[0] in rows[0]]
    print("\n| source | variant | lr | " + " | ".join(c[1] for c in cols) + " |\n|---|---|---|" + "---|" * len(cols))
    for key in dict.fromkeys((r["source"], r["variant"]) for r in rows):
        group = [r for r in rows if (r["source"], r["variant"]) == key]

        def cell(k, fmt):
            vals = [r[k] for r in group]
            spread = f" ± {statistics.stdev(vals):{fmt}}" if len(vals) > 1 else ""
            return f"{statistics.mean(vals):{fmt}}{spread}"

        print(f"| {key[0]} | {key[1]} | {group[0]['lr']:.2e} | " + " | ".join(cell(c[0], c[2]) for c in cols) + " |")


if __name__ == "__main__":
    main()
