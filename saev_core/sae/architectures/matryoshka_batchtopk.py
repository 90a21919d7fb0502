"""Matryoshka BatchTopK (Bussmann et al. 2025; Nabeshima 2024): BatchTopK whose nested prefixes
W_dec[:w_m] each reconstruct x on their own during training. It infers and exports as BatchTopK does."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from saev_core.sae.architectures.base import register
from saev_core.sae.architectures.batchtopk import BatchTopK, BatchTopKSAEConfig

if TYPE_CHECKING:
    from torch import Tensor

    from saev_core.sae.model import SAE
    from saev_core.sae.sparse import ActiveLatents


def check_matryoshka_widths(widths: list[int] | None, d_sae: int) -> list[int]:
    """Nested prefix widths ending at d_sae; None gives d_sae/16, d_sae/8, d_sae/4, d_sae/2, d_sae."""
    if widths is None:
        return sorted({max(1, d_sae >> i) for i in range(5)})
    widths = list(widths)
    if widths and widths[-1] < d_sae:
        widths.append(d_sae)
    if not widths or widths[0] < 1 or any(b <= a for a, b in zip(widths, widths[1:])) or widths[-1] != d_sae:
        raise ValueError(f"matryoshka_widths {widths} must increase strictly from >= 1 to d_sae={d_sae} "
                         f"(nested prefixes, e.g. [{max(1, d_sae // 8)}, {max(1, d_sae // 2)}, {d_sae}])")
    return widths


class MatryoshkaBatchTopKSAEConfig(BatchTopKSAEConfig):
    """``matryoshka_widths`` are the nested prefix widths w_1 < ... < w_M = d_sae (SAELens's convention;
    group m is latents w_{m-1}..w_m); default: halving from d_sae down to d_sae / 16."""

    architecture: Literal["matryoshka_batchtopk"] = "matryoshka_batchtopk"  # type: ignore[assignment]
    matryoshka_widths: list[int] | None = Field(None, description="matryoshka_batchtopk: nested prefix widths ending at d_sae "
                                                "(default: d_sae/16, d_sae/8, d_sae/4, d_sae/2, d_sae)")

    @model_validator(mode="after")
    def _widths(self):
        if self.d_sae is not None:
            self.matryoshka_widths = check_matryoshka_widths(self.matryoshka_widths, self.d_sae)
        return self


@register
class MatryoshkaBatchTopK(BatchTopK):
    config = MatryoshkaBatchTopKSAEConfig

    def reconstruct(self, sae: SAE, acts: ActiveLatents, sx: Tensor) -> tuple[Tensor, Tensor]:
        """The full reconstruction and sum_m mse_m over the nested prefixes [0, w_m), in place of the mse.

        Each group's latents are decoded once; prefix m's reconstruction is b_dec plus the running
        sum of groups 1..m, so the work is one decode of the kept entries however many levels.
        """
        import torch

        from saev_core.sae.sparse import ActiveLatents

        widths = torch.tensor(sae.cfg.matryoshka_widths, device=acts.cols.device)
        group = torch.bucketize(acts.cols, widths, right=True)
        recon, total = sae.b_dec.expand_as(sx), sx.new_zeros(())
        for g in range(len(widths)):
            sel = (group == g).nonzero().squeeze(1)
            part = ActiveLatents.from_entries(acts.rows[sel], acts.cols[sel], acts.values[sel], acts.n_rows, acts.n_latents)
            recon = recon + part.decode(sae.W_dec)
            total = total + (sx - recon).pow(2).sum(dim=-1).mean()
        return recon, total
