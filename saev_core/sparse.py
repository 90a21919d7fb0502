"""Sparse latent activations for training: index lists instead of dense [batch, d_sae] tensors.

A TopK-style SAE keeps k of d_sae latents per token, so after the one dense encoder matmul that
ranks them, every other product only needs the kept entries:

- decode: ``embedding_bag`` reads only the kept rows of W_dec (k/d_sae of the dense work);
- encoder backward: the gradient is nonzero only at the kept entries, so dL/dW_enc = x^T G with G
  a sparse [batch, d_sae] matrix: one sparse-dense matmul instead of a dense one, and dL/db_dec
  (through ``x - b_dec``) is -W_enc @ (column sums of G), a matrix-vector product.

``sampled_pre`` is that encoder piece as an autograd function; ``ActiveLatents`` carries the kept
entries (row, latent, value) with what the decoder and the dead-latent counters need.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class ActiveLatents:
    """The kept latents of a batch: ``values[n]`` is latent ``cols[n]`` of token ``rows[n]``.

    Entries are grouped by token in ascending order (``offsets[b]`` is where token b starts), which
    is the layout ``embedding_bag`` takes. ``values`` carries the gradient; values of 0 (a ReLU'd
    kept entry) are inactive.
    """

    rows: Tensor
    cols: Tensor
    values: Tensor
    offsets: Tensor
    n_rows: int
    n_latents: int

    @classmethod
    def from_entries(cls, rows: Tensor, cols: Tensor, values: Tensor, n_rows: int, n_latents: int) -> ActiveLatents:
        """From entries already sorted by row (``per_token_entries``, ``batch_entries``)."""
        counts = torch.bincount(rows, minlength=n_rows)
        return cls(rows, cols, values, torch.cumsum(counts, 0) - counts, n_rows, n_latents)

    def decode(self, weight: Tensor) -> Tensor:
        """sum_n values[n] * weight[cols[n]] per token: f @ W_dec without building f."""
        return nn.functional.embedding_bag(self.cols, weight, self.offsets, mode="sum", per_sample_weights=self.values)

    def active(self) -> Tensor:
        return self.values.detach() > 0

    def fired(self) -> Tensor:
        """[n_latents] bool: latents active on at least one token of the batch."""
        out = torch.zeros(self.n_latents, dtype=torch.bool, device=self.cols.device)
        out[self.cols[self.active()]] = True
        return out

    def l0(self) -> Tensor:
        return self.active().sum().float() / max(self.n_rows, 1)

    def dense(self) -> Tensor:
        """The [n_rows, n_latents] activations (for inspection and tests; training never builds it)."""
        out = self.values.new_zeros(self.n_rows, self.n_latents)
        return out.index_put((self.rows, self.cols), self.values, accumulate=True)


def per_token_entries(idx: Tensor) -> tuple[Tensor, Tensor]:
    """(rows, cols) of [batch, k] per-token indices, as ``topk`` returns them."""
    b, k = idx.shape
    return torch.arange(b, device=idx.device).repeat_interleave(k), idx.reshape(-1)


def batch_entries(flat_idx: Tensor, n_latents: int) -> tuple[Tensor, Tensor]:
    """(rows, cols), sorted by row, of indices into a flattened [batch, n_latents] tensor (BatchTopK)."""
    flat_idx = flat_idx.sort().values
    return flat_idx // n_latents, flat_idx % n_latents


class _SampledPre(torch.autograd.Function):
    """pre[rows, cols] of pre = (x - b_dec) @ W_enc + b_enc, given pre, with a sparse backward."""

    @staticmethod
    def forward(ctx, x, b_dec, W_enc, b_enc, pre, rows, cols):  # noqa: N803 (weight names as in SAE)
        ctx.save_for_backward(x, b_dec, W_enc, rows, cols)
        ctx.subtract_b_dec = b_dec.numel() > 0
        return pre[rows, cols]

    @staticmethod
    def backward(ctx, grad):
        x, b_dec, W_enc, rows, cols = ctx.saved_tensors
        d_sae = W_enc.shape[1]
        need_x, need_b_dec, need_w, need_b = ctx.needs_input_grad[:4]
        grad_x = grad_b_dec = grad_w = grad_b = None
        col_sums = None
        if need_b or need_b_dec:
            col_sums = grad.new_zeros(d_sae).index_add_(0, cols, grad)
            grad_b = col_sums if need_b else None
        if need_w:
            x_in = x - b_dec if ctx.subtract_b_dec else x
            # G^T @ x_in with G^T [d_sae, batch] sparse: dL/dW_enc^T, only at the kept entries.
            g_t = torch.sparse_coo_tensor(torch.stack([cols, rows]), grad, (d_sae, x.shape[0]), check_invariants=False)
            grad_w = torch.sparse.mm(g_t, x_in).T
        if need_x:
            g = torch.sparse_coo_tensor(torch.stack([rows, cols]), grad, (x.shape[0], d_sae), check_invariants=False)
            grad_x = torch.sparse.mm(g, W_enc.T)
        if need_b_dec and ctx.subtract_b_dec:
            grad_b_dec = -(W_enc @ col_sums)
        return grad_x, grad_b_dec, grad_w, grad_b, None, None, None


def sampled_pre(x: Tensor, b_dec: Tensor | None, W_enc: Tensor, b_enc: Tensor, pre: Tensor,  # noqa: N803
                rows: Tensor, cols: Tensor) -> Tensor:
    """The entries (rows, cols) of ``pre = (x - b_dec) @ W_enc + b_enc``, differentiable in all four inputs.

    ``pre`` is that product, computed by the caller without gradient (it needs all of it to choose
    the entries). The backward costs one sparse-dense matmul with len(rows) nonzeros instead of
    the two dense [batch, d_in] x [d_in, d_sae] products autograd would run. Repeated (row, col)
    pairs are allowed; their gradients add. ``b_dec=None`` means no subtraction.
    """
    empty = W_enc.new_empty(0)
    return _SampledPre.apply(x, empty if b_dec is None else b_dec, W_enc, b_enc, pre, rows, cols)
