"""Load any Hugging Face image-text-to-text model the way users expect (hub id or local path),
find its decoder blocks, and capture the residual stream after one of them with a hook."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from saev_core.activations.inputs import read_chat_template, use_chat_template
from saev_core.activations.torchvision_compat import ensure_torchvision

ensure_torchvision()  # before transformers imports it for a fast image or video processor


class StopForward(Exception):
    """Raised inside the hook to skip the blocks after the hooked one (their output is unused)."""


@dataclass
class ModelBundle:
    model: nn.Module
    processor: object
    model_id: str
    layers: nn.ModuleList
    layers_path: str
    image_token_id: int
    special_ids: frozenset[int]
    max_length: int
    device: torch.device
    dtype: torch.dtype
    cross_attention: bool = False  # images enter through cross-attention layers (Mllama), not as decoder tokens

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        cfg = getattr(self.model.config, "text_config", None) or self.model.config
        return int(cfg.hidden_size)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available; use device='auto' or 'cpu'")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' is bfloat16 on a GPU that supports it and float32 on CPU."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}") from None


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The language model's decoder blocks, for LLaVA, LLaVA-NeXT, Chameleon, Qwen-VL and kin."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is not None and isinstance(getattr(decoder, "layers", None), nn.ModuleList):
        for name, mod in model.named_modules():
            if mod is decoder.layers:
                return name, mod
    candidates = [
        (name, mod) for name, mod in model.named_modules()
        if isinstance(mod, nn.ModuleList) and name.endswith("layers") and "vision" not in name and "visual" not in name
    ]
    if not candidates:
        raise ValueError(f"cannot find the decoder blocks of {type(model).__name__}: no ModuleList named '*layers' outside the vision tower")
    return max(candidates, key=lambda nm: len(nm[1]))


def _is_local_path(model_id: str) -> bool:
    return model_id.startswith((".", "/", "~")) or os.path.exists(model_id)


def load_model(model_id: str, device: str = "auto", dtype: str = "auto", chat_template: str | None = None) -> ModelBundle:
    """Load model + processor with the Auto classes, exactly as for a hub checkpoint.

    ``chat_template`` (a Jinja file) replaces the processor's template; without it the processor's
    own is used, else its tokenizer's (Chameleon's reloaded processor keeps it only there)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = os.path.expanduser(model_id)
    if _is_local_path(model_id) and not os.path.isdir(path):
        raise FileNotFoundError(f"model path {path} does not exist; pass a local save_pretrained directory or a hub id (e.g. llava-hf/llava-v1.6-mistral-7b-hf)")
    template = read_chat_template(chat_template) if chat_template is not None else None
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dt).to(dev).eval()
    if not hasattr(processor, "tokenizer") or not hasattr(processor, "image_processor"):
        raise ValueError(f"{model_id} has no image-text processor (got {type(processor).__name__}); saev needs a multimodal processor")
    tok = processor.tokenizer
    use_chat_template(processor, template)
    # Right padding keeps every real token at the position it has when run alone.
    tok.padding_side = "right"
    image_token_id = getattr(model.config, "image_token_id", None) or getattr(model.config, "image_token_index", None)
    if image_token_id is None:
        image_token_id = tok.convert_tokens_to_ids(getattr(processor, "image_token", "<image>"))
    special = set(tok.all_special_ids) - {int(image_token_id)}
    text_cfg = getattr(model.config, "text_config", None) or model.config
    max_length = int(getattr(text_cfg, "max_position_embeddings", 0) or tok.model_max_length)
    path_name, layers = find_decoder_layers(model)
    cross = bool(getattr(text_cfg, "cross_attention_layers", None))
    return ModelBundle(model, processor, model_id, layers, path_name, int(image_token_id), frozenset(special), max_length, dev, dt, cross)


def check_layer(bundle: ModelBundle, layer: int) -> int:
    """Normalise a (possibly negative) layer index, failing clearly when out of range."""
    n = bundle.n_layers
    if not -n <= layer < n:
        raise ValueError(f"layer {layer} is out of range: {bundle.model_id} has {n} decoder blocks (valid: 0..{n - 1} or -{n}..-1)")
    return layer % n


@contextlib.contextmanager
def capture_residual(layers: nn.ModuleList, layer: int, stop: bool = True) -> Iterator[dict]:
    """Capture the residual stream after decoder block ``layer`` into ``box['act']``.

    This equals ``hidden_states[layer + 1]`` of ``output_hidden_states=True`` for every block
    but the last: transformers puts the final norm's output in ``hidden_states[-1]``, while the
    hook sees the last block's own output, before that norm. With ``stop``
    the hook raises :class:`StopForward` so later blocks and the LM head never run; the caller
    wraps the forward in ``with contextlib.suppress(StopForward)``.
    """
    box: dict = {}

    def hook(_module, _inputs, output):
        box["act"] = output[0] if isinstance(output, tuple) else output
        if stop:
            raise StopForward

    handle = layers[layer].register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()
