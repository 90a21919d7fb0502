"""Synthetic image-text world: coloured shapes on a 2x2 grid, questions about them, and
low-quality rows whose image and text disagree while each looks normal on its own.

Everything is a pure function of a ``random.Random`` so the world is reproducible from a seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (0, 0),
    "top right": (1, 0),
    "bottom left": (0, 1),
    "bottom right": (1, 1),
}
QUESTION_KINDS: tuple[str, ...] = ("color_of_shape", "shape_at_position", "position_of_object")
CORRUPTIONS: tuple[str, ...] = ("absent_object", "mismatched_answer", "swapped_image")


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    position: str


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]

    def by_shape(self, shape: str) -> Obj | None:
        return next((o for o in self.objects if o.shape == shape), None)

    def by_position(self, position: str) -> Obj | None:
        return next((o for o in self.objects if o.position == position), None)

    def describe(self) -> str:
        return "; ".join(f"{o.color} {o.shape} at {o.position}" for o in self.objects)

    @classmethod
    def parse(cls, text: str) -> "Scene":
        """The inverse of ``describe`` (rows keep the shown scene as that string)."""
        objects = []
        for part in text.split("; "):
            color, shape, at, *position = part.split()
            if at != "at" or color not in COLORS or shape not in SHAPES or " ".join(position) not in POSITIONS:
                raise ValueError(f"not a scene description: {part!r}")
            objects.append(Obj(shape, color, " ".join(position)))
        return cls(tuple(objects))


@dataclass(frozen=True)
class QA:
    """A question with its correct answer and a plausible wrong one; ``key`` is the attribute
    word the answer hinges on (used to measure answer accuracy)."""

    kind: str
    question: str
    answer: str
    wrong: str
    key: str


def random_scene(rng: random.Random) -> Scene:
    n = rng.choice((1, 2))
    shapes = rng.sample(SHAPES, n)
    colors = rng.sample(list(COLORS), n)
    positions = rng.sample(list(POSITIONS), n)
    return Scene(tuple(Obj(s, c, p) for s, c, p in zip(shapes, colors, positions)))


def render(scene: Scene, rng: random.Random, size: int = 32) -> Image.Image:
    """Draw the scene: a noisy dark background and each object inside its grid cell."""
    bg = np.clip(np.asarray(rng.choices(range(20, 60), k=3)) + np.random.default_rng(rng.getrandbits(32)).integers(-8, 9, (size, size, 3)), 0, 255)
    img = Image.fromarray(bg.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    cell = size // 2
    for o in scene.objects:
        cx, cy = POSITIONS[o.position]
        r = rng.randint(cell * 5 // 16, cell * 7 // 16)
        x = cx * cell + cell // 2 + rng.randint(-1, 1)
        y = cy * cell + cell // 2 + rng.randint(-1, 1)
        fill = COLORS[o.color]
        if o.shape == "circle":
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        elif o.shape == "square":
            draw.rectangle((x - r, y - r, x + r, y + r), fill=fill)
        elif o.shape == "triangle":
            draw.polygon(((x, y - r), (x - r, y + r), (x + r, y + r)), fill=fill)
        else:
            w = max(1, r // 2)
            draw.rectangle((x - r, y - w, x + r, y + w), fill=fill)
            draw.rectangle((x - w, y - r, x + w, y + r), fill=fill)
    return img


def _other(rng: random.Random, options, exclude) -> str:
    return rng.choice([o for o in options if o not in exclude])


def ask(kind: str, obj: Obj, rng: random.Random) -> QA:
    """A clean question about ``obj`` with the correct answer and a wrong one."""
    if kind == "color_of_shape":
        wrong = _other(rng, COLORS, {obj.color})
        return QA(kind, f"what color is the {obj.shape} ?", f"the {obj.shape} is {obj.color} .",
                  f"the {obj.shape} is {wrong} .", obj.color)
    if kind == "shape_at_position":
        wrong = _other(rng, SHAPES, {obj.shape})
        return QA(kind, f"what shape is at the {obj.position} ?", f"a {obj.color} {obj.shape} .",
                  f"a {obj.color} {wrong} .", obj.shape)
    if kind == "position_of_object":
        wrong = _other(rng, POSITIONS, {obj.position})
        return QA(kind, f"where is the {obj.color} {obj.shape} ?",
                  f"the {obj.color} {obj.shape} is at the {obj.position} .",
                  f"the {obj.color} {obj.shape} is at the {wrong} .", obj.position)
    raise ValueError(f"unknown question kind {kind!r}; expected one of {QUESTION_KINDS}")


def ask_absent(kind: str, scene: Scene, rng: random.Random) -> QA:
    """A question about something the image does not contain, answered confidently."""
    used_shapes = {o.shape for o in scene.objects}
    used_positions = {o.position for o in scene.objects}
    ghost = Obj(
        _other(rng, SHAPES, used_shapes),
        rng.choice(list(COLORS)),
        _other(rng, POSITIONS, used_positions),
    )
    return ask(kind, ghost, rng)


def make_row(rng: random.Random, corruption: str | None, image_size: int = 32) -> dict:
    """One dataset row. ``corruption`` None gives a clean row; otherwise one of CORRUPTIONS."""
    scene = random_scene(rng)
    kind = rng.choice(QUESTION_KINDS)
    obj = rng.choice(scene.objects)
    shown = scene
    if corruption is None:
        qa = ask(kind, obj, rng)
        chosen, rejected = qa.answer, qa.wrong
    elif corruption == "absent_object":
        qa = ask_absent(kind, scene, rng)
        chosen, rejected = qa.answer, qa.wrong
    elif corruption == "mismatched_answer":
        # The answer describes a different image: the asked-about attribute comes from elsewhere.
        qa = ask(kind, obj, rng)
        fake = Obj(
            _other(rng, SHAPES, {obj.shape}) if kind == "shape_at_position" else obj.shape,
            _other(rng, COLORS, {obj.color}),
            _other(rng, POSITIONS, {obj.position}) if kind == "position_of_object" else obj.position,
        )
        fake_qa = ask(kind, fake, rng)
        chosen, rejected = fake_qa.answer, qa.wrong
        while rejected == chosen:
            rejected = ask(kind, obj, rng).wrong
    elif corruption == "swapped_image":
        qa = ask(kind, obj, rng)
        chosen, rejected = qa.answer, qa.wrong
        shown = random_scene(rng)
        while set(shown.objects) & set(scene.objects):
            shown = random_scene(rng)
    else:
        raise ValueError(f"unknown corruption {corruption!r}; expected one of {CORRUPTIONS}")
    return {
        "image": render(shown, rng, image_size),
        "question": qa.question,
        "answer": chosen,
        "chosen": chosen,
        "rejected": rejected,
        "key": qa.key,
        "question_kind": kind,
        "scene": shown.describe(),
        "is_clean": corruption is None,
        "corruption": corruption or "none",
    }


def make_rows(n: int, seed: int, low_quality_fraction: float = 0.35, image_size: int = 32) -> list[dict]:
    """``n`` rows, a ``low_quality_fraction`` of them corrupted, kinds drawn uniformly."""
    if not 0.0 <= low_quality_fraction <= 1.0:
        raise ValueError(f"low_quality_fraction must be in [0, 1], got {low_quality_fraction}")
    rng = random.Random(seed)
    n_bad = round(n * low_quality_fraction)
    plan = [None] * (n - n_bad) + [CORRUPTIONS[i % len(CORRUPTIONS)] for i in range(n_bad)]
    rng.shuffle(plan)
    return [make_row(rng, c, image_size) for c in plan]


def vocabulary() -> list[str]:
    """Every word the world can produce, in a fixed order (the demo tokenizer's vocabulary)."""
    words = ["what", "color", "is", "the", "shape", "at", "where", "a", "?", ".", *COLORS, *SHAPES]
    for p in POSITIONS:
        words.extend(p.split())
    seen: dict[str, None] = {}
    for w in words:
        seen.setdefault(w, None)
    return list(seen)
