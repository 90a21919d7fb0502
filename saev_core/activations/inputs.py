"""The one path from samples to a model's inputs, for every image-text-to-text processor.

Dump, SAE evaluation, model evaluation and generation all render a conversation with the
model's chat template and run the processor on it; doing that in four places let four variants
of the same defects in (a doubled BOS, a flat image list that Gemma3, SmolVLM and Mllama read as
one prompt with N images, pixel values left in float32 beside a bf16 model). Here it is done once:

- ``render``: the chat template of the processor, or of its tokenizer (Chameleon keeps it
  there); a clear error when there is none.
- ``encode``: one image per prompt, as a nested list (``[[img1], [img2]]``), which every
  processor reads as one image per sample; special tokens are left to the template when the
  rendered text already starts with BOS, so a prompt never starts with two.
- ``to_model``: every tensor to the model's device, every floating tensor to its dtype.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from saev_core.activations.prompts import conversation


class NoChatTemplate(ValueError):
    """The processor (and its tokenizer) carries no chat template, and none was given."""


def chat_template(processor) -> str | None:
    """The processor's chat template, else its tokenizer's (``modeling.load_model`` puts a
    user-given one on the processor)."""
    return getattr(processor, "chat_template", None) or getattr(getattr(processor, "tokenizer", None), "chat_template", None)


def read_chat_template(path: str) -> str:
    """The text of a Jinja chat template file, failing clearly when it is missing."""
    template = Path(path).expanduser()
    if not template.is_file():
        raise FileNotFoundError(f"chat template file {template} does not exist; pass a Jinja template file (--chat-template FILE)")
    return template.read_text()


def chat_template_digest(path: str | None) -> str | None:
    """sha256 of a template file's content, so a config's identity changes when the file does."""
    return None if path is None else hashlib.sha256(read_chat_template(path).encode()).hexdigest()


def use_chat_template(processor, template: str | None = None) -> None:
    """Put the one template every stage renders with on the processor (where TRL looks too): the
    given text (a ``--chat-template`` file's), else the processor's own, else its tokenizer's
    (Chameleon keeps it there)."""
    processor.chat_template = template or chat_template(processor)


def render(processor, question: str, response: str | None = None, *, with_image: bool = True) -> str:
    """The conversation (image, question[, response]) as the model's chat template writes it,
    with the generation prompt exactly when there is no response to render."""
    tmpl = chat_template(processor)
    if tmpl is None:
        raise NoChatTemplate(f"the processor {type(processor).__name__} has no chat template; pass --chat-template FILE "
                             "(a Jinja template in the model's own format) or set chat_template in the config")
    return processor.apply_chat_template(conversation(question, response, with_image), chat_template=tmpl,
                                         add_generation_prompt=response is None, tokenize=False)


def encode(processor, texts: list[str], images: list | None = None) -> dict:
    """Tokenise rendered ``texts`` (with one image each, or none) into padded tensors.

    The template decides the special tokens whenever it renders a BOS itself; otherwise the
    tokenizer adds its own as usual. Padding follows the tokenizer's ``padding_side``."""
    tok = processor.tokenizer
    kwargs = {"return_tensors": "pt", "padding": True}
    if tok.bos_token and texts and all(t.startswith(tok.bos_token) for t in texts):
        kwargs["add_special_tokens"] = False
    if images is None:
        return dict(tok(texts, **kwargs))
    return dict(processor(images=[[im] for im in images], text=texts, **kwargs))


def to_model(inputs: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """Every tensor on ``device``; floating ones (pixel values of any layout) in the model's ``dtype``."""
    out = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)
        out[k] = v
    return out
