"""The SAE core shared by every architecture: weights, input scale, encode/decode, the loss's
reconstruction terms and the dead-latent statistics. What differs between architectures (latent
selection, penalty, projection, inference form, SAELens names) lives in one module each under
``saev_core.sae.architectures``, which ``SAE`` dispatches to.

Pure torch, no I/O (checkpoints live in ``saev_core.sae.checkpoint``). Conventions, chosen so that a
checkpoint written by ``save_sae`` is computed identically by SAELens (v6):

- Input scale s (METHOD.md sec. 2): the SAE works on s*x internally; ``decode`` returns original
  units. ``fold_input_scale`` absorbs s into the weights, which is the form that is saved.
- b_dec subtraction: ``apply_b_dec_to_input`` (SAELens's flag of the same name). Default False for
  relu (the paper: f = ReLU(s*x @ W_enc + b_enc)), True for the others
  (OpenAI/sparsify: f = act((s*x - b_dec) @ W_enc + b_enc)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor, nn

from saev_core.configs import SAEConfig
from saev_core.sae.architectures import get as architecture
from saev_core.sae.sparse import ActiveLatents

_TINY = 1e-12


@dataclass
class SAEOutput:
    """One forward pass. Loss terms are in scaled units (s*x), as the paper measures them."""

    acts: ActiveLatents | Tensor  # the kept latents (topk/batchtopk) or the dense activations (others)
    x_hat: Tensor  # reconstruction in the input's original units [batch, d_in]
    loss: Tensor  # what to backpropagate
    mse: Tensor  # sum_d (s*x - x_hat_s)^2, mean over batch
    fvu: Tensor  # fraction of variance unexplained = sum ||e||^2 / sum ||s*x - mean(s*x)||^2
    l1: Tensor  # mean_batch sum_i f_i ||W_dec[i]|| (the L1-penalised architectures; 0 otherwise)
    # (jumprelu's L0 penalty is l0 with a pseudo-gradient; Matryoshka's mse is the full dictionary's,
    # and loss sums every prefix's)
    aux: Tensor  # AuxK squared error of the residual, before aux_coefficient (topk/batchtopk; 0 otherwise)
    l0: Tensor  # mean number of active latents per token (no grad)

    @property
    def f(self) -> Tensor:
        """Latent activations [batch, d_sae], built dense on demand for topk/batchtopk."""
        return self.acts.dense() if isinstance(self.acts, ActiveLatents) else self.acts


def sparsity_coefficient_at(step: int, total_steps: int, cfg: SAEConfig) -> float:
    """lambda_t: linear warm-up from 0 to lambda over the first l1_warmup_frac of steps (METHOD.md sec. 2).

    lambda is the architecture's sparsity coefficient (relu's and gated's l1_coefficient,
    jumprelu's l0_coefficient: Gemma Scope warms it up too), 0 for those without a penalty.
    """
    if total_steps <= 0 or step < 0:
        raise ValueError(f"need step >= 0 and total_steps > 0, got step={step}, total_steps={total_steps}")
    lam, warmup_frac = architecture(cfg.architecture).sparsity(cfg)
    warmup = warmup_frac * total_steps
    if warmup == 0:
        return lam
    return lam * min(1.0, step / warmup)


def estimate_input_scale(batches: Iterable[Tensor]) -> float:
    """s = sqrt(d_in) / mean ||x|| over all rows of the given [n, d_in] tensors (METHOD.md sec. 2)."""
    total, count, d_in = 0.0, 0, None
    for batch in batches:
        if batch.ndim != 2 or (d_in is not None and batch.shape[1] != d_in):
            raise ValueError(f"expected [n, d_in] tensors of one width, got shape {tuple(batch.shape)}")
        d_in = batch.shape[1]
        total += batch.double().norm(dim=1).sum().item()
        count += batch.shape[0]
    if count == 0 or total == 0:
        raise ValueError("cannot estimate the input scale: no rows, or all rows are zero")
    return math.sqrt(d_in) / (total / count)


def geometric_median(points: Tensor, n_iter: int = 100, tol: float = 1e-6) -> Tensor:
    """Weiszfeld's algorithm; the b_dec init of OpenAI's TopK SAE (robust to outlier tokens)."""
    y = points.mean(dim=0)
    for _ in range(n_iter):
        w = 1.0 / (points - y).norm(dim=1).clamp_min(_TINY)
        y_next = (w[:, None] * points).sum(dim=0) / w.sum()
        done = (y_next - y).norm() <= tol * y.norm().clamp_min(1.0)
        y = y_next
        if done:
            break
    return y


class SAE(nn.Module):
    """x -> f -> x_hat with W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in],
    plus the tensors its architecture adds (jumprelu's ``threshold``, gated's ``r_mag`` and ``b_mag``).

    Buffers: ``tokens_since_fired`` [d_sae] (updated in training mode; drives AuxK and the dead
    fraction), and the architecture's (BatchTopK's ``running_threshold``). ``state_dict()``
    therefore holds everything needed to resume.
    """

    tokens_since_fired: Tensor

    def __init__(self, cfg: SAEConfig, device: torch.device | str | None = None):
        super().__init__()
        if cfg.d_in is None or cfg.d_sae is None:
            raise ValueError(f"an SAE needs d_in and d_sae, got d_in={cfg.d_in}, d_sae={cfg.d_sae}")
        self.cfg, self.arch = cfg, architecture(cfg.architecture)
        d_in, d_sae = cfg.d_in, cfg.d_sae
        self.W_enc = nn.Parameter(torch.empty(d_in, d_sae, device=device))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, device=device))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_in, device=device))
        self.b_dec = nn.Parameter(torch.zeros(d_in, device=device))
        self.register_buffer("tokens_since_fired", torch.zeros(d_sae, dtype=torch.long, device=device))
        for name, (shape, fill) in self.arch.parameters(cfg).items():
            self.register_parameter(name, nn.Parameter(torch.full(shape, fill, device=device)))
        for name, (shape, fill) in self.arch.buffers(cfg).items():
            self.register_buffer(name, torch.full(shape, fill, device=device))
        if self.W_dec.device.type != "meta":
            self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """Random decoder directions of the architecture's norm (relu: 0.1, METHOD.md sec. 2; topk: 1); W_enc = W_dec^T.

        Drawn on the CPU from ``cfg.seed`` so the init is the same on every device.
        """
        g = torch.Generator().manual_seed(self.cfg.seed)
        w = torch.randn(self.cfg.d_sae, self.cfg.d_in, generator=g)
        w *= self.arch.decoder_norm / w.norm(dim=1, keepdim=True)
        self.W_dec.copy_(w)
        self.W_enc.copy_(w.T)

    @classmethod
    def from_state(cls, cfg: SAEConfig, state: dict[str, Tensor]) -> SAE:
        """Build without a random init (cheap for large SAEs): allocate on meta, then adopt ``state``."""
        sae = cls(cfg, device="meta")
        sae.load_state_dict(state, assign=True)
        return sae

    # ---- forward pieces -------------------------------------------------------------------

    def _scaled(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.cfg.d_in:
            raise ValueError(f"input has width {x.shape[-1]} but this SAE has d_in={self.cfg.d_in}: "
                             "the activations come from a different layer/model than the SAE was trained on")
        return x.to(self.W_enc.dtype) * self.cfg.input_scale

    def centered(self, sx: Tensor) -> Tensor:
        """s*x - b_dec if apply_b_dec_to_input, else s*x."""
        return sx - self.b_dec if self.cfg.apply_b_dec_to_input else sx

    def pre(self, sx: Tensor) -> Tensor:
        """pre = (s*x - b_dec) @ W_enc + b_enc, with b_dec subtracted only if apply_b_dec_to_input."""
        sx = self.centered(sx)
        if sx.ndim == 2:
            return torch.addmm(self.b_enc, sx, self.W_enc)
        return sx @ self.W_enc + self.b_enc

    def encode(self, x: Tensor) -> Tensor:
        """f = act((s*x - a*b_dec) @ W_enc + b_enc) for x [..., d_in] in original units, a = apply_b_dec_to_input.

        relu with a = 0 is METHOD.md sec. 2's f = ReLU(s*x @ W_enc + b_enc). batchtopk ranks over all
        leading dims together (the batch); use ``inference_form`` for per-token inference.
        """
        return self.arch.encode(self, self._scaled(x))

    def decode_scaled(self, f: ActiveLatents | Tensor) -> Tensor:
        """f @ W_dec + b_dec: the reconstruction in scaled units."""
        return f.decode(self.W_dec) + self.b_dec if isinstance(f, ActiveLatents) else f @ self.W_dec + self.b_dec

    def decode(self, f: Tensor) -> Tensor:
        """x_hat = (f @ W_dec + b_dec) / s: the reconstruction in original units (METHOD.md sec. 2)."""
        return (f @ self.W_dec + self.b_dec) / self.cfg.input_scale

    def forward(self, x: Tensor, sparsity_coefficient: float | None = None) -> SAEOutput:
        """Encode, decode and compute the loss for x [batch, d_in]: the squared error (or the
        architecture's reconstruction term: Matryoshka sums every prefix's) plus its penalty.

        ``sparsity_coefficient`` is lambda_t (``sparsity_coefficient_at``; default: the config's). In
        training mode, also updates the dead-latent counters and the architecture's statistics.
        """
        if x.ndim != 2:
            raise ValueError(f"forward expects [batch, d_in], got shape {tuple(x.shape)}: flatten leading dims first")
        sx = self._scaled(x)
        enc = self.arch.encode_train(self, sx)
        x_hat_s, fit = self.arch.reconstruct(self, enc.acts, sx)
        err = sx - x_hat_s
        sq = err.pow(2)
        mse = sq.sum(dim=-1).mean()  # squared error summed over d_in, mean over batch
        fvu = sq.sum() / (sx - sx.mean(dim=0)).pow(2).sum().clamp_min(_TINY)
        lam = self.arch.sparsity(self.cfg)[0] if sparsity_coefficient is None else sparsity_coefficient
        loss, l1, aux = self.arch.loss(self, enc, mse if fit is None else fit, sx, err, lam)
        acts = enc.acts
        if isinstance(acts, ActiveLatents):
            fired, l0 = acts.fired(), acts.l0()
        else:
            active = acts.detach() > 0
            fired, l0 = active.any(dim=0), active.sum(dim=-1).float().mean()
        if self.training:
            self._update_stats(sx.shape[0], fired, acts)
        return SAEOutput(acts=acts, x_hat=x_hat_s / self.cfg.input_scale, loss=loss, mse=mse, fvu=fvu, l1=l1, aux=aux, l0=l0)

    @torch.no_grad()
    def _update_stats(self, n_tokens: int, fired: Tensor, acts: ActiveLatents | Tensor) -> None:
        self.tokens_since_fired += n_tokens
        self.tokens_since_fired[fired] = 0
        self.arch.observe(self, acts)

    def dead_mask(self) -> Tensor:
        """Latents that have not fired in the last ``dead_window`` training tokens."""
        return self.tokens_since_fired >= self.cfg.window

    # ---- training-time maintenance --------------------------------------------------------

    @torch.no_grad()
    def prepare_step_(self) -> None:
        """The architecture's gradient surgery (topk-like: no step along the decoder rows); call after
        ``backward()`` and before ``optimizer.step()``."""
        self.arch.prepare_step(self)

    @torch.no_grad()
    def project_(self) -> None:
        """The constraints to restore after each optimizer step (topk-like: unit-norm decoder rows;
        jumprelu: non-negative thresholds)."""
        self.arch.project(self)

    @torch.no_grad()
    def init_b_dec_(self, sample: Tensor) -> None:
        """b_dec = geometric median of s*sample [n, d_in] (OpenAI's TopK init; the paper's relu keeps 0)."""
        if sample.ndim != 2 or sample.shape[0] == 0:
            raise ValueError(f"init_b_dec_ expects a non-empty [n, d_in] sample, got shape {tuple(sample.shape)}")
        self.b_dec.copy_(geometric_median(self._scaled(sample)))

    # ---- conversions ------------------------------------------------------------------------

    def state_copy(self) -> dict[str, Tensor]:
        return {name: t.detach().clone() for name, t in self.state_dict().items()}

    def inference_form(self) -> SAE:
        """The SAE to encode tokens one at a time with, as it is exported: (Matryoshka) BatchTopK as
        JumpReLU with its running threshold, others as they are."""
        return self.arch.inference_form(self)

    def fold_input_scale(self) -> SAE:
        """An equivalent SAE with input_scale = 1, for plain (SAELens-style) use on unscaled x.

        With a = apply_b_dec_to_input:
          pre = (s*x - a*b_dec) @ W_enc + b_enc = (x - a*b_dec/s) @ (s*W_enc) + b_enc
          x_hat = (f @ W_dec + b_dec) / s = f @ (W_dec/s) + b_dec/s
        so W_enc' = s*W_enc, W_dec' = W_dec/s, b_dec' = b_dec/s; b_enc and thresholds (which compare
        pre, and gated's magnitude path, which rescales the same product) are unchanged. Same algebra as SAELens's fold_activation_norm_scaling_factor. The result
        is for inference: its decoder norms are divided by s.
        """
        s = self.cfg.input_scale
        state = self.state_copy()
        state["W_enc"] = state["W_enc"] * s
        state["W_dec"] = state["W_dec"] / s
        state["b_dec"] = state["b_dec"] / s
        cfg = SAEConfig.model_validate({**self.cfg.model_dump(), "input_scale": 1.0})
        return type(self).from_state(cfg, state)
