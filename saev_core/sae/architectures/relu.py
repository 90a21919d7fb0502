"""The paper's SAE (METHOD.md sec. 2): f = ReLU(s*x @ W_enc + b_enc), an L1 penalty weighted by the
decoder norms, decoder rows of norm 0.1 at init. Exported as SAELens's "standard"."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from saev_core.configs import SAEConfig
from saev_core.sae.architectures.base import Architecture, Encoded, register

if TYPE_CHECKING:
    from torch import Tensor

    from saev_core.sae.model import SAE

RELU_ADAM_LR = 5e-5  # the paper's (METHOD.md sec. 2)


class ReLUSAEConfig(SAEConfig):
    architecture: Literal["relu"] = "relu"
    l1_coefficient: float = Field(5.0, ge=0, allow_inf_nan=False, description="relu: lambda of the L1 penalty (METHOD.md sec. 2)")
    l1_warmup_frac: float = Field(0.05, ge=0, le=1, description="linear warm-up of the sparsity penalty over this first fraction of steps")

    b_dec_to_input: ClassVar[bool] = False  # the paper: f = ReLU(s*x @ W_enc + b_enc)


def l1_penalty(acts: Tensor, W_dec: Tensor) -> Tensor:  # noqa: N803
    """mean_batch sum_i f_i ||W_dec[i]||_2 (METHOD.md sec. 2), summed over the batch first (same value, less work)."""
    return (acts.sum(dim=0) * W_dec.norm(dim=1)).sum() / acts.shape[0]


@register
class ReLU(Architecture):
    config = ReLUSAEConfig
    saelens = "standard"
    decoder_norm = 0.1

    def activate(self, sae: SAE, pre: Tensor) -> Tensor:
        return pre.relu()

    def sparsity(self, cfg: ReLUSAEConfig) -> tuple[float, float]:
        return cfg.l1_coefficient, cfg.l1_warmup_frac

    def loss(self, sae: SAE, enc: Encoded, fit: Tensor, sx: Tensor, err: Tensor, lam: float) -> tuple[Tensor, Tensor, Tensor]:
        """loss = mse + lambda_t * l1, the paper's."""
        l1 = l1_penalty(enc.acts, sae.W_dec)
        return fit + lam * l1, l1, fit.new_zeros(())

    def fixed_lr(self, optimizer: str) -> float | None:
        return RELU_ADAM_LR if optimizer == "adam" else None
