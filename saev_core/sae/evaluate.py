"""SAE evaluation: reconstruction metrics per modality on held-out tokens, latent firing
statistics, and next-token cross-entropy with the SAE spliced into the model.

- FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2; explained variance = 1 - FVU.
- L0 = mean number of active latents per token (special tokens such as BOS excluded).
- CE-loss-recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean) (METHOD.md sec. 3).
- KL score = (KL_zero - KL_sae) / KL_zero (SAEBench's), KL_x the mean over positions of
  KL(p_clean || p_x) between the next-token distributions of the clean and the spliced model;
  overall and at image and at text positions.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field

import numpy as np
import torch

from saev_core.activations.shards import ActivationDump, iter_rows
from saev_core.activations.data import Sample
from saev_core.activations.inputs import encode, render, to_model
from saev_core.activations.modeling import ModelBundle

DENSE_RATE = 0.1  # a latent firing on more than 10% of tokens counts as dense
HIST_EDGES = list(range(-8, 1))  # log10 firing-rate bins: [-inf,-8), [-8,-7), ..., [-1, 0]


@dataclass
class _Acc:
    """Running sums for one group of tokens (all, image or text)."""

    n: int = 0
    sq_err: float = 0.0
    sum_x: torch.Tensor | None = None
    sum_sq_x: float = 0.0
    active: float = 0.0
    fired: torch.Tensor | None = field(default=None, repr=False)

    def add(self, x: torch.Tensor, x_hat: torch.Tensor, f: torch.Tensor) -> None:
        x, x_hat = x.double(), x_hat.double()
        self.n += x.shape[0]
        self.sq_err += (x - x_hat).pow(2).sum().item()
        s = x.sum(0)
        self.sum_x = s if self.sum_x is None else self.sum_x + s
        self.sum_sq_x += x.pow(2).sum().item()
        active = f > 0
        self.active += active.sum().item()
        c = active.sum(0).cpu()
        self.fired = c if self.fired is None else self.fired + c

    def summary(self) -> dict:
        if self.n == 0:
            return {"n_tokens": 0}
        total_var = self.sum_sq_x - self.sum_x.pow(2).sum().item() / self.n  # sum ||x - mean||^2
        fvu = self.sq_err / total_var if total_var > 0 else float("nan")
        d = self.sum_x.numel()
        return {"n_tokens": self.n, "mse": self.sq_err / (self.n * d), "fvu": fvu, "explained_variance": 1 - fvu,
                "l0": self.active / self.n}


def firing_histogram(rates: np.ndarray) -> dict[str, int]:
    """Counts of latents per log10 firing-rate bin (never-firing latents in their own bin)."""
    out = {"never": int((rates == 0).sum())}
    logs = np.log10(rates[rates > 0])
    lo = -np.inf
    for edge in HIST_EDGES:
        label = f"[1e{edge - 1}, 1e{edge})" if lo != -np.inf else f"< 1e{edge}"
        out[label] = int(((logs >= lo) & (logs < edge)).sum())
        lo = edge
    out["1"] = int((logs >= 0).sum())
    return out


@torch.no_grad()
def reconstruction_metrics(sae, dump: ActivationDump, split: str = "heldout", max_rows: int | None = 200_000,
                           device: torch.device | str = "cpu") -> dict:
    """MSE, FVU, explained variance and L0 overall and per modality, plus latent firing statistics.

    Runs the SAE in inference form (batchtopk as its JumpReLU export, so each token is encoded
    on its own). Uses held-out samples when the dump was opened with a held-out fraction,
    otherwise all rows.
    """
    model = sae.inference_form().to(device).eval()
    split = split if dump.heldout else "all"
    accs = {"all": _Acc(), "image": _Acc(), "text": _Acc()}
    for x, table in iter_rows(dump, ("image", "text"), split, max_rows, columns=("modality",)):
        x = x.to(device).float()
        f = model.encode(x)
        x_hat = model.decode(f)
        modality = np.asarray(table.column("modality").to_numpy(zero_copy_only=False))
        accs["all"].add(x, x_hat, f)
        for m in ("image", "text"):
            sel = torch.from_numpy(modality == m).to(device)
            if bool(sel.any()):
                accs[m].add(x[sel], x_hat[sel], f[sel])
    out = {k: a.summary() for k, a in accs.items()}
    n = accs["all"].n
    rates = (accs["all"].fired.double() / max(n, 1)).numpy() if n else np.zeros(sae.cfg.d_sae)
    per_mod = {m: (accs[m].fired.double() / accs[m].n).numpy() if accs[m].n else np.zeros_like(rates) for m in ("image", "text")}
    out.update({
        "split": split,
        "d_sae": sae.cfg.d_sae,
        "dead_fraction": float((rates == 0).mean()),
        "dense_fraction": float((rates > DENSE_RATE).mean()),
        "firing_rate_histogram": firing_histogram(rates),
        "latents_firing_on_both": int(((per_mod["image"] > 0) & (per_mod["text"] > 0)).sum()),
        "latents_image_only": int(((per_mod["image"] > 0) & (per_mod["text"] == 0)).sum()),
        "latents_text_only": int(((per_mod["image"] == 0) & (per_mod["text"] > 0)).sum()),
        "firing_rates": rates.tolist(),
    })
    return out


def heldout_probe(dump: ActivationDump, rows: int, modalities: tuple[str, ...] = ("image", "text")) -> dict[str, torch.Tensor]:
    """Up to ``rows`` held-out tokens per modality, read once, for the per-modality figures of each training log row."""
    split = "heldout" if dump.heldout else "all"
    probe = {m: [x for x, _ in iter_rows(dump, (m,), split, rows)] for m in modalities}
    return {m: torch.cat(parts) for m, parts in probe.items() if parts}


@torch.no_grad()
def probe_metrics(sae, probe: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> dict[str, dict]:
    """MSE, FVU and L0 of the SAE (in inference form) on each modality's probe tokens, as
    {modality: {mse, fvu, l0}}; the SAE and its statistics are left as they are."""
    model, out = sae.inference_form(), {}
    for m, x in probe.items():
        x, acc = x.to(device).float(), _Acc()
        f = model.encode(x)
        acc.add(x, model.decode(f), f)
        out[m] = {k: acc.summary()[k] for k in ("mse", "fvu", "l0")}
    return out


def ce_loss_recovered(ce_clean: float, ce_sae: float, ce_zero: float) -> float:
    """CE-loss-recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean) (METHOD.md sec. 3)."""
    if ce_zero == ce_clean:
        return float("nan")
    return (ce_zero - ce_sae) / (ce_zero - ce_clean)


def kl_score(kl_sae: float, kl_zero: float) -> float:
    """KL score = (KL_zero - KL_sae) / KL_zero (SAEBench): 1 when splicing the SAE changes nothing."""
    if kl_zero == 0:
        return float("nan")
    return (kl_zero - kl_sae) / kl_zero


def kl_per_position(clean_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(p_clean || p) at every position [batch, seq], from logits [batch, seq, vocab].

    Row by row in float32, so at most one row of log-probabilities per input is held at a time."""
    out = torch.empty(clean_logits.shape[:2], dtype=torch.float32, device=clean_logits.device)
    for b in range(clean_logits.shape[0]):
        ref = torch.log_softmax(clean_logits[b].float(), dim=-1)
        out[b] = (ref.exp() * (ref - torch.log_softmax(logits[b].float(), dim=-1))).sum(dim=-1)
    return out


@contextlib.contextmanager
def splice(bundle: ModelBundle, layer: int, replace):
    """Replace the residual after block ``layer`` by ``replace(hidden)`` for the forward passes inside."""

    def hook(_m, _i, output):
        if isinstance(output, tuple):
            return (replace(output[0]), *output[1:])
        return replace(output)

    handle = bundle.layers[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _encode(bundle: ModelBundle, samples: list[Sample], with_image: bool) -> dict:
    texts = [render(bundle.processor, s.question, s.response, with_image=with_image) for s in samples]
    return to_model(encode(bundle.processor, texts, [s.image for s in samples] if with_image else None), bundle.device, bundle.dtype)


@torch.no_grad()
def cross_entropy(bundle: ModelBundle, sae, layer: int, samples: list[Sample], with_image: bool = True,
                  batch_size: int = 16) -> dict:
    """Mean next-token CE (clean, SAE spliced, layer zero-ablated), CE-loss-recovered, and the KL
    of the spliced models' next-token distributions from the clean one, with the KL score.

    Prompt + response go through the model; the SAE reconstruction (or zeros) replaces the
    residual at image and text positions (special tokens and padding keep the clean value);
    CE is averaged over every predicted non-image, non-padding token. KL is averaged over every
    non-padding position ("all"), and over the image positions and the spliced text positions.
    """
    model = sae.inference_form().to(bundle.device).eval()
    sums = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    kl = {g: {"sae": 0.0, "zero": 0.0, "n": 0} for g in ("all", "image", "text")}
    count = 0
    for i in range(0, len(samples), batch_size):
        inputs = _encode(bundle, samples[i:i + batch_size], with_image)
        ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
        special = torch.isin(ids, torch.tensor(sorted(bundle.special_ids), device=ids.device))
        spliced = mask & ~special
        targets = ids[:, 1:]
        scored = mask[:, 1:] & (targets != bundle.image_token_id)

        def ce(logits):
            lp = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, reduction="none")
            return lp[scored].sum().item()

        def with_sae(h):
            out = h.clone()
            out[spliced] = model.decode(model.encode(h[spliced].float())).to(h.dtype)
            return out

        def zeroed(h):
            out = h.clone()
            out[spliced] = 0
            return out

        image = ids == bundle.image_token_id
        groups = {"all": mask, "image": mask & image, "text": spliced & ~image}
        clean = bundle.model(**inputs, use_cache=False).logits
        sums["clean"] += ce(clean)
        for name, fn in (("sae", with_sae), ("zero", zeroed)):
            with splice(bundle, layer, fn):
                logits = bundle.model(**inputs, use_cache=False).logits
            sums[name] += ce(logits)
            per_pos = kl_per_position(clean, logits)
            del logits
            for g, sel in groups.items():
                kl[g][name] += per_pos[sel].double().sum().item()
        for g, sel in groups.items():
            kl[g]["n"] += int(sel.sum())
        count += int(scored.sum())
    return _ce_figures(sums, kl, count, len(samples))


def _ce_figures(sums: dict, kl: dict, count: int, n_samples: int) -> dict:
    """``cross_entropy``'s result from its running sums: mean CEs, CE-loss-recovered and the KL scores."""
    res = {f"ce_{k}": v / max(count, 1) for k, v in sums.items()}
    res["ce_loss_recovered"] = ce_loss_recovered(res["ce_clean"], res["ce_sae"], res["ce_zero"])
    res["kl"] = {}
    for g, acc in kl.items():
        if acc["n"]:
            k_sae, k_zero = acc["sae"] / acc["n"], acc["zero"] / acc["n"]
            res["kl"][g] = {"kl_sae": k_sae, "kl_zero": k_zero, "kl_score": kl_score(k_sae, k_zero), "n_positions": acc["n"]}
    return {**res, "n_tokens": count, "n_samples": n_samples}


def heldout_samples(dump: ActivationDump, n: int) -> list[Sample]:
    """Up to ``n`` held-out samples of the dump's dataset, rebuilt from the dataset itself."""
    from saev_core.activations.data import DatasetSpec, find_samples, iter_samples, open_dataset

    spec = DatasetSpec.model_validate(dump.manifest["dataset"])
    rows = find_samples(spec, {s: r for s, r in dump.sample_rows().items() if s in dump.heldout}).values() if dump.heldout else \
        (s for s in iter_samples(open_dataset(spec), spec) if isinstance(s, Sample))
    return list(itertools.islice(rows, n))


def render_markdown(report: dict) -> str:
    rec = report["reconstruction"]
    lines = [f"# SAE evaluation: {report['sae']}", "",
             f"Activations: `{report['activations']}` ({rec['split']} split), d_sae {rec['d_sae']}.", "",
             "| tokens | n | MSE | FVU | explained variance | L0 |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for group in ("all", "image", "text"):
        r = rec[group]
        if r["n_tokens"]:
            lines.append(f"| {group} | {r['n_tokens']} | {r['mse']:.4g} | {r['fvu']:.4f} | {r['explained_variance']:.4f} | {r['l0']:.1f} |")
    lines += ["", f"Dead latents: {rec['dead_fraction']:.1%}; dense (> {DENSE_RATE:.0%} of tokens): {rec['dense_fraction']:.1%}; "
              f"firing on both modalities: {rec['latents_firing_on_both']}, image only: {rec['latents_image_only']}, "
              f"text only: {rec['latents_text_only']}.", "", "Firing-rate histogram (latents per log10 bin): "
              + ", ".join(f"{k}: {v}" for k, v in rec["firing_rate_histogram"].items()), ""]
    lines += ["| inputs | samples | CE clean | CE with SAE | CE zero-ablated | CE-loss-recovered |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name in ("ce_with_images", "ce_text_only"):
        c = report.get(name)
        if c:
            lines.append(f"| {name.removeprefix('ce_').replace('_', ' ')} | {c['n_samples']} | {c['ce_clean']:.4f} | "
                         f"{c['ce_sae']:.4f} | {c['ce_zero']:.4f} | {c['ce_loss_recovered']:.4f} |")
    kl_rows = [(name, g, r) for name in ("ce_with_images", "ce_text_only") for g, r in (report.get(name) or {}).get("kl", {}).items()]
    if kl_rows:
        lines += ["", "KL of the next-token distribution from the clean model's (KL score = (KL_zero - KL_sae) / KL_zero, SAEBench's):", "",
                  "| inputs | positions | n | KL with SAE | KL zero-ablated | KL score |", "| --- | --- | ---: | ---: | ---: | ---: |"]
        for name, g, r in kl_rows:
            lines.append(f"| {name.removeprefix('ce_').replace('_', ' ')} | {g} | {r['n_positions']} | {r['kl_sae']:.4g} | "
                         f"{r['kl_zero']:.4g} | {r['kl_score']:.4f} |")
    return "\n".join(lines) + "\n"


def evaluate_run(run: str, activations: str | None = None, n_samples: int = 100, device: str = "auto",
                 out: str | None = None, chat_template: str | None = None) -> dict:
    """Full evaluation of a trained SAE; writes eval.json and eval.md and returns the report.

    The model renders prompts with ``chat_template`` when given, else with the template the dump
    used (its copy in the dump directory), else with its processor's own."""
    from pathlib import Path

    from saev_core.sae.checkpoint import load_sae, resolve_sae_dir
    from saev_core.activations.modeling import load_model, resolve_device
    from saev_core.io import read_json, resolve_recorded, write_json

    run_dir = Path(run)
    sae_dir = resolve_sae_dir(run_dir)
    manifest = read_json(run_dir / "manifest.json") if (run_dir / "manifest.json").exists() else {}
    activations = activations or resolve_recorded(manifest.get("activations"), run_dir)
    if activations is None:
        raise ValueError(f"{run} has no run manifest naming its activations; pass --activations <dump dir>")
    heldout = manifest.get("config", {}).get("heldout_fraction", 0.05)
    dump = ActivationDump.open(activations, heldout)
    sae = load_sae(sae_dir)
    if sae.cfg.d_in != dump.d_in:
        raise ValueError(f"the SAE has d_in={sae.cfg.d_in} but the activations in {activations} have d_model={dump.d_in}: "
                         "they come from a different model or layer")
    dev = resolve_device(device)
    rec = reconstruction_metrics(sae, dump, device=dev)
    rec.pop("firing_rates")
    report = {"sae": str(sae_dir), "activations": str(activations), "reconstruction": rec}
    if n_samples > 0:
        if chat_template is None and dump.manifest.get("chat_template"):
            chat_template = str(Path(activations) / dump.manifest["chat_template"])
        bundle = load_model(dump.manifest["model"], device=device, chat_template=chat_template)
        samples = heldout_samples(dump, n_samples)
        layer = int(dump.manifest["layer"])
        report["ce_with_images"] = cross_entropy(bundle, sae, layer, samples, with_image=True)
        report["ce_text_only"] = cross_entropy(bundle, sae, layer, samples, with_image=False)
    report["markdown"] = render_markdown(report)
    target = Path(out) if out else run_dir
    write_json(target / "eval.json", {k: v for k, v in report.items() if k != "markdown"})
    (target / "eval.md").write_text(report["markdown"])
    return report
