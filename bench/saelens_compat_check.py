"""Check, with the real ``sae-lens`` package, that saev checkpoints and SAELens agree both ways.

1. saev -> SAELens: ``save_sae`` a relu/topk/batchtopk/Matryoshka/jumprelu SAE (input scale != 1,
   non-zero biases; the Matryoshka and one jumprelu SAE after training steps, so their learnt
   thresholds are exported), ``sae_lens.SAE.load_from_disk`` it, and compare ``encode``/``decode``.
2. SAELens -> saev: SAELens ``save_model`` of standard/topk (decoder-norm rescaling)/jumprelu SAEs,
   ``load_sae`` them, and compare; also that saev's metadata survives a SAELens re-save.

sae-lens pins its own dependency versions, so run it from a separate venv, not the project's:
    python3 -m venv /tmp/saelens-venv && /tmp/saelens-venv/bin/pip install torch==2.13.0 sae-lens
    /tmp/saelens-venv/bin/python bench/saelens_compat_check.py
Exits non-zero on any mismatch.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from importlib.metadata import version
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from saev_core.sae.checkpoint import load_checkpoint, load_sae, save_sae  # noqa: E402
from saev_core.sae.model import SAE, SAEConfig  # noqa: E402

warnings.filterwarnings("ignore")
import sae_lens  # noqa: E402

ATOL = 1e-6
D_IN, D_SAE = 16, 64


def compare(name: str, f_ref: torch.Tensor, f: torch.Tensor, x_ref: torch.Tensor, x_hat: torch.Tensor) -> bool:
    same_support = torch.equal(f_ref > 0, f > 0)
    f_err, x_err = (f_ref - f).abs().max().item(), (x_ref - x_hat).abs().max().item()
    scale = max(1.0, f_ref.abs().max().item(), x_ref.abs().max().item())  # float32 rounding is relative
    ok = same_support and max(f_err, x_err) <= ATOL * scale
    print(f"{'ok  ' if ok else 'FAIL'} {name:42s} same support={same_support} max|df|={f_err:.2e} max|dx_hat|={x_err:.2e}")
    return ok


def saev_sae(arch: str, apply_b_dec: bool | None, x: torch.Tensor, trained: bool = False) -> tuple[SAE, SAE]:
    own = {"jumprelu": {"l0_coefficient": 0.05, "jumprelu_bandwidth": 0.05}}.get(arch, {"k": 8} if "topk" in arch else {})
    cfg = SAEConfig(architecture=arch, d_in=D_IN, d_sae=D_SAE, input_scale=3.7, apply_b_dec_to_input=apply_b_dec, seed=1, **own)
    sae = SAE(cfg)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(D_SAE, generator=g) * 0.1)
        sae.b_dec.copy_(torch.randn(D_IN, generator=g))
        if arch == "jumprelu":
            sae.threshold.copy_(torch.rand(D_SAE, generator=g) * 0.5)
    if trained:  # a few real optimizer steps: learnt thresholds, decoder no longer at its init
        opt = torch.optim.Adam(sae.parameters(), 1e-2)
        for _ in range(20):
            loss = sae(x).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            sae.project_()
    elif arch == "batchtopk":
        sae(x)  # estimate the threshold
    sae.eval()
    return sae, sae.inference_form()


def saev_to_saelens(tmp: Path, x: torch.Tensor) -> bool:
    ok = True
    cases = [("relu", None, False), ("relu", True, False), ("topk", None, False), ("batchtopk", None, False),
             ("jumprelu", False, False), ("jumprelu", None, True), ("matryoshka_batchtopk", None, True)]
    for arch, apply_b_dec, trained in cases:
        sae, reference = saev_sae(arch, apply_b_dec, x, trained)
        path = tmp / f"saev-{arch}-{apply_b_dec}-{trained}"
        save_sae(sae, path, metadata={"hook_name": "model.layers.1", "model_name": "demo"})
        theirs = sae_lens.SAE.load_from_disk(str(path))
        with torch.no_grad():
            f_ref, f = reference.encode(x), theirs.encode(x)
            ok &= compare(f"saev {arch} (b_dec in={sae.cfg.apply_b_dec_to_input}) -> {type(theirs).__name__}",
                          f_ref, f, reference.decode(f_ref), theirs.decode(f))
        meta = theirs.cfg.metadata
        seen = meta.hook_name == "model.layers.1" and meta.saev["trained_config"]["input_scale"] == 3.7
        resaved = tmp / f"resaved-{arch}-{apply_b_dec}-{trained}"
        theirs.save_model(str(resaved))
        ckpt = load_checkpoint(resaved)
        kept = seen and ckpt.trained_config == sae.cfg and ckpt.metadata["hook_name"] == "model.layers.1"
        print(f"{'ok  ' if kept else 'FAIL'} saev metadata readable in SAELens and kept by its re-save ({arch})")
        ok &= kept
    return ok


def saelens_to_saev(tmp: Path, x: torch.Tensor) -> bool:
    ok = True
    g = torch.Generator().manual_seed(3)
    cases = [
        (sae_lens.StandardSAE, sae_lens.StandardSAEConfig, {}),
        (sae_lens.TopKSAE, sae_lens.TopKSAEConfig, {"k": 8}),
        (sae_lens.TopKSAE, sae_lens.TopKSAEConfig, {"k": 8, "rescale_acts_by_decoder_norm": True}),
        (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig, {"apply_b_dec_to_input": False}),
    ]
    for i, (cls, cfg_cls, kwargs) in enumerate(cases):
        theirs = cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, **kwargs))
        with torch.no_grad():
            for name, p in theirs.named_parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.1 if name in ("b_enc", "threshold") else 1.0))
            if hasattr(theirs, "threshold"):
                theirs.threshold.abs_()
        path = tmp / f"saelens-{i}"
        theirs.save_model(str(path))
        ours = load_sae(path)
        with torch.no_grad():
            f_ref, f = theirs.encode(x), ours.encode(x)
            ok &= compare(f"SAELens {cls.__name__} {kwargs} -> saev {ours.cfg.architecture}",
                          f_ref, f, theirs.decode(f_ref), ours.decode(f))
    return ok


def main() -> int:
    print(f"sae-lens {version('sae-lens')}, torch {torch.__version__}")
    x = torch.randn(256, D_IN, generator=torch.Generator().manual_seed(0)) * 2.0
    with tempfile.TemporaryDirectory() as tmp:
        ok = saev_to_saelens(Path(tmp), x)
        ok &= saelens_to_saev(Path(tmp), x)
    print("all checks passed" if ok else "MISMATCHES FOUND")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
