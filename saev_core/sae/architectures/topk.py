"""TopK (Gao et al. 2024, OpenAI): the k largest pre-activations per token, then ReLU (SAELens's
``TopK``), with unit-norm decoder rows and the AuxK loss over dead latents. Exported as SAELens's
"topk". BatchTopK and Matryoshka BatchTopK build on it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from saev_core.configs import SAEConfig
from saev_core.sae.architectures.base import Architecture, Encoded, register

if TYPE_CHECKING:
    from torch import Tensor

    from saev_core.sae.model import SAE
    from saev_core.sae.sparse import ActiveLatents

_TINY = 1e-12


class TopKSAEConfig(SAEConfig):
    """``aux_k`` defaults to d_in // 2 (capped at d_sae): the heuristic of OpenAI's "Scaling and
    evaluating sparse autoencoders" (App. B.1), also used by sparsify and SAELens.
    ``aux_coefficient`` defaults to 1, not OpenAI's 1/32: at the default lr, 1/32 left twice the
    dead latents on the demo's validation world, at the same FVU (bench/RESULTS.md, "A healthy SAE
    by default")."""

    architecture: Literal["topk"] = "topk"
    k: int = Field(32, gt=0, description="active latents per token")
    aux_k: int | None = Field(None, gt=0, description="dead latents per token in the AuxK loss; default d_in / 2 (OpenAI's)")
    aux_coefficient: float = Field(1.0, ge=0, allow_inf_nan=False, description="weight of the AuxK loss over dead latents; 1, not "
                                   "OpenAI's 1/32: see saev_core.sae.architectures.topk")

    @model_validator(mode="after")
    def _sizes(self):
        if self.d_sae is not None and self.k > self.d_sae:
            raise ValueError(f"k={self.k} exceeds d_sae={self.d_sae}: lower k or raise d_sae")
        if self.aux_k is None and self.d_in is not None and self.d_sae is not None:
            self.aux_k = max(1, min(self.d_in // 2, self.d_sae))
        return self


@register
class TopK(Architecture):
    config = TopKSAEConfig
    saelens = "topk"

    def activate(self, sae: SAE, pre: Tensor) -> Tensor:
        values, idx = pre.topk(sae.cfg.k, dim=-1, sorted=False)
        return pre.new_zeros(pre.shape).scatter(-1, idx, values.relu())

    def select(self, sae: SAE, pre: Tensor) -> tuple[Tensor, Tensor, Tensor, int | None]:
        """(values, rows, cols, entries per row or None) of the kept latents, from pre without gradient."""
        from saev_core.sae.sparse import per_token_entries

        values, idx = pre.topk(sae.cfg.k, dim=-1, sorted=False)
        rows, cols = per_token_entries(idx)
        return values.reshape(-1), rows, cols, sae.cfg.k

    def encode_train(self, sae: SAE, sx: Tensor) -> Encoded:
        """The kept latents and the AuxK selection (None when nothing is dead), with a sparse backward.

        One dense matmul ranks the latents (without gradient); ``sampled_pre`` then makes the kept
        entries differentiable, so the encoder gradient is computed at those entries only. AuxK
        (OpenAI 2024, App. A.2) keeps the aux_k largest dead pre-activations per token, of which
        only the positive ones: its work follows the dead latents that come near firing, and is
        none on steps where no latent is dead.
        """
        import torch

        from saev_core.sae.sparse import ActiveLatents, per_token_entries, sampled_pre

        n, d_sae, cfg = sx.shape[0], sae.cfg.d_sae, sae.cfg
        with torch.no_grad():
            pre = sae.pre(sx)
            values, rows, cols, per_row = self.select(sae, pre)
            dead = sae.dead_mask().nonzero().squeeze(1)
            n_aux = min(cfg.aux_k or 0, dead.numel()) if cfg.aux_coefficient > 0 else 0
            n_main = rows.numel()
            if n_aux:
                aux_values, top = pre.index_select(1, dead).topk(n_aux, dim=-1, sorted=False)
                aux_rows, aux_cols = per_token_entries(dead[top])
                acting = aux_values.reshape(-1) > 0  # the ReLU zeroes the rest: no reconstruction, no gradient, no work
                rows, cols = torch.cat([rows, aux_rows[acting]]), torch.cat([cols, aux_cols[acting]])
                values = torch.cat([values, aux_values.reshape(-1)[acting]])
        b_dec = sae.b_dec if cfg.apply_b_dec_to_input else None
        values = sampled_pre(sx, b_dec, sae.W_enc, sae.b_enc, values, rows, cols).relu()
        acts = ActiveLatents.from_entries(rows[:n_main], cols[:n_main], values[:n_main], n, d_sae, per_row)
        aux = None if rows.numel() == n_main else ActiveLatents.from_entries(rows[n_main:], cols[n_main:], values[n_main:], n, d_sae)
        return Encoded(acts, aux=aux)

    def loss(self, sae: SAE, enc: Encoded, fit: Tensor, sx: Tensor, err: Tensor, lam: float) -> tuple[Tensor, Tensor, Tensor]:
        """loss = fit + aux_coefficient * aux: SAELens's objective (with gradient clipping in the
        trainer it reached a lower FVU than the normalised MSE of OpenAI/sparsify on the demo world,
        bench/RESULTS.md)."""
        aux = self.aux_loss(sae, enc.aux, err.detach())
        return fit + sae.cfg.aux_coefficient * aux, fit.new_zeros(()), aux

    @staticmethod
    def aux_loss(sae: SAE, aux_acts: ActiveLatents | None, e: Tensor) -> Tensor:
        """AuxK: the dead latents' top-aux_k reconstruct the residual e; mean_batch ||e - e_hat||^2.

        e_hat = aux_acts @ W_dec (no b_dec: it is already in the residual). In the same units as the
        main squared-error term, as in SAELens. Zero when nothing is dead.
        """
        if aux_acts is None:
            return e.new_zeros(())
        return (e - aux_acts.decode(sae.W_dec)).pow(2).sum(dim=-1).mean()

    def prepare_step(self, sae: SAE) -> None:
        """Drop the gradient component along each decoder row (sparsify), so the step keeps norms ~1."""
        grad, w = sae.W_dec.grad, sae.W_dec
        if grad is None:
            raise RuntimeError("W_dec has no gradient: call prepare_step_() after loss.backward()")
        grad -= (grad * w).sum(dim=1, keepdim=True) / w.pow(2).sum(dim=1, keepdim=True).clamp_min(_TINY) * w

    def project(self, sae: SAE) -> None:
        """Unit-norm decoder rows."""
        sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True).clamp_min(_TINY))

    def to_saelens(self, cfg: TopKSAEConfig, tensors: dict[str, Tensor]) -> tuple[dict[str, Any], dict[str, Tensor]]:
        return {"k": cfg.k, "rescale_acts_by_decoder_norm": False}, tensors

    def from_saelens(self, raw: dict[str, Any], tensors: dict[str, Tensor]) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """k from cfg.json (SAELens < 6 kept it in activation_fn_kwargs); a TopK SAE saved with
        rescale_acts_by_decoder_norm gets the decoder norms folded in, which gives the same activations."""
        k = raw.get("k") or (raw.get("activation_fn_kwargs") or {}).get("k")
        if raw.get("rescale_acts_by_decoder_norm"):
            norms = tensors["W_dec"].norm(dim=1)
            tensors = {**tensors, "W_dec": tensors["W_dec"] / norms[:, None], "W_enc": tensors["W_enc"] * norms,
                       "b_enc": tensors["b_enc"] * norms}
        return {"k": k}, tensors
