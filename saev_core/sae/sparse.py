"""Sparse latent activations for training: index lists instead of dense [batch, d_sae] tensors.

A TopK-style SAE keeps k of d_sae latents per token, so after the one dense encoder matmul that
ranks them, every other product only needs the kept entries:

- decode: ``embedding_bag`` reads only the kept rows of W_dec (k/d_sae of the dense work), and
  its weight gradient is one CSR sparse-dense matmul;
- encoder backward: the gradient is nonzero only at the kept entries, so dL/dW_enc = x^T G with G
  a sparse [batch, d_sae] matrix: one sparse-dense matmul instead of a dense one, and dL/db_dec
  (through ``x - b_dec``) is -W_enc @ (column sums of G), a matrix-vector product.

``sampled_pre`` is that encoder piece as an autograd function; ``ActiveLatents`` carries the kept
entries (row, latent, value) with what the decoder and the dead-latent counters need. Both are
checked against the dense formulas in tests/test_sae.py.
"""

from __future__ import annotations

import warnings
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
    def from_entries(cls, rows: Tensor, cols: Tensor, values: Tensor, n_rows: int, n_latents: int,
                     per_row: int | None = None) -> ActiveLatents:
        """From entries already sorted by row (``per_token_entries``, ``batch_entries``); ``per_row``
        when every row has that many (TopK)."""
        if per_row is not None:
            offsets = torch.arange(0, n_rows * per_row, per_row, device=rows.device)
        else:
            counts = torch.bincount(rows, minlength=n_rows)
            offsets = torch.cumsum(counts, 0) - counts
        return cls(rows, cols, values, offsets, n_rows, n_latents)

    def decode(self, weight: Tensor) -> Tensor:
        """sum_n values[n] * weight[cols[n]] per token: f @ W_dec without building f."""
        return _SparseDecode.apply(self.values, weight, self.rows, self.cols, self.offsets)

    def active(self) -> Tensor:
        return self.values.detach() > 0

    def fired(self) -> Tensor:
        """[n_latents] bool: latents active on at least one token of the batch."""
        return torch.bincount(self.cols, weights=self.active().to(self.values.dtype), minlength=self.n_latents) > 0

    def l0(self) -> Tensor:
        return self.active().sum().float() / max(self.n_rows, 1)

    def dense(self) -> Tensor:
        """The [n_rows, n_latents] activations (for inspection and tests; training never builds it)."""
        out = self.values.new_zeros(self.n_rows, self.n_latents)
        return out.index_put((self.rows, self.cols), self.values, accumulate=True)


class _SparseDecode(torch.autograd.Function):
    """``embedding_bag`` (sum, per-sample weights) with a faster weight gradient.

    Autograd's ``embedding_bag`` backward accumulates the weight gradient entry by entry; here it
    is one CSR sparse-dense matmul, A^T @ grad with A the [batch, n_latents] activations, about
    twice as fast on a CPU at TopK sizes. The values' gradient is embedding_bag's own kernel.
    """

    @staticmethod
    def forward(ctx, values, weight, rows, cols, offsets):
        ctx.save_for_backward(values, weight, rows, cols, offsets)
        return nn.functional.embedding_bag(cols, weight, offsets, mode="sum", per_sample_weights=values)

    @staticmethod
    def backward(ctx, grad):
        values, weight, rows, cols, offsets = ctx.saved_tensors
        grad = grad.contiguous()
        grad_values = grad_weight = None
        if ctx.needs_input_grad[0]:
            # offset2bag (the bag of each entry) is ``rows``; mode 0 = sum, no padding index
            grad_values = torch.ops.aten._embedding_bag_per_sample_weights_backward(grad, weight, cols, offsets, rows, 0, -1)
        if ctx.needs_input_grad[1]:
            n_latents = weight.shape[0]
            order = cols.argsort()
            crow = torch.zeros(n_latents + 1, dtype=torch.long, device=cols.device)
            crow[1:] = torch.bincount(cols, minlength=n_latents).cumsum(0)
            with warnings.catch_warnings():  # "CSR support is in beta": the product used here is not
                warnings.simplefilter("ignore")
                a_t = torch.sparse_csr_tensor(crow, rows[order], values.detach()[order], (n_latents, grad.shape[0]),
                                              check_invariants=False)
            grad_weight = a_t @ grad
        return grad_values, grad_weight, None, None, None


def per_token_entries(idx: Tensor) -> tuple[Tensor, Tensor]:
    """(rows, cols) of [batch, k] per-token indices, as ``topk`` returns them."""
    b, k = idx.shape
    return torch.arange(b, device=idx.device)[:, None].expand(b, k).reshape(-1), idx.reshape(-1)


def batch_entries(values: Tensor, flat_idx: Tensor, n_latents: int) -> tuple[Tensor, Tensor, Tensor]:
    """(values, rows, cols), sorted by row, of entries of a flattened [batch, n_latents] tensor (BatchTopK)."""
    flat_idx, order = flat_idx.sort()
    return values[order], flat_idx // n_latents, flat_idx % n_latents


class _SampledPre(torch.autograd.Function):
    """pre[rows, cols] of pre = (x - b_dec) @ W_enc + b_enc, given those values, with a sparse backward."""

    @staticmethod
    def forward(ctx, x, b_dec, W_enc, b_enc, values, rows, cols):  # noqa: N803 (weight names as in SAE)
        ctx.save_for_backward(x, b_dec, W_enc, rows, cols)
        ctx.subtract_b_dec = b_dec.numel() > 0
        return values.clone()

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


def sampled_pre(x: Tensor, b_dec: Tensor | None, W_enc: Tensor, b_enc: Tensor, values: Tensor,  # noqa: N803
                rows: Tensor, cols: Tensor) -> Tensor:
    """The entries (rows, cols) of ``pre = (x - b_dec) @ W_enc + b_enc``, differentiable in all four inputs.

    ``values`` are those entries, computed by the caller without gradient (it needs all of pre to
    choose them; ``topk`` returns them with the indices). The backward costs one sparse-dense matmul with len(rows) nonzeros instead of
    the two dense [batch, d_in] x [d_in, d_sae] products autograd would run. Repeated (row, col)
    pairs are allowed; their gradients add. ``b_dec=None`` means no subtraction.
    """
    empty = W_enc.new_empty(0)
    return _SampledPre.apply(x, empty if b_dec is None else b_dec, W_enc, b_enc, values, rows, cols)
