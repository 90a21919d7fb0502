"""What a scorer is: a per-sample score from the sample's ``SampleSummary``, with what it needs
declared on the scorer itself (METHOD.md sec. 4).

A sample is scored from its summary: per modality, the maximum activation of every latent that
fired, the count of active (position, latent) pairs, token counts and the cosine between its mean
image and mean text residuals. That is all the SAE's scorers need, what a streaming pass over a
dump can keep per sample, and exactly what the ``sample_features`` table stores, so scores can be
recomputed from the table.

A scorer declares:

- the summary fields it reads (``reads``), checked when it registers;
- its parameter model (``Params``), given under ``ScoreConfig.params[<name>]`` or flat as
  ``<prefix>_<field>`` (``agreement_tau``, ``clip_model``);
- an optional dataset-level ``fit(data, params) -> state``, which may re-stream the summaries,
  read the dataset's cross-modal weights, another scorer's fitted state (``data.state_of``), or
  the source rows for an external model (``data.samples()``);
- ``score(summary, state) -> float``.

``run_scoring`` treats them all alike. These modules import numpy and torch only where a function
needs them, so the configs and the CLI read the registry (the scorers' parameters, for the flags)
without either (numpy was about 25 ms of importing the CLI; bench/RESULTS.md).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import numpy as np

    from saev_core.activations.data import Sample

SCORERS: dict[str, Scorer] = {}
LATENTS = ("image_ids", "image_max", "text_ids", "text_max")  # the summary's latents per modality


@dataclass
class SampleSummary:
    """One sample's latents per modality (ids with their max activation) and residual means."""

    sample_id: str
    n_image: int
    n_text: int
    n_active: int                       # sum over positions of the number of latents > 0
    image_ids: np.ndarray               # latents with A[t, i] > 0 on some image token ...
    image_max: np.ndarray               # ... and their max over image tokens
    text_ids: np.ndarray
    text_max: np.ndarray
    resid_cosine: float | None = None   # cos(mean image residual, mean text residual); None without both


class ScorerParams(BaseModel):
    """A scorer's parameters. ``prefix`` spells them flat (``<prefix>_<field>``); ``runtime`` names
    those that do not change a score (batch sizes), which the score's identity leaves out."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    prefix: ClassVar[str] = ""
    runtime: ClassVar[frozenset[str]] = frozenset()


class NoParams(ScorerParams):
    pass


@dataclass
class Dataset:
    """What a scorer's ``fit`` may read about the dataset being scored."""

    summaries: Callable[[], Iterable[SampleSummary]]  # every sample's summary, re-streamed on each call
    d_sae: int
    params: dict[str, ScorerParams]  # by scorer, validated (ScoreConfig.params)
    seed: int = 0
    tau: float = 0.0  # the co-occurrence threshold: a latent counts where A[t, i] > tau
    weights: np.ndarray = field(default_factory=lambda: _no_weights())  # w_i per latent (Algorithm 1)
    balanced_weights: np.ndarray = field(default_factory=lambda: _no_weights())  # w'_i, each modality's own top
    samples: Callable[[], dict[str, Sample]] | None = None  # the source rows by sample id, for an external model
    device: str = "cpu"
    progress: bool = False
    _states: dict[str, Any] = field(default_factory=dict, repr=False)

    def state_of(self, name: str) -> Any:
        """Scorer ``name``'s fitted state, fitted once however many scorers read it."""
        if name not in self._states:
            scorer = get_scorer(name)
            self._states[name] = scorer.fit(self, self.params.get(name) or scorer.Params())
        return self._states[name]


def _no_weights() -> np.ndarray:
    import numpy as np

    return np.zeros(0, np.float32)


class Scorer:
    """A registered scorer; the default has no fit and reads only the summary and its params."""

    name: ClassVar[str]
    Params: ClassVar[type[ScorerParams]] = NoParams
    default: ClassVar[bool] = True  # scored when no scorer list is given (False: it needs an input the default run lacks)
    experiment: ClassVar[bool] = False  # in the alignment experiment's default grid (each costs SFT runs)
    uses: ClassVar[tuple[str, ...]] = ()  # scorers whose params and fitted state it reads
    reads: ClassVar[tuple[str, ...]] = LATENTS  # the SampleSummary fields its fit and score read

    def fit(self, data: Dataset, params: ScorerParams) -> Any:
        """The dataset-level state ``score`` reads; by default its params."""
        return params

    def score(self, s: SampleSummary, state: Any) -> float:
        raise NotImplementedError


def register(cls: type[Scorer]) -> type[Scorer]:
    """Class decorator: make a scorer known by its ``name``."""
    if cls.name in SCORERS:
        raise ValueError(f"scorer {cls.name!r} is registered twice")
    if unknown := sorted(set(cls.reads) - set(SampleSummary.__dataclass_fields__)):
        raise ValueError(f"scorer {cls.name!r} reads {', '.join(unknown)}, which a SampleSummary does not hold")
    SCORERS[cls.name] = cls()
    return cls


def get_scorer(name: str) -> Scorer:
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; valid scorers: {sorted(SCORERS)}")
    return SCORERS[name]


def random_unit(seed: int, sample_id: str) -> float:
    h = hashlib.blake2b(f"{seed}:{sample_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


def reference_subset(sample_ids: list[str], n: int, seed: int) -> frozenset[str]:
    """Algorithm 1 step 1: n samples drawn at random (by id hash, so order-free and reproducible)."""
    key = functools.partial(_reference_key, seed)
    return frozenset(sorted(sample_ids, key=key)[:n])


def _reference_key(seed: int, sample_id: str) -> bytes:
    return hashlib.blake2b(f"ref:{seed}:{sample_id}".encode(), digest_size=8).digest()


def text_latents(s: SampleSummary, tau: float) -> np.ndarray:
    """T(s): the latents above ``tau`` on some text token of the sample."""
    return s.text_ids[s.text_max > tau]


def image_latents(s: SampleSummary, tau: float) -> np.ndarray:
    """I(s): the latents above ``tau`` on some image token of the sample."""
    return s.image_ids[s.image_max > tau]


def cooccurring_latents(s: SampleSummary, tau: float = 0.0) -> np.ndarray:
    """C(s) = {i : A[t,i] > tau on some text token} intersect {i : A[t,i] > tau on some image token}."""
    import numpy as np

    return np.intersect1d(image_latents(s, tau), text_latents(s, tau))
