"""The demo world: deterministic data whose low-quality rows break the image-text relation,
and a tiny LLaVA that loads like a hub model and really reads the image."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch

from saev_core.data import DatasetSpec, Sample, iter_samples, open_dataset
from saev_core.demo.build import build_world
from saev_core.demo.scenes import CORRUPTIONS, SHAPES, Scene, make_rows

from conftest import TEST_WORLD


def test_rows_are_deterministic_from_seed():
    a, b, c = make_rows(30, 7), make_rows(30, 7), make_rows(30, 8)
    key = lambda rows: [(r["question"], r["chosen"], r["rejected"], r["image"].tobytes()) for r in rows]  # noqa: E731
    assert key(a) == key(b)
    assert key(a) != key(c)


def test_low_quality_fraction_and_kinds():
    rows = make_rows(300, 0, low_quality_fraction=0.35)
    bad = [r for r in rows if not r["is_clean"]]
    assert len(bad) == 105
    assert {r["corruption"] for r in bad} == set(CORRUPTIONS)
    assert all(r["corruption"] == "none" for r in rows if r["is_clean"])
    assert sum(not r["is_clean"] for r in make_rows(100, 0, low_quality_fraction=0.0)) == 0


def _mentioned(text, vocab):
    return {w for w in vocab if w in text.split()}


def test_clean_rows_agree_with_the_image_and_corrupt_rows_do_not():
    for r in make_rows(400, 3):
        scene = r["scene"]  # what the image shows
        asked_shapes = _mentioned(r["question"], SHAPES)
        if r["corruption"] == "none":
            assert r["key"] in scene  # the correct attribute is in the picture
            assert all(s in scene for s in asked_shapes)
            assert f" {r['key']} " in f" {r['chosen']} " and r["chosen"] != r["rejected"]
        elif r["corruption"] == "absent_object" and r["question_kind"] != "shape_at_position":
            assert not all(s in scene for s in asked_shapes), r
        elif r["corruption"] == "mismatched_answer":
            assert r["key"] in scene  # the question is about this image ...
            assert f" {r['key']} " not in f" {r['chosen']} "  # ... but the answer is not


def test_scene_descriptions_parse_back():
    for r in make_rows(50, 1):
        assert Scene.parse(r["scene"]).describe() == r["scene"]
    with pytest.raises(ValueError, match="not a scene description"):
        Scene.parse("red blob at the top")


def test_slot_targets_by_hand():
    """A 4x4 patch grid over the 2x2 scene grid: the red circle at the top right fills patches
    2, 3, 6, 7 with (E[red] + E[circle]) / sqrt 2; every other patch is E[<pad>]."""
    from saev_core.demo.model import build_tokenizer
    from saev_core.demo.pretrain import slot_targets

    tok = build_tokenizer()
    embed = torch.randn(len(tok), 8)
    out = slot_targets(embed, tok, [{"scene": "red circle at top right"}], grid=4)
    ids = tok.convert_tokens_to_ids
    obj = (embed[ids("red")] + embed[ids("circle")]) / 2 ** 0.5
    for p in range(16):
        want = obj if p in (2, 3, 6, 7) else embed[tok.pad_token_id]
        assert torch.allclose(out[0, p], want), p


def test_world_layout_and_eval_labels_are_separate(world_dir, world):
    assert world["config"] == TEST_WORLD.model_dump()
    for name, info in world["datasets"].items():
        table = pq.read_table(world_dir / info["path"])
        assert "is_clean" not in table.column_names and "corruption" not in table.column_names
        assert table.num_rows == TEST_WORLD.n_samples
    labels = pq.read_table(world_dir / "labels.parquet").to_pylist()
    spec = DatasetSpec(path=str(world_dir / world["datasets"]["demo-rlaif"]["path"]))
    ids = {s.sample_id for s in iter_samples(open_dataset(spec), spec) if isinstance(s, Sample)}
    rlaif = {row["sample_id"] for row in labels if row["dataset"] == "demo-rlaif"}
    assert ids == rlaif
    frac_bad = sum(not row["is_clean"] for row in labels if row["dataset"] == "demo-rlaif") / TEST_WORLD.n_samples
    assert abs(frac_bad - TEST_WORLD.low_quality_fraction) < 0.01


def test_model_loads_like_a_hub_model_and_reads_the_image(world_dir, world):
    from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration

    model = AutoModelForImageTextToText.from_pretrained(world_dir / "model")
    processor = AutoProcessor.from_pretrained(world_dir / "model")
    assert isinstance(model, LlavaForConditionalGeneration)
    assert type(model.config.vision_config).__name__ == "CLIPVisionConfig"
    assert type(model.config.text_config).__name__ == "LlamaConfig"
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color is the circle ?"}]}]
    text = processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    assert text == "<s>USER: <image>\nwhat color is the circle ? ASSISTANT:"
    ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert processor.tokenizer.unk_token_id not in ids  # word-level vocabulary covers the world
    p = world["pretrain"]
    assert p["final_loss"] < p["first_loss"] / 3
    # Clearly above chance, and it depends on the image: shuffling images drops it.
    assert p["heldout_accuracy"] >= p["chance"] + 0.15, p
    assert p["heldout_accuracy"] >= p["heldout_accuracy_shuffled_images"] + 0.1, p


def test_build_reuses_a_world_with_the_same_config(world_dir):
    before = (world_dir / "world.json").stat().st_mtime_ns
    record = build_world(TEST_WORLD, world_dir, log=lambda m: None)
    assert (world_dir / "world.json").stat().st_mtime_ns == before
    assert record == json.loads((world_dir / "world.json").read_text())


def test_build_is_deterministic(tmp_path):
    from saev_core.demo.build import DemoConfig

    cfg = DemoConfig(n_samples=12, n_heldout=10, n_pretrain=16, pretrain_steps=2, pretrain_batch_size=8)
    a = build_world(cfg, tmp_path / "a", log=lambda m: None)
    b = build_world(cfg, tmp_path / "b", log=lambda m: None)
    assert a["pretrain"] == b["pretrain"]
    for name in ("labels.parquet", "datasets/demo-sft/train.parquet"):
        assert pq.read_table(tmp_path / "a" / name).equals(pq.read_table(tmp_path / "b" / name))
    from safetensors.torch import load_file

    wa, wb = load_file(tmp_path / "a/model/model.safetensors"), load_file(tmp_path / "b/model/model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_patches_and_words_share_colour_directions(world_dir):
    """The property SAE-V needs: after block 0, the patches of a red object point the way the word
    "red" does. For each colour: the residual of the colour word in a question and the mean residual
    of that colour's patches, each centred on the mean over colours; matching pairs must be the
    most similar for nearly every colour."""
    import random

    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from saev_core.demo.scenes import COLORS, Obj, render
    from saev_core.prompts import conversation

    model = LlavaForConditionalGeneration.from_pretrained(world_dir / "model").eval()
    processor = AutoProcessor.from_pretrained(world_dir / "model")
    word, patch = [], []
    for color in COLORS:
        image = render(Scene((Obj("circle", color, "top left"),)), random.Random(0))
        text = processor.apply_chat_template(conversation(f"where is the {color} circle ?"), add_generation_prompt=True, tokenize=False)
        inputs = processor(images=[image], text=[text], return_tensors="pt")
        with torch.no_grad():
            h = model(**inputs, output_hidden_states=True).hidden_states[1][0]  # after block 0
        ids = inputs["input_ids"][0]
        word.append(h[ids == processor.tokenizer.convert_tokens_to_ids(color)][0])
        img = (ids == model.config.image_token_index).nonzero().flatten()
        patch.append(h[img[[0, 1, 4, 5]]].mean(0))  # the top-left cell's patches
    w, p = torch.stack(word), torch.stack(patch)
    w, p = w - w.mean(0), p - p.mean(0)
    sim = torch.nn.functional.normalize(w, dim=-1) @ torch.nn.functional.normalize(p, dim=-1).T
    assert (sim.argmax(1) == torch.arange(len(COLORS))).sum() >= len(COLORS) - 1, sim
