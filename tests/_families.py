"""Tiny random-weight image-text-to-text models, one per family, for the test suite's model matrix.

Each builder makes a model from config (no hub access) and pairs it with its family's *real*
processor class, a word-level tokenizer (a small word list plus the family's real special tokens)
and a chat template in the family's real style. The pipeline meets real checkpoints through these
same classes, so their quirks are reproduced on purpose rather than smoothed over:

- BOS: Gemma3, Idefics3 and Mllama templates render a BOS *and* their tokenizers add one, so the
  rendered prompt tokenised the default way (and the processor called on it) starts with two;
  LLaVA, LLaVA-NeXT and Chameleon get theirs from the tokenizer only; SmolVLM's template starts
  with ``<|im_start|>``, its BOS, and its tokenizer adds none; Qwen2-VL/2.5-VL have no BOS;
  PaliGemma's processor puts the one BOS *after* the image tokens.
- templates: PaliGemma ships none; ``ChameleonProcessor`` cannot hold one (no ``chat_template``
  argument), so Chameleon's lives on the tokenizer and ``processor.apply_chat_template`` fails.
- images: Gemma3, SmolVLM and Mllama read a flat image list as one sample's images, so a batch
  needs ``[[img1], [img2]]``; the others accept either. LLaVA-NeXT tiles any-resolution images;
  Idefics3/SmolVLM split into ``<row_i_col_j>`` tiles plus a global image; Qwen2-VL flattens
  patches with ``image_grid_thw``; Mllama reads images by cross-attention (one ``<|image|>`` token,
  ``cross_attention_mask``; its text stack is self/cross/self attention).
- padding side: left for LLaVA, LLaVA-NeXT, Gemma3, Idefics3, PaliGemma; right for the rest, so
  both paths are exercised.

Qwen2-VL, Qwen2.5-VL and SmolVLM processors cannot be built or loaded without a video processor,
i.e. without torchvision; SmolVLM also needs ``num2words``. ``missing_requirements(name)`` says
what is absent, for a skip.

Usage: ``facts = build_family("gemma3", tmp_path / "gemma3")``, then load the folder with
``AutoModelForImageTextToText`` / ``AutoProcessor`` as a hub checkpoint would be.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

from saev_core.activations.torchvision_compat import ensure_torchvision

ensure_torchvision()  # before transformers' image and video modules import it

from transformers import PreTrainedTokenizerFast  # noqa: E402

FAMILIES: tuple[str, ...] = (
    "llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "gemma3",
    "idefics3", "smolvlm", "chameleon", "mllama", "paligemma",
)

# Plain words every template and test prompt uses; punctuation is split off by the Whitespace
# pre-tokenizer, so ":" "?" "." "[" "]" "[/" are words too. Anything else maps to <unk>.
WORDS: tuple[str, ...] = (
    "describe", "the", "image", "what", "color", "shape", "is", "it", "this", "there", "of", "and",
    "red", "blue", "green", "yellow", "square", "circle", "triangle", "a", "an", "at", "in",
    "top", "bottom", "left", "right", "one", "two", "yes", "no",
    "USER", "ASSISTANT", "User", "Assistant", "user", "assistant", "system", "model",
    "You", "are", "helpful", "INST",
    ":", "?", ".", ",", "[", "]", "[/",
)
NEWLINE = "\n"  # an added (non-special) token: templates and processors use newlines as real tokens

# Small enough for a sub-second forward pass on CPU, big enough to keep every family's shapes honest.
HIDDEN, LAYERS, HEADS, HEAD_DIM = 64, 2, 4, 16
VISION_HIDDEN, VISION_LAYERS, VISION_HEADS = 32, 2, 2
IMAGE, PATCH = 32, 8  # a 4x4 patch grid per image (or per tile)
MAX_POSITIONS = 512


def _tokenizer(
    specials: list[str],
    *,
    bos: str | None,
    eos: str,
    pad: str,
    add_bos: bool,
    padding_side: str,
    named: dict[str, str] | None = None,
    unk: str = "<unk>",
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer: ``specials`` (ids first, in order; ``unk`` first unless listed) + NEWLINE + WORDS.

    Every special is registered as a special added token so the pre-tokenizer never splits it;
    ``named`` sets the attributes processors look up (``tokenizer.image_token`` and the like).
    ``add_bos`` reproduces whether the family's tokenizer prepends BOS itself.
    """
    specials = specials if unk in specials else [unk, *specials]
    tokens = list(dict.fromkeys([*specials, NEWLINE, *WORDS]))
    core = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(tokens)}, unk_token=unk))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=unk,
        add_bos_token=add_bos,
        extra_special_tokens=named or {},
        model_max_length=MAX_POSITIONS,
        padding_side=padding_side,
    )
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in specials], special_tokens=True)
    tok.add_tokens([AddedToken(NEWLINE, normalized=False)])
    return tok


def _ids(tok: PreTrainedTokenizerFast, **tokens: str) -> dict[str, int]:
    return {k: tok.convert_tokens_to_ids(v) for k, v in tokens.items()}


def _llama(tok: PreTrainedTokenizerFast, **over) -> dict:
    """A Llama-style text config (also Mistral's) as a dict, sized by the module constants."""
    return dict(
        model_type=over.pop("model_type", "llama"), vocab_size=len(tok), hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        num_key_value_heads=HEADS, head_dim=HEAD_DIM, max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        **over,
    )


def _siglip(**over) -> dict:
    return dict(
        model_type="siglip_vision_model", hidden_size=VISION_HIDDEN, intermediate_size=2 * VISION_HIDDEN,
        num_hidden_layers=VISION_LAYERS, num_attention_heads=VISION_HEADS, image_size=IMAGE,
        patch_size=PATCH, **over,
    )


# Resize the short side to IMAGE, then centre-crop a square (CLIP-style preprocessing).
_CLIP_IMAGE = dict(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE})


def _facts(image_token: str, image_tokens: int, placeholder: str | None = None) -> dict:
    """Per-family facts: the token input_ids repeat per image, how many of it one 48x48 image
    expands to, and what the chat template renders per image (the same token unless given)."""
    return {"image_token": image_token, "image_tokens": image_tokens, "placeholder": placeholder or image_token}


def _clip() -> dict:
    return dict(
        model_type="clip_vision_model", hidden_size=VISION_HIDDEN, intermediate_size=2 * VISION_HIDDEN,
        num_hidden_layers=VISION_LAYERS, num_attention_heads=VISION_HEADS, image_size=IMAGE,
        patch_size=PATCH, projection_dim=VISION_HIDDEN,
    )


# ----------------------------------------------------------------------------------------------
# Templates, each in its family's real style (the hub templates minus tool/system branches where
# those do not change what an image+text conversation renders to).

# llava-hf/llava-1.5: no BOS in the template (the Llama tokenizer adds it), images before text.
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}"
    "{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# llava-hf/llava-v1.6-mistral: Mistral [INST] format, BOS from the tokenizer. (The hub template
# closes answers with a mistyped '<\\s>'; this one uses '</s>' so the answer end is a real token.)
LLAVA_NEXT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'][0]['text'] + '</s> '}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

# Qwen/Qwen2-VL-*-Instruct (Qwen2.5-VL ships the same): default system turn, no BOS anywhere.
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# google/gemma-3-*-it: renders {{ bos_token }} although the Gemma tokenizer also adds one.
GEMMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

# HuggingFaceM4/Idefics3-8B-Llama3 renders a literal <|begin_of_text|> (its Llama-3 tokenizer adds
# another); SmolVLM's starts with <|im_start|>, which is its BOS, and its tokenizer adds none.
_IDEFICS_BODY = (
    "{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
IDEFICS3_TEMPLATE = "<|begin_of_text|>" + _IDEFICS_BODY
SMOLVLM_TEMPLATE = "<|im_start|>" + _IDEFICS_BODY

# meta-llama/Llama-3.2-*-Vision-Instruct: renders {{ bos_token }} (the tokenizer adds one too); with
# an image in the conversation the hub template emits no default system turn.
MLLAMA_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for content in message['content'] %}"
    "{%- if content['type'] == 'image' %}{{- '<|image|>' }}"
    "{%- elif content['type'] == 'text' %}{{- content['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)

# facebook/chameleon-7b: LLaVA-1.5 style, BOS from the tokenizer.
CHAMELEON_TEMPLATE = LLAVA_TEMPLATE

# PaliGemma ships no template: the prompt is "<image>..." + prefix, and the processor inserts BOS
# after the image tokens and "\n" at the end. This optional one renders exactly that prefix.
PALIGEMMA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{% else %}{{ '\n' + message['content'][0]['text'] + eos_token }}{% endif %}{% endfor %}"
)


# ----------------------------------------------------------------------------------------------
# Builders: each returns (model, processor, facts) with the family's shipped chat template.


def _llama_tokenizer() -> PreTrainedTokenizerFast:
    """LLaVA's (Llama) and LLaVA-NeXT's (Mistral) tokenizers: sentencepiece specials, BOS added."""
    return _tokenizer(["<unk>", "<s>", "</s>", "<pad>", "<image>"], bos="<s>", eos="</s>", pad="<pad>",
                      add_bos=True, padding_side="left", named={"image_token": "<image>"})


def _llava():
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = _llama_tokenizer()
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(**_CLIP_IMAGE),
        tokenizer=tok, patch_size=PATCH, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE, image_token="<image>",
    )
    config = LlavaConfig(
        vision_config=_clip(), text_config=_llama(tok), image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=(IMAGE // PATCH) ** 2, vision_feature_select_strategy="default", vision_feature_layer=-2,
    )
    return LlavaForConditionalGeneration(config), processor, _facts("<image>", 16)


def _llava_next():
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    # Any-resolution: a 48x48 image best fits 64x64, i.e. 2x2 tiles of 32 px plus the downscaled whole
    # image (5 crops), unpadded to 88 image tokens (4x4 base + 8x8 tiled + 8 row newlines).
    pinpoints = [[IMAGE, 2 * IMAGE], [2 * IMAGE, IMAGE], [2 * IMAGE, 2 * IMAGE]]
    tok = _llama_tokenizer()
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessorPil(**_CLIP_IMAGE, image_grid_pinpoints=pinpoints),
        tokenizer=tok, patch_size=PATCH, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=LLAVA_NEXT_TEMPLATE, image_token="<image>",
    )
    config = LlavaNextConfig(
        vision_config=_clip(), text_config=_llama(tok, model_type="mistral", sliding_window=None),
        image_token_index=tok.convert_tokens_to_ids("<image>"), image_grid_pinpoints=pinpoints,
        image_seq_length=(IMAGE // PATCH) ** 2, vision_feature_select_strategy="default", vision_feature_layer=-2,
    )
    return LlavaNextForConditionalGeneration(config), processor, _facts("<image>", 88)


def _qwen_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
    return _tokenizer(specials, bos=None, eos="<|im_end|>", pad="<|endoftext|>", add_bos=False, padding_side="right",
                      named={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                             "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>"})


def _qwen_processor(cls, tok):
    """Qwen2-VL/2.5-VL processors insist on a video processor, which needs torchvision."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    # 48x48 px stays 48x48 (a multiple of patch*merge=16): a 6x6 patch grid, 9 merged image tokens.
    pixels = {"shortest_edge": 16 * 16, "longest_edge": 64 * 64}
    kw = dict(patch_size=PATCH, temporal_patch_size=2, merge_size=2, size=pixels)
    return cls(image_processor=Qwen2VLImageProcessorPil(**kw), tokenizer=tok,
               video_processor=Qwen2VLVideoProcessor(**kw), chat_template=QWEN2_VL_TEMPLATE)


def _qwen_text(tok) -> dict:
    # mrope splits head_dim/2 = 8 rotary frequencies over (time, height, width).
    return dict(
        vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=MAX_POSITIONS,
        rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
        bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )


def _qwen_ids(tok) -> dict:
    return _ids(tok, image_token_id="<|image_pad|>", video_token_id="<|video_pad|>",
                vision_start_token_id="<|vision_start|>", vision_end_token_id="<|vision_end|>")


def _qwen2_vl():
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    tok = _qwen_tokenizer()
    processor = _qwen_processor(Qwen2VLProcessor, tok)
    vision = dict(depth=VISION_LAYERS, embed_dim=VISION_HIDDEN, hidden_size=HIDDEN, num_heads=VISION_HEADS,
                  patch_size=PATCH, spatial_merge_size=2, temporal_patch_size=2)
    config = Qwen2VLConfig(text_config=_qwen_text(tok), vision_config=vision, **_qwen_ids(tok))
    facts = _facts("<|image_pad|>", 9, placeholder="<|vision_start|><|image_pad|><|vision_end|>")
    return Qwen2VLForConditionalGeneration(config), processor, facts


def _qwen2_5_vl():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    tok = _qwen_tokenizer()
    processor = _qwen_processor(Qwen2_5_VLProcessor, tok)
    # window_size is in pixels: 32 px = 2x2 merged tokens per attention window; block 1 attends fully.
    vision = dict(depth=VISION_LAYERS, hidden_size=VISION_HIDDEN, intermediate_size=2 * VISION_HIDDEN,
                  num_heads=VISION_HEADS, out_hidden_size=HIDDEN, patch_size=PATCH, spatial_merge_size=2,
                  temporal_patch_size=2, window_size=32, fullatt_block_indexes=[1])
    config = Qwen2_5_VLConfig(text_config=_qwen_text(tok), vision_config=vision, **_qwen_ids(tok))
    facts = _facts("<|image_pad|>", 9, placeholder="<|vision_start|><|image_pad|><|vision_end|>")
    return Qwen2_5_VLForConditionalGeneration(config), processor, facts


def _gemma3():
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>",
                "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
    tok = _tokenizer(specials, bos="<bos>", eos="<eos>", pad="<pad>", add_bos=True, padding_side="left",
                     named={"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                            "eoi_token": "<end_of_image>"})
    tokens_per_image = 4  # the 4x4 SigLIP patch grid average-pooled to 2x2
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": IMAGE, "width": IMAGE}),
        tokenizer=tok, chat_template=GEMMA3_TEMPLATE, image_seq_length=tokens_per_image,
    )
    text = dict(
        vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=HEADS, head_dim=HEAD_DIM, query_pre_attn_scalar=HEAD_DIM,
        max_position_embeddings=MAX_POSITIONS, sliding_window=64, layer_types=["sliding_attention", "full_attention"],
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    config = Gemma3Config(
        text_config=text, vision_config=_siglip(vision_use_head=False), mm_tokens_per_image=tokens_per_image,
        **_ids(tok, boi_token_index="<start_of_image>", eoi_token_index="<end_of_image>",
               image_token_index="<image_soft_token>"),
    )
    facts = _facts("<image_soft_token>", 4, placeholder="<start_of_image>")
    return Gemma3ForConditionalGeneration(config), processor, facts


# Idefics3 and SmolVLM name every tile of a split image: <row_1_col_1> ... <row_6_col_6>.
_TILE_TOKENS = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
_IDEFICS_IMAGE = dict(size={"longest_edge": 2 * IMAGE}, max_image_size={"longest_edge": IMAGE}, do_image_splitting=True)


def _idefics_vision() -> dict:
    return dict(hidden_size=VISION_HIDDEN, intermediate_size=2 * VISION_HIDDEN, num_hidden_layers=VISION_LAYERS,
                num_attention_heads=VISION_HEADS, image_size=IMAGE, patch_size=PATCH)


def _idefics3():
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<fake_token_around_image>",
                "<image>", "<end_of_utterance>", "<global-img>", *_TILE_TOKENS]
    tok = _tokenizer(specials, bos="<|begin_of_text|>", eos="<|end_of_text|>", pad="<|reserved_special_token_0|>",
                     add_bos=True, padding_side="left")
    # A 48x48 image is resized to 64x64 and split into 2x2 tiles of 32 px plus the whole image at
    # 32 px; each is 16 patches pixel-shuffled (scale_factor 2) into 4 tokens: 5 x 4 = 20.
    seq_len = (IMAGE // PATCH) ** 2 // 4
    processor = Idefics3Processor(image_processor=Idefics3ImageProcessorPil(**_IDEFICS_IMAGE), tokenizer=tok,
                                  image_seq_len=seq_len, chat_template=IDEFICS3_TEMPLATE)
    config = Idefics3Config(vision_config=_idefics_vision(), text_config=_llama(tok), scale_factor=2,
                            image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id)
    return Idefics3ForConditionalGeneration(config), processor, _facts("<image>", 20)


def _smolvlm():
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMProcessor
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil
    from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<fake_token_around_image>", "<image>",
                "<end_of_utterance>", "<global-img>", "<video>", *_TILE_TOKENS]
    tok = _tokenizer(specials, bos="<|im_start|>", eos="<end_of_utterance>", pad="<|im_end|>", unk="<|endoftext|>",
                     add_bos=False, padding_side="right",
                     named={"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
                            "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>",
                            "video_token": "<video>"})
    seq_len = (IMAGE // PATCH) ** 2 // 4
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessorPil(**_IDEFICS_IMAGE), tokenizer=tok,
        video_processor=SmolVLMVideoProcessor(size={"longest_edge": IMAGE}, max_image_size={"longest_edge": IMAGE}),
        image_seq_len=seq_len, chat_template=SMOLVLM_TEMPLATE,
    )
    config = SmolVLMConfig(vision_config=_idefics_vision(), text_config=_llama(tok), scale_factor=2,
                           image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id)
    return SmolVLMForConditionalGeneration(config), processor, _facts("<image>", 20)


def _chameleon():
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration, ChameleonProcessor
    from transformers.models.chameleon.image_processing_pil_chameleon import ChameleonImageProcessorPil

    # The VQ-VAE's codes reach the text model as BPE tokens named "IMGIMG" + the code in letters
    # (A=0 ... J=9) + one trailing char; ChameleonImageVocabularyMapping parses exactly that.
    codes = 16
    image_words = ["IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(c)) + "Z" for c in range(codes)]
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>", "<racm3:break>", "<eoss>", "<reserved08706>", *image_words]
    tok = _tokenizer(specials, bos="<s>", eos="</s>", pad="<pad>", add_bos=True, padding_side="right",
                     named={"image_token": "<image>", "boi_token": "<racm3:break>", "eoi_token": "<eoss>"})
    tok.sep_token = "<reserved08706>"  # ChameleonProcessor appends it to every prompt (chat mode)
    tok.chat_template = CHAMELEON_TEMPLATE  # the processor has no slot for one
    # ch_mult (1, 1, 2, 2): three 2x downsamplings, so a 32 px image becomes 4x4 = 16 codes.
    # (32 channels: the VQ-VAE's GroupNorms use 32 groups.)
    vq = dict(embed_dim=32, num_embeddings=codes, latent_channels=32, resolution=IMAGE, base_channels=32,
              channel_multiplier=[1, 1, 2, 2], num_res_blocks=1, attn_resolutions=[])
    seq_len = (IMAGE // 8) ** 2
    processor = ChameleonProcessor(
        image_processor=ChameleonImageProcessorPil(**_CLIP_IMAGE),
        tokenizer=tok, image_seq_length=seq_len,
    )
    config = ChameleonConfig(
        vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        vq_config=vq, vocabulary_map=tok.get_vocab(),
    )
    return ChameleonForConditionalGeneration(config), processor, _facts("<image>", 16)


def _mllama():
    from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaProcessor
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|eot_id|>", "<|python_tag|>", "<|image|>"]
    tok = _tokenizer(specials, bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|finetune_right_pad_id|>",
                     add_bos=True, padding_side="right", named={"image_token": "<|image|>"})
    tiles = 2
    processor = MllamaProcessor(
        image_processor=MllamaImageProcessorPil(size={"height": IMAGE, "width": IMAGE}, max_image_tiles=tiles),
        tokenizer=tok, chat_template=MLLAMA_TEMPLATE,
    )
    # Three text layers, the middle one cross-attention (the real 11B has one every five layers).
    text = dict(
        vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS + 1,
        num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=MAX_POSITIONS,
        cross_attention_layers=[1], bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    vision = dict(
        hidden_size=VISION_HIDDEN, intermediate_size=2 * VISION_HIDDEN, num_hidden_layers=VISION_LAYERS,
        num_global_layers=1, attention_heads=VISION_HEADS, image_size=IMAGE, patch_size=PATCH,
        max_num_tiles=tiles, supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]],  # what max_image_tiles=2 allows
        intermediate_layers_indices=[0], vision_output_dim=2 * VISION_HIDDEN,
    )
    config = MllamaConfig(vision_config=vision, text_config=text,
                          image_token_index=tok.convert_tokens_to_ids("<|image|>"))
    return MllamaForConditionalGeneration(config), processor, _facts("<|image|>", 1)


def _paligemma():
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    tok = _tokenizer(["<pad>", "<eos>", "<bos>", "<unk>", "<image>"], bos="<bos>", eos="<eos>", pad="<pad>",
                     add_bos=True, padding_side="left", named={"image_token": "<image>"})
    image_processor = SiglipImageProcessorPil(size={"height": IMAGE, "width": IMAGE})
    image_processor.image_seq_length = (IMAGE // PATCH) ** 2  # the real preprocessor_config carries it too
    # The processor adds 1024 <locNNNN> + 128 <segNNN> tokens and turns the tokenizer's BOS off.
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)  # ships no chat template
    text = dict(
        model_type="gemma", vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=HEADS, head_dim=HEAD_DIM,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    config = PaliGemmaConfig(
        vision_config=_siglip(projection_dim=HIDDEN), text_config=text, projection_dim=HIDDEN, hidden_size=HIDDEN,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
    )
    return PaliGemmaForConditionalGeneration(config), processor, _facts("<image>", 16)


_BUILDERS: dict[str, Callable] = {
    "llava": _llava, "llava_next": _llava_next, "qwen2_vl": _qwen2_vl, "qwen2_5_vl": _qwen2_5_vl,
    "gemma3": _gemma3, "idefics3": _idefics3, "smolvlm": _smolvlm, "chameleon": _chameleon,
    "mllama": _mllama, "paligemma": _paligemma,
}
# Their processors cannot even be constructed without a video processor, i.e. without torchvision.
NEEDS_TORCHVISION = frozenset({"qwen2_vl", "qwen2_5_vl", "smolvlm"})
# Processors that read a flat image list as ONE sample's images, so a batch needs [[img1], [img2]].
NESTED_IMAGES_ONLY = frozenset({"gemma3", "smolvlm", "mllama"})


def missing_requirements(name: str) -> tuple[str, ...]:
    """Optional packages family ``name`` needs that are not installed (for ``pytest.skip``)."""
    from transformers.utils import is_num2words_available, is_torchvision_available

    missing = []
    if name in NEEDS_TORCHVISION and not is_torchvision_available():
        missing.append("torchvision")
    if name == "smolvlm" and not is_num2words_available():
        missing.append("num2words")
    return tuple(missing)


def decoder_layers_path(model: torch.nn.Module) -> str:
    """Dotted path of the text decoder's layer ModuleList: the ``layers`` next to ``embed_tokens``."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.endswith("layers"):
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            if hasattr(parent, "embed_tokens"):
                return name
    raise LookupError(f"no text decoder layers found in {type(model).__name__}")


def _template_renders_bos(processor, tok) -> bool:
    template = processor.chat_template or tok.chat_template
    if template is None or tok.bos_token is None:
        return False
    text = tok.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "what"}]}],
                                   chat_template=template, tokenize=False)
    return text.startswith(tok.bos_token)


def build_family(name: str, out: Path, *, template: bool | None = None, padding_side: str | None = None,
                 seed: int = 0) -> dict:
    """Build family ``name``, save model + processor into ``out`` (hub layout), return its facts.

    ``template``: None keeps what the real family ships (PaliGemma: no chat template; Chameleon: on
    the tokenizer only, as its processor cannot hold one); False strips the template; True also
    gives PaliGemma one (``PALIGEMMA_TEMPLATE``). ``padding_side`` overrides the family's default.
    """
    if name not in _BUILDERS:
        raise KeyError(f"unknown family {name!r}; known: {', '.join(FAMILIES)}")
    if missing := missing_requirements(name):
        raise ImportError(f"family {name!r} needs {' and '.join(missing)}")
    torch.manual_seed(seed)
    model, processor, facts = _BUILDERS[name]()
    tok = processor.tokenizer
    if template is False:
        processor.chat_template = tok.chat_template = None
    elif template and name == "paligemma":
        processor.chat_template = PALIGEMMA_TEMPLATE
    if padding_side is not None:
        tok.padding_side = padding_side
    model.eval()
    out = Path(out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    text_config = model.config.get_text_config()
    return {
        "family": name,
        "model_class": type(model).__name__,
        "processor_class": type(processor).__name__,
        **facts,  # image_token, image_tokens, placeholder: see _facts
        "image_token_id": tok.convert_tokens_to_ids(facts["image_token"]),
        "bos_token": tok.bos_token,
        "bos_token_id": tok.bos_token_id,
        "tokenizer_adds_bos": tok.bos_token is not None and tok("a")["input_ids"][:1] == [tok.bos_token_id],
        "template_renders_bos": _template_renders_bos(processor, tok),
        "padding_side": tok.padding_side,
        # Where the template is found after reloading: the processor (which then also hands it
        # to the tokenizer), the tokenizer only (Chameleon), or nowhere (PaliGemma as shipped).
        "chat_template": "processor" if processor.chat_template else "tokenizer" if tok.chat_template else None,
        "nested_images_only": name in NESTED_IMAGES_ONLY,
        "cross_attention": bool(getattr(text_config, "cross_attention_layers", None)),
        "needs_torchvision": name in NEEDS_TORCHVISION,
        "decoder_layers": decoder_layers_path(model),
        "num_layers": text_config.num_hidden_layers,
        "hidden_size": text_config.hidden_size,
    }
