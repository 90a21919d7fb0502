"""Sparse autoencoders for SAE-V: the paper's ReLU SAE plus TopK, BatchTopK, Matryoshka BatchTopK and JumpReLU.

Pure torch, no I/O (checkpoints live in ``saev_core.sae.checkpoint``). Conventions, chosen so that a
checkpoint written by ``save_sae`` is computed identically by SAELens (v6):

- Input scale s (METHOD.md sec. 2): the SAE works on s*x internally; ``decode`` returns original
  units. ``fold_input_scale`` absorbs s into the weights, which is the form that is saved.
- b_dec subtraction: ``apply_b_dec_to_input`` (SAELens's flag of the same name). Default False for
  relu (the paper: f = ReLU(s*x @ W_enc + b_enc)), True for topk/batchtopk/jumprelu
  (OpenAI/sparsify: f = act((s*x - b_dec) @ W_enc + b_enc)).
- TopK: top k pre-activations per token, then ReLU (SAELens ``TopK``). BatchTopK: ReLU, then the
  k*B largest over the batch (SAELens ``BatchTopK``). JumpReLU: ReLU(pre) * (pre > threshold)
  (SAELens ``JumpReLUSAE.encode``; equals pre * (pre > threshold) for threshold >= 0).
- Matryoshka BatchTopK (Bussmann et al. 2025; Nabeshima 2024): BatchTopK whose nested prefixes
  W_dec[:w_m] each reconstruct x on their own during training; it infers and exports as BatchTopK.
- JumpReLU training (Rajamanoharan et al. 2024, the Gemma Scope recipe): per-latent thresholds
  trained through an L0 penalty with straight-through estimators (``saev_core.sae.jumprelu``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor, nn

from saev_core.configs import BATCH_TOPK, TOPK_LIKE, SAEConfig
from saev_core.sae.jumprelu import jumprelu, step_l0
from saev_core.sae.sparse import ActiveLatents, batch_entries, per_token_entries, sampled_pre

_TINY = 1e-12


@dataclass
class SAEOutput:
    """One forward pass. Loss terms are in scaled units (s*x), as the paper measures them."""

    acts: ActiveLatents | Tensor  # the kept latents (topk/batchtopk) or the dense activations (others)
    x_hat: Tensor  # reconstruction in the input's original units [batch, d_in]
    loss: Tensor  # what to backpropagate
    mse: Tensor  # sum_d (s*x - x_hat_s)^2, mean over batch
    fvu: Tensor  # fraction of variance unexplained = sum ||e||^2 / sum ||s*x - mean(s*x)||^2
    l1: Tensor  # mean_batch sum_i f_i ||W_dec[i]|| (relu; 0 otherwise)
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

    lambda is relu's l1_coefficient, or jumprelu's l0_coefficient (Gemma Scope warms it up too).
    """
    if total_steps <= 0 or step < 0:
        raise ValueError(f"need step >= 0 and total_steps > 0, got step={step}, total_steps={total_steps}")
    lam = cfg.l0_coefficient if cfg.architecture == "jumprelu" else cfg.l1_coefficient
    warmup = cfg.l1_warmup_frac * total_steps
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


def _topk(pre: Tensor, k: int) -> Tensor:
    values, idx = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter(-1, idx, values.relu())


def _batch_topk(pre: Tensor, k: int) -> Tensor:
    acts = pre.relu()
    flat = acts.flatten()
    values, idx = flat.topk(k * acts.shape[:-1].numel())
    return torch.zeros_like(flat).scatter(0, idx, values).view_as(acts)


class SAE(nn.Module):
    """x -> f -> x_hat with W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in].

    Buffers: ``tokens_since_fired`` [d_sae] (updated in training mode; drives AuxK and the dead
    fraction), ``running_threshold`` [] for (Matryoshka) BatchTopK (NaN until the first training
    step). A jumprelu SAE also has the parameter ``threshold`` [d_sae]. ``state_dict()`` therefore holds everything needed to resume.
    """

    tokens_since_fired: Tensor
    threshold: Tensor
    running_threshold: Tensor

    def __init__(self, cfg: SAEConfig, device: torch.device | str | None = None):
        super().__init__()
        self.cfg = cfg
        d_in, d_sae = cfg.d_in, cfg.d_sae
        self.W_enc = nn.Parameter(torch.empty(d_in, d_sae, device=device))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, device=device))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_in, device=device))
        self.b_dec = nn.Parameter(torch.zeros(d_in, device=device))
        self.register_buffer("tokens_since_fired", torch.zeros(d_sae, dtype=torch.long, device=device))
        if cfg.architecture == "jumprelu":  # trained through the L0 penalty's pseudo-gradient
            self.threshold = nn.Parameter(torch.full((d_sae,), cfg.jumprelu_init_threshold, device=device))
        if cfg.architecture in BATCH_TOPK:
            self.register_buffer("running_threshold", torch.full((), float("nan"), device=device))
        if self.W_dec.device.type != "meta":
            self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """Random decoder directions with norm 0.1 (relu, METHOD.md sec. 2) or 1 (others); W_enc = W_dec^T.

        Drawn on the CPU from ``cfg.seed`` so the init is the same on every device.
        """
        g = torch.Generator().manual_seed(self.cfg.seed)
        w = torch.randn(self.cfg.d_sae, self.cfg.d_in, generator=g)
        w *= (0.1 if self.cfg.architecture == "relu" else 1.0) / w.norm(dim=1, keepdim=True)
        self.W_dec.copy_(w)
        self.W_enc.copy_(w.T)

    @classmethod
    def _from_state(cls, cfg: SAEConfig, state: dict[str, Tensor]) -> SAE:
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

    def _pre(self, sx: Tensor) -> Tensor:
        """pre = (s*x - b_dec) @ W_enc + b_enc, with b_dec subtracted only if apply_b_dec_to_input."""
        if self.cfg.apply_b_dec_to_input:
            sx = sx - self.b_dec
        if sx.ndim == 2:
            return torch.addmm(self.b_enc, sx, self.W_enc)
        return sx @ self.W_enc + self.b_enc

    def _activate(self, pre: Tensor) -> Tensor:
        arch = self.cfg.architecture
        if arch == "relu":
            return pre.relu()  # f = ReLU(s*x @ W_enc + b_enc)  (METHOD.md sec. 2)
        if arch == "topk":
            return _topk(pre, self.cfg.k)
        if arch in BATCH_TOPK:
            return _batch_topk(pre, self.cfg.k)
        return pre.relu() * (pre > self.threshold)  # JumpReLU, SAELens form

    def encode(self, x: Tensor) -> Tensor:
        """f = act((s*x - a*b_dec) @ W_enc + b_enc) for x [..., d_in] in original units, a = apply_b_dec_to_input.

        relu with a = 0 is METHOD.md sec. 2's f = ReLU(s*x @ W_enc + b_enc). batchtopk ranks over all
        leading dims together (the batch); use ``to_jumprelu`` for per-token inference.
        """
        return self._activate(self._pre(self._scaled(x)))

    def decode(self, f: Tensor) -> Tensor:
        """x_hat = (f @ W_dec + b_dec) / s: the reconstruction in original units (METHOD.md sec. 2)."""
        return (f @ self.W_dec + self.b_dec) / self.cfg.input_scale

    def forward(self, x: Tensor, sparsity_coefficient: float | None = None) -> SAEOutput:
        """Encode, decode and compute the loss for x [batch, d_in].

        relu: loss = mse + lambda_t * l1, the paper's loss (pass lambda_t from
        ``sparsity_coefficient_at``; default cfg.l1_coefficient). topk/batchtopk: loss = mse +
        aux_coefficient * aux (SAELens's objective; with gradient clipping in the trainer it reached
        a lower FVU than the normalised MSE of OpenAI/sparsify on the demo world, see
        bench/RESULTS.md). Matryoshka: loss = sum_m mse_m + aux_coefficient * aux, mse_m the
        squared error of the reconstruction from latents [0, w_m) alone. jumprelu: loss = mse +
        lambda_t * L0 (default cfg.l0_coefficient), L0 = sum_i H(pre_i - theta_i) with Gemma
        Scope's pseudo-gradients. In training mode, also updates the dead-latent counters and the
        BatchTopK threshold.
        """
        if x.ndim != 2:
            raise ValueError(f"forward expects [batch, d_in], got shape {tuple(x.shape)}: flatten leading dims first")
        sx = self._scaled(x)
        arch = self.cfg.architecture
        aux_acts, prefix_mse = None, None
        if arch in TOPK_LIKE:
            acts, aux_acts = self._sparse_encode(sx)
            if arch == "matryoshka_batchtopk":
                x_hat_s, prefix_mse = self._matryoshka_decode(acts, sx)
            else:
                x_hat_s = acts.decode(self.W_dec) + self.b_dec
        elif arch == "jumprelu":
            pre = self._pre(sx)
            acts = jumprelu(pre, self.threshold, self.cfg.jumprelu_bandwidth)
            x_hat_s = acts @ self.W_dec + self.b_dec
        else:
            acts = self._activate(self._pre(sx))
            x_hat_s = acts @ self.W_dec + self.b_dec
        err = sx - x_hat_s
        sq = err.pow(2)
        mse = sq.sum(dim=-1).mean()  # squared error summed over d_in, mean over batch
        fvu = sq.sum() / (sx - sx.mean(dim=0)).pow(2).sum().clamp_min(_TINY)
        l1 = aux = mse.new_zeros(())
        if arch == "relu":
            # mean_batch sum_i f_i ||W_dec[i]||_2, summed over the batch first (same value, less work)
            l1 = (acts.sum(dim=0) * self.W_dec.norm(dim=1)).sum() / acts.shape[0]
            lam = self.cfg.l1_coefficient if sparsity_coefficient is None else sparsity_coefficient
            loss = mse + lam * l1
        elif arch in TOPK_LIKE:
            aux = self._aux_loss(aux_acts, err.detach())
            loss = (mse if prefix_mse is None else prefix_mse) + self.cfg.aux_coefficient * aux
        else:
            lam = self.cfg.l0_coefficient if sparsity_coefficient is None else sparsity_coefficient
            loss = mse + lam * step_l0(pre, self.threshold, self.cfg.jumprelu_bandwidth).mean()
        if isinstance(acts, ActiveLatents):
            fired, l0, lowest = acts.fired(), acts.l0(), None
            if arch in BATCH_TOPK:
                kept = acts.values.detach()[acts.active()]
                lowest = kept.min() if kept.numel() else kept.new_full((), float("inf"))
        else:
            active = acts.detach() > 0
            fired, l0 = active.any(dim=0), active.sum(dim=-1).float().mean()
            lowest = None
        if self.training:
            self._update_stats(sx.shape[0], fired, lowest)
        return SAEOutput(acts=acts, x_hat=x_hat_s / self.cfg.input_scale, loss=loss, mse=mse, fvu=fvu, l1=l1, aux=aux, l0=l0)

    def _sparse_encode(self, sx: Tensor) -> tuple[ActiveLatents, ActiveLatents | None]:
        """The kept latents and the AuxK selection (None when nothing is dead), with a sparse backward.

        One dense matmul ranks the latents (without gradient); ``sampled_pre`` then makes the kept
        entries differentiable, so the encoder gradient is computed at those entries only. TopK keeps
        the k largest pre-activations per token, BatchTopK the k*batch largest ReLU'd ones over the
        batch; AuxK (OpenAI 2024, App. A.2) the aux_k largest dead pre-activations per token, of
        which only the positive ones are kept: AuxK's work follows the dead latents that come near
        firing, and is none on steps where no latent is dead.
        """
        n, d_sae, k = sx.shape[0], self.cfg.d_sae, self.cfg.k
        with torch.no_grad():
            pre = self._pre(sx)
            if self.cfg.architecture == "topk":
                values, idx = pre.topk(k, dim=-1, sorted=False)
                rows, cols = per_token_entries(idx)
                values = values.reshape(-1)
            else:
                values, idx = pre.relu().flatten().topk(k * n, sorted=False)
                values, rows, cols = batch_entries(values, idx, d_sae)
            dead = self.dead_mask().nonzero().squeeze(1)
            n_aux = min(self.cfg.aux_k or 0, dead.numel()) if self.cfg.aux_coefficient > 0 else 0
            n_main = rows.numel()
            if n_aux:
                aux_values, top = pre.index_select(1, dead).topk(n_aux, dim=-1, sorted=False)
                aux_rows, aux_cols = per_token_entries(dead[top])
                acting = aux_values.reshape(-1) > 0  # the ReLU zeroes the rest: no reconstruction, no gradient, no work
                rows, cols = torch.cat([rows, aux_rows[acting]]), torch.cat([cols, aux_cols[acting]])
                values = torch.cat([values, aux_values.reshape(-1)[acting]])
        b_dec = self.b_dec if self.cfg.apply_b_dec_to_input else None
        values = sampled_pre(sx, b_dec, self.W_enc, self.b_enc, values, rows, cols).relu()
        per_row = k if self.cfg.architecture == "topk" else None
        acts = ActiveLatents.from_entries(rows[:n_main], cols[:n_main], values[:n_main], n, d_sae, per_row)
        if rows.numel() == n_main:
            return acts, None
        return acts, ActiveLatents.from_entries(rows[n_main:], cols[n_main:], values[n_main:], n, d_sae)

    def _matryoshka_decode(self, acts: ActiveLatents, sx: Tensor) -> tuple[Tensor, Tensor]:
        """The full reconstruction and sum_m mse_m over the nested prefixes [0, w_m).

        Each group's latents are decoded once; prefix m's reconstruction is b_dec plus the running
        sum of groups 1..m, so the work is one decode of the kept entries however many levels.
        """
        widths = torch.tensor(self.cfg.matryoshka_widths, device=acts.cols.device)
        group = torch.bucketize(acts.cols, widths, right=True)
        recon, total = self.b_dec.expand_as(sx), sx.new_zeros(())
        for g in range(len(widths)):
            sel = (group == g).nonzero().squeeze(1)
            part = ActiveLatents.from_entries(acts.rows[sel], acts.cols[sel], acts.values[sel], acts.n_rows, acts.n_latents)
            recon = recon + part.decode(self.W_dec)
            total = total + (sx - recon).pow(2).sum(dim=-1).mean()
        return recon, total

    def _aux_loss(self, aux_acts: ActiveLatents | None, e: Tensor) -> Tensor:
        """AuxK: the dead latents' top-aux_k reconstruct the residual e; mean_batch ||e - e_hat||^2.

        e_hat = aux_acts @ W_dec (no b_dec: it is already in the residual). In the same units as the
        main squared-error term, as in SAELens. Zero when nothing is dead.
        """
        if aux_acts is None:
            return e.new_zeros(())
        return (e - aux_acts.decode(self.W_dec)).pow(2).sum(dim=-1).mean()

    @torch.no_grad()
    def _update_stats(self, n_tokens: int, fired: Tensor, lowest: Tensor | None) -> None:
        self.tokens_since_fired += n_tokens
        self.tokens_since_fired[fired] = 0
        if self.cfg.architecture in BATCH_TOPK:
            # Threshold estimate: EMA of the smallest kept (positive) activation per batch, as in
            # SAELens/dictionary_learning; the first batch sets it directly so there is no bias to 0.
            r, decay = self.running_threshold, self.cfg.threshold_ema_decay
            updated = torch.where(r.isnan(), lowest, decay * r + (1 - decay) * lowest)
            r.copy_(torch.where(lowest.isinf(), r, updated))

    def dead_mask(self) -> Tensor:
        """Latents that have not fired in the last ``dead_window`` training tokens."""
        return self.tokens_since_fired >= self.cfg.dead_window

    # ---- training-time maintenance --------------------------------------------------------

    def _require_unit_norm_decoder(self, what: str) -> None:
        if self.cfg.architecture not in TOPK_LIKE:
            raise ValueError(f"{what} is for topk/batchtopk SAEs (unit-norm decoder); a "
                             f"{self.cfg.architecture} SAE carries the decoder norm in its weights/penalty")

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale decoder rows to unit norm; call after each optimizer step (topk/batchtopk)."""
        self._require_unit_norm_decoder("normalize_decoder_")
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(_TINY))

    @torch.no_grad()
    def remove_parallel_grad_(self) -> None:
        """Drop the gradient component along each decoder row (sparsify), so the step keeps norms ~1.

        Call after ``backward()`` and before ``optimizer.step()``.
        """
        self._require_unit_norm_decoder("remove_parallel_grad_")
        grad, w = self.W_dec.grad, self.W_dec
        if grad is None:
            raise RuntimeError("W_dec has no gradient: call remove_parallel_grad_() after loss.backward()")
        grad -= (grad * w).sum(dim=1, keepdim=True) / w.pow(2).sum(dim=1, keepdim=True).clamp_min(_TINY) * w

    @torch.no_grad()
    def project_(self) -> None:
        """The constraints to restore after each optimizer step: unit-norm decoder rows (topk-like)
        and non-negative thresholds (jumprelu; projected, as SAELens does, rather than clamped in
        the graph, which would zero the gradient of a threshold at 0 for good)."""
        if self.cfg.architecture in TOPK_LIKE:
            self.normalize_decoder_()
        elif self.cfg.architecture == "jumprelu":
            self.threshold.clamp_(min=0.0)

    @torch.no_grad()
    def init_b_dec_(self, sample: Tensor) -> None:
        """b_dec = geometric median of s*sample [n, d_in] (OpenAI's TopK init; the paper's relu keeps 0)."""
        if sample.ndim != 2 or sample.shape[0] == 0:
            raise ValueError(f"init_b_dec_ expects a non-empty [n, d_in] sample, got shape {tuple(sample.shape)}")
        self.b_dec.copy_(geometric_median(self._scaled(sample)))

    # ---- conversions ------------------------------------------------------------------------

    def _state_copy(self) -> dict[str, Tensor]:
        return {name: t.detach().clone() for name, t in self.state_dict().items()}

    def inference_form(self) -> SAE:
        """The SAE to encode tokens one at a time with: (Matryoshka) BatchTopK as its JumpReLU export, others as they are."""
        return self.to_jumprelu() if self.cfg.architecture in BATCH_TOPK else self

    def to_jumprelu(self) -> SAE:
        """BatchTopK -> JumpReLU for inference: one global threshold, f = ReLU(pre) * (pre > threshold).

        Uses the running estimate of the smallest kept activation, so per-token inference keeps about
        k latents on average without depending on the rest of the batch.
        """
        if self.cfg.architecture not in BATCH_TOPK:
            raise ValueError(f"to_jumprelu converts batchtopk SAEs, this one is {self.cfg.architecture!r}")
        if bool(self.running_threshold.isnan()):
            raise ValueError("the BatchTopK threshold has not been estimated: run at least one training-mode forward pass")
        state = self._state_copy()
        state["threshold"] = state.pop("running_threshold").to(self.W_enc.dtype).expand(self.cfg.d_sae).clone()
        cfg = SAEConfig.model_validate({**self.cfg.model_dump(), "architecture": "jumprelu"})
        return SAE._from_state(cfg, state)

    def fold_input_scale(self) -> SAE:
        """An equivalent SAE with input_scale = 1, for plain (SAELens-style) use on unscaled x.

        With a = apply_b_dec_to_input:
          pre = (s*x - a*b_dec) @ W_enc + b_enc = (x - a*b_dec/s) @ (s*W_enc) + b_enc
          x_hat = (f @ W_dec + b_dec) / s = f @ (W_dec/s) + b_dec/s
        so W_enc' = s*W_enc, W_dec' = W_dec/s, b_dec' = b_dec/s; b_enc and thresholds (which compare
        pre) are unchanged. Same algebra as SAELens's fold_activation_norm_scaling_factor. The result
        is for inference: its decoder norms are divided by s.
        """
        s = self.cfg.input_scale
        state = self._state_copy()
        state["W_enc"] = state["W_enc"] * s
        state["W_dec"] = state["W_dec"] / s
        state["b_dec"] = state["b_dec"] / s
        cfg = SAEConfig.model_validate({**self.cfg.model_dump(), "input_scale": 1.0})
        return SAE._from_state(cfg, state)
