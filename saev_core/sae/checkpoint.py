"""SAELens-compatible SAE checkpoints: a directory SAELens (v6) loads with ``SAE.load_from_disk``.

Layout (SAELens's): ``cfg.json``; ``sae_weights.safetensors`` with W_enc [d_in, d_sae],
W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in] and, for jumprelu, threshold [d_sae]; optional
``sparsity.safetensors`` holding ``sparsity`` [d_sae], the per-latent log10 firing rate.

What is written is the inference form SAELens computes identically to ``SAE.encode``: the input
scale folded into the weights (normalize_activations "none"), each architecture under its SAELens
name and tensor names (batchtopk as jumprelu, relu as "standard", gated's b_enc as b_gate; see
saev_core.sae.architectures), and ``apply_b_dec_to_input`` carried over. The config the SAE was
trained with (including the folded input scale) is kept in ``cfg.json`` under
``metadata.saev.trained_config``, which SAELens preserves as opaque metadata.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from saev_core.io import atomic_dir
from saev_core.sae.architectures import ARCHITECTURES, own_fields
from saev_core.sae.model import SAE, SAEConfig

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
SPARSITY_FILENAME = "sparsity.safetensors"
# SAELens reads a config without a version >= 6 as pre-6 and rebuilds its metadata, dropping ours;
# this names the cfg.json layout we write, not a SAELens dependency.
SAELENS_FORMAT_VERSION = "6.0.0"
# 2: trained_config holds only its architecture's fields (1: every architecture's)
SAEV_FORMAT_VERSION = 2


def resolve_sae_dir(path: str | Path) -> Path:
    """The SAE folder of a `saev train` run directory (its ``sae/``) or of a SAELens checkpoint itself."""
    p = Path(path)
    for cand in (p / "sae", p):
        if (cand / CFG_FILENAME).exists():
            return cand
    raise FileNotFoundError(f"{p} holds no SAE (no cfg.json in it or in {p / 'sae'}); pass a `saev train` run "
                            "directory or a SAELens checkpoint directory")


def training_manifest(path: str | Path) -> dict | None:
    """The `saev train` manifest of the run an SAE came from, or None (a SAELens checkpoint has none)."""
    sae_dir = resolve_sae_dir(path)
    mf = sae_dir.parent / "manifest.json"
    if sae_dir.name != "sae" or not mf.is_file():
        return None
    manifest = json.loads(mf.read_text())
    return manifest if manifest.get("kind") == "saev.sae_run" else None


def sae_id_of(sae_dir: Path) -> str:
    """Content address of an SAE: the same weights always get the same id, whatever the path.

    Hashing a 65k-latent checkpoint reads GBs, and every scoring task asks, so the hash is
    remembered per (file, size, mtime): a rewritten checkpoint is hashed again."""
    files = [Path(sae_dir) / name for name in (CFG_FILENAME, WEIGHTS_FILENAME)]
    return _hash_files(tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files))


@functools.lru_cache(maxsize=64)
def _hash_files(files: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.sha256()
    for path, _, _ in files:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
    return h.hexdigest()[:12]


@dataclass
class Checkpoint:
    sae: SAE  # inference form, input_scale == 1
    metadata: dict[str, Any]  # cfg.json "metadata" without the saev block (hook_name, model_name, ...)
    sparsity: Tensor | None  # per-latent log10 firing rate [d_sae], if saved
    trained_config: SAEConfig | None  # as trained (architecture, input_scale); None for foreign checkpoints


def save_sae(sae: SAE, path: str | Path, sparsity: Tensor | None = None, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``sae`` to directory ``path`` atomically (an existing checkpoint there is replaced).

    ``sparsity``: per-latent log10 firing rate [d_sae]; use log10(rate + 1e-10) as SAELens does, so
    dead latents stay finite. ``metadata``: JSON-serialisable extras such as hook_name/model_name
    (SAELens's keys), stored under cfg.json "metadata"; its sae_lens_version is set to the layout
    written, so ``load_checkpoint(p).metadata`` can be passed back in.
    """
    metadata = dict(metadata or {})
    if "saev" in metadata:
        raise ValueError("metadata key 'saev' is reserved for saev's own block in cfg.json; rename it")
    exported = sae.inference_form().fold_input_scale()
    ecfg = exported.cfg
    metadata["sae_lens_version"] = SAELENS_FORMAT_VERSION
    metadata["saev"] = {"format_version": SAEV_FORMAT_VERSION, "trained_config": sae.cfg.model_dump()}
    state = {name: t.detach().cpu().contiguous() for name, t in exported.named_parameters()}
    fields, tensors = exported.arch.to_saelens(ecfg, state)
    cfg: dict[str, Any] = {
        "architecture": exported.arch.saelens,
        "d_in": ecfg.d_in,
        "d_sae": ecfg.d_sae,
        "dtype": str(exported.W_enc.dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": ecfg.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        **fields,
        "metadata": metadata,
    }
    try:
        cfg_text = json.dumps(cfg, indent=2)
    except TypeError as e:
        raise ValueError(f"metadata must be JSON-serialisable: {e}") from e

    if sparsity is not None:
        sparsity = sparsity.detach().float().cpu().contiguous()
        if sparsity.shape != (ecfg.d_sae,) or not bool(sparsity.isfinite().all()):
            raise ValueError(f"sparsity must be a finite [d_sae={ecfg.d_sae}] tensor of log10 firing rates, got "
                             f"shape {tuple(sparsity.shape)}; use log10(rate + 1e-10) so dead latents stay finite")

    with atomic_dir(path) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILENAME))
        if sparsity is not None:
            save_file({"sparsity": sparsity}, str(tmp / SPARSITY_FILENAME))
        (tmp / CFG_FILENAME).write_text(cfg_text + "\n")
    return Path(path)


def load_sae(path: str | Path, device: str = "cpu") -> SAE:
    """Load the SAE of a checkpoint directory written by ``save_sae`` or by SAELens."""
    return load_checkpoint(path, device).sae


def load_checkpoint(path: str | Path, device: str = "cpu") -> Checkpoint:
    """Load a saev or SAELens checkpoint (any registered architecture SAELens names: standard, topk,
    jumprelu, gated; SAELens 6 or older layout). Weights are loaded as float32 (saev computes in fp32)."""
    path = Path(path)
    cfg_path, weights_path = path / CFG_FILENAME, path / WEIGHTS_FILENAME
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: {path} is not an SAELens/saev checkpoint directory")
    raw = json.loads(cfg_path.read_text())
    if missing := [key for key in ("d_in", "d_sae") if key not in raw]:
        raise ValueError(f"{cfg_path} lacks {missing}: not an SAELens SAE config")
    metadata = dict(raw.get("metadata") or {})
    saev = metadata.pop("saev", None)
    trained = trained_sae_config(saev["trained_config"]) if saev else None

    saelens_arch = raw.get("architecture", "standard")
    if raw.get("activation_fn") == "topk":  # SAELens < 6 stored TopK SAEs as standard + activation_fn
        saelens_arch = "topk"
    by_saelens = {a.saelens: a for a in ARCHITECTURES.values() if a.saelens}
    if saelens_arch not in by_saelens:
        raise ValueError(f"{cfg_path}: architecture {saelens_arch!r} is not supported by saev (supported: {', '.join(by_saelens)})")
    norm = raw.get("normalize_activations", "none")
    if norm not in ("none", None, False):
        raise ValueError(f"{cfg_path}: normalize_activations={norm!r} is not supported: fold the normalisation into the "
                         "weights first (SAELens: sae.fold_activation_norm_scaling_factor(scale), then save_model)")
    arch = by_saelens[saelens_arch]
    weights = {name: t.float() for name, t in load_file(str(weights_path)).items()}
    _drop_unit_scaling_factor(weights, weights_path)
    fields, weights = arch.from_saelens(raw, weights)
    kept = {k: v for k, v in (trained.model_dump() if trained else {}).items() if k in arch.config.model_fields}
    cfg = arch.config.model_validate({**kept, "architecture": arch.name, "d_in": raw["d_in"], "d_sae": raw["d_sae"],
                                      "apply_b_dec_to_input": raw.get("apply_b_dec_to_input", True), "input_scale": 1.0, **fields})
    _check_shapes(weights, cfg, weights_path)
    weights["tokens_since_fired"] = torch.zeros(cfg.d_sae, dtype=torch.long)
    sae = SAE.from_state(cfg, weights).to(device)

    sparsity = None
    if (sparsity_path := path / SPARSITY_FILENAME).is_file():
        sparsity = load_file(str(sparsity_path))["sparsity"].float().to(device)
        if sparsity.shape != (cfg.d_sae,):
            raise ValueError(f"{sparsity_path}: sparsity has shape {tuple(sparsity.shape)}, expected ({cfg.d_sae},)")
    return Checkpoint(sae=sae, metadata=metadata, sparsity=sparsity, trained_config=trained)


def trained_sae_config(data: dict) -> SAEConfig:
    """An SAE config as saev wrote it; one from before saev format 2 held every architecture's fields,
    and keeps those of its own."""
    return SAEConfig.model_validate(own_fields(data))


def _drop_unit_scaling_factor(weights: dict[str, Tensor], weights_path: Path) -> None:
    """Older SAELens files carry an all-ones fine-tuning scaling_factor, which SAELens ignores."""
    if "scaling_factor" in weights:
        if not torch.allclose(weights["scaling_factor"], torch.ones_like(weights["scaling_factor"])):
            raise ValueError(f"{weights_path}: a fine-tuning scaling_factor other than 1 is not supported")
        del weights["scaling_factor"]


def _check_shapes(weights: dict[str, Tensor], cfg: SAEConfig, weights_path: Path) -> None:
    d_in, d_sae = cfg.d_in, cfg.d_sae
    expected = {name: tuple(t.shape) for name, t in SAE(cfg, device="meta").named_parameters()}
    missing, unexpected = expected.keys() - weights.keys(), weights.keys() - expected.keys()
    if missing or unexpected:
        raise ValueError(f"{weights_path}: tensors do not match a {cfg.architecture} SAE "
                         f"(missing {sorted(missing)}, unexpected {sorted(unexpected)})")
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise ValueError(f"{weights_path}: {name} has shape {tuple(weights[name].shape)} but cfg.json says "
                             f"d_in={d_in}, d_sae={d_sae}, which needs {shape}: the config and weights disagree")
