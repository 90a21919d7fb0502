"""Hub-ready SAE folders: what a user pushes with ``huggingface_hub.upload_folder`` as is.

One SAE: the folder is the SAE (SAELens's ``cfg.json``, ``sae_weights.safetensors``,
``sparsity.safetensors``, so ``sae_lens.SAE.load_from_disk`` and ``saev_core.sae.checkpoint.load_sae``
read it directly) plus a model card ``README.md``. Several SAEs (a multi-layer release): one
subfolder per SAE, named ``layer_<L>_<architecture>_<d_sae>``, one card for all, and a
``pretrained_saes.yaml`` holding the release's entry in SAELens's format, for a user to add to
SAELens's own registry (``SAE.from_pretrained(release, sae_id)``).

The card's YAML front matter carries what the Hub and a reader look for: library, base model,
hook and layer, d_sae, architecture, training tokens and the dataset's fingerprint; its body a
metrics table (FVU and L0 per modality; CE-loss-recovered and KL score where ``saev eval-sae``
has run on the SAE).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from saev_core import __version__
from saev_core.sae.checkpoint import CFG_FILENAME, SPARSITY_FILENAME, WEIGHTS_FILENAME
from saev_core.io import atomic_dir, read_json, resolve_recorded

CARD_FILENAME = "README.md"
RELEASE_FILENAME = "pretrained_saes.yaml"


def _run_info(run: str | Path) -> dict:
    """What the card says about one `saev train` run: its config, data and metrics."""
    run = Path(run)
    if not (run / "manifest.json").is_file() or not (run / "sae" / CFG_FILENAME).is_file():
        raise FileNotFoundError(f"{run} is not a finished `saev train` run directory (no manifest.json and sae/): "
                                "export-sae reads the run's manifest for the model card")
    m = read_json(run / "manifest.json")
    dump_manifest = Path(resolve_recorded(m["activations"], run)) / "manifest.json"
    dump = read_json(dump_manifest) if dump_manifest.is_file() else {}
    sae_cfg = m["sae_config"]
    held = m["heldout"]
    ev = read_json(run / "eval.json") if (run / "eval.json").is_file() else {}
    ce = ev.get("ce_with_images") or {}
    return {
        "run": run, "sae_dir": run / "sae",
        "id": f"layer_{dump.get('layer', 'x')}_{sae_cfg['architecture']}_{sae_cfg['d_sae']}",
        "meta": {
            "base_model": dump.get("model"), "hook_name": dump.get("hook"), "layer": dump.get("layer"),
            "architecture": sae_cfg["architecture"], "d_in": sae_cfg["d_in"], "d_sae": sae_cfg["d_sae"],
            **({"k": sae_cfg["k"]} if sae_cfg.get("k") else {}),
            "modalities": m["config"]["modalities"], "training_tokens": m["tokens"],
            "dataset": dump.get("dataset_name"), "dataset_fingerprint": dump.get("dataset_fingerprint"),
        },
        "metrics": {
            **{f"fvu_{g}": held[g].get("fvu") for g in ("all", "image", "text") if held.get(g, {}).get("n_tokens")},
            **{f"l0_{g}": held[g].get("l0") for g in ("all", "image", "text") if held.get(g, {}).get("n_tokens")},
            "dead_fraction": held.get("dead_fraction"),
            **({"ce_loss_recovered": ce["ce_loss_recovered"]} if "ce_loss_recovered" in ce else {}),
            **{f"kl_score_{g}": r["kl_score"] for g, r in ce.get("kl", {}).items()},
        },
    }


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def model_card(infos: list[dict], repo_id: str | None) -> str:
    """README.md: YAML front matter (flat for one SAE, a list under ``saes`` for several), then the metrics table."""
    models = sorted({str(i["meta"]["base_model"]) for i in infos})
    front: dict = {"library_name": "saelens", "tags": ["sparse-autoencoder", "saelens", "saev", "multimodal"],
                   "base_model": models[0] if len(models) == 1 else models}
    if len(infos) == 1:
        front.update({k: v for k, v in infos[0]["meta"].items() if k != "base_model"})
    else:
        front["saes"] = [{"id": i["id"], **{k: v for k, v in i["meta"].items() if k != "base_model"}} for i in infos]
    columns = ["fvu_all", "fvu_image", "fvu_text", "l0_all", "l0_image", "l0_text", "ce_loss_recovered",
               "kl_score_all", "kl_score_image", "kl_score_text"]
    title = repo_id or ("SAE-V sparse autoencoder" if len(infos) == 1 else "SAE-V sparse autoencoders")
    load = ('SAE.load_from_disk("path/to/this/folder")' if len(infos) == 1
            else f'SAE.load_from_disk("path/to/this/folder/{infos[0]["id"]}")')
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "", f"# {title}", "",
             f"Sparse autoencoder{'s' if len(infos) > 1 else ''} on the residual stream of `{', '.join(models)}`, trained on "
             "image and text tokens together (SAE-V) with saev " + __version__ + ". Files in SAELens's format.", "",
             "```python", "from sae_lens import SAE", f"sae = {load}", "```", "",
             "Held-out metrics (FVU: fraction of variance unexplained; L0: active latents per token; CE-loss-recovered and "
             "KL score with the SAE spliced into the model, images included):", "",
             "| SAE | layer | architecture | d_sae | tokens | " + " | ".join(columns) + " |",
             "| --- | ---: | --- | ---: | ---: | " + " | ".join("---:" for _ in columns) + " |"]
    for i in infos:
        meta = i["meta"]
        lines.append(f"| {i['id']} | {meta['layer']} | {meta['architecture']} | {meta['d_sae']} | {meta['training_tokens']} | "
                     + " | ".join(_fmt(i["metrics"].get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def release_entry(infos: list[dict], release: str, repo_id: str) -> dict:
    """The release's entry in SAELens's ``pretrained_saes.yaml``."""
    models = sorted({str(i["meta"]["base_model"]) for i in infos})
    return {release: {"conversion_func": None, "model": models[0] if len(models) == 1 else models, "repo_id": repo_id,
                      "saes": [{"id": i["id"], "path": i["id"], "l0": round(i["metrics"].get("l0_all") or 0.0, 2)} for i in infos]}}


def export_saes(runs: list[str | Path], out: str | Path, repo_id: str | None = None, release: str | None = None) -> dict:
    """Write the hub-ready folder for ``runs`` to ``out`` (atomically, replacing it); returns what was written."""
    if not runs:
        raise ValueError("name at least one `saev train` run directory to export")
    infos = [_run_info(r) for r in runs]
    ids = [i["id"] for i in infos]
    if len(set(ids)) < len(ids):
        raise ValueError(f"two of the SAEs would share the folder name {sorted(i for i in ids if ids.count(i) > 1)[0]} "
                         "(same layer, architecture and width): export them as separate releases")
    out = Path(out)
    with atomic_dir(out) as tmp:
        for info in infos:
            dest = tmp if len(infos) == 1 else tmp / info["id"]
            dest.mkdir(exist_ok=True)
            for name in (CFG_FILENAME, WEIGHTS_FILENAME, SPARSITY_FILENAME):
                if (info["sae_dir"] / name).is_file():
                    shutil.copy2(info["sae_dir"] / name, dest / name)
        (tmp / CARD_FILENAME).write_text(model_card(infos, repo_id))
        if len(infos) > 1:
            entry = release_entry(infos, release or (repo_id or out.name).replace("/", "-"), repo_id or f"<user>/{out.name}")
            (tmp / RELEASE_FILENAME).write_text(yaml.safe_dump(entry, sort_keys=False))
    return {"out": str(out), "saes": [str(out) if len(infos) == 1 else str(out / i) for i in ids],
            "card": str(out / CARD_FILENAME), "release": str(out / RELEASE_FILENAME) if len(infos) > 1 else None,
            "upload": f"huggingface_hub.upload_folder(folder_path='{out}', repo_id='{repo_id or '<user>/<repo>'}')"}


def read_front_matter(card: str) -> dict:
    """The YAML front matter of a model card (between the leading ``---`` lines)."""
    if not card.startswith("---\n"):
        raise ValueError("the model card has no YAML front matter")
    return yaml.safe_load(card[4:card.index("\n---\n", 4)])
