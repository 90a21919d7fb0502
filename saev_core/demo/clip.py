"""A tiny CLIP for the demo world, so the clip_score baseline has a model trained on the same data.

The comparison the demo makes is "saev, with no model beyond the MLLM" against "a CLIP trained on
the same data": a SigLIP-architecture dual encoder (the demo MLLM's vision tower size, a text
tower of the same width; the demo tokenizer and image processor) trained with SigLIP's own
sigmoid contrastive loss on the demo's modality-alignment pairs (``make_captions``, the rows and
seeds the MLLM's vision stage saw), for as many steps and rows per step as that stage took.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from saev_core.scoring.clip_score import features
from saev_core.demo.build import WORLD_FILE
from saev_core.demo.model import TinyLlavaSpec
from saev_core.demo.scenes import make_captions
from saev_core.io import atomic_dir, write_json

CLIP_DIR = "clip"
MAX_TEXT = 64


def _model(tokenizer, spec: TinyLlavaSpec, seed: int):
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(seed)
    width = spec.vision_hidden
    tower = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=spec.vision_layers, num_attention_heads=spec.heads)
    model = SiglipModel(SiglipConfig(
        text_config={**tower, "vocab_size": len(tokenizer), "max_position_embeddings": MAX_TEXT, "pad_token_id": tokenizer.pad_token_id,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id},
        vision_config={**tower, "image_size": spec.image_size, "patch_size": spec.patch_size}))
    # SigLIP's own init (Zhai et al. 2023, sec. 3.3): t' = log 10, b = -10. transformers starts both at 0,
    # where each row's 63 negatives cost 63 log 2 and the first steps only learn the bias.
    with torch.no_grad():
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-10.0)
    return model


def _batch(tokenizer, image_processor, rows: list[dict]) -> dict:
    text = tokenizer([r["caption"] for r in rows], padding="max_length", truncation=True, max_length=MAX_TEXT, return_tensors="pt")
    pixels = image_processor(images=[r["image"] for r in rows], return_tensors="pt")["pixel_values"]
    return {"input_ids": text["input_ids"], "pixel_values": pixels}


@torch.no_grad()
def retrieval_accuracy(model, tokenizer, image_processor, rows: list[dict]) -> float:
    """Image -> caption top-1 accuracy among ``rows`` (chance: 1 / len(rows))."""
    b = _batch(tokenizer, image_processor, rows)
    img = features(model.get_image_features(pixel_values=b["pixel_values"]))
    txt = features(model.get_text_features(input_ids=b["input_ids"]))
    sim = torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T
    return float((sim.argmax(1) == torch.arange(len(rows))).float().mean())


def build_demo_clip(world_dir: str | Path, out: str | Path | None = None, steps: int | None = None, lr: float = 3e-3,
                    progress: bool = True) -> dict:
    """Train the demo CLIP into ``out`` (default ``<world>/clip``: model, tokenizer, image processor,
    clip.json) and return its record; a finished ``out`` is reused. ``steps`` defaults to the MLLM's
    vision stage (half its pretraining steps)."""
    from transformers import AutoImageProcessor, AutoTokenizer

    world_dir = Path(world_dir)
    out = Path(out) if out is not None else world_dir / CLIP_DIR
    if (out / "clip.json").exists():
        return json.loads((out / "clip.json").read_text())
    cfg = json.loads((world_dir / WORLD_FILE).read_text())["config"]
    steps = steps or cfg["pretrain_steps"] - cfg["pretrain_steps"] // 2
    batch_size, seed = cfg["pretrain_batch_size"], cfg["seed"]
    tokenizer = AutoTokenizer.from_pretrained(world_dir / "model")
    image_processor = AutoImageProcessor.from_pretrained(world_dir / "model")
    rows = make_captions(cfg["n_pretrain"], seed + 2, cfg["image_size"])
    heldout = make_captions(min(cfg["n_heldout"], 300), seed + 3, cfg["image_size"])
    model = _model(tokenizer, TinyLlavaSpec(image_size=cfg["image_size"]), seed)
    data = _batch(tokenizer, image_processor, rows)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    g = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for _ in tqdm(range(steps), desc="train demo CLIP", unit="step", disable=not progress):
        idx = torch.randperm(len(rows), generator=g)[:batch_size]
        loss = model(input_ids=data["input_ids"][idx], pixel_values=data["pixel_values"][idx], return_loss=True).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    record = {"steps": steps, "batch_size": batch_size, "lr": lr, "n_pairs": len(rows), "first_loss": losses[0],
              "final_loss": sum(losses[-20:]) / min(20, len(losses)),
              "heldout_retrieval_top1_of_64": retrieval_accuracy(model, tokenizer, image_processor, heldout[:64])}
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        image_processor.save_pretrained(tmp)
        write_json(tmp / "clip.json", record)
    return record
