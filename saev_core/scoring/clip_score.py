"""The CLIP score: cosine of an image-text model's image and text embeddings (DataComp's filter).

The baseline data-filtering practitioners compare against, and the one external model saev is
measured beside: any Hugging Face CLIP or SigLIP checkpoint (hub id or local path), loaded with
``AutoModel``, ``AutoTokenizer`` and ``AutoImageProcessor`` and batched on CUDA or the CPU.

    clip_score(s) = cos(E_img(image(s)), E_txt(text(s)))

text(s) is the question followed by the response (the SFT answer or the chosen answer), the text
the sample asks a model to tie to its image; it is truncated to the text tower's context.
SigLIP's text tower pools its last position and was trained on max-length padding, so it gets
that padding; CLIP pools at the end-of-text token and gets the batch's longest.
"""

from __future__ import annotations

from typing import Iterable

import torch

from saev_core.activations.data import Sample, batched


def features(out) -> torch.Tensor:
    """The projected embeddings of ``get_image_features`` / ``get_text_features``: a tensor, or in
    transformers >= 5 a model output holding them in ``pooler_output``."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def sample_text(s: Sample) -> str:
    """What the text tower reads for a sample: the question, then the response if there is one."""
    return s.question if not s.response else f"{s.question} {s.response}"


class ClipScorer:
    """An image-text model ready to embed batches; ``score`` gives the cosine per sample."""

    def __init__(self, model: str, device: str = "auto", dtype: torch.dtype = torch.float32):
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        from saev_core.activations.modeling import resolve_device

        try:
            self.model = AutoModel.from_pretrained(model, torch_dtype=dtype)
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.image_processor = AutoImageProcessor.from_pretrained(model)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot load a CLIP/SigLIP model from {model!r} ({str(e).splitlines()[0]}): "
                             "pass a hub id such as openai/clip-vit-base-patch32 or a local save_pretrained directory") from e
        if not (hasattr(self.model, "get_image_features") and hasattr(self.model, "get_text_features")):
            raise ValueError(f"{model!r} is a {type(self.model).__name__}, not a dual image-text encoder (CLIP, SigLIP): "
                             "clip_score needs get_image_features and get_text_features")
        self.device = resolve_device(device)
        self.model.to(self.device).eval()
        text_cfg = getattr(self.model.config, "text_config", self.model.config)
        self.max_length = int(getattr(text_cfg, "max_position_embeddings", 77))
        self.pad_to_max = self.model.config.model_type.startswith("siglip")

    @torch.inference_mode()
    def score(self, samples: list[Sample]) -> list[float]:
        text = self.tokenizer([sample_text(s) for s in samples], padding="max_length" if self.pad_to_max else True,
                              truncation=True, max_length=self.max_length, return_tensors="pt").to(self.device)
        pixels = self.image_processor(images=[s.image.convert("RGB") for s in samples], return_tensors="pt")["pixel_values"]
        img = features(self.model.get_image_features(pixel_values=pixels.to(self.device, self.model.dtype)))
        txt = features(self.model.get_text_features(**{k: v for k, v in text.items() if k != "token_type_ids"}))
        return torch.nn.functional.cosine_similarity(img.float(), txt.float(), dim=-1).tolist()


def clip_scores(model: str, samples: Iterable[Sample], batch_size: int = 64, device: str = "auto",
                progress: bool = False) -> dict[str, float]:
    """clip_score per sample_id for ``samples`` (any iterable of ``Sample``), ``batch_size`` at a time."""
    from tqdm.auto import tqdm

    scorer = ClipScorer(model, device)
    out: dict[str, float] = {}
    with tqdm(desc="clip_score", unit="sample", disable=not progress) as bar:
        for batch in batched(samples, batch_size):
            out.update(zip((s.sample_id for s in batch), scorer.score(batch)))
            bar.update(len(batch))
    return out
