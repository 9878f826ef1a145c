"""The shapes world must be exact and reproducible: everything HYDRA learns and is scored on comes from it."""

import re
from collections import Counter

import datasets
import numpy as np
import pytest

from hydra_hf.data import (
    ALL_COLORS,
    BACKGROUND,
    CANVAS_SIZE,
    CLEAR_RELATION_MIN_COSINE,
    DATASET_CATEGORIES,
    GENERATION_CATEGORIES,
    HELD_OUT_COLORS,
    MAX_OBJECTS,
    MAX_SIZE,
    MIN_SIZE,
    OBJECT_MARGIN,
    PALETTE,
    QUESTION_TYPES,
    RELATION_WORD_QUESTION_TYPE,
    SHAPES,
    ObjectRequirement,
    PromptSpec,
    binding_questions,
    caption_for,
    example_rng,
    generation_prompts,
    generation_scenes,
    make_shapes_dataset,
    prompt_spec_from_text,
    question_for,
    relations_between,
    rotate_shape_words,
    render_scene,
    sample_scene,
    verification_questions,
)

from .utils import expected_answer, row_scene

NUMBER_WORDS = {"a": 1, "an": 1, "two": 2, "three": 3, "four": 4}


@pytest.fixture(scope="module")
def dataset():
    return make_shapes_dataset(210, seed=11)


@pytest.fixture(scope="module")
def scenes():
    return [sample_scene(example_rng(0, index)) for index in range(500)]


def test_same_seed_gives_same_examples_and_other_seeds_differ():
    first, again, other = (make_shapes_dataset(14, seed=seed) for seed in (5, 5, 6))
    for a, b in zip(first, again):
        assert np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
        assert {key: a[key] for key in a if key != "image"} == {key: b[key] for key in b if key != "image"}
    assert list(first["objects"]) != list(other["objects"])
    assert list(first["caption"]) != list(other["caption"])


def test_example_does_not_depend_on_how_many_are_generated():
    few, many = make_shapes_dataset(5, seed=2), make_shapes_dataset(12, seed=2)
    for index in range(5):
        assert few[index]["caption"] == many[index]["caption"]
        assert few[index]["question"] == many[index]["question"]
        assert few[index]["objects"] == many[index]["objects"]


def test_objects_fit_the_canvas_without_overlap(scenes):
    for scene in scenes:
        assert 1 <= len(scene.objects) <= MAX_OBJECTS
        for obj in scene.objects:
            left, top, right, bottom = obj.bbox
            assert 0 <= left and 0 <= top and right <= CANVAS_SIZE and bottom <= CANVAS_SIZE
            assert MIN_SIZE <= obj.size <= MAX_SIZE and right - left == obj.size
            assert (bottom - top < obj.size) == (obj.shape == "triangle")
        for i, a in enumerate(scene.objects):
            for b in scene.objects[i + 1 :]:
                gap_x = max(b.bbox[0] - a.bbox[2], a.bbox[0] - b.bbox[2])
                gap_y = max(b.bbox[1] - a.bbox[3], a.bbox[1] - b.bbox[3])
                assert max(gap_x, gap_y) >= OBJECT_MARGIN


def test_rendering_uses_exact_colours_inside_each_bounding_box(scenes):
    fill_ratios = {"square": (1.0, 1.0), "circle": (0.74, 0.82), "triangle": (0.5, 0.56)}
    for scene in scenes[:200]:
        pixels = np.asarray(render_scene(scene))
        assert pixels.shape == (CANVAS_SIZE, CANVAS_SIZE, 3)
        used = {tuple(int(c) for c in colour) for colour in np.unique(pixels.reshape(-1, 3), axis=0)}
        assert used == {BACKGROUND} | {ALL_COLORS[obj.color] for obj in scene.objects}
        painted = (pixels != BACKGROUND).any(axis=-1)
        inside_boxes = np.zeros_like(painted)
        for obj in scene.objects:
            left, top, right, bottom = obj.bbox
            inside_boxes[top:bottom, left:right] = True
            mask = (pixels[top:bottom, left:right] == ALL_COLORS[obj.color]).all(axis=-1)
            assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any()
            low, high = fill_ratios[obj.shape]
            assert low <= mask.mean() <= high
        assert not (painted & ~inside_boxes).any()


def test_held_out_colour_appears_only_when_asked(dataset):
    pink = HELD_OUT_COLORS["pink"]
    assert "pink" not in PALETTE
    texts = " ".join([*dataset["caption"], *dataset["question"], *dataset["answer"]])
    assert "pink" not in texts
    assert all(obj["color"] in PALETTE for objects in dataset["objects"] for obj in objects)
    assert not any((np.asarray(image) == pink).all(axis=-1).any() for image in dataset["image"])

    featured = make_shapes_dataset(20, seed=1, featured_color="pink")
    for row in featured:
        assert any(obj["color"] == "pink" for obj in row["objects"])
        assert "pink" in row["caption"]
        assert (np.asarray(row["image"]) == pink).all(axis=-1).any()


def test_captions_name_exactly_the_scene_objects(dataset):
    colour_words = set(ALL_COLORS)
    for row in dataset:
        scene, caption = row_scene(row), row["caption"]
        assert caption == caption_for(scene) and caption == caption.lower()
        kinds = Counter((obj.shape, obj.color) for obj in scene.objects)
        if row["category"] == "position":
            subject, relation, reference = re.fullmatch(
                r"an? (\w+ \w+) (to the left of|to the right of|above|below) an? (\w+ \w+)", caption
            ).groups()
            a, b = scene.objects
            assert (subject, reference) == (f"{a.color} {a.shape}", f"{b.color} {b.shape}")
            expected = relation.removeprefix("to the ")
            assert relations_between((a.x, a.y), (b.x, b.y), CLEAR_RELATION_MIN_COSINE) == {expected}
            continue
        phrases = re.split(r", | and ", caption)
        named = Counter()
        for phrase in phrases:
            number, *words = phrase.split()
            shape = words[-1].removesuffix("s")
            colour = words[0] if len(words) == 2 else None
            assert colour is None or colour in colour_words
            named[shape, colour] += NUMBER_WORDS[number]
        if row["category"] in ("single_object", "two_objects"):
            kinds = Counter((obj.shape, None) for obj in scene.objects)
        assert named == kinds


def test_categories_shape_their_scenes(dataset):
    assert set(dataset["category"]) == set(DATASET_CATEGORIES)
    for row in dataset:
        objects, category = row["objects"], row["category"]
        shapes, colours = [obj["shape"] for obj in objects], [obj["color"] for obj in objects]
        if category in ("single_object", "colors"):
            assert len(objects) == 1
        elif category == "counting":
            assert 2 <= len(objects) <= 4 and len(set(zip(shapes, colours))) == 1
        elif category in ("two_objects", "position"):
            assert len(objects) == 2 and shapes[0] != shapes[1]
        elif category == "color_attribution":
            assert len(objects) == 2 and shapes[0] != shapes[1] and colours[0] != colours[1]
        else:
            assert 3 <= len(objects) <= 4


def test_answers_follow_from_the_objects(dataset):
    for row in dataset:
        assert row["answer"] == expected_answer(row["question"], row_scene(row))
        assert row["question"] == row["question"].lower() and " " not in row["answer"]
    assert set(dataset["question_type"]) == set(QUESTION_TYPES)


def test_relation_word_share_asks_for_the_relation_in_a_share_of_the_other_rows(dataset):
    with_words = make_shapes_dataset(210, seed=11, relation_word_share=0.5)
    asked = [row for row in with_words if row["question_type"] == RELATION_WORD_QUESTION_TYPE]
    assert 0.1 < len(asked) / len(with_words) < 0.35
    assert {row["answer"] for row in asked} == {"left", "right", "above", "below"}
    for row in asked:
        assert row["answer"] == expected_answer(row["question"], row_scene(row))
    for plain, row in zip(dataset, with_words):
        assert row["caption"] == plain["caption"] and row["objects"] == plain["objects"]
        if row["question_type"] != RELATION_WORD_QUESTION_TYPE:
            assert (row["question"], row["answer"]) == (plain["question"], plain["answer"])
        else:
            assert plain["question_type"] != "relation", "yes/no relation questions are kept"
    with pytest.raises(ValueError, match="relation_word_share"):
        make_shapes_dataset(2, relation_word_share=1.5)


def test_relation_question_share_asks_yes_no_relation_questions_in_the_rows_the_word_share_leaves(dataset):
    plain_relations = sum(kind == "relation" for kind in dataset["question_type"]) / len(dataset)
    mixed = make_shapes_dataset(210, seed=11, relation_word_share=0.5, relation_question_share=0.5)
    words_only = make_shapes_dataset(210, seed=11, relation_word_share=0.5)
    relations = [row for row in mixed if row["question_type"] == "relation"]
    assert len(relations) / len(mixed) > plain_relations + 0.1
    assert {row["answer"] for row in relations} == {"yes", "no"}
    for row in relations:
        assert row["answer"] == expected_answer(row["question"], row_scene(row))
    for plain, word_row, row in zip(dataset, words_only, mixed):
        assert row["objects"] == plain["objects"]
        if row["question_type"] != "relation" or plain["question_type"] == "relation":
            # the same draw decides both shares: the relation-word rows are those of relation_word_share alone
            assert (row["question"], row["answer"]) == (word_row["question"], word_row["answer"])
    with pytest.raises(ValueError, match="relation_question_share"):
        make_shapes_dataset(2, relation_question_share=-0.1)
    with pytest.raises(ValueError, match="at most 1"):
        make_shapes_dataset(2, relation_word_share=0.6, relation_question_share=0.6)


def test_one_sided_relation_share_lets_the_asked_word_give_the_answer(dataset):
    one_sided = make_shapes_dataset(210, seed=11, one_sided_relation_share=1.0)
    relations = [row for row in one_sided if row["question_type"] == "relation"]
    assert {row["answer"] for row in relations} == {"yes", "no"}
    for row in relations:
        assert row["answer"] == expected_answer(row["question"], row_scene(row))
        assert (row["answer"] == "yes") == (" left of " in row["question"] or " above " in row["question"])
    for plain, row in zip(dataset, one_sided):
        assert row["question_type"] == plain["question_type"]
        if row["question_type"] != "relation":
            assert (row["question"], row["answer"]) == (plain["question"], plain["answer"])
    with pytest.raises(ValueError, match="one_sided_relation_share"):
        make_shapes_dataset(2, one_sided_relation_share=2.0)


def test_yes_no_questions_are_balanced():
    rng = np.random.default_rng(0)
    for question_type in ("exists", "relation"):
        answers = []
        for index in range(400):
            question, answer, kind = question_for(sample_scene(example_rng(3, index), "position"), rng)
            if kind == question_type:
                answers.append(answer)
        assert len(answers) > 40
        assert 0.35 < answers.count("yes") / len(answers) < 0.65


def test_dataset_schema(dataset):
    columns = {"image", "caption", "question", "answer", "question_type", "category", "objects"}
    assert set(dataset.column_names) == columns
    assert isinstance(dataset.features["image"], datasets.Image)
    assert set(dataset.features["objects"].feature) == {"shape", "color", "x", "y", "size"}
    image = dataset[0]["image"]
    assert image.size == (CANVAS_SIZE, CANVAS_SIZE) and image.mode == "RGB"


def test_generation_prompts_follow_their_reference_scenes():
    specs, scenes = generation_prompts(18, seed=4), generation_scenes(18, seed=4)
    assert [spec.category for spec in specs] == list(GENERATION_CATEGORIES) * 3
    assert generation_prompts(18, seed=4) == specs and generation_prompts(18, seed=5) != specs
    for spec, scene in zip(specs, scenes):
        assert spec.prompt == caption_for(scene)
        assert PromptSpec.from_dict(spec.to_dict()) == spec
        assert (spec.relation is not None) == (spec.category == "position")
        if spec.category == "counting":
            (requirement,) = spec.objects
            assert requirement.exact and requirement.count == len(scene.objects)
        if spec.category in ("single_object", "two_objects"):
            assert all(requirement.color is None for requirement in spec.objects)


def test_typed_prompts_read_back_as_the_specs_the_world_writes():
    specs = [spec for seed in (0, 12345) for spec in generation_prompts(600, seed=seed, colors=tuple(ALL_COLORS))]
    assert [prompt_spec_from_text(spec.prompt) for spec in specs] == specs
    assert {spec.category for spec in specs} == set(GENERATION_CATEGORIES)
    assert prompt_spec_from_text("  A Pink  triangle. ") == PromptSpec(
        "colors", "a pink triangle", (ObjectRequirement("triangle", "pink"),))
    assert prompt_spec_from_text("two squares").objects == (ObjectRequirement("square", None, 2, exact=True),)
    for text in ("a red circles", "two circle", "a teal circle", "a dog", "a circle to the left of a square", ""):
        with pytest.raises(ValueError, match="not a shapes-world prompt; expected noun phrases like 'a red circle'"):
            prompt_spec_from_text(text)


def test_verification_questions_ask_what_the_prompt_fixes_and_binding_questions_leave_out_counts():
    counting = prompt_spec_from_text("three orange circles")
    assert verification_questions(counting) == [("how many circles are there?", "3")]
    assert binding_questions(counting) == []
    two = prompt_spec_from_text("a square and a square")
    assert verification_questions(two) == [("how many squares are there?", "2")] and binding_questions(two) == []
    position = prompt_spec_from_text("an orange circle to the left of a red square")
    asked = [("is there an orange circle?", "yes"), ("is there a red square?", "yes"),
             ("is the orange circle left of the red square?", "yes")]
    assert verification_questions(position) == asked and binding_questions(position) == asked
    attribution = prompt_spec_from_text("a blue triangle and a yellow circle")
    assert binding_questions(attribution) == [("is there a blue triangle?", "yes"), ("is there a yellow circle?", "yes")]
    # the questions are in the templates the model is trained to answer
    templates = re.compile(r"is there an? \w+ \w+\?|is the \w+ \w+ (left of|right of|above|below) the \w+ \w+\?")
    assert all(templates.fullmatch(question) and answer == "yes"
               for spec in generation_prompts(60, seed=3) for question, answer in binding_questions(spec))


def test_relations_are_judged_by_centres():
    assert relations_between((0, 0), (10, 0)) == {"left of"}
    assert relations_between((0, 20), (0, 0)) == {"below"}
    assert relations_between((0, 0), (10, 10)) == {"left of", "above"}
    assert relations_between((0, 0), (10, 10), CLEAR_RELATION_MIN_COSINE) == set()
    assert relations_between((5, 5), (5, 5)) == set()


def test_rotated_shape_words_contradict_every_caption_in_its_shapes_alone():
    assert rotate_shape_words("a red circle left of a blue triangle") == "a red square left of a blue circle"
    assert rotate_shape_words("three yellow squares") == "three yellow triangles"
    assert rotate_shape_words("describe the image .") is None
    for scene in make_shapes_dataset(30, seed=5):
        rotated = rotate_shape_words(scene["caption"])
        differing = [(a, b) for a, b in zip(scene["caption"].split(), rotated.split()) if a != b]
        assert differing and all(a.rstrip("s,") in SHAPES and b.rstrip("s,") in SHAPES for a, b in differing)


def test_invalid_requests_are_rejected():
    with pytest.raises(ValueError, match="category"):
        sample_scene(example_rng(0, 0), "crowd")
    with pytest.raises(ValueError, match="Colours"):
        sample_scene(example_rng(0, 0), colors=("teal",))
    with pytest.raises(ValueError, match="generation categories"):
        generation_prompts(3, categories=("scene",))
