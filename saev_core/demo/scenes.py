"""Synthetic image-text world (v3): coloured shapes on a 2x2 grid, captions for the modality-
alignment stage, and alignment rows (descriptions, counts, multi-object questions, comparisons
and single-attribute questions) of which a share is low-quality.

A question is a ``(kind, params)`` pair and ``answer(question, scene)`` says what it should get on
any scene, so a low-quality row is made the way real ones arise: the text is a clean row's text for
a scene T, and the image shows another scene. Every image is a uniformly random valid scene (the
perturbations below preserve that law) and every text is a clean text, so each modality alone
looks normal; only the pair tells them apart.

Everything is a pure function of a ``random.Random`` so the world is reproducible from a seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

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
NUMBERS: tuple[str, ...] = ("one", "two", "three")
QUESTION_KINDS: tuple[str, ...] = ("describe", "count", "colors_of_two", "compare", "color_of_shape",
                                   "shape_at_position", "position_of_object")
# Kinds whose answer lists every object (a missing object there is a hallucination in the answer).
LISTING_KINDS = frozenset({"describe", "count"})
# What a low-quality row's image does to its text's scene; one is drawn per row, independently of the kind.
PERTURBATIONS: tuple[str, ...] = ("missing_object", "wrong_attribute", "other_image", "swapped_image")
CORRUPTIONS: tuple[str, ...] = ("hallucinated_object", "absent_object", "wrong_attribute", "other_image", "swapped_image")


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

    def ordered(self) -> list[Obj]:
        """Objects in reading order (top left, top right, bottom left, bottom right)."""
        order = list(POSITIONS)
        return sorted(self.objects, key=lambda o: order.index(o.position))

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
class Question:
    """``kind`` and what it asks about: shapes, a colour and shape, or a position."""

    kind: str
    shapes: tuple[str, ...] = ()
    color: str | None = None
    position: str | None = None

    @property
    def text(self) -> str:
        k = self.kind
        if k == "describe":
            return "describe the image ."
        if k == "count":
            return "how many shapes are there ?"
        if k == "colors_of_two":
            return f"what colors are the {self.shapes[0]} and the {self.shapes[1]} ?"
        if k == "compare":
            side = "on the left" if self.position == "left" else "on top"
            return f"which is {side} , the {self.shapes[0]} or the {self.shapes[1]} ?"
        if k == "color_of_shape":
            return f"what color is the {self.shapes[0]} ?"
        if k == "shape_at_position":
            return f"what shape is at the {self.position} ?"
        if k == "position_of_object":
            return f"where is the {self.color} {self.shapes[0]} ?"
        raise ValueError(f"unknown question kind {k!r}; expected one of {QUESTION_KINDS}")


def caption(scene: Scene) -> str:
    """The scene in words, objects in reading order: 'a red circle at the top left and a ...'."""
    parts = [f"a {o.color} {o.shape} at the {o.position}" for o in scene.ordered()]
    return (" , ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]) + " ."


def answer(q: Question, scene: Scene) -> tuple[str, str] | None:
    """(answer, key) for ``q`` on ``scene``, or None where the question presupposes what is not there.

    ``key`` is the part of the answer that depends on the image (what answer accuracy checks).
    """
    k = q.kind
    if k == "describe":
        a = caption(scene)
        return a, a[:-2]
    if k == "count":
        listing = caption(scene)[:-2]
        a = f"{NUMBERS[len(scene.objects) - 1]} : {listing} ."
        return a, a[:-2]
    objs = [scene.by_shape(s) for s in q.shapes]
    if any(o is None for o in objs):
        return None
    if k == "colors_of_two":
        a = f"the {objs[0].shape} is {objs[0].color} and the {objs[1].shape} is {objs[1].color} ."
        return a, a[:-2]
    if k == "compare":
        axis = 0 if q.position == "left" else 1
        c0, c1 = (POSITIONS[o.position][axis] for o in objs)
        if c0 == c1:
            return None
        win = objs[0] if c0 < c1 else objs[1]
        side = "on the left" if q.position == "left" else "on top"
        return f"the {win.color} {win.shape} is {side} .", f"{win.color} {win.shape}"
    if k == "color_of_shape":
        return f"the {objs[0].shape} is {objs[0].color} .", objs[0].color
    if k == "shape_at_position":
        o = scene.by_position(q.position)
        return (f"a {o.color} {o.shape} .", o.shape) if o else None
    if k == "position_of_object":
        o = objs[0]
        if o.color != q.color:
            return None
        return f"the {o.color} {o.shape} is at the {o.position} .", o.position
    raise ValueError(f"unknown question kind {k!r}; expected one of {QUESTION_KINDS}")


def mentioned(q: Question, scene: Scene) -> list[Obj]:
    """The objects of ``scene`` that the clean text of ``q`` names."""
    if q.kind in LISTING_KINDS:
        return list(scene.objects)
    if q.kind == "shape_at_position":
        return [scene.by_position(q.position)]
    return [scene.by_shape(s) for s in q.shapes]


def random_scene(rng: random.Random, min_objects: int = 1) -> Scene:
    n = rng.choice(range(min_objects, 4))
    shapes = rng.sample(SHAPES, n)
    colors = rng.sample(list(COLORS), n)
    positions = rng.sample(list(POSITIONS), n)
    return Scene(tuple(Obj(s, c, p) for s, c, p in zip(shapes, colors, positions)))


def random_question(kind: str, scene: Scene, rng: random.Random) -> Question | None:
    """A question of ``kind`` that ``scene`` answers, or None where the scene cannot (too few objects)."""
    if kind in LISTING_KINDS:
        return Question(kind)
    objs = list(scene.objects)
    if kind in ("colors_of_two", "compare"):
        if len(objs) < 2:
            return None
        a, b = rng.sample(objs, 2)
        if kind == "colors_of_two":
            return Question(kind, (a.shape, b.shape))
        axes = [ax for ax, name in ((0, "left"), (1, "top")) if POSITIONS[a.position][ax] != POSITIONS[b.position][ax]]
        return Question(kind, (a.shape, b.shape), position="left" if 0 in axes and (len(axes) == 1 or rng.random() < 0.5) else "top")
    o = rng.choice(objs)
    if kind == "color_of_shape":
        return Question(kind, (o.shape,))
    if kind == "shape_at_position":
        return Question(kind, position=o.position)
    if kind == "position_of_object":
        return Question(kind, (o.shape,), color=o.color)
    raise ValueError(f"unknown question kind {kind!r}; expected one of {QUESTION_KINDS}")


def _free(rng: random.Random, options, used) -> str:
    return rng.choice([o for o in options if o not in used])


def _replace_object(scene: Scene, old: Obj, rng: random.Random) -> Scene:
    """``old`` becomes a new object with another shape and colour (any free cell): a uniformly
    random valid scene stays one, and the text's object is no longer there."""
    others = [o for o in scene.objects if o is not old]
    new = Obj(_free(rng, SHAPES, {o.shape for o in scene.objects}), _free(rng, COLORS, {o.color for o in scene.objects}),
              _free(rng, POSITIONS, {o.position for o in others}))
    return Scene(tuple(new if o is old else o for o in scene.objects))


def _change_attribute(q: Question, scene: Scene, rng: random.Random) -> Scene:
    """One named object gets another value of the attribute the answer states (colour by default;
    for a comparison, the colour of the object the answer names)."""
    named = mentioned(q, scene)
    if q.kind == "compare":
        key = answer(q, scene)[1]
        named = [o for o in named if f"{o.color} {o.shape}" == key]
    old = rng.choice(named)
    if q.kind == "shape_at_position":
        new = replace(old, shape=_free(rng, SHAPES, {o.shape for o in scene.objects}))
    elif q.kind == "position_of_object":
        new = replace(old, position=_free(rng, POSITIONS, {o.position for o in scene.objects}))
    else:
        new = replace(old, color=_free(rng, COLORS, {o.color for o in scene.objects}))
    return Scene(tuple(new if o is old else o for o in scene.objects))


def perturb(kind: str, q: Question, text_scene: Scene, rng: random.Random) -> Scene:
    """The scene a low-quality row's image shows instead of ``text_scene``."""
    if kind == "missing_object":
        return _replace_object(text_scene, rng.choice(mentioned(q, text_scene)), rng)
    if kind == "wrong_attribute":
        return _change_attribute(q, text_scene, rng)
    want = answer(q, text_scene)
    for _ in range(1000):
        shown = random_scene(rng)
        if kind == "other_image":  # the question fits this image, the answer is another image's
            got = answer(q, shown)
            if got is not None and got[0] != want[0]:
                return shown
        elif kind == "swapped_image":  # another sample's image: nothing in common, and the answer is wrong for it
            got = answer(q, shown)
            if not set(shown.objects) & set(text_scene.objects) and (got is None or got[0] != want[0]):
                return shown
        else:
            raise ValueError(f"unknown perturbation {kind!r}; expected one of {PERTURBATIONS}")
    raise RuntimeError(f"no scene found for {kind} of {q}")  # pragma: no cover (every question has many)


def corruption_name(perturbation: str, q: Question) -> str:
    if perturbation == "missing_object":
        return "hallucinated_object" if q.kind in LISTING_KINDS else "absent_object"
    return perturbation


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


def clean_text(rng: random.Random) -> tuple[Scene, Question]:
    """A scene and a question it answers, the kind drawn uniformly (a scene too small for the kind is redrawn)."""
    kind = rng.choice(QUESTION_KINDS)
    while True:
        scene = random_scene(rng)
        q = random_question(kind, scene, rng)
        if q is not None and answer(q, scene) is not None:
            return scene, q


def make_row(rng: random.Random, perturbation: str | None, image_size: int = 32) -> dict:
    """One alignment row. ``perturbation`` None gives a clean row; otherwise one of PERTURBATIONS.

    The text (question, chosen, rejected) is always a clean row's text for a scene T; ``rejected``
    is the answer T with one stated attribute changed would get. A low-quality row shows another scene.
    """
    scene, q = clean_text(rng)
    chosen, key = answer(q, scene)
    rejected = chosen
    while rejected == chosen:
        rejected = answer(q, _change_attribute(q, scene, rng))[0]
    shown = scene if perturbation is None else perturb(perturbation, q, scene, rng)
    return {
        "image": render(shown, rng, image_size),
        "question": q.text,
        "answer": chosen,
        "chosen": chosen,
        "rejected": rejected,
        "key": key,
        "question_kind": q.kind,
        "scene": shown.describe(),
        "is_clean": perturbation is None,
        "corruption": "none" if perturbation is None else corruption_name(perturbation, q),
    }


def make_rows(n: int, seed: int, low_quality_fraction: float = 0.35, image_size: int = 32) -> list[dict]:
    """``n`` rows, a ``low_quality_fraction`` of them low-quality, perturbations drawn uniformly."""
    if not 0.0 <= low_quality_fraction <= 1.0:
        raise ValueError(f"low_quality_fraction must be in [0, 1], got {low_quality_fraction}")
    rng = random.Random(seed)
    n_bad = round(n * low_quality_fraction)
    plan = [None] * (n - n_bad) + [PERTURBATIONS[i % len(PERTURBATIONS)] for i in range(n_bad)]
    rng.shuffle(plan)
    return [make_row(rng, p, image_size) for p in plan]


def make_captions(n: int, seed: int, image_size: int = 32) -> list[dict]:
    """Image-caption pairs for the modality-alignment stage (no questions, no chat turns)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        scene = random_scene(rng)
        rows.append({"image": render(scene, rng, image_size), "caption": caption(scene), "scene": scene.describe()})
    return rows


def vocabulary() -> list[str]:
    """Every word the world can produce, in a fixed order (the demo tokenizer's vocabulary; ":" is a template word)."""
    words = ["what", "color", "is", "the", "shape", "at", "where", "a", "?", ".", *COLORS, *SHAPES,
             "describe", "image", "and", ",", "how", "many", "shapes", "are", "there", *NUMBERS,
             "colors", "which", "on", "or"]
    for p in POSITIONS:
        words.extend(p.split())
    seen: dict[str, None] = {}
    for w in words:
        seen.setdefault(w, None)
    return list(seen)
