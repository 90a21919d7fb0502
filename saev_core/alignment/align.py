"""Alignment on a filter artifact: TRL SFT or DPO from the base model, saved with save_pretrained.

With ``lora`` (peft) only low-rank adapters train, for models too large to fine-tune fully; the
adapter is saved in ``adapter/`` and merged into ``model/`` so evaluation loads it like any model.

The artifact's ``sft``/``dpo`` splits are already in TRL's conversational vision format, so the
trainers take them as they are. Everything TRL needs is checked before training starts: the
split exists and has rows, the model has a processor. Multi-GPU runs go through
``accelerate launch -m saev_core align ...`` unchanged.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

from saev_core import __version__
from saev_core.configs import AlignConfig
from saev_core.alignment.filter import load_filtered
from saev_core.activations.inputs import encode, read_chat_template, render, use_chat_template
from saev_core.io import atomic_dir, read_json, write_json
from saev_core.activations.torchvision_compat import ensure_torchvision

ensure_torchvision()  # before transformers imports it for a fast image or video processor


def check_inputs(cfg: AlignConfig):
    """Fail before training on an empty or unsuitable artifact or a model without a processor or template."""
    from transformers import AutoProcessor

    manifest = Path(cfg.data) / "manifest.json"
    if not manifest.exists():
        raise FileNotFoundError(f"{cfg.data} is not a filter artifact (no manifest.json); run `saev filter` first")
    split = Path(cfg.data) / cfg.method / "train.parquet"
    if split.exists() and pq.read_metadata(split).num_rows == 0:
        raise ValueError(f"the {cfg.method} split of {cfg.data} has zero rows; filter with a larger --top-k / --top-fraction")
    data = load_filtered(cfg.data, cfg.method)  # a missing split fails here, naming the ones present
    try:
        processor = AutoProcessor.from_pretrained(cfg.model)
    except (OSError, ValueError) as e:
        raise ValueError(f"{cfg.model} has no processor that handles images ({e}); alignment needs an image-text-to-text model "
                         "saved with its processor") from None
    if not hasattr(processor, "image_processor"):
        raise ValueError(f"the processor of {cfg.model} ({type(processor).__name__}) has no image processor; "
                         "alignment needs an image-text-to-text model")
    use_chat_template(processor, read_chat_template(cfg.chat_template) if cfg.chat_template else None)
    check_collation(processor, cfg.method)
    return data, processor, read_json(manifest)


def check_collation(processor, method: str) -> None:
    """Fail before training where TRL's vision collators cannot build a batch.

    They tokenise each prompt (with its image) and each completion (text only) apart and
    concatenate the two. A processor that refuses text without images (PaliGemma) fails on the
    completion, and a cross-attention mask (Mllama) is left at the prompt's length, so the forward
    pass fails on a shape mismatch mid-training. Both are probed here on one tiny input."""
    from PIL import Image

    name, trainer = type(processor).__name__, f"TRL's {'SFTTrainer' if method == 'sft' else 'DPOTrainer'}"
    prompt = render(processor, "?")  # NoChatTemplate names the fix
    try:
        processor(text=["?"], return_tensors="pt", add_special_tokens=False)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{name} cannot tokenise a completion without its image ({e}), and {trainer} does exactly that; "
                         "this family cannot be aligned through TRL's prompt-completion collators") from None
    probe = encode(processor, [prompt], [Image.new("RGB", (32, 32))])
    if "cross_attention_mask" in probe:
        raise ValueError(f"{name} feeds images by cross-attention and {trainer} does not extend its cross_attention_mask over the "
                         "completion, so training would fail mid-step; this family cannot be aligned through TRL (and SAE-V's "
                         "image/text overlap means nothing in its residual stream)")


def run_alignment(cfg: AlignConfig) -> dict:
    """Train, save model + processor + manifest atomically into ``cfg.out``; returns the manifest."""
    from transformers import AutoModelForImageTextToText, PrinterCallback
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    data, processor, source = check_inputs(cfg)
    model = AutoModelForImageTextToText.from_pretrained(cfg.model)
    bf16 = cfg.bf16 if cfg.bf16 is not None else bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    common = dict(num_train_epochs=cfg.epochs, max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
                  gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr, seed=cfg.seed, bf16=bf16,
                  use_cpu=not torch.cuda.is_available(), report_to=[] if cfg.report_to == "none" else [cfg.report_to],
                  save_strategy="no", logging_steps=1,
                  max_length=None, disable_tqdm=True)
    peft_config = None
    if cfg.lora:
        try:
            from peft import LoraConfig
        except ImportError:
            raise ValueError("lora=true needs peft: pip install 'saev-pipeline[lora]'") from None
        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                 target_modules=cfg.lora_target_modules, task_type="CAUSAL_LM")
    t0 = time.perf_counter()
    # Under `accelerate launch` every process trains; process 0 alone writes the result, atomically.
    scratch = Path(cfg.out).parent / f".{Path(cfg.out).name}.trainer"
    try:
        if cfg.method == "sft":
            trainer = SFTTrainer(model=model, args=SFTConfig(output_dir=str(scratch), **common),
                                 train_dataset=data, processing_class=processor, peft_config=peft_config)
        else:
            trainer = DPOTrainer(model=model, args=DPOConfig(output_dir=str(scratch), beta=cfg.beta, **common),
                                 train_dataset=data, processing_class=processor, peft_config=peft_config)
        trainer.remove_callback(PrinterCallback)  # losses stay in state.log_history and the manifest
        result = trainer.train()
        accelerator = trainer.accelerator
        if accelerator.is_main_process:
            losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
            with atomic_dir(cfg.out) as tmp:
                trained = trainer.model
                if cfg.lora:  # keep the adapter, and save a merged model every loader understands
                    trained.save_pretrained(tmp / "adapter")
                    trained = trained.merge_and_unload()
                trained.save_pretrained(tmp / "model")
                processor.save_pretrained(tmp / "model")
                manifest = {
                    "kind": "saev.aligned_model", "format_version": 1, "saev_core_version": __version__,
                    "base_model": cfg.model, "filter_artifact": cfg.data, "method": cfg.method, "config": cfg.model_dump(),
                    "n_train_rows": len(data), "steps": trainer.state.global_step, "train_loss": result.training_loss,
                    "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
                    "seconds": time.perf_counter() - t0, "processes": accelerator.num_processes,
                    "filter": {k: source.get(k) for k in ("scorer", "sae_id", "top_k", "top_fraction", "n_kept")},
                }
                write_json(tmp / "manifest.json", manifest)
    finally:
        if scratch.exists() and int(os.environ.get("RANK", "0")) == 0:
            shutil.rmtree(scratch, ignore_errors=True)
    accelerator.wait_for_everyone()
    return read_json(Path(cfg.out) / "manifest.json")

