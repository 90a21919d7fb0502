"""Shared by the validity benches: a demo world per seed, dumped, with an SAE trained and scored.

Worlds live under ``data/worlds/seed<N>`` (built once per config); each (layer, dump variant) is
dumped once under ``<out>/w<N>-L<layer>-<variant>/``, each SAE seed trains the pipeline's demo SAE
on it and scores it with every scorer into its own tables.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saev_core.activations.data import DatasetSpec  # noqa: E402
from saev_core.demo.build import DemoConfig, build_world  # noqa: E402
from saev_core.demo.clip import build_demo_clip  # noqa: E402
from saev_core.demo.defaults import DEMO_SAE  # noqa: E402
from saev_core.activations.dump import DumpConfig, run_dump  # noqa: E402
from saev_core.scoring.run import ScoreConfig, run_scoring  # noqa: E402
from saev_core.sae.train import TrainConfig, train_sae  # noqa: E402


def world(seed: int) -> Path:
    out = Path("data/worlds") / f"seed{seed}"
    build_world(DemoConfig(seed=seed), out, log=lambda m: print(m, flush=True))
    return out


def dumped(seed: int, out: Path, layer: int = 0, variant: str = "response", dataset: str = "demo-rlaif") -> tuple[Path, Path]:
    """(world dir, run dir) of world ``seed`` dumped at ``layer`` into ``<run>/dump`` (once)."""
    wdir = world(seed)
    run = Path(out) / f"w{seed}-L{layer}-{variant}"
    spec = DatasetSpec(path=str(wdir / "datasets" / dataset / "train.parquet"))
    if not (run / "dump" / "manifest.json").exists():  # a finished dump is kept, whatever format it was written in
        run_dump(DumpConfig(model=str(wdir / "model"), dataset=spec, layer=layer, out=str(run / "dump"),
                            include_response=variant == "response", progress=False))
    return wdir, run


def scored(seed: int, out: Path, layer: int = 0, variant: str = "response", sae_seed: int = 0, tau: float = 0.0,
           score: dict | None = None, dataset: str = "demo-rlaif", clip: bool = False) -> tuple[Path, Path, dict]:
    """(world dir, tables dir, scoring manifest) of world ``seed`` scored with SAE seed ``sae_seed``;
    ``score`` overrides ScoreConfig fields (each override gets its own tables directory); ``clip``
    adds clip_score with the world's demo CLIP (trained once, under ``<world>/clip``)."""
    wdir, run = dumped(seed, out, layer, variant, dataset)
    sae_dir = run / f"sae-s{sae_seed}"
    if not (sae_dir / "sae" / "cfg.json").exists():
        train_sae(TrainConfig.model_validate({**DEMO_SAE, "activations": str(run / "dump"), "out": str(sae_dir),
                                              "seed": sae_seed, "progress": False}))
    score = {k: v for k, v in (score or {}).items() if v is not None}
    tables = run / (f"tables-s{sae_seed}-tau{tau:g}" + "".join(f"-{k}{v:g}" for k, v in sorted(score.items())) + ("-clip" if clip else ""))
    if clip:
        print(f"demo CLIP of world {seed}: {build_demo_clip(wdir, progress=False)}", flush=True)
        score["clip_model"] = str(wdir / "clip")
    manifest = run_scoring(ScoreConfig(activations=str(run / "dump"), sae=str(sae_dir), tables=str(tables),
                                       dataset_name=dataset, tau=tau, progress=False, **score))
    return wdir, tables, manifest


def probe_dump(seed: int, out: Path, rows: int = 2000, layer: int = 0, variant: str = "response") -> Path:
    """A dump of ``rows`` fresh rows from world ``seed``'s generator (a new row seed, the same model).

    The dump's own held-out split is about 4,000 tokens, too few to tell a latent that fires once in
    10,000 tokens from a dead one; this one is about 20x that, and no SAE trains on it.
    """
    from saev_core.demo.build import DATASETS, _pref_columns, _write_dataset
    from saev_core.demo.scenes import make_rows

    wdir = world(seed)
    run = Path(out) / f"w{seed}-L{layer}-{variant}-probe{rows}"
    data = run / "probe.parquet"
    if not data.exists():
        cfg = DemoConfig(seed=seed)
        picked = make_rows(rows, seed + 7001, cfg.low_quality_fraction, cfg.image_size)
        _write_dataset(_pref_columns(picked, DATASETS["demo-rlaif"], seed), data.with_suffix(".tmp"))
        data.with_suffix(".tmp").rename(data)
    run_dump(DumpConfig(model=str(wdir / "model"), dataset=DatasetSpec(path=str(data)), layer=layer, out=str(run / "dump"),
                        include_response=variant == "response", progress=False))
    return run / "dump"
