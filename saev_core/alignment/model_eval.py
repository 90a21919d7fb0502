"""Evaluate any saved image-text model on a held-out split: answers and preferences.

- answer accuracy: greedy generation names the right attribute (the dataset's ``key`` column when
  present, e.g. the demo world's colour/shape/position word; otherwise an exact match with the
  reference response after whitespace/case normalisation);
- mean token NLL of the reference response (SFT's metric);
- preference accuracy: the fraction of rows with log p(chosen) > log p(rejected) (DPO's metric);
- reward margin: mean of beta * [(log p(c) - log p_ref(c)) - (log p(r) - log p_ref(r))] against a
  reference model (DPO's implicit reward), when one is given.
"""

from __future__ import annotations

import re

import torch

from saev_core.activations.data import DatasetSpec, Sample, iter_samples, open_dataset
from saev_core.activations.inputs import encode, render, to_model
from saev_core.activations.modeling import ModelBundle, load_model


def names_key(generated: str, key: str) -> bool:
    """True if the words of ``key`` appear, in order and whole, in ``generated`` (case-insensitive)."""
    words = lambda s: re.findall(r"\w+", s.lower())  # noqa: E731
    g, k = words(generated), words(key)
    return bool(k) and any(g[i:i + len(k)] == k for i in range(len(g) - len(k) + 1))


@torch.no_grad()
def response_logps(bundle: ModelBundle, samples: list[Sample], responses: list[str], batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log p(response tokens | image, question) and the number of response tokens, per sample."""
    proc, tok = bundle.processor, bundle.processor.tokenizer
    tok.padding_side = "right"
    sums, counts = [], []
    for i in range(0, len(samples), batch_size):
        ss, rs = samples[i:i + batch_size], responses[i:i + batch_size]
        full = [render(proc, s.question, r) for s, r in zip(ss, rs)]
        prompt = [render(proc, s.question) for s in ss]
        images = [s.image for s in ss]
        enc = encode(proc, full, images)
        n_prompt = encode(proc, prompt, images)["attention_mask"].sum(1)
        n_full = enc["attention_mask"].sum(1)
        enc = to_model(enc, bundle.device, bundle.dtype)
        logp = bundle.model(**enc, use_cache=False).logits.float().log_softmax(-1)[:, :-1]
        target = enc["input_ids"][:, 1:]
        tok_lp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1).cpu()
        pos = torch.arange(target.shape[1]).unsqueeze(0)
        # predicting token t uses logits at t-1: response tokens are n_prompt .. n_full-1
        mask = (pos >= (n_prompt - 1).unsqueeze(1)) & (pos < (n_full - 1).unsqueeze(1))
        sums.append((tok_lp * mask).sum(1))
        counts.append(mask.sum(1))
    return torch.cat(sums), torch.cat(counts)


@torch.no_grad()
def generate_answers(bundle: ModelBundle, samples: list[Sample], max_new_tokens: int = 48, batch_size: int = 32) -> list[str]:
    """Greedy answers (left padding, as generation needs)."""
    proc, tok = bundle.processor, bundle.processor.tokenizer
    tok.padding_side = "left"
    out = []
    try:
        for i in range(0, len(samples), batch_size):
            ss = samples[i:i + batch_size]
            prompt = [render(proc, s.question) for s in ss]
            enc = to_model(encode(proc, prompt, [s.image for s in ss]), bundle.device, bundle.dtype)
            gen = bundle.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            out += tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tok.padding_side = "right"
    return out


def evaluate_model(model: str | ModelBundle, heldout: DatasetSpec, n_samples: int | None = None, reference: str | ModelBundle | None = None,
                   beta: float = 0.1, device: str = "auto", batch_size: int = 32, key_column: str = "key",
                   max_new_tokens: int = 48, chat_template: str | None = None) -> dict:
    """All four metrics on up to ``n_samples`` rows of ``heldout``; a reference model adds the reward margin.
    ``chat_template`` (a Jinja file) is for models whose processor ships none; it serves the reference too."""
    bundle = model if isinstance(model, ModelBundle) else load_model(model, device=device, chat_template=chat_template)
    ds = open_dataset(heldout)
    samples = [s for s in iter_samples(ds, heldout, 0, n_samples) if isinstance(s, Sample)]
    if not samples:
        raise ValueError(f"no usable rows in {heldout.path}; the evaluation split is empty or every row was rejected")
    keys = ds[key_column] if key_column in ds.column_names else None
    answers = generate_answers(bundle, samples, max_new_tokens, batch_size)
    if keys is not None:
        hits = [names_key(a, keys[s.row_index]) for a, s in zip(answers, samples)]
    else:
        norm = lambda t: " ".join(re.findall(r"\w+", (t or "").lower()))  # noqa: E731
        hits = [norm(a) == norm(s.response) for a, s in zip(answers, samples)]
    ref_lp, ref_n = response_logps(bundle, samples, [s.response for s in samples], batch_size)
    report = {"n": len(samples), "answer_accuracy": sum(hits) / len(hits), "nll": float(-ref_lp.sum() / ref_n.sum()),
              "examples": [{"question": s.question, "generated": a, "correct": h} for s, a, h in list(zip(samples, answers, hits))[:5]]}
    prefs = [s for s in samples if s.chosen is not None and s.rejected is not None]
    if prefs:
        c, _ = response_logps(bundle, prefs, [s.chosen for s in prefs], batch_size)
        r, _ = response_logps(bundle, prefs, [s.rejected for s in prefs], batch_size)
        report.update(preference_accuracy=float((c > r).float().mean()), logp_margin=float((c - r).mean()))
        if reference is not None:
            ref = reference if isinstance(reference, ModelBundle) else load_model(reference, device=device, chat_template=chat_template)
            c0, _ = response_logps(ref, prefs, [s.chosen for s in prefs], batch_size)
            r0, _ = response_logps(ref, prefs, [s.rejected for s in prefs], batch_size)
            report["reward_margin"] = float((beta * ((c - c0) - (r - r0))).mean())
    return report
