"""JumpReLU's training functions: straight-through estimators with a kernel-density pseudo-gradient.

Rajamanoharan et al. 2024 ("Jumping Ahead"), the recipe Gemma Scope trained with. For pre-activation
z, threshold theta > 0, bandwidth eps and the rectangle kernel K(u) = 1{|u| < 1/2}:

    JumpReLU(z) = z * H(z - theta)        d/dz = H(z - theta)    d/dtheta := -(theta / eps) K((z - theta) / eps)
    H(z - theta)                          d/dz = 0               d/dtheta := -(1 / eps) K((z - theta) / eps)

The true derivatives with respect to theta are 0 almost everywhere; these estimate the derivative
of the expected loss (a kernel density estimate of the pre-activations at the threshold). The
threshold gradient is summed over the batch, as for any parameter broadcast over it.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _kernel(z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
    """K((z - theta) / eps) / eps with the rectangle kernel."""
    return ((z - theta).abs() < bandwidth / 2).to(z.dtype) / bandwidth


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return z * (z > theta)

    @staticmethod
    def backward(ctx, grad: Tensor):
        z, theta = ctx.saved_tensors
        d_theta = -(theta * _kernel(z, theta, ctx.bandwidth) * grad).sum(dim=0)
        return grad * (z > theta), d_theta, None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        z, theta = ctx.saved_tensors
        return None, -(_kernel(z, theta, ctx.bandwidth) * grad).sum(dim=0), None


def jumprelu(z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
    """z * H(z - theta) for z [batch, d_sae], theta [d_sae], with the pseudo-gradient to theta above."""
    return _JumpReLU.apply(z, theta, bandwidth)


def step_l0(z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
    """Per-token L0 = sum_i H(z_i - theta_i) [batch]: the L0 penalty, differentiable in theta only."""
    return _Step.apply(z, theta, bandwidth).sum(dim=-1)
