"""JumpReLU (Rajamanoharan et al. 2024, the Gemma Scope recipe): f = ReLU(pre) * (pre > theta) with
per-latent thresholds theta, trained through an L0 penalty with straight-through estimators
(saev_core.sae.straight_through). Exported as SAELens's "jumprelu" (SAELens's encode form)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from saev_core.configs import SAEConfig
from saev_core.sae.architectures.base import Architecture, Encoded, Init, register

if TYPE_CHECKING:
    from torch import Tensor

    from saev_core.sae.model import SAE


class JumpReLUSAEConfig(SAEConfig):
    """Gemma Scope's bandwidth 0.001 and thresholds initialised at 0.001, in the units of the scaled
    input (E||s*x|| = sqrt(d_in))."""

    architecture: Literal["jumprelu"] = "jumprelu"
    l0_coefficient: float = Field(1.0, ge=0, allow_inf_nan=False, description="jumprelu: lambda of the L0 penalty")
    l1_warmup_frac: float = Field(0.05, ge=0, le=1, description="linear warm-up of the sparsity penalty over this first fraction of steps")
    jumprelu_bandwidth: float = Field(0.001, gt=0, allow_inf_nan=False, description="jumprelu: kernel bandwidth of the threshold "
                                      "pseudo-gradient (Gemma Scope's)")
    jumprelu_init_threshold: float = Field(0.001, ge=0, allow_inf_nan=False, description="jumprelu: initial threshold of every latent "
                                           "(Gemma Scope's)")


@register
class JumpReLU(Architecture):
    config = JumpReLUSAEConfig
    saelens = "jumprelu"

    def parameters(self, cfg: JumpReLUSAEConfig) -> dict[str, Init]:
        return {"threshold": ((cfg.d_sae,), cfg.jumprelu_init_threshold)}

    def activate(self, sae: SAE, pre: Tensor) -> Tensor:
        """ReLU(pre) * (pre > threshold): SAELens's JumpReLUSAE.encode (pre * (pre > threshold) for threshold >= 0)."""
        return pre.relu() * (pre > sae.threshold)

    def encode_train(self, sae: SAE, sx: Tensor) -> Encoded:
        from saev_core.sae.straight_through import jumprelu

        pre = sae.pre(sx)
        return Encoded(jumprelu(pre, sae.threshold, sae.cfg.jumprelu_bandwidth), pre)

    def sparsity(self, cfg: JumpReLUSAEConfig) -> tuple[float, float]:
        return cfg.l0_coefficient, cfg.l1_warmup_frac

    def loss(self, sae: SAE, enc: Encoded, fit: Tensor, sx: Tensor, err: Tensor, lam: float) -> tuple[Tensor, Tensor, Tensor]:
        """loss = mse + lambda_t * L0, L0 = sum_i H(pre_i - theta_i) with Gemma Scope's pseudo-gradients."""
        from saev_core.sae.straight_through import step_l0

        zero = fit.new_zeros(())
        return fit + lam * step_l0(enc.pre, sae.threshold, sae.cfg.jumprelu_bandwidth).mean(), zero, zero

    def project(self, sae: SAE) -> None:
        """Non-negative thresholds: projected, as SAELens does, rather than clamped in the graph (which
        would zero the gradient of a threshold at 0 for good)."""
        sae.threshold.clamp_(min=0.0)

    def from_saelens(self, raw: dict[str, Any], tensors: dict[str, Tensor]) -> tuple[dict[str, Any], dict[str, Tensor]]:
        if "log_threshold" in tensors:  # older SAELens files
            tensors = {**tensors, "threshold": tensors["log_threshold"].exp()}
            del tensors["log_threshold"]
        return {}, tensors
