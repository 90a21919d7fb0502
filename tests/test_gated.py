"""The gated SAE (saev_core.sae.architectures.gated): its encoding and loss by hand, a training run,
and its SAELens checkpoint, which SAELens loads with the same latents."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from saev_core.sae.checkpoint import load_checkpoint, save_sae
from saev_core.sae.model import SAE, SAEConfig, sparsity_coefficient_at
from saev_core.sae.train import TrainConfig, train_sae
from tests.test_train import fake_dump


def hand_sae() -> SAE:
    """d_in 2, d_sae 3, b_dec subtracted; the numbers are the ones worked through below."""
    sae = SAE(SAEConfig(architecture="gated", d_in=2, d_sae=3, l1_coefficient=0.5))
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, -1.0]]))
        sae.b_enc.copy_(torch.tensor([0.0, -3.0, 0.5]))  # b_gate
        sae.r_mag.copy_(torch.tensor([0.0, 0.0, math.log(2.0)]))  # exp(r_mag) = [1, 1, 2]
        sae.b_mag.copy_(torch.tensor([1.0, 0.0, -1.0]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]))
        sae.b_dec.copy_(torch.tensor([1.0, 0.0]))
    return sae


def test_gated_encoding_and_loss_by_hand():
    sae = hand_sae()
    x = torch.tensor([[3.0, 1.0]])
    # h = (x - b_dec) @ W_enc = [2, 1] @ W_enc = [2, 1, 1]
    # gate: h + b_gate = [2, -2, 1.5] -> fires [1, 0, 1]
    # magnitude: ReLU(h * exp(r_mag) + b_mag) = ReLU([2, 1, 2] + [1, 0, -1]) = [3, 1, 1]
    f = sae.encode(x)
    assert torch.allclose(f, torch.tensor([[3.0, 0.0, 1.0]]))
    # x_hat = f @ W_dec + b_dec = [3, 0] + [1, 1] + [1, 0] = [5, 1]; mse = (3 - 5)^2 + 0 = 4
    assert torch.allclose(sae.decode(f), torch.tensor([[5.0, 1.0]]))
    out = sae(x, sparsity_coefficient=0.5)
    assert out.mse.item() == pytest.approx(4.0)
    # l1 = sum_i ReLU(gate)_i ||W_dec[i]|| = 2 * 1 + 0 * 2 + 1.5 * sqrt(2)
    l1 = 2.0 + 1.5 * 2 ** 0.5
    assert out.l1.item() == pytest.approx(l1)
    # aux: the gate's reconstruction ReLU(gate) @ W_dec + b_dec = [2, 0] + [1.5, 1.5] + [1, 0] = [4.5, 1.5];
    # ||x - that||^2 = 1.5^2 + 0.5^2 = 2.5
    assert out.aux.item() == pytest.approx(2.5)
    assert out.loss.item() == pytest.approx(4.0 + 0.5 * l1 + 2.5)
    assert out.l0.item() == 2
    assert sparsity_coefficient_at(10**6, 10**6, sae.cfg) == 0.5


def test_the_gate_learns_through_the_penalty_and_the_aux_loss_only():
    """The Heaviside gate passes no gradient: with no penalty and no aux term, b_gate would not move."""
    sae = hand_sae()
    out = sae(torch.tensor([[3.0, 1.0]]), sparsity_coefficient=0.0)
    b_gate_grad = torch.autograd.grad(out.loss - out.aux, sae.b_enc, allow_unused=True)[0]
    assert b_gate_grad is None or not b_gate_grad.any()
    sae.zero_grad()
    sae(torch.tensor([[3.0, 1.0]]), sparsity_coefficient=0.5).loss.backward()
    assert sae.b_enc.grad[[0, 2]].abs().min() > 0  # the open gates feel the penalty and the aux loss
    assert sae.W_dec.grad is not None and sae.r_mag.grad[[0, 2]].abs().min() > 0


def test_a_gated_sae_trains():
    torch.manual_seed(0)
    basis = torch.randn(12, 6)

    def batch(n: int) -> torch.Tensor:
        codes = torch.rand(n, 12) * (torch.rand(n, 12) < 0.15)
        return codes @ basis
    sae = SAE(SAEConfig(architecture="gated", d_in=6, d_sae=24, l1_coefficient=0.05, seed=0))
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
    sae.train()
    first = None
    for step in range(300):
        out = sae(batch(256), sparsity_coefficient_at(step, 300, sae.cfg))
        first = first if first is not None else out.fvu.item()
        opt.zero_grad()
        out.loss.backward()
        sae.prepare_step_()
        opt.step()
        sae.project_()
    sae.eval()
    held = sae(batch(1024))
    assert held.fvu.item() < 0.25 * first and 0 < held.l0.item() < 24


def test_sae_lens_loads_a_gated_checkpoint_with_the_same_latents(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    g = torch.Generator().manual_seed(1)
    sae = SAE(SAEConfig(architecture="gated", d_in=8, d_sae=32, input_scale=3.7, seed=2))
    with torch.no_grad():
        for p in (sae.b_enc, sae.b_mag):
            p.copy_(torch.randn(32, generator=g) * 0.3)
        sae.r_mag.copy_(torch.randn(32, generator=g) * 0.5)
        sae.b_dec.copy_(torch.randn(8, generator=g))
    save_sae(sae, tmp_path / "ckpt", metadata={"hook_name": "model.layers.1"})
    assert json.loads((tmp_path / "ckpt" / "cfg.json").read_text())["architecture"] == "gated"
    x = torch.randn(128, 8, generator=g) * 2
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "ckpt"))
    assert type(theirs).__name__ == "GatedSAE"
    with torch.no_grad():
        f_ours, f_theirs = sae.encode(x), theirs.encode(x)
        assert torch.equal(f_ours > 0, f_theirs > 0) and (f_ours > 0).any()
        assert torch.allclose(f_ours, f_theirs, atol=1e-5)
        assert torch.allclose(sae.decode(f_ours), theirs.decode(f_theirs), atol=1e-5)
    theirs.save_model(str(tmp_path / "resaved"))  # and back: SAELens's own file loads in saev
    back = load_checkpoint(tmp_path / "resaved")
    assert back.trained_config == sae.cfg and back.sae.cfg.architecture == "gated"
    assert torch.allclose(back.sae.encode(x), f_ours, atol=1e-5)


def test_saev_train_trains_and_resumes_a_gated_sae(tmp_path):
    """The trainer, its checkpoints (r_mag, b_mag and their optimizer state) and a resume need no gated code of their own."""
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((48, 16))
    fake_dump(tmp_path / "dump", 16, [((rng.random((1024, 48)) < 0.1) * rng.random((1024, 48)) @ basis).astype(np.float32)
                                      for _ in range(2)])
    cfg = TrainConfig(activations=str(tmp_path / "dump"), out=str(tmp_path / "run"), architecture="gated", l1_coefficient=0.5,
                      expansion_factor=4, batch_size=128, total_tokens=128 * 40, checkpoint_every=10, log_every=10,
                      scale_batches=2, buffer_rows=1024, heldout_fraction=0.1, progress=False)
    crashed = train_sae(cfg, stop_at_step=25)
    assert crashed["last_checkpoint"].endswith("step-00000020")
    resumed = train_sae(cfg)
    fresh = train_sae(cfg.model_copy(update={"out": str(tmp_path / "fresh")}))
    assert resumed["heldout"] == fresh["heldout"] and resumed["sae_config"]["architecture"] == "gated"
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["fvu"] < log[0]["fvu"] and log[-1]["l1"] > 0 and log[-1]["aux"] > 0
    assert load_checkpoint(tmp_path / "run" / "sae").sae.cfg.architecture == "gated"
