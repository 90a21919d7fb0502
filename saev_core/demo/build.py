"""Build the demo world: a synthetic dataset in three public formats plus a tiny pretrained
LLaVA, all in Hugging Face formats under one directory, deterministic from a seed."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from saev_core import __version__
from saev_core.configs import DemoConfig
from saev_core.activations.data import DatasetSpec, Sample, iter_samples, open_dataset
from saev_core.demo.model import TinyLlavaSpec, build_model, build_processor
from saev_core.demo.pretrain import answer_accuracy, pretrain
from saev_core.demo.scenes import make_captions, make_rows
from saev_core.io import atomic_dir, write_json

WORLD_FILE = "world.json"
DATASETS = {"demo-rlaif": "rlaif_v", "demo-align-anything": "align_anything", "demo-sft": "sft"}


def _pref_columns(rows: list[dict], fmt: str, seed: int) -> dict[str, list]:
    cols: dict[str, list] = {"image": [r["image"] for r in rows], "question": [r["question"] for r in rows]}
    if fmt == "sft":
        cols["answer"] = [r["answer"] for r in rows]
    elif fmt == "rlaif_v":
        cols["chosen"] = [r["chosen"] for r in rows]
        cols["rejected"] = [r["rejected"] for r in rows]
    else:
        rng = random.Random(seed)
        better = [rng.choice((1, 2)) for _ in rows]
        cols["response_1"] = [r["chosen"] if b == 1 else r["rejected"] for r, b in zip(rows, better)]
        cols["response_2"] = [r["rejected"] if b == 1 else r["chosen"] for r, b in zip(rows, better)]
        cols["better_response_id"] = better
    return cols


def _write_dataset(cols: dict[str, list], path: Path) -> None:
    features = {k: datasets.Value("string") for k in cols}
    features["image"] = datasets.Image()
    if "better_response_id" in cols:
        features["better_response_id"] = datasets.Value("int64")
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(cols, features=datasets.Features(features)).to_parquet(str(path))


def _labels(name: str, path: Path, rows: list[dict]) -> pa.Table:
    """Evaluation-only labels keyed by the same sample_id the pipeline derives."""
    spec = DatasetSpec(path=str(path), name=name)
    ids = [s.sample_id for s in iter_samples(open_dataset(spec), spec) if isinstance(s, Sample)]
    assert len(ids) == len(rows), "demo rows must all load"
    return pa.table({
        "dataset": [name] * len(rows),
        "sample_id": ids,
        "is_clean": [r["is_clean"] for r in rows],
        "corruption": [r["corruption"] for r in rows],
        "question_kind": [r["question_kind"] for r in rows],
        "key": [r["key"] for r in rows],
        "scene": [r["scene"] for r in rows],
    })


def world_is_built(out: Path, cfg: DemoConfig) -> bool:
    f = out / WORLD_FILE
    return f.exists() and json.loads(f.read_text()).get("config") == cfg.model_dump()


def build_world(cfg: DemoConfig, out: str | Path, force: bool = False, log=print) -> dict:
    """Write the demo world to ``out`` (atomically) and return its ``world.json`` record.

    A world already built with the same config is reused unless ``force``.
    """
    out = Path(out)
    if not force and world_is_built(out, cfg):
        log(f"demo world already built at {out}")
        return json.loads((out / WORLD_FILE).read_text())
    t0 = time.time()
    spec = TinyLlavaSpec(image_size=cfg.image_size)
    with atomic_dir(out) as tmp:
        log(f"generating {cfg.n_samples} samples ({cfg.low_quality_fraction:.0%} low-quality), {cfg.n_heldout} held-out, {cfg.n_pretrain} pretraining rows")
        rows = make_rows(cfg.n_samples, cfg.seed, cfg.low_quality_fraction, cfg.image_size)
        heldout = make_rows(cfg.n_heldout, cfg.seed + 1, 0.0, cfg.image_size)
        pretrain_rows = make_captions(cfg.n_pretrain, cfg.seed + 2, cfg.image_size)
        heldout_captions = make_captions(min(cfg.n_heldout, 300), cfg.seed + 3, cfg.image_size)

        labels = []
        for name, fmt in DATASETS.items():
            path = tmp / "datasets" / name / "train.parquet"
            _write_dataset(_pref_columns(rows, fmt, cfg.seed), path)
            labels.append(_labels(name, path, rows))
        pq.write_table(pa.concat_tables(labels), tmp / "labels.parquet")
        heldout_cols = _pref_columns(heldout, "rlaif_v", cfg.seed)
        heldout_cols.update(answer=[r["answer"] for r in heldout], key=[r["key"] for r in heldout],
                            question_kind=[r["question_kind"] for r in heldout])
        _write_dataset(heldout_cols, tmp / "heldout" / "clean.parquet")

        log(f"pretraining the tiny LLaVA for {cfg.pretrain_steps} steps")
        torch.manual_seed(cfg.seed)
        processor = build_processor(spec)
        model = build_model(processor.tokenizer, spec, seed=cfg.seed)
        losses = pretrain(model, processor, pretrain_rows, steps=cfg.pretrain_steps, batch_size=cfg.pretrain_batch_size, seed=cfg.seed,
                          embedding_scale=cfg.embedding_scale)
        accuracy = {
            "caption_accuracy": answer_accuracy(model, processor, heldout_captions),
            "caption_accuracy_shuffled_images": answer_accuracy(model, processor, heldout_captions, shuffle_images=True),
            "heldout_accuracy": answer_accuracy(model, processor, heldout),
        }
        model.save_pretrained(tmp / "model")
        processor.save_pretrained(tmp / "model")
        record = {
            "config": cfg.model_dump(),
            "saev_core_version": __version__,
            "model": "model",
            "datasets": {name: {"path": f"datasets/{name}/train.parquet", "format": fmt} for name, fmt in DATASETS.items()},
            "heldout": "heldout/clean.parquet",
            "labels": "labels.parquet",
            "pretrain": {"first_loss": losses[0], "final_loss": sum(losses[-20:]) / min(20, len(losses)), **accuracy},
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "build_seconds": round(time.time() - t0, 1),
        }
        write_json(tmp / WORLD_FILE, record)
    log(
        f"demo world at {out}: held-out caption accuracy {accuracy['caption_accuracy']:.3f} "
        f"({accuracy['caption_accuracy_shuffled_images']:.3f} with shuffled images); the base model's answer accuracy on "
        f"the alignment task {accuracy['heldout_accuracy']:.3f} (alignment is what teaches it) in {record['build_seconds']:.0f}s"
    )
    return record
