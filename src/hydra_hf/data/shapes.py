"""The synthetic "shapes world": scenes of coloured shapes with captions, questions and generation prompts.

No pretrained weights or real datasets are reachable on our machines, so every HYDRA stage is trained and
measured on this world (DESIGN.md section 4). Everything here is exact: shapes are rendered without
anti-aliasing in palette colours, and every caption, answer and prompt is derived from the structured scene,
so a detector can score generated images against them.

Example `i` of seed `s` depends only on `(s, i)`, never on how many examples are generated.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import datasets
import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "ALL_COLORS",
    "BACKGROUND",
    "CANVAS_SIZE",
    "CLEAR_RELATION_MIN_COSINE",
    "COLOR_NAMING_CATEGORIES",
    "DATASET_CATEGORIES",
    "GENERATION_CATEGORIES",
    "HELD_OUT_COLORS",
    "MAX_OBJECTS",
    "MAX_SIZE",
    "MIN_SIZE",
    "OBJECT_MARGIN",
    "PALETTE",
    "QUESTION_TYPES",
    "RELATION_WORD_QUESTION_TYPE",
    "RELATIONS",
    "SHAPES",
    "ObjectRequirement",
    "PromptSpec",
    "Scene",
    "ShapeObject",
    "binding_questions",
    "caption_for",
    "example_rng",
    "generation_prompts",
    "generation_scenes",
    "make_shapes_dataset",
    "prompt_spec_for",
    "prompt_spec_from_text",
    "question_for",
    "relation_word_question",
    "relations_between",
    "rotate_shape_words",
    "render_scene",
    "sample_scene",
    "shapes_features",
    "verification_questions",
]

CANVAS_SIZE = 64
BACKGROUND = (255, 255, 255)
SHAPES = ("circle", "square", "triangle")
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 200, 30),
    "purple": (140, 60, 170),
    "orange": (245, 130, 30),
}
# Never drawn unless asked for, so that a LoRA can later teach it as a new concept.
HELD_OUT_COLORS: dict[str, tuple[int, int, int]] = {"pink": (255, 105, 180)}
ALL_COLORS: dict[str, tuple[int, int, int]] = {**PALETTE, **HELD_OUT_COLORS}

MIN_SIZE = 12
MAX_SIZE = 22
MAX_OBJECTS = 4
# Empty pixels kept between bounding boxes so that a detector sees separate components.
OBJECT_MARGIN = 2

# The GenEval categories, scored by `hydra_hf.evaluation.shapes.score_generation`.
GENERATION_CATEGORIES = ("single_object", "two_objects", "counting", "colors", "position", "color_attribution")
# "scene" adds busier 3-4 object scenes so that questions are not trivially answered by the category.
DATASET_CATEGORIES = (*GENERATION_CATEGORIES, "scene")
# Categories whose captions name every object's colour, the ones that can teach a new colour.
COLOR_NAMING_CATEGORIES = ("counting", "colors", "position", "color_attribution", "scene")
RELATIONS = ("left of", "right of", "above", "below")
QUESTION_TYPES = ("count", "color", "shape", "exists", "relation")
# A training-only question type (`make_shapes_dataset(relation_word_share=...)`), never asked by evaluation.
RELATION_WORD_QUESTION_TYPE = "relation_word"

# A relation is stated in captions and questions only when the centre offset points within ~32 degrees of the
# axis; GenEval's looser 60 degree cone (cosine 0.5) is what scoring accepts.
CLEAR_RELATION_MIN_COSINE = 0.85
_RELATION_PHRASES = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
OPPOSITE_RELATION = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
ONE_SIDED_RELATIONS = ("left of", "above")  # one of each opposite pair
_COUNT_WORDS = {2: "two", 3: "three", 4: "four"}
_PLACEMENT_TRIES = 200
_T = TypeVar("_T")


def _object_height(shape: str, size: int) -> int:
    """An upright equilateral triangle is shorter than its base; circles and squares are as tall as wide."""
    return round(size * math.sqrt(3) / 2) if shape == "triangle" else size


@dataclass(frozen=True)
class ShapeObject:
    """One filled shape; `x`, `y` are the centre of its pixel bounding box (half-integers for even sizes)."""

    shape: str
    color: str
    x: float
    y: float
    size: int

    @property
    def width(self) -> int:
        return self.size

    @property
    def height(self) -> int:
        return _object_height(self.shape, self.size)

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom), right/bottom exclusive as in `PIL.Image.crop`."""
        left = round(self.x - (self.width - 1) / 2)
        top = round(self.y - (self.height - 1) / 2)
        return left, top, left + self.width, top + self.height

    @classmethod
    def at(cls, shape: str, color: str, left: int, top: int, size: int) -> ShapeObject:
        """Builds an object from its top-left pixel, the natural unit for placement."""
        return cls(shape, color, left + (size - 1) / 2, top + (_object_height(shape, size) - 1) / 2, size)

    def to_dict(self) -> dict[str, Any]:
        return {"shape": self.shape, "color": self.color, "x": self.x, "y": self.y, "size": self.size}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShapeObject:
        return cls(data["shape"], data["color"], float(data["x"]), float(data["y"]), int(data["size"]))


@dataclass(frozen=True)
class Scene:
    """The objects of one image and the caption category it was sampled for."""

    objects: tuple[ShapeObject, ...]
    category: str = "scene"


@dataclass(frozen=True)
class ObjectRequirement:
    """GenEval's "include" entry: at least `count` objects of `shape` (and `color`, unless None).

    `exact` adds GenEval's counting "exclude" entry: no more than `count` such objects either.
    """

    shape: str
    color: str | None = None
    count: int = 1
    exact: bool = False


@dataclass(frozen=True)
class PromptSpec:
    """A text-to-image prompt and what the image must contain to count as correct.

    `relation`, when set, must hold between an object matching `objects[0]` and one matching `objects[1]`.
    """

    category: str
    prompt: str
    objects: tuple[ObjectRequirement, ...]
    relation: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "prompt": self.prompt,
            "objects": [vars(requirement).copy() for requirement in self.objects],
            "relation": self.relation,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PromptSpec:
        objects = tuple(ObjectRequirement(**requirement) for requirement in data["objects"])
        return cls(data["category"], data["prompt"], objects, data.get("relation"))


def example_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of one example, independent of how many examples are drawn."""
    return np.random.default_rng([seed, index])


def relations_between(
    subject: tuple[float, float], reference: tuple[float, float], min_cosine: float = 0.5
) -> set[str]:
    """Relations of the `subject` centre (x, y) to the `reference` centre, judged as GenEval does.

    A relation holds when the unit offset has a component above `min_cosine` along its axis (image y grows
    downwards). With the default 0.5 a diagonal offset can be both "left of" and "above".
    """
    dx, dy = subject[0] - reference[0], subject[1] - reference[1]
    distance = math.hypot(dx, dy)
    if distance == 0:
        return set()
    dx, dy = dx / distance, dy / distance
    candidates = {"left of": -dx, "right of": dx, "above": -dy, "below": dy}
    return {relation for relation, component in candidates.items() if component > min_cosine}


def _clear_relation(subject: ShapeObject, reference: ShapeObject) -> str | None:
    relations = relations_between((subject.x, subject.y), (reference.x, reference.y), CLEAR_RELATION_MIN_COSINE)
    return relations.pop() if relations else None


def render_scene(scene: Scene) -> Image.Image:
    """Draws the scene without anti-aliasing, so every pixel is the background or an exact palette colour."""
    image = Image.new("RGB", (CANVAS_SIZE, CANVAS_SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        fill = ALL_COLORS[obj.color]
        left, top, right, bottom = obj.bbox
        if obj.shape == "circle":
            draw.ellipse([left, top, right - 1, bottom - 1], fill=fill)
        elif obj.shape == "square":
            draw.rectangle([left, top, right - 1, bottom - 1], fill=fill)
        else:
            draw.polygon([(left, bottom - 1), (right - 1, bottom - 1), ((left + right - 1) / 2, top)], fill=fill)
    return image


def _boxes_apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return (
        a[2] + OBJECT_MARGIN <= b[0]
        or b[2] + OBJECT_MARGIN <= a[0]
        or a[3] + OBJECT_MARGIN <= b[1]
        or b[3] + OBJECT_MARGIN <= a[1]
    )


def _place(rng: np.random.Generator, kinds: Sequence[tuple[str, str]]) -> tuple[ShapeObject, ...] | None:
    """Random sizes and positions for (shape, color) pairs, or None when they did not fit without overlap."""
    placed: list[ShapeObject] = []
    for shape, color in kinds:
        for _ in range(_PLACEMENT_TRIES):
            size = int(rng.integers(MIN_SIZE, MAX_SIZE + 1))
            left = int(rng.integers(0, CANVAS_SIZE - size + 1))
            top = int(rng.integers(0, CANVAS_SIZE - _object_height(shape, size) + 1))
            candidate = ShapeObject.at(shape, color, left, top, size)
            if all(_boxes_apart(candidate.bbox, other.bbox) for other in placed):
                placed.append(candidate)
                break
        else:
            return None
    return tuple(placed)


def _pick(rng: np.random.Generator, options: Sequence[_T], exclude: Sequence[_T] = ()) -> _T:
    remaining = [option for option in options if option not in exclude]
    return remaining[int(rng.integers(len(remaining)))]


def _colors_for(
    rng: np.random.Generator, count: int, colors: Sequence[str], featured_color: str | None, distinct: bool
) -> list[str]:
    """`count` colours from `colors`; the first is `featured_color` when one is given."""
    chosen: list[str] = []
    for index in range(count):
        if index == 0 and featured_color is not None:
            chosen.append(featured_color)
        else:
            chosen.append(_pick(rng, colors, exclude=chosen if distinct else ()))
    return chosen


def _kinds_for(
    rng: np.random.Generator, category: str, colors: Sequence[str], featured_color: str | None
) -> list[tuple[str, str]]:
    """The (shape, color) of every object a scene of `category` holds."""
    if category in ("single_object", "colors"):
        return [(_pick(rng, SHAPES), _colors_for(rng, 1, colors, featured_color, distinct=False)[0])]
    if category == "counting":
        count = int(rng.integers(2, MAX_OBJECTS + 1))
        color = _colors_for(rng, 1, colors, featured_color, distinct=False)[0]
        return [(_pick(rng, SHAPES), color)] * count
    if category in ("two_objects", "position", "color_attribution"):
        first_shape = _pick(rng, SHAPES)
        shapes = [first_shape, _pick(rng, SHAPES, exclude=[first_shape])]
        pair_colors = _colors_for(rng, 2, colors, featured_color, distinct=category == "color_attribution")
        return list(zip(shapes, pair_colors))
    count = int(rng.integers(3, MAX_OBJECTS + 1))
    scene_colors = _colors_for(rng, count, colors, featured_color, distinct=False)
    return [(_pick(rng, SHAPES), color) for color in scene_colors]


def sample_scene(
    rng: np.random.Generator,
    category: str | None = None,
    colors: Sequence[str] = tuple(PALETTE),
    featured_color: str | None = None,
) -> Scene:
    """A random scene whose objects are exactly what `caption_for` will say for `category`.

    single_object/colors: one object; two_objects: two different shapes; color_attribution: two different
    shapes in two different colours; position: two different shapes in a clear relation; counting: 2-4
    identical objects; scene: 3-4 arbitrary objects. `featured_color` (e.g. the held-out "pink") is given to
    the first object, or to all of them in counting scenes.
    """
    if category is None:
        category = _pick(rng, DATASET_CATEGORIES)
    if category not in DATASET_CATEGORIES:
        raise ValueError(f"Unknown category {category!r}; expected one of {DATASET_CATEGORIES}.")
    unknown = [color for color in (*colors, featured_color) if color is not None and color not in ALL_COLORS]
    if unknown or not colors:
        raise ValueError(f"Colours must be a non-empty subset of {tuple(ALL_COLORS)}; got {unknown or colors}.")
    wanted_relation = _pick(rng, RELATIONS) if category == "position" else None
    while True:
        objects = _place(rng, _kinds_for(rng, category, colors, featured_color))
        if objects is None:
            continue
        if wanted_relation is None or _clear_relation(objects[0], objects[1]) == wanted_relation:
            return Scene(objects, category)


def _plural(shape: str, count: int) -> str:
    return shape if count == 1 else f"{shape}s"


def _noun_phrase(shape: str, color: str | None, count: int = 1) -> str:
    described = " ".join(word for word in (color, _plural(shape, count)) if word)
    if count == 1:
        return f"{'an' if described[0] in 'aeiou' else 'a'} {described}"
    return f"{_COUNT_WORDS[count]} {described}"


def _join(phrases: Sequence[str]) -> str:
    return phrases[0] if len(phrases) == 1 else f"{', '.join(phrases[:-1])} and {phrases[-1]}"


def caption_for(scene: Scene) -> str:
    """The caption of the scene's category; it names every object, and colours unless the category omits them."""
    objects = scene.objects
    if scene.category == "single_object":
        return _noun_phrase(objects[0].shape, None)
    if scene.category == "two_objects":
        return f"{_noun_phrase(objects[0].shape, None)} and {_noun_phrase(objects[1].shape, None)}"
    if scene.category == "position":
        relation = _clear_relation(objects[0], objects[1])
        if relation is None:
            raise ValueError("A position scene needs its two objects in a clear relation.")
        subject = _noun_phrase(objects[0].shape, objects[0].color)
        reference = _noun_phrase(objects[1].shape, objects[1].color)
        return f"{subject} {_RELATION_PHRASES[relation]} {reference}"
    counts = Counter((obj.shape, obj.color) for obj in objects)
    return _join([_noun_phrase(shape, color, count) for (shape, color), count in counts.items()])


def rotate_shape_words(text: str) -> str | None:
    """The text with each shape word (singular or plural) replaced by the next one in `SHAPES`, cyclically ("a red
    circle left of a blue square" -> "a red square left of a blue triangle"): a caption that contradicts its scene
    in the shapes alone. None when the text names no shape."""
    following = dict(zip(SHAPES, SHAPES[1:] + SHAPES[:1]))
    rotated, count = _SHAPE_WORD.subn(lambda match: following[match[1]] + match[2], text)
    return rotated if count else None


_SHAPE_WORD = re.compile(r"\b(" + "|".join(SHAPES) + r")(s?)\b")


def prompt_spec_for(scene: Scene) -> PromptSpec:
    """The GenEval-style expectation for the scene's caption; the scene itself satisfies it."""
    objects, category = scene.objects, scene.category
    if category == "single_object":
        requirements = (ObjectRequirement(objects[0].shape),)
    elif category == "two_objects":
        requirements = tuple(ObjectRequirement(obj.shape) for obj in objects)
    elif category == "counting":
        requirements = (ObjectRequirement(objects[0].shape, objects[0].color, len(objects), exact=True),)
    elif category in ("colors", "color_attribution", "position"):
        requirements = tuple(ObjectRequirement(obj.shape, obj.color) for obj in objects)
    else:
        raise ValueError(f"No generation prompt for category {category!r}; expected one of {GENERATION_CATEGORIES}.")
    relation = _clear_relation(objects[0], objects[1]) if category == "position" else None
    return PromptSpec(category, caption_for(scene), requirements, relation)


_NOUN_PHRASE = re.compile(
    r"(an?|" + "|".join(_COUNT_WORDS.values()) + r") "  # article or count word
    r"(?:(" + "|".join(ALL_COLORS) + r") )?"  # colour, if named
    r"(" + "|".join(SHAPES) + r")(s?)"  # shape, plural ending
)
_PHRASE_RELATIONS = {phrase: relation for relation, phrase in _RELATION_PHRASES.items()}


def prompt_spec_from_text(text: str) -> PromptSpec:
    """The `PromptSpec` of a prompt in the world's caption grammar, as `prompt_spec_for` writes them ("a red circle to
    the left of a blue square", "three green circles", "a circle and a square"); a `ValueError` for other text.
    Why: answer guidance and scoring need to know what a typed prompt asks for."""
    prompt = " ".join(text.lower().strip().rstrip(".").split())
    counts = {word: count for count, word in _COUNT_WORDS.items()}

    def requirement(phrase: str, exact: bool) -> ObjectRequirement | None:
        match = _NOUN_PHRASE.fullmatch(phrase)
        if match is None or (match[1] in counts) != bool(match[4]):  # "two circles" and "a circle", not "a circles"
            return None
        return ObjectRequirement(match[3], match[2], counts.get(match[1], 1), exact and match[1] in counts)

    relation_pattern = "|".join(map(re.escape, _PHRASE_RELATIONS))
    position = re.fullmatch(rf"(.+?) ({relation_pattern}) (.+)", prompt)
    if position is not None:
        pair = [requirement(position[1], False), requirement(position[3], False)]
        if None not in pair and all(obj.color and obj.count == 1 for obj in pair):
            return PromptSpec("position", prompt, tuple(pair), _PHRASE_RELATIONS[position[2]])
    phrases = re.split(r", | and ", prompt)
    objects = [requirement(phrase, exact=len(phrases) == 1) for phrase in phrases]
    if None in objects:
        raise ValueError(
            f"{text!r} is not a shapes-world prompt; expected noun phrases like 'a red circle' or 'three blue squares' "
            f"(colours {', '.join(ALL_COLORS)}; shapes {', '.join(SHAPES)}) joined by ', ' / ' and ', or two "
            f"coloured ones joined by one of {', '.join(_PHRASE_RELATIONS)}"
        )
    colored = objects[0].color is not None
    if len(objects) == 1:
        category = "counting" if objects[0].exact else "colors" if colored else "single_object"
    else:
        category = "color_attribution" if colored else "two_objects"
    return PromptSpec(category, prompt, tuple(objects))


def verification_questions(spec: PromptSpec) -> list[tuple[str, str]]:
    """(question, answer) pairs in the world's question templates whose answers the prompt fixes: existence of each
    coloured object, a count of each shape named without a colour or counted, and the relation if asked."""
    questions, counts = [], {}
    for requirement in spec.objects:
        if requirement.color is None or requirement.exact:
            counts[requirement.shape] = counts.get(requirement.shape, 0) + requirement.count
        else:
            questions.append((f"is there {_noun_phrase(requirement.shape, requirement.color)}?", "yes"))
    questions += [(f"how many {_plural(shape, 2)} are there?", str(count)) for shape, count in counts.items()]
    if spec.relation is not None:
        questions.append((_relation_question_text(*spec.objects[:2], spec.relation), "yes"))
    return questions


def binding_questions(spec: PromptSpec) -> list[tuple[str, str]]:
    """`verification_questions` without the counts: the existence of each coloured object and the relation. These
    are what answer guidance asks (the counts' gradient painted fragments: docs/experiments.md, thirty-first round),
    so prompts that name no colour (single object, two objects) are not guided."""
    return [pair for pair in verification_questions(spec) if not pair[0].startswith("how many")]


def _unique_by(objects: Sequence[ShapeObject], attribute: str) -> list[ShapeObject]:
    """Objects whose shape (or colour) no other object shares, so "the square" names one thing."""
    values = [getattr(obj, attribute) for obj in objects]
    return [obj for obj, value in zip(objects, values) if values.count(value) == 1]


def _related_pairs(objects: Sequence[ShapeObject]) -> list[tuple[ShapeObject, ShapeObject, str]]:
    """(subject, reference, relation) for every ordered pair of objects that their colour and shape name alone and
    whose centres are in a clear relation."""
    kind_counts = Counter((obj.shape, obj.color) for obj in objects)
    identifiable = [obj for obj in objects if kind_counts[obj.shape, obj.color] == 1]
    return [
        (a, b, relation)
        for a in identifiable
        for b in identifiable
        if a is not b and (relation := _clear_relation(a, b)) is not None
    ]


def question_for(
    scene: Scene, rng: np.random.Generator, colors: Sequence[str] = tuple(PALETTE)
) -> tuple[str, str, str]:
    """A random (question, one-word answer, question type) that the scene answers unambiguously.

    Existence and relation questions are yes/no with equal odds; "no" existence questions ask about a shape
    and a colour from `colors` that the scene lacks, so held-out colours stay unseen unless listed.
    """
    objects = scene.objects
    unique_shapes, unique_colors = _unique_by(objects, "shape"), _unique_by(objects, "color")
    related_pairs = _related_pairs(objects)
    kinds = ["count", "exists"]
    kinds += ["color"] if unique_shapes else []
    kinds += ["shape"] if unique_colors else []
    kinds += ["relation"] if related_pairs else []
    kind = _pick(rng, kinds)
    if kind == "count":
        shape = _pick(rng, [obj.shape for obj in objects]) if rng.random() < 0.8 else _pick(rng, SHAPES)
        return f"how many {_plural(shape, 2)} are there?", str(sum(obj.shape == shape for obj in objects)), kind
    if kind == "color":
        obj = _pick(rng, unique_shapes)
        return f"what color is the {obj.shape}?", obj.color, kind
    if kind == "shape":
        obj = _pick(rng, unique_colors)
        return f"what shape is the {obj.color} object?", obj.shape, kind
    if kind == "exists":
        present = {(obj.shape, obj.color) for obj in objects}
        absent = [(shape, color) for shape in SHAPES for color in colors if (shape, color) not in present]
        if rng.random() < 0.5 or not absent:
            shape, color = _pick(rng, sorted(present))
            answer = "yes"
        else:
            shape, color = _pick(rng, absent)
            answer = "no"
        return f"is there {_noun_phrase(shape, color)}?", answer, kind
    return _relation_question(related_pairs, rng)


def _relation_question_text(subject, reference, relation: str) -> str:
    """The yes/no relation question's template, for two objects (or requirements) named by colour and shape."""
    return f"is the {subject.color} {subject.shape} {relation} the {reference.color} {reference.shape}?"


def _relation_question(
    related_pairs: Sequence[tuple[ShapeObject, ShapeObject, str]], rng: np.random.Generator
) -> tuple[str, str, str]:
    """A yes/no relation question about one of `related_pairs`; a "no" asks the opposite of the true relation."""
    subject, reference, relation = _pick(rng, related_pairs)
    answer = "yes" if rng.random() < 0.5 else "no"
    asked = relation if answer == "yes" else OPPOSITE_RELATION[relation]
    return _relation_question_text(subject, reference, asked), answer, "relation"


def relation_word_question(scene: Scene, rng: np.random.Generator) -> tuple[str, str, str] | None:
    """A training-only question whose one-word answer is a relation of two objects in the scene ("what is the red
    circle to the blue square?" -> "left"), or None when no two objects are in a clear relation.

    Why: `question_for` asks the opposite relation whenever its answer is "no", so a yes/no relation answer follows
    from neither the picture nor the question alone, only from both together; this question's answer follows from
    the picture alone. The words are the world's own, so a model's existing tokenizer reads them.
    """
    related_pairs = _related_pairs(scene.objects)
    if not related_pairs:
        return None
    subject, reference, relation = _pick(rng, related_pairs)
    question = f"what is the {subject.color} {subject.shape} to the {reference.color} {reference.shape}?"
    return question, relation.removesuffix(" of"), RELATION_WORD_QUESTION_TYPE


def shapes_features() -> datasets.Features:
    """The schema of `make_shapes_dataset`, for code that builds or checks such datasets."""
    object_feature = {
        "shape": datasets.Value("string"),
        "color": datasets.Value("string"),
        "x": datasets.Value("float32"),
        "y": datasets.Value("float32"),
        "size": datasets.Value("int32"),
    }
    return datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Value("string"),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "question_type": datasets.Value("string"),
            "category": datasets.Value("string"),
            "objects": [object_feature],
        }
    )


def make_shapes_dataset(
    num_examples: int,
    seed: int = 0,
    categories: Sequence[str] | None = None,
    colors: Sequence[str] = tuple(PALETTE),
    featured_color: str | None = None,
    relation_word_share: float = 0.0,
    relation_question_share: float = 0.0,
    one_sided_relation_share: float = 0.0,
) -> datasets.Dataset:
    """`num_examples` rendered scenes with a caption and one question each, categories taken in turn.

    Pass `featured_color="pink"` for scenes that all feature the held-out colour (a LoRA concept demo); the
    categories then default to those whose captions name the colour. Training data only: of the scenes with two
    objects in a clear relation whose question is not a yes/no relation question, `relation_word_share` ask
    `relation_word_question` instead and `relation_question_share` a yes/no relation question (a tenth of the
    default rows are), so that a model sees more of the questions it finds hardest. `one_sided_relation_share` of the
    yes/no relation questions then ask only about pairs whose subject lies left of or above its reference, so that
    the asked word alone gives their answer: a nudge to carry the word to where the answer is read.
    """
    shares = {"relation_word_share": relation_word_share, "relation_question_share": relation_question_share,
              "one_sided_relation_share": one_sided_relation_share}
    for name, share in shares.items():
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {share}")
    if relation_word_share + relation_question_share > 1.0:
        raise ValueError("relation_word_share + relation_question_share must be at most 1, got "
                         f"{relation_word_share} + {relation_question_share}")
    if categories is None:
        categories = DATASET_CATEGORIES if featured_color is None else COLOR_NAMING_CATEGORIES
    question_colors = (*colors, featured_color) if featured_color and featured_color not in colors else colors
    rows: dict[str, list[Any]] = {name: [] for name in shapes_features()}
    for index in range(num_examples):
        rng = example_rng(seed, index)
        scene = sample_scene(rng, categories[index % len(categories)], colors, featured_color)
        question, answer, question_type = question_for(scene, rng, question_colors)
        # Drawn after everything else, and only when asked for, so that the other rows stay as they always were;
        # yes/no relation questions stay, the ones whose answers need the relation word read.
        if question_type != "relation" and relation_word_share + relation_question_share > 0:
            draw, related_pairs = rng.random(), _related_pairs(scene.objects)
            if related_pairs and draw < relation_word_share:
                question, answer, question_type = relation_word_question(scene, rng)
            elif related_pairs and draw < relation_word_share + relation_question_share:
                question, answer, question_type = _relation_question(related_pairs, rng)
        if question_type == "relation" and one_sided_relation_share > 0 and rng.random() < one_sided_relation_share:
            # every related pair's reverse is one-sided, so there is always one to ask about
            one_sided = [pair for pair in _related_pairs(scene.objects) if pair[2] in ONE_SIDED_RELATIONS]
            question, answer, question_type = _relation_question(one_sided, rng)
        rows["image"].append(render_scene(scene))
        rows["caption"].append(caption_for(scene))
        rows["question"].append(question)
        rows["answer"].append(answer)
        rows["question_type"].append(question_type)
        rows["category"].append(scene.category)
        rows["objects"].append([obj.to_dict() for obj in scene.objects])
    return datasets.Dataset.from_dict(rows, features=shapes_features())


def generation_scenes(
    num_prompts: int,
    seed: int = 0,
    categories: Sequence[str] = GENERATION_CATEGORIES,
    colors: Sequence[str] = tuple(PALETTE),
) -> list[Scene]:
    """Reference scenes behind `generation_prompts`: one correct image for each prompt."""
    unknown = [category for category in categories if category not in GENERATION_CATEGORIES]
    if unknown:
        raise ValueError(f"Unknown generation categories {unknown}; expected some of {GENERATION_CATEGORIES}.")
    return [
        sample_scene(example_rng(seed, index), categories[index % len(categories)], colors)
        for index in range(num_prompts)
    ]


def generation_prompts(
    num_prompts: int,
    seed: int = 0,
    categories: Sequence[str] = GENERATION_CATEGORIES,
    colors: Sequence[str] = tuple(PALETTE),
) -> list[PromptSpec]:
    """GenEval-style prompts, categories taken in turn; use a seed other than the training data's."""
    return [prompt_spec_for(scene) for scene in generation_scenes(num_prompts, seed, categories, colors)]
