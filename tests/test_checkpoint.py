"""SAELens-compatible checkpoints: round trips, files SAELens writes, clear failures."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from saev_core.sae.checkpoint import load_checkpoint, load_sae, save_sae
from saev_core.sae.model import SAE, SAEConfig

REPO = Path(__file__).resolve().parents[1]
X = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))


def make_sae(arch: str, input_scale: float = 3.7) -> SAE:
    sae = SAE(SAEConfig(architecture=arch, d_in=8, d_sae=32, input_scale=input_scale, **({"k": 4} if "topk" in arch else {})))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(32, generator=g) * 0.1)
        sae.b_dec.copy_(torch.randn(8, generator=g))
        if arch == "jumprelu":
            sae.threshold.copy_(torch.rand(32, generator=g))
    if arch in ("batchtopk", "matryoshka_batchtopk"):
        sae(X)  # one training-mode pass estimates the threshold
    return sae


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "matryoshka_batchtopk", "jumprelu"])
def test_round_trip_gives_the_same_activations(tmp_path, arch):
    sae = make_sae(arch)
    sparsity = torch.linspace(-10, 0, 32)
    save_sae(sae, tmp_path / "ckpt", sparsity=sparsity, metadata={"hook_name": "layers.1", "extra": {"a": [1, 2]}})
    ckpt = load_checkpoint(tmp_path / "ckpt")
    reference = sae.inference_form()
    f, f_loaded = reference.encode(X), ckpt.sae.encode(X)
    assert torch.equal(f > 0, f_loaded > 0)
    assert torch.allclose(f, f_loaded, atol=1e-5)
    assert torch.allclose(reference.decode(f), ckpt.sae.decode(f_loaded), atol=1e-5)
    assert ckpt.sae.cfg.architecture == reference.cfg.architecture
    assert ckpt.sae.cfg.input_scale == 1.0
    assert ckpt.trained_config == sae.cfg  # architecture before export, original input scale
    assert ckpt.metadata["hook_name"] == "layers.1" and ckpt.metadata["extra"] == {"a": [1, 2]}
    assert torch.equal(ckpt.sparsity, sparsity)
    save_sae(ckpt.sae, tmp_path / "again", metadata=ckpt.metadata)  # loaded metadata can be saved back
    assert torch.allclose(load_sae(tmp_path / "again").encode(X), f_loaded)


@pytest.mark.parametrize("arch,saelens_arch,extra_keys", [
    ("relu", "standard", set()),
    ("topk", "topk", {"k", "rescale_acts_by_decoder_norm"}),
    ("batchtopk", "jumprelu", set()),
    ("matryoshka_batchtopk", "jumprelu", set()),
])
def test_files_are_plain_saelens_form(tmp_path, arch, saelens_arch, extra_keys):
    sae = make_sae(arch)
    save_sae(sae, tmp_path / "ckpt")
    cfg = json.loads((tmp_path / "ckpt" / "cfg.json").read_text())
    assert cfg["architecture"] == saelens_arch
    assert cfg["normalize_activations"] == "none"
    assert cfg["apply_b_dec_to_input"] is (arch != "relu")
    assert cfg["metadata"]["sae_lens_version"].startswith("6.")
    assert cfg["metadata"]["saev"]["trained_config"]["input_scale"] == 3.7
    base = {"architecture", "d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input",
            "normalize_activations", "reshape_activations", "metadata"}
    assert set(cfg) == base | extra_keys
    weights = load_file(str(tmp_path / "ckpt" / "sae_weights.safetensors"))
    shapes = {name: tuple(t.shape) for name, t in weights.items()}
    expected = {"W_enc": (8, 32), "W_dec": (32, 8), "b_enc": (32,), "b_dec": (8,)}
    if saelens_arch == "jumprelu":
        expected["threshold"] = (32,)
    assert shapes == expected
    assert torch.allclose(weights["W_enc"], sae.W_enc * 3.7)  # input scale folded in
    assert not (tmp_path / "ckpt" / "sparsity.safetensors").exists()


def saelens_dir(tmp_path: Path, cfg: dict, weights: dict[str, torch.Tensor]) -> Path:
    """A checkpoint laid out exactly as SAELens 6.54 ``save_model`` writes it."""
    path = tmp_path / "saelens"
    path.mkdir()
    base = {"d_in": 4, "d_sae": 6, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
            "normalize_activations": "none", "reshape_activations": "none",
            "metadata": {"sae_lens_version": "6.54.12", "sae_lens_training_version": "6.54.12", "hook_name": "h"}}
    (path / "cfg.json").write_text(json.dumps({**base, **cfg}))
    save_file(weights, str(path / "sae_weights.safetensors"))
    return path


def random_weights(d_in: int = 4, d_sae: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {"W_enc": torch.randn(d_in, d_sae, generator=g), "W_dec": torch.randn(d_sae, d_in, generator=g),
            "b_enc": torch.randn(d_sae, generator=g) * 0.1, "b_dec": torch.randn(d_in, generator=g)}


def test_loads_saelens_standard_sae(tmp_path):
    w = random_weights()
    sae = load_sae(saelens_dir(tmp_path, {"architecture": "standard"}, w))
    x = torch.randn(10, 4)
    assert sae.cfg.architecture == "relu" and sae.cfg.apply_b_dec_to_input
    assert torch.allclose(sae.encode(x), ((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]).relu())
    assert torch.allclose(sae.decode(sae.encode(x)), sae.encode(x) @ w["W_dec"] + w["b_dec"])


def test_loads_saelens_topk_with_decoder_norm_rescaling(tmp_path):
    w = random_weights()
    path = saelens_dir(tmp_path, {"architecture": "topk", "k": 2, "rescale_acts_by_decoder_norm": True}, w)
    sae = load_sae(path)
    x = torch.randn(10, 4)
    norms = w["W_dec"].norm(dim=1)
    pre = ((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]) * norms  # SAELens TopKSAE.encode
    values, idx = pre.topk(2, dim=-1)
    expected = torch.zeros_like(pre).scatter(-1, idx, values.relu())
    assert torch.allclose(sae.encode(x), expected, atol=1e-6)
    assert torch.allclose(sae.decode(sae.encode(x)), (expected / norms) @ w["W_dec"] + w["b_dec"], atol=1e-5)


def test_loads_saelens_jumprelu_and_legacy_topk(tmp_path):
    w = random_weights() | {"threshold": torch.full((6,), 0.3)}
    jump = load_sae(saelens_dir(tmp_path, {"architecture": "jumprelu", "apply_b_dec_to_input": False}, w))
    x = torch.randn(10, 4)
    pre = x @ w["W_enc"] + w["b_enc"]
    assert torch.allclose(jump.encode(x), pre.relu() * (pre > 0.3))
    legacy = tmp_path / "legacy"  # SAELens < 6: no version, TopK as activation_fn
    legacy.mkdir()
    (legacy / "cfg.json").write_text(json.dumps({"d_in": 4, "d_sae": 6, "hook_point": "h", "activation_fn": "topk",
                                                 "activation_fn_kwargs": {"k": 3}}))
    save_file(random_weights(), str(legacy / "sae_weights.safetensors"))
    topk = load_sae(legacy)
    assert topk.cfg.architecture == "topk" and topk.cfg.k == 3


def test_shape_mismatch_between_cfg_and_weights_fails_clearly(tmp_path):
    path = saelens_dir(tmp_path, {"architecture": "standard", "d_in": 5}, random_weights())
    with pytest.raises(ValueError, match=r"W_enc has shape \(4, 6\) but cfg.json says d_in=5"):
        load_sae(path)


def test_unsupported_inputs_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="'matching_pursuit' is not supported"):
        load_sae(saelens_dir(tmp_path, {"architecture": "matching_pursuit"}, random_weights()))
    with pytest.raises(FileNotFoundError, match="not an SAELens/saev checkpoint"):
        load_sae(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="reserved"):
        save_sae(make_sae("relu"), tmp_path / "x", metadata={"saev": 1})
    with pytest.raises(ValueError, match="finite"):
        save_sae(make_sae("relu"), tmp_path / "x", sparsity=torch.full((32,), float("-inf")))
    assert not (tmp_path / "x").exists()


def test_save_replaces_atomically(tmp_path):
    save_sae(make_sae("relu"), tmp_path / "ckpt", sparsity=torch.zeros(32))
    save_sae(make_sae("topk"), tmp_path / "ckpt")
    assert load_sae(tmp_path / "ckpt").cfg.architecture == "topk"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert not (tmp_path / "ckpt" / "sparsity.safetensors").exists()


def saelens_python() -> str | None:
    if env := os.environ.get("SAEV_SAELENS_PYTHON"):
        return env
    return sys.executable if importlib.util.find_spec("sae_lens") else None


@pytest.mark.skipif(saelens_python() is None, reason=(
    "sae-lens is not installed here; install it in a separate venv "
    "(python3 -m venv /tmp/saelens-venv && /tmp/saelens-venv/bin/pip install torch==2.13.0 sae-lens) "
    "and set SAEV_SAELENS_PYTHON=/tmp/saelens-venv/bin/python"))
def test_sae_lens_reproduces_our_activations():
    script = REPO / "bench" / "saelens_compat_check.py"
    result = subprocess.run([saelens_python(), str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_checkpoint_from_before_per_architecture_configs_loads(tmp_path):
    """saev format 1 kept every architecture's fields in trained_config; each keeps its own now."""
    sae = make_sae("topk")
    save_sae(sae, tmp_path / "ckpt")
    cfg_path = tmp_path / "ckpt" / "cfg.json"
    raw = json.loads(cfg_path.read_text())
    old_fields = {"l1_coefficient": 5.0, "l1_warmup_frac": 0.05, "threshold_ema_decay": 0.99, "l0_coefficient": 1.0,
                  "jumprelu_bandwidth": 0.001, "jumprelu_init_threshold": 0.001, "matryoshka_widths": None}
    raw["metadata"]["saev"] = {"format_version": 1, "trained_config": {**raw["metadata"]["saev"]["trained_config"], **old_fields}}
    cfg_path.write_text(json.dumps(raw))
    ckpt = load_checkpoint(tmp_path / "ckpt")
    assert ckpt.trained_config == sae.cfg and type(ckpt.trained_config).__name__ == "TopKSAEConfig"
    assert torch.allclose(ckpt.sae.encode(X), sae.encode(X), atol=1e-5)
