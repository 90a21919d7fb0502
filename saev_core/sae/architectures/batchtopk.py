"""BatchTopK (Bussmann et al. 2024): ReLU, then the k*batch largest over the batch (SAELens's
``BatchTopK``). It infers, and is exported, as JumpReLU with one threshold: the running estimate of
the smallest kept activation, so per-token inference keeps about k latents on average."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from saev_core.sae.architectures.base import Init, register
from saev_core.sae.architectures.topk import TopK, TopKSAEConfig

if TYPE_CHECKING:
    from torch import Tensor

    from saev_core.sae.model import SAE
    from saev_core.sae.sparse import ActiveLatents


class BatchTopKSAEConfig(TopKSAEConfig):
    """``threshold_ema_decay`` is the EMA decay of the threshold estimate (0.99 = SAELens's topk_threshold_lr 0.01)."""

    architecture: Literal["batchtopk"] = "batchtopk"  # type: ignore[assignment]
    threshold_ema_decay: float = Field(0.99, ge=0, lt=1, description="EMA decay of the inference threshold's estimate")


@register
class BatchTopK(TopK):
    config = BatchTopKSAEConfig
    saelens = None  # exported as its JumpReLU form

    def buffers(self, cfg: BatchTopKSAEConfig) -> dict[str, Init]:
        return {"running_threshold": ((), float("nan"))}  # NaN until the first training step

    def activate(self, sae: SAE, pre: Tensor) -> Tensor:
        """Ranks over all leading dims together (the batch); ``inference_form`` encodes per token."""
        acts = pre.relu()
        flat = acts.flatten()
        values, idx = flat.topk(sae.cfg.k * acts.shape[:-1].numel())
        return flat.new_zeros(flat.shape).scatter(0, idx, values).view_as(acts)

    def select(self, sae: SAE, pre: Tensor) -> tuple[Tensor, Tensor, Tensor, int | None]:
        from saev_core.sae.sparse import batch_entries

        values, idx = pre.relu().flatten().topk(sae.cfg.k * pre.shape[0], sorted=False)
        values, rows, cols = batch_entries(values, idx, sae.cfg.d_sae)
        return values, rows, cols, None

    def observe(self, sae: SAE, acts: ActiveLatents | Tensor) -> None:
        """Threshold estimate: EMA of the smallest kept (positive) activation per batch, as in
        SAELens/dictionary_learning; the first batch sets it directly so there is no bias to 0."""
        from saev_core.sae.sparse import ActiveLatents

        kept = acts.values.detach()[acts.active()] if isinstance(acts, ActiveLatents) else acts[acts > 0]
        lowest = kept.min() if kept.numel() else kept.new_full((), float("inf"))
        r, decay = sae.running_threshold, sae.cfg.threshold_ema_decay
        updated = lowest.where(r.isnan(), decay * r + (1 - decay) * lowest)
        r.copy_(r.where(lowest.isinf(), updated))

    def inference_form(self, sae: SAE) -> SAE:
        """JumpReLU with one threshold, f = ReLU(pre) * (pre > threshold), from the running estimate."""
        from saev_core.configs import SAEConfig

        if bool(sae.running_threshold.isnan()):
            raise ValueError("the BatchTopK threshold has not been estimated: run at least one training-mode forward pass")
        state = sae.state_copy()
        state["threshold"] = state.pop("running_threshold").to(sae.W_enc.dtype).expand(sae.cfg.d_sae).clone()
        shared = {name: getattr(sae.cfg, name) for name in SAEConfig.model_fields if name != "architecture"}
        return type(sae).from_state(SAEConfig(architecture="jumprelu", **shared), state)
