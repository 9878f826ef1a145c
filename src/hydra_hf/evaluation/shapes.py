"""Scores for the shapes world: a detector that reads images back into objects, GenEval-style generation
accuracy, VQA accuracy and PSNR.

The detector needs no learned weights, so generation can be scored exactly on machines without network:
pixels take the palette colour (held-out colours included) that best explains them, same-colour pixels form
8-connected components (pure numpy, scipy is not a dependency), and each component's shape is the template
(circle, square, upright triangle) that best overlaps it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
from PIL import Image

from ..data.shapes import ALL_COLORS, BACKGROUND, GENERATION_CATEGORIES, SHAPES, PromptSpec, relations_between

__all__ = [
    "WELL_DRAWN_MIN_FIT",
    "DetectedObject",
    "count_specks",
    "detect_objects",
    "drawn_iou",
    "drawn_mask",
    "format_scores_table",
    "generation_outcomes",
    "outcomes_from_detections",
    "overall_standard_error",
    "paired_differences",
    "paired_score_rows",
    "prompts_for_power",
    "psnr",
    "score_generation",
    "scores_from_outcomes",
    "spec_satisfied",
    "vqa_accuracy",
]

_COLOR_NAMES = tuple(ALL_COLORS)
_BACKGROUND = np.array(BACKGROUND, dtype=np.float32)
# Each palette colour as a direction away from the background: a blurred or anti-aliased edge pixel is a blend
# alpha * colour + (1 - alpha) * background, so it lies on that colour's segment, even when it happens to be
# nearer another palette colour (two thirds red is nearer pink than red).
_COLOR_DIRECTIONS = np.array(list(ALL_COLORS.values()), dtype=np.float32) - _BACKGROUND
_WINDOW_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
_NEIGHBOUR_OFFSETS = [offset for offset in _WINDOW_OFFSETS if offset != (0, 0)]
_EDGE_NEIGHBOUR_OFFSETS = [(-1, 0), (1, 0), (0, -1), (0, 1)]
# Area moments of each shape filling a unit box (apex up for the triangle): var(x), var(y), and the vertical
# offset of the box centre from the centroid, in box heights. They turn a component's moments into a box.
_SHAPE_MOMENTS = {
    "circle": (1 / 16, 1 / 16, 0.0),
    "square": (1 / 12, 1 / 12, 0.0),
    "triangle": (1 / 24, 1 / 18, -1 / 6),
}


@dataclass(frozen=True)
class DetectedObject:
    """A shape read from an image; `x`, `y`, `width`, `height` are the box its fitted shape fills, comparable to
    a `ShapeObject`'s centre and bounding box. `fit` is the IoU of the pixels with that shape: every object of 480
    rendered scenes fits at 0.89 or more, a ragged blob lower, though it is still read as its best-fitting shape."""

    shape: str
    color: str
    x: float
    y: float
    width: int
    height: int
    num_pixels: int
    fit: float


def _as_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """HxWx3 float32 in [0, 255]; float arrays are taken to be in [0, 1] as diffusers' `output_type="np"`."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"Expected an HxWx3 image, got an array of shape {array.shape}.")
    if np.issubdtype(array.dtype, np.floating):
        if array.size and (array.min() < -0.01 or array.max() > 1.01):  # 0-255 floats would all clip to white
            raise ValueError(
                f"Expected a float image in [0, 1] (or uint8 in [0, 255]), got values in [{array.min():.3g}, {array.max():.3g}]."
            )
        return np.clip(array, 0.0, 1.0).astype(np.float32) * 255.0
    return array.astype(np.float32)


def _neighbours(array: np.ndarray, offsets: Sequence[tuple[int, int]], **pad: Any) -> list[np.ndarray]:
    """For each (dy, dx), the array of every pixel's neighbour at that offset; `pad` fills in past the border."""
    height, width = array.shape[:2]
    padding = ((1, 1), (1, 1)) + ((0, 0),) * (array.ndim - 2)
    padded = np.pad(array, padding, **pad)
    return [padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width] for dy, dx in offsets]


def _label_components(classes: np.ndarray) -> np.ndarray:
    """8-connected components of equal non-negative class; -1 marks background and stays -1.

    Every pixel starts with its own flat index as label; labels shrink to the component minimum by taking
    the neighbours' minimum and following labels to the pixel they name (pointer jumping).
    """
    foreground = classes >= 0
    unlabelled = classes.size
    labels = np.where(foreground, np.arange(classes.size).reshape(classes.shape), unlabelled)
    same_class = [foreground & (neighbour == classes) for neighbour in _neighbours(classes, _NEIGHBOUR_OFFSETS)]
    while True:
        merged = labels
        neighbour_labels = _neighbours(labels, _NEIGHBOUR_OFFSETS, constant_values=unlabelled)
        for linked, neighbour in zip(same_class, neighbour_labels):
            merged = np.where(linked, np.minimum(merged, neighbour), merged)
        flat = np.append(merged.ravel(), unlabelled)
        merged = np.where(foreground, flat[merged], unlabelled)
        if np.array_equal(merged, labels):
            return np.where(foreground, labels, -1)
        labels = merged


def _shape_box(shape: str, component: np.ndarray) -> tuple[float, float, float, float]:
    """(centre x, centre y, width, height) of the `shape` whose area moments match the component's.

    Moments, unlike the extreme pixels, barely move when blur or noise adds or removes a few edge pixels.
    """
    rows, cols = np.nonzero(component)
    unit_var_x, unit_var_y, centre_offset = _SHAPE_MOMENTS[shape]
    # A pixel is a unit square, which adds 1/12 to the variance of its centre coordinate.
    width = math.sqrt((cols.var() + 1 / 12) / unit_var_x)
    height = math.sqrt((rows.var() + 1 / 12) / unit_var_y)
    return float(cols.mean()), float(rows.mean()) + centre_offset * height, width, height


def _shape_template(shape: str, box: tuple[float, float, float, float], canvas: tuple[int, int]) -> np.ndarray:
    """The pixels whose centres fall inside the shape filling `box` (centre x, centre y, width, height)."""
    centre_x, centre_y, width, height = box
    rows, cols = np.mgrid[0 : canvas[0], 0 : canvas[1]].astype(np.float32)
    u, v = (cols - centre_x) / width + 0.5, (rows - centre_y) / height + 0.5
    if shape == "circle":
        return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    inside = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    return inside if shape == "square" else inside & (np.abs(u - 0.5) <= v / 2)


def _fit_shape(component: np.ndarray) -> tuple[str, tuple[float, float, float, float], float]:
    """The shape, with its moment-fitted box, whose template best overlaps the component, and that overlap (IoU)."""
    fits = []
    for shape in SHAPES:
        box = _shape_box(shape, component)
        template = _shape_template(shape, box, component.shape)
        fits.append((shape, box, np.count_nonzero(component & template) / np.count_nonzero(component | template)))
    return max(fits, key=lambda fit: fit[2])


def _classify_pixels(pixels: np.ndarray, max_color_distance: float) -> np.ndarray:
    """Index into `ALL_COLORS` of each pixel's colour, -1 for background.

    A pixel is explained by the blend of a palette colour with the background nearest to it; it is part of an
    object when that blend is at least half colour and within `max_color_distance` (Euclidean RGB).
    """
    offsets = pixels - _BACKGROUND
    alphas = np.clip(offsets @ _COLOR_DIRECTIONS.T / (_COLOR_DIRECTIONS**2).sum(axis=-1), 0.0, 1.0)
    residuals = np.linalg.norm(offsets[:, :, None, :] - alphas[..., None] * _COLOR_DIRECTIONS, axis=-1)
    nearest = residuals.argmin(axis=-1)
    alpha = np.take_along_axis(alphas, nearest[..., None], axis=-1)[..., 0]
    return np.where((alpha >= 0.5) & (residuals.min(axis=-1) <= max_color_distance), nearest, -1)


def detect_objects(
    image: Image.Image | np.ndarray, min_pixels: int = 20, max_color_distance: float = 90.0
) -> list[DetectedObject]:
    """The objects in a shapes-world image, ordered top to bottom then left to right.

    Pixels are first averaged with their 3x3 neighbourhood: that cancels most per-pixel generator noise, and the
    colour-background blends it makes at edges are what `_classify_pixels` expects anyway. Components under
    `min_pixels`, and thin ones (streaks, fringes) with fewer than `min_pixels // 2` interior pixels, are noise.
    """
    pixels = _as_rgb_array(image)
    smoothed = np.mean(_neighbours(pixels, _WINDOW_OFFSETS, mode="edge"), axis=0)
    classes = _classify_pixels(smoothed, max_color_distance)
    labels = _label_components(classes)
    edge_neighbours = _neighbours(labels, _EDGE_NEIGHBOUR_OFFSETS, constant_values=-1)
    interior = np.logical_and.reduce([labels >= 0, *(neighbour == labels for neighbour in edge_neighbours)])
    detections = []
    for label in np.unique(labels[labels >= 0]):
        component = labels == label
        num_pixels = int(component.sum())
        if num_pixels < min_pixels or (interior & component).sum() < min_pixels // 2:
            continue
        shape, (x, y, width, height), fit = _fit_shape(component)
        detections.append(DetectedObject(
            shape, _COLOR_NAMES[classes.flat[label]], x, y, round(width), round(height), num_pixels, round(float(fit), 4)
        ))
    return sorted(detections, key=lambda detection: (detection.y, detection.x))


SPECK_MAX_PIXELS = 10  # blobs smaller than this count as specks (the eval table quotes it)
DRAWN_MIN_DEFICIT = 60.0  # a pixel whose darkest channel is this far below white is drawn, not background


def drawn_mask(image: Image.Image | np.ndarray, min_deficit: float = DRAWN_MIN_DEFICIT) -> np.ndarray:
    """HxW bool: the pixels whose darkest channel is more than `min_deficit` below the white background."""
    return (255.0 - _as_rgb_array(image)).max(axis=-1) > min_deficit


def drawn_iou(first: Image.Image | np.ndarray, second: Image.Image | np.ndarray) -> float:
    """Overlap (IoU) of two images' drawn pixels (`drawn_mask`); 0 when neither draws anything. A generator that
    draws the shape it is asked for gives images of two shape words from one noise an overlap well below 1."""
    first, second = drawn_mask(first), drawn_mask(second)
    return float((first & second).sum() / max(1, (first | second).sum()))


def count_specks(
    image: Image.Image | np.ndarray, max_pixels: int = SPECK_MAX_PIXELS, min_deficit: float = DRAWN_MIN_DEFICIT
) -> int:
    """Small drawn blobs (`drawn_mask`): 8-connected components of fewer than `max_pixels` pixels.

    `detect_objects` drops them (under `min_pixels`), so the GenEval-style scores cannot see a generator that
    scatters dots over the canvas; this count can.
    """
    labels = _label_components(np.where(drawn_mask(image, min_deficit), 0, -1))
    _, sizes = np.unique(labels[labels >= 0], return_counts=True)
    return int((sizes < max_pixels).sum())


def spec_satisfied(detections: Sequence[DetectedObject], spec: PromptSpec, only_asked: bool = False) -> bool:
    """GenEval's rule, on detections rather than an object detector's boxes.

    Every required shape (and colour) is present often enough, exactly as often when counting; when a relation
    is asked, some object matching the first requirement stands in it to one matching the second, by centres.
    With `only_asked`, nothing else may be drawn either: every count is exact and every detection matches a
    requirement (GenEval passes "a circle" drawn among other objects, so a generator that draws several gets
    several tries).
    """
    matches = []
    for requirement in spec.objects:
        found = [
            detection
            for detection in detections
            if detection.shape == requirement.shape and requirement.color in (None, detection.color)
        ]
        exact = requirement.exact or only_asked
        if len(found) < requirement.count or (exact and len(found) > requirement.count):
            return False
        matches.append(found)
    if only_asked and len({id(detection) for found in matches for detection in found}) < len(detections):
        return False
    if spec.relation is None:
        return True
    return any(
        spec.relation in relations_between((subject.x, subject.y), (reference.x, reference.y))
        for subject in matches[0]
        for reference in matches[1]
    )


# Every object of 480 rendered reference scenes fits its shape at 0.89 or more; a ragged blob of the right colour,
# which the GenEval rule would still count as its best-fitting shape, fits lower.
WELL_DRAWN_MIN_FIT = 0.8


def generation_outcomes(
    images: Sequence[Image.Image | np.ndarray], prompt_specs: Sequence[PromptSpec | Mapping[str, Any]],
    min_fit: float = 0.0, images_per_prompt: int = 1, only_asked: bool = False,
) -> dict[str, list[float]]:
    """The share of each prompt's images that satisfy it, grouped by GenEval category in prompt order (with one image
    per prompt: whether it does). Specs may be `PromptSpec`s or their `to_dict()` form. With `images_per_prompt` N
    (GenEval draws 4), `images` holds N rounds of one image per spec (`images[round * len(prompt_specs) + i]` is for
    spec i). Detections that fit their shape below `min_fit` do not count (`WELL_DRAWN_MIN_FIT`: only well-drawn
    shapes); `only_asked` is `spec_satisfied`'s."""
    return outcomes_from_detections([detect_objects(image) for image in images], prompt_specs, min_fit,
                                    images_per_prompt, only_asked)


def outcomes_from_detections(
    detections: Sequence[Sequence[DetectedObject]], prompt_specs: Sequence[PromptSpec | Mapping[str, Any]],
    min_fit: float = 0.0, images_per_prompt: int = 1, only_asked: bool = False,
) -> dict[str, list[float]]:
    """`generation_outcomes` from each image's `detect_objects`, so that several rules can score one detection."""
    if images_per_prompt < 1:
        raise ValueError(f"images_per_prompt must be at least 1, got {images_per_prompt}")
    if len(detections) != len(prompt_specs) * images_per_prompt:
        raise ValueError(f"Got {len(detections)} images for {len(prompt_specs)} prompt specs and {images_per_prompt} "
                         f"image(s) per prompt; expected {len(prompt_specs) * images_per_prompt}.")
    outcomes: dict[str, list[float]] = {}
    for index, spec in enumerate(prompt_specs):
        if not isinstance(spec, PromptSpec):
            spec = PromptSpec.from_dict(spec)
        satisfied = [
            spec_satisfied([found for found in image if found.fit >= min_fit], spec, only_asked)
            for image in detections[index :: len(prompt_specs)]
        ]
        outcomes.setdefault(spec.category, []).append(sum(satisfied) / images_per_prompt)
    return {category: outcomes[category] for category in GENERATION_CATEGORIES if category in outcomes}


def scores_from_outcomes(outcomes: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Each category's mean share of satisfied images, and "overall", GenEval's headline mean over the categories."""
    scores = {category: sum(values) / len(values) for category, values in outcomes.items()}
    scores["overall"] = sum(scores.values()) / len(scores) if scores else math.nan
    return scores


def score_generation(
    images: Sequence[Image.Image | np.ndarray], prompt_specs: Sequence[PromptSpec | Mapping[str, Any]],
    min_fit: float = 0.0,
) -> dict[str, float]:
    """Fraction of images satisfying their prompt per GenEval category, and "overall", GenEval's headline mean
    over the categories present (`generation_outcomes`, then `scores_from_outcomes`)."""
    return scores_from_outcomes(generation_outcomes(images, prompt_specs, min_fit))


def overall_standard_error(outcomes: Mapping[str, Sequence[float]]) -> float:
    """The standard error of the GenEval-style overall (`scores_from_outcomes`) over the draw of prompts and noise,
    from the spread of the per-prompt outcomes (`generation_outcomes`) within each category: with one image per prompt
    the binomial p(1 - p) / n of each category; with several, the observed spread of the prompts' shares, which is
    smaller. Two models scored on different prompt sets differ by noise alone about sqrt(2) times this; on the same
    prompts and seeds, `paired_differences` says by how much."""
    variances = [np.var(np.asarray(values, dtype=float)) / len(values) for values in outcomes.values()]
    return math.sqrt(sum(variances)) / len(variances)


def paired_differences(
    first: Mapping[str, Sequence[float]], second: Mapping[str, Sequence[float]]
) -> dict[str, tuple[float, float]]:
    """The differences of two models' GenEval-style scores on the same prompts and noise seeds (`generation_outcomes`
    of each), per category and "overall", each with its standard error from the per-prompt differences. The more
    prompts the two agree on, the smaller the error against two independent scores (`overall_standard_error`); two
    checkpoints of the shapes world, whose images from one noise seed differ on most prompts, gain little from pairing
    (docs/experiments.md, twenty-fourth round)."""
    if {category: len(values) for category, values in first.items()} != {
        category: len(values) for category, values in second.items()
    }:
        raise ValueError("expected outcomes of the same prompts: the categories or their prompt counts differ")
    result = {}
    for category, values in first.items():
        differences = np.asarray(values, dtype=float) - np.asarray(second[category], dtype=float)
        variance = differences.var(ddof=1) / len(differences) if len(differences) > 1 else 0.0
        result[category] = (float(differences.mean()), math.sqrt(variance))
    means, errors = zip(*result.values())
    result["overall"] = (float(np.mean(means)), math.sqrt(sum(error**2 for error in errors)) / len(errors))
    return result


def prompts_for_power(
    standard_error: float, num_prompts: int, effect: float, power: float = 0.8, bar: float = 2.0
) -> int:
    """How many prompts a paired test of the same design (images per prompt, models alike) needs for a true overall
    difference of `effect` to come out above `bar` standard errors with probability `power`, given a run of
    `num_prompts` prompts whose paired overall had `standard_error` (the error falls as one over the square root of the
    prompts). Sizing a test before it runs, instead of by habit, keeps it from stopping at its bar (docs/experiments.md,
    thirty-third and thirty-fourth rounds)."""
    if standard_error <= 0 or num_prompts < 1 or effect <= 0:
        raise ValueError(f"expected a positive standard error, prompt count and effect; got {standard_error}, "
                         f"{num_prompts} and {effect}")
    if not 0.5 <= power < 1:
        raise ValueError(f"expected a power in [0.5, 1) (the chance the test shows the effect), got {power}")
    needed_error = effect / (bar + NormalDist().inv_cdf(power))
    return math.ceil(num_prompts * (standard_error / needed_error) ** 2)


def paired_score_rows(
    first: Mapping[str, Sequence[float]], second: Mapping[str, Sequence[float]], categories: bool = True
) -> dict[str, tuple[float, float, float, float]]:
    """The rows of a paired comparison table, "overall" and then (if `categories`) each category: the first model's
    score, the second's, and their difference with its standard error (`paired_differences`)."""
    differences = paired_differences(first, second)
    first_scores, second_scores = scores_from_outcomes(first), scores_from_outcomes(second)
    return {row: (first_scores[row], second_scores[row], *differences[row])
            for row in (["overall", *first] if categories else ["overall"])}


def format_scores_table(scores: Mapping[str, float]) -> str:
    """A markdown table of named scores, for logs, model cards and README results."""
    lines = ["| metric | score |", "| --- | ---: |"]
    lines += [f"| {name} | {value:.4f} |" for name, value in scores.items()]
    return "\n".join(lines)


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """Exact-match accuracy after stripping and lower-casing; shapes-world answers are single words."""
    if len(predictions) != len(answers) or not answers:
        raise ValueError(f"Need as many predictions as answers, and some; got {len(predictions)} and {len(answers)}.")
    correct = sum(
        prediction.strip().lower() == answer.strip().lower() for prediction, answer in zip(predictions, answers)
    )
    return correct / len(answers)


def _as_numpy(image: Any) -> np.ndarray:
    """Numpy view of an array, PIL image or torch tensor; float tensors widen so bfloat16 converts too."""
    if hasattr(image, "detach"):
        tensor = image.detach().cpu()
        return tensor.numpy() if not tensor.is_floating_point() else tensor.double().numpy()
    return np.asarray(image)


def psnr(reconstruction: Any, target: Any, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB (inf for identical images), for numpy arrays, torch tensors or PIL.

    `data_range` defaults to 255 when both inputs are integer (uint8) images, and otherwise to 2: floats are taken
    to be in [-1, 1], as the tokenizer's pixels are; pass 1.0 for [0, 1] floats. A 4-D input is a batch: the
    result is the mean of the per-image PSNRs, as reconstruction papers report it.
    """
    a, b = _as_numpy(reconstruction), _as_numpy(target)
    if a.shape != b.shape:
        raise ValueError(f"Shapes differ: {a.shape} vs {b.shape}.")
    if data_range is None:
        data_range = 255.0 if np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer) else 2.0
    difference = a.astype(np.float64) - b.astype(np.float64)
    batch = difference.reshape(difference.shape[0] if difference.ndim == 4 else 1, -1)
    mse = (batch**2).mean(axis=1)
    with np.errstate(divide="ignore"):
        per_image = 10.0 * np.log10(data_range**2 / mse)
    return float(per_image.mean())
