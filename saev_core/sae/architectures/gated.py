"""Gated SAE (Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated Sparse Autoencoders").

A gate decides which latents fire and a magnitude path, sharing W_enc up to a per-latent rescale
exp(r_mag), decides how strongly:

    h = (s*x - b_dec) @ W_enc        f = 1[h + b_gate > 0] * ReLU(h * exp(r_mag) + b_mag)

b_gate is the core's b_enc. The Heaviside gate passes no gradient; the gate learns through the
sparsity penalty lambda * sum_i ReLU(pi_gate)_i ||W_dec[i]|| and an auxiliary loss, the squared
error of the gate's own reconstruction ReLU(pi_gate) @ W_dec + b_dec through a frozen decoder
(SAELens's GatedTrainingSAE). Exported as SAELens's "gated" (b_enc saved as b_gate).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from saev_core.configs import SAEConfig
from saev_core.sae.architectures.base import Architecture, Encoded, Init, register
from saev_core.sae.architectures.relu import RELU_ADAM_LR, l1_penalty

if TYPE_CHECKING:
    from torch import Tensor

    from saev_core.sae.model import SAE


class GatedSAEConfig(SAEConfig):
    architecture: Literal["gated"] = "gated"
    l1_coefficient: float = Field(5.0, ge=0, allow_inf_nan=False, description="gated: lambda of the gate's L1 penalty")
    l1_warmup_frac: float = Field(0.05, ge=0, le=1, description="linear warm-up of the sparsity penalty over this first fraction of steps")


@register
class Gated(Architecture):
    config = GatedSAEConfig
    saelens = "gated"
    decoder_norm = 0.1  # an L1-penalised SAE, initialised as the paper's relu

    def parameters(self, cfg: GatedSAEConfig) -> dict[str, Init]:
        return {"r_mag": ((cfg.d_sae,), 0.0), "b_mag": ((cfg.d_sae,), 0.0)}

    def _paths(self, sae: SAE, sx: Tensor) -> tuple[Tensor, Tensor]:
        """(pi_gate, the magnitudes ReLU(pi_mag))."""
        h = sae.centered(sx) @ sae.W_enc
        return h + sae.b_enc, (h * sae.r_mag.exp() + sae.b_mag).relu()

    def encode(self, sae: SAE, sx: Tensor) -> Tensor:
        gate, magnitude = self._paths(sae, sx)
        return (gate > 0).to(magnitude.dtype) * magnitude

    def encode_train(self, sae: SAE, sx: Tensor) -> Encoded:
        gate, magnitude = self._paths(sae, sx)
        return Encoded((gate > 0).to(magnitude.dtype) * magnitude, gate)

    def sparsity(self, cfg: GatedSAEConfig) -> tuple[float, float]:
        return cfg.l1_coefficient, cfg.l1_warmup_frac

    def loss(self, sae: SAE, enc: Encoded, fit: Tensor, sx: Tensor, err: Tensor, lam: float) -> tuple[Tensor, Tensor, Tensor]:
        """loss = mse + lambda_t * l1(ReLU(pi_gate)) + ||s*x - (ReLU(pi_gate) @ W_dec' + b_dec')||^2, W_dec' and b_dec' frozen."""
        gate = enc.pre.relu()
        l1 = l1_penalty(gate, sae.W_dec)
        aux = (sx - (gate @ sae.W_dec.detach() + sae.b_dec.detach())).pow(2).sum(dim=-1).mean()
        return fit + lam * l1 + aux, l1, aux

    def fixed_lr(self, optimizer: str) -> float | None:
        return RELU_ADAM_LR if optimizer == "adam" else None

    def to_saelens(self, cfg: GatedSAEConfig, tensors: dict[str, Tensor]) -> tuple[dict[str, Any], dict[str, Tensor]]:
        tensors = dict(tensors)
        tensors["b_gate"] = tensors.pop("b_enc")
        return {}, tensors

    def from_saelens(self, raw: dict[str, Any], tensors: dict[str, Tensor]) -> tuple[dict[str, Any], dict[str, Tensor]]:
        tensors = dict(tensors)
        tensors["b_enc"] = tensors.pop("b_gate")
        return {}, tensors
