"""The SAE step and training on a CUDA device (skipped without one; ``bench/gpu.sh`` runs them)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saev_core.sae.checkpoint import load_sae
from saev_core.sae.model import SAE, SAEConfig
from saev_core.sae.train import TrainConfig, train_sae
from test_sae import _dense_reference
from test_train import fake_dump

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_sparse_step_on_cuda_equals_the_dense_reference(arch):
    torch.manual_seed(0)
    cfg = SAEConfig(architecture=arch, d_in=64, d_sae=512, k=8, aux_k=16, input_scale=1.3, dead_window=10, seed=1)
    x = torch.randn(128, 64, dtype=torch.float64)
    grads = []
    for sparse in (True, False):
        sae = SAE(cfg).double().cuda()
        with torch.no_grad():
            sae.tokens_since_fired[:100] = 10  # dead: AuxK is live
        sae.train()
        loss = sae(x.cuda()).loss if sparse else _dense_reference(sae, x.cuda())[0]
        loss.backward()
        grads.append({n: p.grad.cpu() for n, p in sae.named_parameters()})
    for name, g in grads[1].items():
        assert torch.allclose(grads[0][name], g, rtol=1e-9, atol=1e-11), name


def test_training_on_cuda_matches_the_cpu_run(tmp_path):
    rng = np.random.default_rng(0)
    fake_dump(tmp_path / "dump", 32, [rng.standard_normal((2048, 32)).astype(np.float32) for _ in range(2)])
    runs = {}
    for device in ("cpu", "cuda"):
        cfg = TrainConfig(activations=str(tmp_path / "dump"), out=str(tmp_path / device), architecture="topk", k=4,
                          expansion_factor=4, batch_size=256, total_tokens=256 * 20, scale_batches=2, device=device,
                          progress=False, eval_rows=0)
        runs[device] = train_sae(cfg)
    # the same batches and init: equal up to float rounding, which can flip a top-k tie now and then
    assert runs["cuda"]["heldout"]["all"]["fvu"] == pytest.approx(runs["cpu"]["heldout"]["all"]["fvu"], rel=0.05)
    assert load_sae(tmp_path / "cuda/sae").W_dec.isfinite().all()
