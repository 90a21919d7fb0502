"""Brief supervised pretraining of the tiny LLaVA on clean rows, and its answer accuracy.

Accuracy is teacher-forced: the model must put the highest logit on every word of the
answer's key attribute (the colour, shape or position asked about). Chance is the mean over
questions of 1 / (number of values that attribute can take).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from saev_core.demo.scenes import COLORS, POSITIONS, SHAPES
from saev_core.prompts import conversation

_N_VALUES = {"color_of_shape": len(COLORS), "shape_at_position": len(SHAPES), "position_of_object": len(POSITIONS)}


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    key_mask: torch.Tensor  # answer positions whose token is part of the key attribute


def encode(processor, rows: list[dict], images: list | None = None) -> Batch:
    """Prompt + answer with labels on the answer tokens only (padding is on the left)."""
    tok = processor.tokenizer
    texts = [processor.apply_chat_template(conversation(r["question"], r["answer"]), tokenize=False) for r in rows]
    inputs = processor(images=images or [r["image"] for r in rows], text=texts, return_tensors="pt", padding=True)
    ids = inputs["input_ids"]
    labels = torch.full_like(ids, -100)
    key_mask = torch.zeros_like(ids, dtype=torch.bool)
    for i, r in enumerate(rows):
        answer_ids = tok(r["answer"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n = len(answer_ids)
        labels[i, -n:] = ids[i, -n:]
        key_ids = tok(r["key"], add_special_tokens=False)["input_ids"]
        for j in range(n - len(key_ids) + 1):
            if answer_ids[j : j + len(key_ids)] == key_ids:
                key_mask[i, ids.shape[1] - n + j : ids.shape[1] - n + j + len(key_ids)] = True
                break
    return Batch(dict(inputs), labels, key_mask)


def _shifted(logits: torch.Tensor, b: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return logits[:, :-1], b.labels[:, 1:], b.key_mask[:, 1:]


def pretrain(model, processor, rows: list[dict], steps: int, batch_size: int = 64, lr: float = 3e-3, seed: int = 0) -> list[float]:
    """AdamW with linear warm-up and cosine decay on the answer tokens. Returns the loss curve."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    losses = []
    order: list[int] = []
    data = encode(processor, rows)  # tokenise once; batches are index selections
    for _ in tqdm(range(steps), desc="pretrain demo model", unit="step", leave=False):
        if len(order) < batch_size:
            order = list(range(len(rows)))
            rng.shuffle(order)
        idx, order = torch.tensor(order[:batch_size]), order[batch_size:]
        b = Batch({k: v[idx] for k, v in data.inputs.items()}, data.labels[idx], data.key_mask[idx])
        logits = model(**b.inputs).logits
        lg, lb, _ = _shifted(logits, b)
        loss = torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), lb.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
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


def chance_accuracy(rows: list[dict]) -> float:
    return sum(1 / _N_VALUES[r["question_kind"]] for r in rows) / len(rows)
