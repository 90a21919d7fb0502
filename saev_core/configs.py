"""The typed config of every stage, validated at the edge (a typo fails before any work).

Only pydantic is imported here, so the CLI builds every command's flags from these classes and
still starts in under a second; validators that need the scorer registry or the chat-template
reader import it when they run. Each stage module re-exports its config.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, field_serializer, field_validator, model_validator

from saev_core.demo.defaults import DEMO_ALIGN

# A typo'd key fails validation; the validators are built on first use, not at import, so the CLI
# can read every class's fields at start-up for its flags without paying for them.
_STRICT = ConfigDict(extra="forbid", defer_build=True)

DEFAULT_STORE = "data/artifacts"  # the artifact store `make run`, the flows and the CLI use unless told otherwise
DEFAULT_TABLES = f"{DEFAULT_STORE}/tables"  # the store keeps its shared feature tables here
DatasetFormat = Literal["auto", "rlaif_v", "align_anything", "sft"]
Optimizer = Literal["adam", "signum"]
# experiment trackers, by TRL's and transformers' report_to names (saev_core.sae.tracking)
ReportTo = Literal["none", "wandb", "tensorboard", "mlflow"]
# Fields that do not change what a stage computes; a resumed run may change them. The chat
# template counts by its content (chat_template_sha256), not by where its file lies.
_DUMP_RUNTIME = {"out", "batch_size", "progress", "cpu_threads", "row_group_mb", "chat_template"}
_TRAIN_RUNTIME = {"out", "progress", "device", "checkpoint_every", "log_every", "keep_checkpoints", "eval_rows", "probe_rows", "reader_workers", "report_to"}
# (clip_batch_size: the flat spelling of clip_score's runtime parameter, as a flow's stage config writes it)
_SCORE_RUNTIME = {"tables", "device", "batch_rows", "weights_memory_mb", "progress", "clip_batch_size"}
# per pipeline stage, what its artifact key leaves out (saev_core.store.artifacts.identity_of)
STAGE_RUNTIME: dict[str, set[str]] = {"dump": _DUMP_RUNTIME, "train": _TRAIN_RUNTIME, "frontier": _TRAIN_RUNTIME,
                                      "score": _SCORE_RUNTIME, "align": {"out", "progress", "report_to"}, "evaluate": {"chat_template", "device", "progress"},
                                      "eval-sae": {"device", "progress"}}


# The scorer that ranks samples wherever none is named: `saev filter`, the report's sample list,
# the pipeline and the experiment's grid. Chosen on the demo's validation world (bench/RESULTS.md).
DEFAULT_SCORER = "agreement"


def check_report_to(report_to: str) -> str:
    """Fail before any work when the chosen tracker (a package of the same name) is not installed."""
    if report_to != "none" and importlib.util.find_spec(report_to) is None:
        raise ValueError(f"report_to={report_to!r} needs the {report_to} package: pip install {report_to} (or report_to='none')")
    return report_to


def flat_fields(model: type[BaseModel]) -> dict:
    """A config's fields as the CLI's flags and the flows' overrides spell them: TrainConfig's SAE
    fields (under ``sae``, over every registered architecture) and ScoreConfig's scorer parameters
    (under ``params``, as ``<prefix>_<field>``) flat beside their own."""
    if model is TrainConfig:
        from saev_core.sae.architectures import flat_fields as nested
        own = {name: f for name, f in model.model_fields.items() if name != "sae"}
    elif model is ScoreConfig:
        from saev_core.scoring.scorers import flat_fields as nested
        own = {name: f for name, f in model.model_fields.items() if name != "params"}
    else:
        return dict(model.model_fields)
    return {**own, **{name: f for name, f in nested().items() if name not in own}}


def _default_scorers() -> list[str]:
    from saev_core.scoring.scorers import default_scorers

    return default_scorers()


def _experiment_scorers() -> list[str]:
    from saev_core.scoring.scorers import experiment_scorers

    return experiment_scorers()


class DatasetSpec(BaseModel):
    """Where a dataset lives and how its columns map onto saev's canonical fields."""

    model_config = _STRICT

    path: str = Field(description="Local file/directory (Parquet, JSON Lines, save_to_disk) or a hub id.")
    name: str | None = Field(None, description="Dataset name used in outputs; default: derived from path.")
    format: DatasetFormat = "auto"
    columns: dict[str, str] = Field(default_factory=dict, description="canonical field -> source column")
    split: str = "train"
    subset: str | None = Field(None, description="Hub configuration name, if any.")
    image_root: str | None = Field(None, description="Base directory for relative image paths.")
    limit: int | None = Field(None, ge=1, description="Use only the first N rows.")

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        p = Path(self.path.rstrip("/"))
        if p.suffix in {".parquet", ".jsonl", ".json"}:
            # datasets/<name>/train.parquet is named after its directory, not its split.
            p = p.parent if p.stem.split("-")[0] in {"train", "test", "validation", "data"} else p.with_suffix("")
        return p.name or "dataset"


class DemoConfig(BaseModel):
    """Size and seed of the demo world. Defaults fit the 5-minute, 2-core budget."""

    model_config = _STRICT

    seed: int = Field(0, description="random seed (everything derives from it)")
    n_samples: int = Field(2000, ge=10, description="rows in each alignment dataset")
    n_heldout: int = Field(500, ge=10, description="clean held-out rows for evaluation")
    n_pretrain: int = Field(4000, ge=10, description="image-caption pairs of the modality-alignment stage")
    pretrain_steps: int = Field(1200, ge=2, description="half for the LM on text, half for the vision tower")
    pretrain_batch_size: int = Field(64, ge=1)
    low_quality_fraction: float = Field(0.35, ge=0.0, le=1.0, description="fraction of low-quality rows")
    image_size: int = Field(32, ge=16)
    embedding_scale: float = Field(20.0, gt=0, description="token embeddings start this much larger (see demo.pretrain)")


class DumpConfig(BaseModel):
    """What to dump and where. ``model`` and ``dataset.path`` take hub ids or local paths."""

    model_config = _STRICT

    model: str = Field(description="image-text-to-text model: hub id or local path")
    dataset: DatasetSpec
    layer: int = Field(description="decoder block whose output (residual stream) is captured; negative counts from the end")
    out: str = Field(description="output directory")
    include_response: bool = Field(False, description="append the response (SFT answer / chosen) to the prompt")
    batch_size: int = Field(16, ge=1, description="samples per forward pass")
    samples_per_shard: int = Field(512, ge=1, description="samples per Parquet shard")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="model compute dtype")
    act_dtype: Literal["float16", "float32"] = Field("float16", description="stored activation dtype")
    max_length: int | None = Field(None, ge=1, description="longest prompt in tokens; default: the model's context")
    chat_template: str | None = Field(None, description="Jinja chat template file, for a processor that ships none (PaliGemma)")
    chat_template_sha256: str | None = Field(None, description="sha256 of the chat_template file's content; filled in when absent")
    stop_at_layer: bool = Field(True, description="skip the blocks after the hooked one")
    compression: Literal["zstd", "lz4", "snappy", "none"] = Field("lz4", description="Parquet codec of the activation shards; lz4 decodes at "
                                                                  "memory speed, zstd saves a few % of disk at a quarter of the speed (bench/bench_reader.py)")
    row_group_mb: int = Field(64, ge=1, description="target Parquet row-group size; batches are buffered up to it")
    cpu_threads: int | None = Field(None, ge=1, description="torch threads for a CPU forward (default: torch's own setting)")
    progress: bool = True

    @model_validator(mode="after")
    def _template_digest(self) -> "DumpConfig":
        from saev_core.activations.inputs import chat_template_digest

        digest = chat_template_digest(self.chat_template)
        if self.chat_template_sha256 is not None and self.chat_template_sha256 != digest:
            raise ValueError(f"the chat template {self.chat_template} changed since this config was made (its sha256 differs); "
                             "rerun from a fresh config to dump with the new template")
        self.chat_template_sha256 = digest
        return self

    def identity(self) -> dict:
        return self.model_dump(mode="json", exclude=_DUMP_RUNTIME)


DEFAULT_ARCHITECTURE = "relu"  # the paper's
DEFAULT_DEAD_WINDOW = 10_000_000  # tokens; OpenAI's and sparsify's


def _architecture_config(name: str) -> type[SAEConfig]:
    from saev_core.sae.architectures import get

    return get(name).config


class SAEConfig(BaseModel):
    """The fields every SAE architecture shares; each architecture's module adds its own
    (saev_core.sae.architectures, one file per architecture).

    ``SAEConfig(architecture="topk", ...)`` and ``SAEConfig.model_validate({...})`` build the
    named architecture's config class (``TopKSAEConfig``), as SAELens's ``SAEConfig.from_dict``.
    ``d_in`` and ``d_sae`` may stay unset in a training config, which fills them from the dump.
    ``dead_window`` counts tokens (not steps), so it means the same at any batch size; unset, it
    is 10M, OpenAI's and sparsify's default (training: min(10M, total_tokens / 10)).
    """

    model_config = _STRICT

    architecture: str = Field(DEFAULT_ARCHITECTURE, description="a registered architecture (saev_core.sae.architectures); "
                              "relu is the paper's")
    d_in: int | None = Field(None, gt=0, description="residual width (training: the dump's)")
    d_sae: int | None = Field(None, gt=0, description="latents (training: expansion_factor * d_in unless set)")
    apply_b_dec_to_input: bool | None = Field(None, description="subtract b_dec from the input (default: per architecture)")
    dead_window: int | None = Field(None, gt=0, description="tokens without firing before a latent is dead; default min(10M, total_tokens / 10)")
    input_scale: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    seed: int = 0

    b_dec_to_input: ClassVar[bool] = True  # the default of apply_b_dec_to_input

    def __new__(cls, *args, **data):
        if cls is SAEConfig:
            cls = _architecture_config(data.get("architecture", DEFAULT_ARCHITECTURE))
        return super().__new__(cls)

    @classmethod
    def model_validate(cls, obj, **kwargs):
        if cls is SAEConfig and isinstance(obj, dict):
            cls = _architecture_config(obj.get("architecture", DEFAULT_ARCHITECTURE))
        return BaseModel.model_validate.__func__(cls, obj, **kwargs)

    @model_validator(mode="before")
    @classmethod
    def _own_fields(cls, data):
        """Another architecture's field fails by name; left unset (None), it is dropped."""
        if cls is SAEConfig or not isinstance(data, dict):
            return data
        if other := sorted(k for k, v in data.items() if k not in cls.model_fields and v is not None):
            arch = cls.model_fields["architecture"].default
            raise ValueError(f"{', '.join(other)}: not a field of a {arch} SAE (its fields: {', '.join(cls.model_fields)})")
        return {k: v for k, v in data.items() if k in cls.model_fields}

    @model_validator(mode="after")
    def _shared(self) -> SAEConfig:
        if self.apply_b_dec_to_input is None:
            self.apply_b_dec_to_input = self.b_dec_to_input
        return self

    @property
    def window(self) -> int:
        """dead_window, or its default."""
        return self.dead_window or DEFAULT_DEAD_WINDOW


_SET_BY_TRAINING = {"d_in": None, "input_scale": 1.0, "seed": 0}  # SAEConfig fields a training run fills in, unset


class TrainConfig(BaseModel):
    """How to train one SAE. Defaults follow the paper for relu (METHOD.md sec. 2)."""

    model_config = _STRICT

    activations: str = Field(description="dump directory written by `saev dump`")
    out: str = Field(description="run directory")
    sae: SerializeAsAny[SAEConfig] = Field(default_factory=SAEConfig, description="the SAE's architecture and its fields "
                                           "(SAEConfig; a flat field such as k or architecture is put here)")
    expansion_factor: int = Field(16, ge=1, description="d_sae = expansion_factor * d_in (ignored if d_sae is set)")
    modalities: Literal["image+text", "text"] = Field("image+text", description="SAE-V trains on both; 'text' is the paper's text-only baseline")
    batch_size: int = Field(4096, ge=1, description="tokens per step")
    total_tokens: int = Field(2_000_000, ge=1, description="training tokens")
    optimizer: Optimizer = Field("adam", description="adam, or signum (sign of the momentum; momentum = betas[0])")
    lr: float | None = Field(None, gt=0, description="default: 5e-5 for relu with adam (the paper), else a rule that scales with d_sae, batch_size and total_tokens (saev_core.sae.optim.default_lr)")
    betas: tuple[float, float] = (0.9, 0.999)
    lr_warmup_frac: float = Field(0.0, ge=0, le=1, description="linear warm-up of the lr from 0 over this first fraction of steps")
    lr_decay_frac: float = Field(0.2, ge=0, le=1, description="linear decay to 0 over this last fraction of steps")
    grad_clip_norm: float | None = Field(1.0, gt=0, description="clip the gradient norm each step (SAELens's default); None turns it off")
    scale_batches: int = Field(100, ge=1, description="batches used to estimate the input scale s = sqrt(d_in) / mean||x||")
    heldout_fraction: float = Field(0.05, ge=0, lt=1, description="samples held out (by sample id) for evaluation")
    buffer_rows: int = Field(1 << 20, ge=1, description="rows shuffled together (memory: two chunks of buffer_rows * d_in * 2 bytes for float16)")
    reader_workers: int = Field(2, ge=0, description="threads decoding activation row groups ahead of the step (0: read in the step's thread); "
                                "the batches do not depend on it")
    checkpoint_every: int = Field(1000, ge=1, description="steps between checkpoints")
    eval_rows: int = Field(20_000, ge=0, description="held-out rows evaluated (per modality) at each checkpoint; 0 turns it off")
    probe_rows: int = Field(2048, ge=0, description="held-out rows per modality whose MSE, FVU and L0 every log row reports "
                            "(image_fvu, text_l0, ...); 0 turns them off")
    report_to: ReportTo = Field(
        "none", description="experiment tracker for the training log (as TRL's report_to); train_log.jsonl is written either way")
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(50, ge=1)
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    seed: int = Field(0, description="seed of the init and the batch order")
    progress: bool = True

    @model_validator(mode="before")
    @classmethod
    def _nest_sae_fields(cls, data):
        """The flat spelling (``k=32``, the CLI's flags, the flows' overrides) puts SAE fields under ``sae``."""
        from saev_core.sae.architectures import field_names

        sae_fields = field_names()
        if not isinstance(data, dict) or not (flat := {k: v for k, v in data.items() if k not in cls.model_fields and k in sae_fields}):
            return data
        sae = data.get("sae", {})
        sae = sae.model_dump(exclude_unset=True) if isinstance(sae, BaseModel) else dict(sae)
        if flat.get("architecture", sae.get("architecture")) != sae.get("architecture"):
            sae = {}  # another architecture: the old one's fields do not carry over
        return {**{k: v for k, v in data.items() if k not in flat}, "sae": {**sae, **flat}}

    @field_validator("sae", mode="before")
    @classmethod
    def _architecture_config(cls, v):
        return SAEConfig.model_validate(v) if isinstance(v, dict) else v

    @field_serializer("sae")
    def _sae_without_what_training_sets(self, sae: SAEConfig, info) -> dict:
        return {k: v for k, v in sae.model_dump(mode=info.mode).items() if k not in _SET_BY_TRAINING}

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if derived := sorted(name for name, unset in _SET_BY_TRAINING.items() if getattr(self.sae, name) != unset):
            raise ValueError(f"sae.{', sae.'.join(derived)}: set by training (d_in and input_scale from the dump; the seed is "
                             "the train config's own seed): leave them out")
        if self.total_tokens < self.batch_size:
            raise ValueError(f"total_tokens ({self.total_tokens}) must be at least one batch ({self.batch_size})")
        return self

    @property
    def steps(self) -> int:
        return self.total_tokens // self.batch_size

    def flat(self) -> dict:
        """The config as the CLI's flags spell it: the SAE's fields beside the run's (for trackers' params)."""
        dump = self.model_dump(mode="json")
        return {**{k: v for k, v in dump.items() if k != "sae"}, **dump["sae"]}

    def width(self, d_in: int) -> int:
        """d_sae: the SAE config's, else expansion_factor * d_in."""
        return self.sae.d_sae or self.expansion_factor * d_in

    def identity(self) -> dict:
        return self.model_dump(mode="json", exclude=_TRAIN_RUNTIME)

    @field_validator("report_to")
    @classmethod
    def _tracker_installed(cls, v: str) -> str:
        return check_report_to(v)


class ScoreConfig(BaseModel):
    """How to score one dump with one SAE. Defaults follow METHOD.md sec. 4.

    Each scorer carries its own parameters (``saev_core.scoring.scorers``), given by scorer under
    ``params`` (``params: {agreement: {tau: 0.5}}``) or flat as ``<prefix>_<field>``
    (``agreement_tau``, ``clip_model``: the CLI's flags)."""

    model_config = _STRICT

    activations: str = Field(description="dump directory written by `saev dump`")
    sae: str = Field(description="SAE: a `saev train` run directory or a SAELens checkpoint directory")
    tables: str = Field(DEFAULT_TABLES, description="root of the feature tables")
    dataset_name: str | None = Field(None, description="partition name; default: the dump's dataset name")
    scorers: list[str] = Field(default_factory=_default_scorers, description="scorers to compute; default: every registered scorer but "
                               "those that need an input the run lacks (clip_score: its model), which their params add (the list: docs/stages.md)")
    params: dict[str, Any] = Field(default_factory=dict, description="each scorer's own parameters, by scorer (flat: agreement_tau, clip_model, ...)")
    tau: float = Field(0.0, ge=0, description="co-occurrence threshold: a latent counts where A[t, i] > tau")
    reference_samples: int = Field(1000, ge=1, description="reference subset size for the cross-modal weights")
    top: int = Field(30, ge=1, description="top occurrences pooled per latent")
    per_side: int = Field(5, ge=1, description="text and image occurrences compared per latent")
    seed: int = Field(0, description="seed of the random scorer and the reference subset")
    batch_rows: int = Field(4096, ge=1, description="positions encoded per batch")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    weights_memory_mb: int = Field(256, ge=1, description="bound on residuals held while computing weights")
    progress: bool = True

    @model_validator(mode="before")
    @classmethod
    def _nest_scorer_params(cls, data):
        """Flat scorer parameters go under ``params``; with no scorer list, a scorer given params is
        scored beside the defaults (a clip_model adds clip_score)."""
        from saev_core.scoring.scorers import flat_names

        if not isinstance(data, dict):
            return data
        names = flat_names()
        flat = {k: v for k, v in data.items() if k in names and k not in cls.model_fields}
        params = {name: p.model_dump() if isinstance(p, BaseModel) else dict(p or {}) for name, p in (data.get("params") or {}).items()}
        for key, value in flat.items():
            if value is not None:  # unset
                name, field = names[key]
                params.setdefault(name, {})[field] = value
        data = {**{k: v for k, v in data.items() if k not in flat}, "params": params}
        defaults = _default_scorers()
        if data.get("scorers") is None and (extra := [n for n in params if n not in defaults]):
            data["scorers"] = [*defaults, *extra]
        return data

    @field_validator("scorers")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        from saev_core.scoring.scorers import SCORERS, check_scorers

        if not v:
            raise ValueError(f"name at least one scorer; valid scorers: {sorted(SCORERS)}")
        return check_scorers(v)

    @model_validator(mode="after")
    def _sides(self) -> "ScoreConfig":
        from saev_core.scoring.scorers import check_params

        if 2 * self.per_side > self.top:
            raise ValueError(f"per_side={self.per_side} text + image occurrences cannot fit in top={self.top}")
        self.params = check_params(self.scorers, self.params)
        return self

    def identity(self) -> dict:
        """What changes the scores: the runtime fields, and each scorer's runtime parameters, left out."""
        out = self.model_dump(exclude=_SCORE_RUNTIME | {"params"})
        return {**out, "params": {name: p.model_dump(exclude=set(p.runtime)) for name, p in self.params.items() if type(p).model_fields}}


class FilterConfig(BaseModel):
    """Which samples to keep: the top k or top fraction by one scorer."""

    model_config = _STRICT

    tables: str = Field(DEFAULT_TABLES, description="root of the feature tables")
    out: str = Field(description="output directory of the filtered dataset")
    scorer: str = Field(DEFAULT_SCORER, description="scorer to rank by")
    datasets: list[str] | None = Field(None, description="datasets to draw from (default: every dataset scored with the SAE)")
    sae_id: str | None = Field(None, description="SAE whose scores rank the samples (default: the only one)")
    top_fraction: float | None = Field(None, gt=0, le=1, description="keep this fraction (0-1] of the ranked samples")
    top_k: int | None = Field(None, ge=1, description="keep this many samples")
    per_dataset: bool = Field(False, description="apply k / fraction to each dataset instead of the pooled ranking")
    random_seed: int | None = Field(None, description="with scorer 'random': rank by this seed instead of the stored one")

    @model_validator(mode="after")
    def _one_size(self) -> "FilterConfig":
        from saev_core.scoring.scorers import get_scorer

        get_scorer(self.scorer)
        if (self.top_fraction is None) == (self.top_k is None):
            raise ValueError("give exactly one of top_fraction and top_k")
        if self.random_seed is not None and self.scorer != "random":
            raise ValueError("random_seed only applies to scorer 'random'")
        return self


class AlignConfig(BaseModel):
    """One alignment run. Defaults suit the demo world on CPU; real models override lr and steps."""

    model_config = _STRICT

    model: str = Field(description="base model: hub id or local path (AutoModelForImageTextToText)")
    data: str = Field(description="filter artifact directory from `saev filter`")
    out: str = Field(description="where the aligned model and its manifest go")
    method: Literal["sft", "dpo"] = Field("sft", description="sft (TRL SFTTrainer) or dpo (DPOTrainer)")
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="overrides epochs when > 0")
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0)
    beta: float = Field(0.1, gt=0, description="DPO temperature")
    seed: int = 0
    bf16: bool | None = Field(None, description="default: on where CUDA supports it")
    lora: bool = Field(False, description="train LoRA adapters (peft) instead of all weights; merged into the saved model")
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_target_modules: list[str] | str = Field("all-linear", description="peft target_modules")
    report_to: ReportTo = Field(
        "none", description="TRL's report_to; each tracker reads its usual environment (WANDB_DIR, TENSORBOARD_LOGGING_DIR, MLFLOW_TRACKING_URI)")
    chat_template: str | None = Field(None, description="Jinja chat template file, for a processor that ships none (PaliGemma); "
                                      "saved with the aligned model's processor")


class ExperimentConfig(BaseModel):
    """The grid. Defaults (sized to run in under 20 minutes on 2 cores): the paper's scorers and
    the demo's default `agreement`, at 25/50/100% kept, 3 random seeds, one training seed, plus
    the oracle where labels exist (16 runs)."""

    model_config = _STRICT

    tables: str = DEFAULT_TABLES
    model: str | None = Field(None, description="base model every run starts from; default (CLI, flow): the demo world `make run` prepared")
    heldout: str | None = Field(None, description="evaluation split (never trained or tuned on); default: the demo world's")
    labels: str | None = Field(None, description="evaluation-only labels for the oracle line; default: the demo world's")
    oracle: bool = Field(True, description="add the oracle (clean rows only) at its natural fraction and each smaller one; needs labels")
    out: str = Field("data/runs/experiment", description="experiment directory")
    dataset: str | None = Field(None, description="scored dataset to draw from (default: the only one)")
    sae_id: str | None = Field(None, description="SAE whose scores rank the samples (default: the only one)")
    method: Literal["sft", "dpo"] = Field("sft", description="sft or dpo")
    scorers: list[str] = Field(default_factory=_experiment_scorers, description="scorers compared; default: the paper's and agreement")
    fractions: list[float] = Field(default_factory=lambda: [0.25, 0.5, 1.0], description="fractions kept (default: 0.25, 0.5, 1.0)")
    random_seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], description="seeds of the random scorer's draws (default: 0, 1, 2)")
    train_seeds: list[int] = Field(default_factory=lambda: [0], description="alignment seeds for every run (default: 0)")
    align: dict = Field(default_factory=lambda: {k: v for k, v in DEMO_ALIGN.items() if k != "method"},
                        description="AlignConfig overrides (epochs, lr, batch_size, ...); default: the demo's")
    eval_samples: int | None = Field(300, description="held-out rows evaluated per run (None: all)")
    match_steps: bool = Field(True, description="train every run for the optimizer steps full data gets (compute-matched), "
                                                 "instead of the same epochs (fewer steps for a smaller subset)")
    progress: bool = True

    def runs(self) -> list[dict]:
        """Every (scorer, fraction, scorer seed, train seed); fraction 1.0 is one shared 'full' run per train seed."""
        from saev_core.scoring.quality import clean_share
        from saev_core.scoring.scorers import check_scorers

        check_scorers(self.scorers)
        natural = round(clean_share(self.labels, self.dataset), 4) if self.oracle and self.labels else None
        grid = []
        for ts in self.train_seeds:
            if 1.0 in self.fractions:
                grid.append({"scorer": "full", "fraction": 1.0, "seed": None, "train_seed": ts})
            for scorer in self.scorers:
                for frac in (f for f in self.fractions if f < 1.0):
                    for seed in (self.random_seeds if scorer == "random" else [None]):
                        grid.append({"scorer": scorer, "fraction": frac, "seed": seed, "train_seed": ts})
            if natural is not None and natural < 1.0:
                grid.append({"scorer": "oracle", "fraction": natural, "seed": None, "train_seed": ts})
                grid += [{"scorer": "oracle", "fraction": f, "seed": seed, "train_seed": ts}
                         for f in self.fractions if f < natural for seed in self.random_seeds[:1]]
        return grid
