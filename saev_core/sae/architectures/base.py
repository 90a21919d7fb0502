"""What one SAE architecture is: its config, how it selects latents, its penalty, the projection
after each step, the form it infers in and how SAELens names it.

``SAE`` (saev_core.sae.model) owns the shared core: the weights W_enc, b_enc, W_dec, b_dec, the
input scale, decoding, the loss's reconstruction terms and the dead-latent statistics. An
``Architecture`` fills in the rest, and ``register`` adds it to the registry by its config's name
(SAELens's ``register_sae_class``).

These modules are imported by the configs and the CLI, which start without torch: a method
imports torch, or the kernels in ``saev_core.sae.sparse``, where it needs them, and otherwise
works through tensor methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from saev_core.configs import SAEConfig

if TYPE_CHECKING:
    from torch import Tensor

    from saev_core.sae.model import SAE
    from saev_core.sae.sparse import ActiveLatents

# An extra learned tensor or buffer of an architecture: (shape, the value it starts filled with)
Init = tuple[tuple[int, ...], float]
ARCHITECTURES: dict[str, Architecture] = {}


@dataclass
class Encoded:
    """One training-mode encoding: the kept latents, and what an architecture's penalty reads."""

    acts: ActiveLatents | Tensor  # the sparse kept latents (topk-like) or dense activations
    pre: Tensor | None = None  # the pre-activations a penalty reads (jumprelu's L0, gated's gate)
    aux: ActiveLatents | None = None  # AuxK's dead latents (topk-like), None when nothing is dead


class Architecture:
    """The default: a dense activation of pre = (s*x - a*b_dec) @ W_enc + b_enc, no penalty."""

    config: ClassVar[type[SAEConfig]]
    saelens: ClassVar[str | None] = None  # SAELens's name of this architecture (None: exported as its inference form)
    decoder_norm: ClassVar[float] = 1.0  # norm of each decoder row at init

    @property
    def name(self) -> str:
        return self.config.model_fields["architecture"].default

    # ---- the model's tensors ----------------------------------------------------------------

    def parameters(self, cfg: SAEConfig) -> dict[str, Init]:
        """Learned tensors beyond W_enc, b_enc, W_dec and b_dec."""
        return {}

    def buffers(self, cfg: SAEConfig) -> dict[str, Init]:
        """State beyond ``tokens_since_fired`` that a checkpoint must keep."""
        return {}

    # ---- latents ----------------------------------------------------------------------------

    def activate(self, sae: SAE, pre: Tensor) -> Tensor:
        """f from the pre-activations, for inference (per token)."""
        raise NotImplementedError

    def encode(self, sae: SAE, sx: Tensor) -> Tensor:
        """f from the scaled input s*x."""
        return self.activate(sae, sae.pre(sx))

    def encode_train(self, sae: SAE, sx: Tensor) -> Encoded:
        """The training-mode encoding (straight-through estimators, sparse selection)."""
        pre = sae.pre(sx)
        return Encoded(self.activate(sae, pre), pre)

    def reconstruct(self, sae: SAE, acts: ActiveLatents | Tensor, sx: Tensor) -> tuple[Tensor, Tensor | None]:
        """x_hat in scaled units, and the reconstruction term of the loss when it is not the mse."""
        return sae.decode_scaled(acts), None

    # ---- the loss and the step ---------------------------------------------------------------

    def sparsity(self, cfg: SAEConfig) -> tuple[float, float]:
        """(lambda, the fraction of steps it warms up over) of the sparsity penalty; (0, 0) for none."""
        return 0.0, 0.0

    def loss(self, sae: SAE, enc: Encoded, fit: Tensor, sx: Tensor, err: Tensor, lam: float) -> tuple[Tensor, Tensor, Tensor]:
        """(loss, l1, aux) from the reconstruction term ``fit``, the scaled input and its residual ``err``."""
        zero = fit.new_zeros(())
        return fit, zero, zero

    def observe(self, sae: SAE, acts: ActiveLatents | Tensor) -> None:
        """Training-mode statistics beyond the dead-latent counters (no grad)."""

    def prepare_step(self, sae: SAE) -> None:
        """Gradient surgery between ``backward()`` and the optimizer step."""

    def project(self, sae: SAE) -> None:
        """Constraints to restore after each optimizer step."""

    def fixed_lr(self, optimizer: str) -> float | None:
        """A step size of the architecture's own recipe, in place of saev's rule (saev_core.sae.optim)."""
        return None

    # ---- inference and SAELens ----------------------------------------------------------------

    def inference_form(self, sae: SAE) -> SAE:
        """The SAE that encodes tokens one at a time, as it is exported."""
        return sae

    def to_saelens(self, cfg: SAEConfig, tensors: dict[str, Tensor]) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """(extra cfg.json fields, the tensors under SAELens's names) of an inference-form SAE."""
        return {}, tensors

    def from_saelens(self, raw: dict[str, Any], tensors: dict[str, Tensor]) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """(config fields, the tensors under saev's names) of a SAELens checkpoint (cfg.json ``raw``)."""
        return {}, tensors


def register(cls: type[Architecture]) -> type[Architecture]:
    """Class decorator: make an architecture known by its config's ``architecture`` name."""
    arch = cls()
    if arch.name in ARCHITECTURES:
        raise ValueError(f"architecture {arch.name!r} is registered twice")
    ARCHITECTURES[arch.name] = arch
    return cls


def get(name: str) -> Architecture:
    """The registered architecture called ``name``."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown SAE architecture {name!r}; registered: {', '.join(ARCHITECTURES)}") from None
