"""The scores must read the shapes world exactly, so that a model's numbers measure the model, not the scorer."""

import math
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from hydra_hf.data import (
    GENERATION_CATEGORIES,
    PALETTE,
    ObjectRequirement,
    PromptSpec,
    Scene,
    ShapeObject,
    example_rng,
    generation_prompts,
    generation_scenes,
    render_scene,
    sample_scene,
)
from hydra_hf.evaluation import (
    WELL_DRAWN_MIN_FIT,
    count_specks,
    detect_objects,
    drawn_iou,
    format_scores_table,
    generation_outcomes,
    overall_standard_error,
    paired_differences,
    prompts_for_power,
    psnr,
    score_generation,
    scores_from_outcomes,
    spec_satisfied,
    vqa_accuracy,
)


def read_exactly(scene, detections, tolerance=2.0):
    """Same (shape, colour) multiset, and each object matched by a detection whose centre is within tolerance."""
    if Counter((obj.shape, obj.color) for obj in scene.objects) != Counter((d.shape, d.color) for d in detections):
        return False
    unmatched = list(detections)
    for obj in scene.objects:
        match = next(
            (
                d
                for d in unmatched
                if (d.shape, d.color) == (obj.shape, obj.color)
                and abs(d.x - obj.x) <= tolerance
                and abs(d.y - obj.y) <= tolerance
            ),
            None,
        )
        if match is None:
            return False
        unmatched.remove(match)
    return True


def degrade(image, rng, noise_std=15.0, colour_shift=10.0):
    """A stand-in for a generator's output: 3x3 blur, per-pixel noise and a global colour cast."""
    pixels = np.asarray(image, dtype=np.float64)
    padded = np.pad(pixels, ((1, 1), (1, 1), (0, 0)), mode="edge")
    height, width = pixels.shape[:2]
    blurred = np.mean([padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)], axis=0)
    noisy = blurred + rng.normal(0.0, noise_std, pixels.shape) + rng.uniform(-colour_shift, colour_shift, 3)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def test_detector_reads_rendered_scenes_exactly():
    scenes = [sample_scene(example_rng(2024, index)) for index in range(500)]
    correct = sum(read_exactly(scene, detect_objects(render_scene(scene))) for scene in scenes)
    assert correct / len(scenes) >= 0.99


def test_detector_reads_the_held_out_colour():
    scenes = [sample_scene(example_rng(7, index), featured_color="pink") for index in range(60)]
    assert all(read_exactly(scene, detect_objects(render_scene(scene))) for scene in scenes)


def test_detector_tolerates_blur_noise_and_colour_cast():
    rng = np.random.default_rng(0)
    scenes = [sample_scene(example_rng(99, index)) for index in range(150)]
    correct = sum(read_exactly(scene, detect_objects(degrade(render_scene(scene), rng))) for scene in scenes)
    assert correct / len(scenes) >= 0.97


def test_detector_ignores_background_specks_and_streaks():
    rng = np.random.default_rng(1)
    white = np.full((64, 64, 3), 255, dtype=np.uint8)
    assert detect_objects(white) == []
    assert detect_objects(np.clip(white + rng.normal(0, 12, white.shape), 0, 255).astype(np.uint8)) == []
    speck = white.copy()
    speck[10:13, 10:13] = (220, 40, 40)
    assert detect_objects(speck) == []
    streak = white.copy()
    streak[30:32, 5:60] = (40, 80, 220)
    assert detect_objects(streak) == []


def test_specks_count_small_blobs_that_the_detector_drops():
    image = np.asarray(render_scene(sample_scene(example_rng(3, 0), "two_objects"))).copy()
    assert count_specks(image) == 0  # the objects are far larger than a speck
    image[2:4, 2:4] = (220, 40, 40)
    image[60:63, 40:43] = (40, 80, 220)
    image[30, 2] = (235, 235, 235)  # too faint to count
    assert count_specks(image) == 2
    assert len(detect_objects(image)) == 2
    assert count_specks(image.astype(np.float32) / 255.0) == 2


def test_detector_accepts_pil_and_float_arrays():
    scene = Scene((ShapeObject.at("square", "blue", 5, 6, 14), ShapeObject.at("triangle", "yellow", 30, 30, 20)))
    image = render_scene(scene)
    from_pil = detect_objects(image)
    assert [(d.shape, d.color) for d in from_pil] == [("square", "blue"), ("triangle", "yellow")]
    assert detect_objects(np.asarray(image, dtype=np.float32) / 255.0) == from_pil
    with pytest.raises(ValueError, match="HxWx3"):
        detect_objects(np.zeros((3, 64, 64)))
    with pytest.raises(ValueError, match=r"float image in \[0, 1\]"):  # 0-255 floats are not read as all white
        detect_objects(np.asarray(image, dtype=np.float32))


def test_generation_score_is_perfect_on_reference_scenes():
    specs, scenes = generation_prompts(60, seed=8), generation_scenes(60, seed=8)
    scores = score_generation([render_scene(scene) for scene in scenes], specs)
    assert list(scores) == [*GENERATION_CATEGORIES, "overall"]
    assert all(value == 1.0 for value in scores.values())
    assert score_generation([render_scene(scene) for scene in scenes], [spec.to_dict() for spec in specs]) == scores
    assert score_generation([render_scene(scene) for scene in scenes], specs, min_fit=WELL_DRAWN_MIN_FIT) == scores
    assert min(d.fit for scene in scenes for d in detect_objects(render_scene(scene))) > 0.85


def test_overall_standard_error_matches_the_spread_of_the_overall_over_prompt_draws():
    specs = generation_prompts(480, seed=777)
    rates = dict(zip(GENERATION_CATEGORIES, (0.7, 0.45, 0.1, 0.7, 0.15, 0.2)))
    categories = np.array([spec.category for spec in specs])
    rng = np.random.default_rng(0)

    def overall_and_error(shares):
        outcomes = {category: shares[categories == category].tolist() for category in GENERATION_CATEGORIES}
        return scores_from_outcomes(outcomes)["overall"], overall_standard_error(outcomes)

    # One image per prompt, 2000 draws of a model that satisfies each prompt with its category's rate: the binomial
    # error of each category, p (1 - p) / n.
    one_image = [overall_and_error((rng.random(len(specs)) < [rates[c] for c in categories]).astype(float))
                 for _ in range(2000)]
    overalls, errors = np.array(one_image).T
    assert abs(np.mean(errors) - np.std(overalls)) < 0.1 * np.std(overalls)
    outcomes = {category: [1.0] * 3 + [0.0] for category in GENERATION_CATEGORIES}
    assert overall_standard_error(outcomes) == pytest.approx(math.sqrt(6 * 0.75 * 0.25 / 4) / 6)
    assert overall_standard_error({category: [1.0] * 5 for category in GENERATION_CATEGORIES}) == 0.0
    # Four images per prompt, prompts of uneven difficulty (each prompt's own rate drawn anew with the prompts): the
    # observed spread of the shares predicts the spread of the overall, well under the binomial bound of one image.
    four_images = []
    for _ in range(2000):
        prompt_rates = np.clip(np.array([rates[c] for c in categories]) + rng.normal(0, 0.2, len(specs)), 0, 1)
        four_images.append(overall_and_error(rng.binomial(4, prompt_rates) / 4))
    overalls, errors = np.array(four_images).T
    assert abs(np.mean(errors) - np.std(overalls)) < 0.1 * np.std(overalls)
    assert np.mean(errors) < 0.8 * np.mean(np.array(one_image)[:, 1])


def test_paired_difference_error_matches_the_spread_of_the_difference_over_prompt_draws():
    specs = generation_prompts(480, seed=777)
    categories = np.array([spec.category for spec in specs])
    rates = np.array([dict(zip(GENERATION_CATEGORIES, (0.7, 0.45, 0.1, 0.7, 0.15, 0.2)))[c] for c in categories])
    rng = np.random.default_rng(0)
    # 2000 draws of two models that agree except on 10% of prompts, where the second fails more often
    first = rng.random((2000, len(specs))) < rates
    second = np.where(rng.random((2000, len(specs))) < 0.1, rng.random((2000, len(specs))) < rates - 0.05, first)

    def outcomes(row):
        return {category: row[categories == category].tolist() for category in GENERATION_CATEGORIES}

    pairs = [paired_differences(outcomes(a), outcomes(b)) for a, b in zip(first, second)]
    for row in ("overall", "single_object"):  # the overall, and one category of 80 prompts
        differences, errors = np.array([pair[row] for pair in pairs]).T
        assert abs(np.mean(errors) - np.std(differences)) < 0.1 * np.std(differences)
    assert np.mean([pair["overall"][1] for pair in pairs]) < 0.5 * overall_standard_error(outcomes(first[0]))
    same = outcomes(first[0])
    assert paired_differences(same, same) == dict.fromkeys([*GENERATION_CATEGORIES, "overall"], (0.0, 0.0))
    one_better = paired_differences(same, {**same, "counting": [1.0] * len(same["counting"])})
    assert one_better["counting"][0] == pytest.approx(np.mean(same["counting"]) - 1)
    assert one_better["overall"][0] == pytest.approx(one_better["counting"][0] / 6)
    assert scores_from_outcomes(same)["overall"] == pytest.approx(np.mean([np.mean(v) for v in same.values()]))
    with pytest.raises(ValueError, match="same prompts"):
        paired_differences(same, {**same, "counting": same["counting"][:-1]})

def test_a_test_sized_by_prompts_for_power_shows_the_effect_as_often_as_asked():
    """Two models whose outcomes differ by 0.05 in every category: a pilot of 240 prompts gives the paired error, and
    tests of the size `prompts_for_power` returns clear two standard errors about as often as the power asked."""
    rates = np.array([0.7, 0.45, 0.1, 0.7, 0.15, 0.2])
    rng = np.random.default_rng(0)

    def paired_test(per_category):
        first = rng.random((len(rates), per_category)) < rates[:, None] + 0.05
        second = rng.random((len(rates), per_category)) < rates[:, None]
        as_outcomes = lambda drawn: dict(zip(GENERATION_CATEGORIES, drawn.tolist()))  # noqa: E731
        return paired_differences(as_outcomes(first), as_outcomes(second))["overall"]

    pilot_error = np.mean([paired_test(40)[1] for _ in range(50)])
    for power in (0.5, 0.8):
        needed = prompts_for_power(pilot_error, 240, 0.05, power)
        tests = [paired_test(math.ceil(needed / len(rates))) for _ in range(500)]
        shown = np.mean([difference > 2 * error for difference, error in tests])
        assert abs(shown - power) < 0.07, (power, needed, shown)
    # the thirty-fourth round's sizing: 250 prompts x 2 images had 0.0212; +0.03 needs about 500 for an even chance
    assert prompts_for_power(0.0212, 250, 0.03, power=0.5) == 500
    assert 1000 <= prompts_for_power(0.0212, 250, 0.03) <= 1010
    for arguments, message in (((0.02, 250, 0.0), "positive"), ((0.02, 250, 0.03, 0.3), "power in")):
        with pytest.raises(ValueError, match=message):
            prompts_for_power(*arguments)


def test_a_ragged_blob_counts_as_its_best_fitting_shape_only_until_fit_is_required():
    image = Image.new("RGB", (64, 64), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for box in ((10, 10, 40, 20), (10, 10, 20, 50), (10, 40, 50, 50)):  # a C-like stroke of one colour
        draw.rectangle(box, fill=PALETTE["red"])
    (blob,) = detect_objects(image)
    assert blob.color == "red" and blob.fit < WELL_DRAWN_MIN_FIT
    spec = PromptSpec("single_object", f"a red {blob.shape}", (ObjectRequirement(blob.shape, "red"),))
    assert score_generation([image], [spec])["overall"] == 1.0
    assert score_generation([image], [spec], min_fit=WELL_DRAWN_MIN_FIT)["overall"] == 0.0


def test_generation_score_is_low_on_blank_and_mismatched_images():
    specs, scenes = generation_prompts(60, seed=8), generation_scenes(60, seed=8)
    blank = Image.new("RGB", (64, 64), (255, 255, 255))
    assert score_generation([blank] * len(specs), specs)["overall"] == 0.0
    shuffled = [render_scene(scene) for scene in scenes[1:] + scenes[:1]]
    assert score_generation(shuffled, specs)["overall"] < 0.4


def test_several_images_per_prompt_score_each_prompt_by_its_share_of_satisfied_images():
    """`images` holds rounds of one image per prompt: a prompt whose reference is drawn in one round of three scores
    1/3, one drawn in every round 1; the rounds are not read as consecutive images of one prompt."""
    specs, scenes = generation_prompts(12, seed=8), generation_scenes(12, seed=8)
    references = [render_scene(scene) for scene in scenes]
    blank = Image.new("RGB", (64, 64), (255, 255, 255))
    drawn_once = references + [blank] * 12 + [blank] * 12
    outcomes = generation_outcomes(drawn_once, specs, images_per_prompt=3)
    assert outcomes == {category: [pytest.approx(1 / 3)] * 2 for category in GENERATION_CATEGORIES}
    assert generation_outcomes(references * 3, specs, images_per_prompt=3) == generation_outcomes(references, specs)
    assert scores_from_outcomes(outcomes)["overall"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="expected 36"):
        generation_outcomes(references, specs, images_per_prompt=3)
    with pytest.raises(ValueError, match="at least 1"):
        generation_outcomes(references, specs, images_per_prompt=0)


def test_counting_requires_the_exact_number():
    spec = PromptSpec("counting", "three red circles", (ObjectRequirement("circle", "red", 3, exact=True),))
    corners = [(2, 2), (40, 2), (2, 40), (40, 40)]
    for count in (2, 3, 4):
        scene = Scene(tuple(ShapeObject.at("circle", "red", x, y, 16) for x, y in corners[:count]))
        assert spec_satisfied(detect_objects(render_scene(scene)), spec) == (count == 3)


def test_position_and_colour_binding_are_checked():
    circle, square = ShapeObject.at("circle", "red", 4, 20, 16), ShapeObject.at("square", "blue", 40, 22, 16)
    left_of = PromptSpec(
        "position",
        "a red circle to the left of a blue square",
        (ObjectRequirement("circle", "red"), ObjectRequirement("square", "blue")),
        "left of",
    )
    image = render_scene(Scene((circle, square)))
    assert spec_satisfied(detect_objects(image), left_of)
    assert not spec_satisfied(detect_objects(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)), left_of)
    swapped_colours = PromptSpec(
        "color_attribution",
        "a blue circle and a red square",
        (ObjectRequirement("circle", "blue"), ObjectRequirement("square", "red")),
    )
    assert not spec_satisfied(detect_objects(image), swapped_colours)


def test_only_asked_also_fails_images_with_anything_but_the_asked_objects():
    """GenEval passes "a circle" drawn beside a square, and two circles for one; `only_asked` passes neither."""
    red_circle, blue_square = ShapeObject.at("circle", "red", 4, 20, 16), ShapeObject.at("square", "blue", 40, 22, 16)
    second_circle = ShapeObject.at("circle", "green", 40, 44, 16)
    one_circle = PromptSpec("single_object", "a circle", (ObjectRequirement("circle"),))
    red_one = PromptSpec("colors", "a red circle", (ObjectRequirement("circle", "red"),))
    both = PromptSpec("two_objects", "a circle and a square", (ObjectRequirement("circle"), ObjectRequirement("square")))
    for objects, spec, geneval, only_asked in (
        ((red_circle,), one_circle, True, True),
        ((red_circle, blue_square), one_circle, True, False),
        ((red_circle, second_circle), one_circle, True, False),
        ((red_circle, second_circle), red_one, True, False),
        ((red_circle, blue_square), both, True, True),
        ((red_circle, blue_square, second_circle), both, True, False),
        ((blue_square,), one_circle, False, False),
    ):
        found = detect_objects(render_scene(Scene(objects)))
        assert (spec_satisfied(found, spec), spec_satisfied(found, spec, only_asked=True)) == (geneval, only_asked)
    specs, scenes = generation_prompts(60, seed=8), generation_scenes(60, seed=8)
    references = [render_scene(scene) for scene in scenes]  # a reference scene holds what its prompt asks, no more
    assert generation_outcomes(references, specs, only_asked=True) == generation_outcomes(references, specs)


def test_scores_table_lists_every_score():
    table = format_scores_table({"counting": 0.5, "overall": 0.25})
    assert table.splitlines() == ["| metric | score |", "| --- | ---: |", "| counting | 0.5000 |", "| overall | 0.2500 |"]


def test_vqa_accuracy_is_exact_match_after_normalising():
    assert vqa_accuracy([" Yes", "2", "RED\n", "circle"], ["yes", "3", "red", "square"]) == 0.5
    with pytest.raises(ValueError):
        vqa_accuracy(["yes"], ["yes", "no"])


def test_psnr_matches_its_formula():
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert psnr(image, image) == math.inf
    zeros, tens = np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 10, np.uint8)
    assert psnr(zeros, tens) == pytest.approx(10 * math.log10(255**2 / 100))
    floats = np.zeros((3, 8, 8), np.float32)
    assert psnr(floats + 0.1, floats) == pytest.approx(10 * math.log10(4 / 0.01), rel=1e-5)
    assert psnr(torch.from_numpy(floats + 0.1), torch.from_numpy(floats)) == pytest.approx(psnr(floats + 0.1, floats))
    assert psnr(floats + 0.1, floats, data_range=1.0) == pytest.approx(10 * math.log10(1 / 0.01), rel=1e-5)
    batch = np.stack([np.full((3, 4, 4), 1.0), np.full((3, 4, 4), 10.0)])
    expected = (10 * math.log10(255**2 / 1) + 10 * math.log10(255**2 / 100)) / 2
    assert psnr(batch, np.zeros_like(batch), data_range=255) == pytest.approx(expected)
    with pytest.raises(ValueError, match="Shapes differ"):
        psnr(zeros, floats)


def test_drawn_iou_counts_pixels_darker_than_the_white_background():
    white = np.full((4, 4, 3), 255, dtype=np.uint8)  # as the pipeline's PIL images read
    first, second = white.copy(), white.copy()
    first[0, :2] = [190, 0, 0]  # drawn: its darkest channel is far below white
    second[0, 1:3] = [0, 0, 200]
    assert drawn_iou(first, second) == pytest.approx(1 / 3)
    assert drawn_iou(white, white) == 0.0
