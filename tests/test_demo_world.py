"""The demo world: deterministic data whose low-quality rows break the image-text relation,
and a tiny LLaVA that loads like a hub model and really reads the image."""

from __future__ import annotations

import json
import random

import pyarrow.parquet as pq
import pytest
import torch

from saev_core.activations.data import DatasetSpec, Sample, iter_samples, open_dataset
from saev_core.demo.build import build_world
from saev_core.demo.scenes import (COLORS, CORRUPTIONS, PERTURBATIONS, POSITIONS, SHAPES, Question, Scene, answer, caption,
                                   clean_text, make_captions, make_rows, perturb, vocabulary)
from saev_core.scoring.quality import auroc

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


def test_clean_rows_answer_their_image_and_low_quality_rows_do_not():
    """Every perturbation leaves the text's answer wrong (or its question unanswerable) for the image shown."""
    rng = random.Random(5)
    for _ in range(400):
        scene, q = clean_text(rng)
        want = answer(q, scene)
        assert want is not None
        for kind in PERTURBATIONS:
            shown = perturb(kind, q, scene, rng)
            got = answer(q, shown)
            assert got is None or got[0] != want[0], (kind, q, scene, shown)
            assert len({o.shape for o in shown.objects}) == len(shown.objects)  # still a valid scene
    for r in make_rows(200, 3):
        if r["corruption"] == "none":
            assert r["key"] in r["answer"] and r["chosen"] != r["rejected"]


def test_answers_by_hand():
    scene = Scene.parse("red circle at top left; blue square at bottom right")
    assert caption(scene) == "a red circle at the top left and a blue square at the bottom right ."
    assert answer(Question("count"), scene)[0] == "two : a red circle at the top left and a blue square at the bottom right ."
    assert answer(Question("colors_of_two", ("square", "circle")), scene)[0] == "the square is blue and the circle is red ."
    assert answer(Question("compare", ("circle", "square"), position="left"), scene) == ("the red circle is on the left .", "red circle")
    assert answer(Question("color_of_shape", ("triangle",)), scene) is None  # presupposes a triangle
    assert answer(Question("position_of_object", ("circle",), color="blue"), scene) is None
    assert answer(Question("shape_at_position", position="bottom right"), scene) == ("a blue square .", "square")


def _fit_auroc(x_fit, y_fit, x_eval, y_eval) -> float:
    """L2 logistic regression fit on one world, AUROC on another."""
    mu, sd = x_fit.mean(0), x_fit.std(0) + 1e-6
    xf, xe = (x_fit - mu) / sd, (x_eval - mu) / sd
    w = torch.zeros(xf.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=100)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xf @ w, y_fit) + 1e-2 * (w ** 2).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return auroc((xe @ w).detach().numpy(), y_eval.numpy().astype(bool))


def test_each_modality_alone_looks_normal():
    """Text alone (bag of words) and the image's content alone (its exact objects, as a perfect image
    classifier would see them) cannot tell clean from low-quality rows; the pair can."""
    vocab = {w: i for i, w in enumerate([*vocabulary(), ":"])}
    names = [*COLORS, *SHAPES, *POSITIONS]

    def features(rows):
        text = torch.zeros(len(rows), len(vocab))
        image = torch.zeros(len(rows), len(names) + 3)
        for i, r in enumerate(rows):
            for w in f"{r['question']} {r['chosen']}".split():
                text[i, vocab[w]] += 1
            objs = Scene.parse(r["scene"]).objects
            for o in objs:
                for v in (o.color, o.shape, o.position):
                    image[i, names.index(v)] += 1
            image[i, len(names) + len(objs) - 1] = 1
        colours = [vocab[c] for c in COLORS]
        joint = (text[:, colours] > 0) & (image[:, :len(COLORS)] > 0)
        agree = torch.cat([joint, (text[:, colours] > 0) & ~joint], 1).float()
        y = torch.tensor([float(r["is_clean"]) for r in rows])
        return text, image, agree, y

    fit, held = features(make_rows(1500, 11)), features(make_rows(1500, 12))
    text_auc, image_auc, joint_auc = (_fit_auroc(fit[i], fit[3], held[i], held[3]) for i in range(3))
    assert abs(text_auc - 0.5) < 0.05 and abs(image_auc - 0.5) < 0.05, (text_auc, image_auc)
    assert joint_auc > 0.8, joint_auc


def test_captions_are_the_modality_alignment_data():
    rows = make_captions(20, 0)
    for r in rows:
        assert r["caption"] == caption(Scene.parse(r["scene"])) and "?" not in r["caption"]


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
    # It captions images, and from the image: shuffled images break it.
    assert p["caption_accuracy"] >= p["caption_accuracy_shuffled_images"] + 0.3, p


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
    from saev_core.activations.prompts import conversation

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
