"""Optimizers for SAE training and the learning-rate rule that picks their default step size."""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import Tensor

from saev_core.configs import Optimizer
from saev_core.sae.architectures import get

# lr = BASE_LR[optimizer] * (REF_D_SAE / d_sae)^(1/2) * (batch_size / REF_BATCH)^(1/4)
#      * (REF_TOKENS / max(total_tokens, REF_TOKENS))^(1/2), for TopK-like SAEs. The exponents
# were chosen by bench/bench_train.py's sweep on a validation split (never on the reported test
# rows; bench/RESULTS.md, "Learning-rate rule"). Adam's base is an eighth of that sweep's FVU
# optimum (3.5e-3): at the sweep's step size most latents died over a run of ~1,000 steps
# (bench/dead_latents.py on the validation world; RESULTS, "A healthy SAE by default"). That base
# was chosen at REF_TOKENS; a longer run takes a step smaller by the square root of how much
# longer (chosen on validation worlds 1000 and 1001, RESULTS, issue 30).
REF_D_SAE, REF_BATCH, REF_TOKENS = 2**14, 4096, 1_000_000
BASE_LR: dict[str, float] = {"adam": 3.5e-3 / 8, "signum": 1e-3}


def default_lr(optimizer: Optimizer, architecture: str, d_sae: int, batch_size: int, total_tokens: int) -> float:
    """The default step size: the architecture's own (the paper's 5e-5 for relu with Adam), else the
    d_sae/batch-size/budget rule above.

    A wider dictionary gets a smaller step (each latent's gradient is estimated from fewer
    tokens: sparsify and OpenAI scale by 1/sqrt(d_sae)), and a larger batch a larger one (its
    gradient is less noisy). At a fixed token budget the sweep's optimum grew about as the
    fourth root of the batch size, flatter than the square-root rule. A budget past REF_TOKENS
    gets a step smaller by the square root of its length: at a fixed step, latents keep dying
    all through a run, and a smaller step over more tokens both keeps more alive and
    reconstructs better (the demo SAE: 4M tokens at half the step beat 1M at the full one on both
    validation worlds).
    """
    if (fixed := get(architecture).fixed_lr(optimizer)) is not None:
        return fixed
    budget = math.sqrt(REF_TOKENS / max(total_tokens, REF_TOKENS))
    return BASE_LR[optimizer] * math.sqrt(REF_D_SAE / d_sae) * (batch_size / REF_BATCH) ** 0.25 * budget


class Signum(torch.optim.Optimizer):
    """Sign of the momentum (Bernstein et al. 2018): m = beta*m + (1-beta)*g; p -= lr * sign(m).

    Steepest descent in the max-norm: every weight moves by exactly lr, whatever its gradient's
    scale, which suits an SAE whose latents see very different gradient magnitudes. One buffer per
    parameter (Adam keeps two), and gradient clipping has no effect on it.
    """

    def __init__(self, params: Iterable[Tensor], lr: float, momentum: float = 0.95):
        if lr <= 0 or not 0 <= momentum < 1:
            raise ValueError(f"Signum needs lr > 0 and 0 <= momentum < 1, got lr={lr}, momentum={momentum}")
        super().__init__(params, {"lr": lr, "momentum": momentum})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                bufs.append(state["momentum_buffer"])
            torch._foreach_lerp_(bufs, [p.grad for p in params], 1 - group["momentum"])
            torch._foreach_add_(params, torch._foreach_sign(bufs), alpha=-group["lr"])


def make_optimizer(name: Optimizer, params: Iterable[Tensor], lr: float, betas: tuple[float, float]) -> torch.optim.Optimizer:
    """Adam(lr, betas), or Signum(lr) with betas[0] as its momentum."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas)
    return Signum(params, lr=lr, momentum=betas[0])
