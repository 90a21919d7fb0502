"""The demo base model's pretraining (the modality-alignment stage, on image-caption pairs), and
teacher-forced answer accuracy.

The base model sees captions only: no chat turn, no question. So it describes images but is not
yet good at the alignment task the datasets teach (questions in the chat format): SFT and DPO on
clean rows have room to improve it, and low-quality rows room to hurt (bench/RESULTS.md). The
stages and the embedding scale are what make image patches and words share features; the plain
one-stage version gave a model whose modalities share none.

Accuracy is teacher-forced: the model must put the highest logit on every word of the answer's
key (the attribute asked about, or the whole listing of a description or count).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from saev_core.demo.scenes import POSITIONS, Scene
from saev_core.activations.prompts import conversation



@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    key_mask: torch.Tensor  # answer positions whose token is part of the key attribute


def caption_text(processor, caption: str) -> str:
    """The modality-alignment format: the image, then its caption; no chat turn, no question."""
    tok = processor.tokenizer
    return f"{tok.bos_token}{processor.image_token}\n{caption}{tok.eos_token}"


def encode(processor, rows: list[dict], images: list | None = None) -> Batch:
    """Text + answer with labels on the answer tokens only (padding is on the left).

    QA rows (``question``, ``answer``, ``key``) go through the chat template; caption rows
    (``caption``) use ``caption_text`` and their whole caption is the key.
    """
    tok = processor.tokenizer
    texts = [caption_text(processor, r["caption"]) if "caption" in r else
             processor.apply_chat_template(conversation(r["question"], r["answer"]), tokenize=False) for r in rows]
    inputs = processor(images=images or [r["image"] for r in rows], text=texts, return_tensors="pt", padding=True)
    ids = inputs["input_ids"]
    labels = torch.full_like(ids, -100)
    key_mask = torch.zeros_like(ids, dtype=torch.bool)
    for i, r in enumerate(rows):
        target, key = (r["caption"], r["caption"]) if "caption" in r else (r["answer"], r["key"])
        answer_ids = tok(target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n = len(answer_ids)
        labels[i, -n:] = ids[i, -n:]
        key_ids = tok(key, add_special_tokens=False)["input_ids"]
        for j in range(n - len(key_ids) + 1):
            if answer_ids[j : j + len(key_ids)] == key_ids:
                key_mask[i, ids.shape[1] - n + j : ids.shape[1] - n + j + len(key_ids)] = True
                break
    return Batch(dict(inputs), labels, key_mask)


def _shifted(logits: torch.Tensor, b: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return logits[:, :-1], b.labels[:, 1:], b.key_mask[:, 1:]


def slot_targets(embed: torch.Tensor, tokenizer, rows: list[dict], grid: int) -> torch.Tensor:
    """[rows, grid^2, d]: what each image slot should look like to the LM, in raster order.

    A patch in a cell holding an object gets (E[colour] + E[shape]) / sqrt 2 of that object; a patch
    of an empty cell gets E[<pad>], a token that never appears in text (no background feature is
    shared with a word). The 2x2 scene grid maps onto the patch grid.
    """
    ids = tokenizer.convert_tokens_to_ids
    out = embed[tokenizer.pad_token_id].expand(len(rows), grid * grid, -1).clone()
    for i, r in enumerate(rows):
        for o in Scene.parse(r["scene"]).objects:
            cx, cy = POSITIONS[o.position]
            value = (embed[ids(o.color)] + embed[ids(o.shape)]) / math.sqrt(2)
            for p in range(grid * grid):
                px, py = p % grid, p // grid
                if (px * 2 // grid, py * 2 // grid) == (cx, cy):
                    out[i, p] = value
    return out


def _fit(params: list[torch.nn.Parameter], steps: int, n_rows: int, batch_size: int, lr: float, seed: int, loss_fn, desc: str) -> list[float]:
    """AdamW with linear warm-up and cosine decay over shuffled batches; returns the loss curve."""
    rng = random.Random(seed)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    losses: list[float] = []
    order: list[int] = []
    for _ in tqdm(range(steps), desc=desc, unit="step", leave=False):
        if len(order) < batch_size:
            order = list(range(n_rows))
            rng.shuffle(order)
        idx, order = torch.tensor(order[:batch_size]), order[batch_size:]
        loss = loss_fn(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def _answer_loss(model, data: Batch, idx: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the answer tokens with ``slots`` [batch, P, d] in the image positions."""
    ids = data.inputs["input_ids"][idx]
    emb = model.get_input_embeddings()(ids).clone()
    emb[ids == model.config.image_token_index] = slots.reshape(-1, slots.shape[-1]).to(emb.dtype)
    logits = model(inputs_embeds=emb, attention_mask=data.inputs["attention_mask"][idx]).logits
    labels = data.labels[idx]
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)


def pretrain(model, processor, rows: list[dict], steps: int, batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
             embedding_scale: float = 20.0, aux_weight: float = 1.0) -> list[float]:
    """LLaVA-style pretraining in two stages on caption rows (``scenes.make_captions``), so that
    image patches reuse the LM's word features (the premise of SAE-V) instead of a private code.
    Returns the loss curve of both stages.

    1. Text (the first half of ``steps``): the LM alone, reading ``slot_targets`` in place of the
       image. Token embeddings start ``embedding_scale`` times larger: pre-norm blocks write at a
       fixed scale, so the early residual stream stays close to the tokens it holds.
    2. Vision (the rest): LM frozen; vision tower + projector trained on the captions plus
       ``aux_weight`` x the relative squared error of each projected patch to its slot target.
    """
    torch.manual_seed(seed)
    model.train()
    data = encode(processor, rows)  # tokenise once; batches are index selections
    embed = model.get_input_embeddings()
    with torch.no_grad():
        embed.weight.mul_(embedding_scale)
    grid = math.isqrt(int((data.inputs["input_ids"][0] == model.config.image_token_index).sum()))
    vision = [*model.model.vision_tower.parameters(), *model.model.multi_modal_projector.parameters()]
    text = [p for p in model.parameters() if all(p is not v for v in vision)]

    def text_loss(idx):
        return _answer_loss(model, data, idx, slot_targets(embed.weight, processor.tokenizer, [rows[i] for i in idx], grid))

    def vision_loss(idx):
        feats = model.get_image_features(pixel_values=data.inputs["pixel_values"][idx], vision_feature_layer=-1,
                                         vision_feature_select_strategy="default").pooler_output
        feats = torch.stack(list(feats))
        with torch.no_grad():
            target = slot_targets(embed.weight, processor.tokenizer, [rows[i] for i in idx], grid)
        aux = ((feats - target) ** 2).sum(-1).mean() / (target ** 2).sum(-1).mean()
        return _answer_loss(model, data, idx, feats) + aux_weight * aux

    for p in vision:
        p.requires_grad_(False)
    losses = _fit(text, steps // 2, len(rows), batch_size, lr, seed, text_loss, "pretrain demo LM (text)")
    for p in model.parameters():
        p.requires_grad_(True)
    for p in text:
        p.requires_grad_(False)
    losses += _fit(vision, steps - steps // 2, len(rows), batch_size, lr, seed + 1, vision_loss, "pretrain demo vision")
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return losses


@torch.inference_mode()
def answer_accuracy(model, processor, rows: list[dict], shuffle_images: bool = False, batch_size: int = 128) -> float:
    """Fraction of rows whose key attribute the model predicts exactly (teacher-forced argmax).

    With ``shuffle_images`` every row is paired with another row's image: a model that reads
    the image drops towards chance, one that only learned text priors does not.
    """
    model.eval()
    images = [r["image"] for r in rows]
    if shuffle_images:
        images = images[1:] + images[:1]
    correct = 0
    for s in range(0, len(rows), batch_size):
        b = encode(processor, rows[s : s + batch_size], images[s : s + batch_size])
        lg, lb, km = _shifted(model(**b.inputs).logits, b)
        hit = (lg.argmax(-1) == lb) | ~km
        correct += int(hit.all(dim=1).sum())
    return correct / len(rows)
