"""Tiny models, processors and data shared by the tests (all offline, all seeded)."""

import functools
import importlib.util
import re
from pathlib import Path

import torch

from hydra_hf import HydraConfig, HydraForConditionalGeneration, HydraImageProcessor, HydraProcessor
from hydra_hf.data.shapes import CLEAR_RELATION_MIN_COSINE, Scene, ShapeObject, relations_between
from hydra_hf.data.text_tokenizer import train_word_tokenizer

ROOT = Path(__file__).resolve().parents[1]

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("square", "circle")
CORPUS = [f"a {colour} {shape}" for colour in COLOURS for shape in SHAPES] + [
    "what color is the shape ?",
    "what shape is it ?",
    "describe the image .",
    "yes no",
]


def random_pixels(batch: int, size: int | tuple[int, int], seed: int = 0) -> torch.Tensor:
    """Pixels in [-1, 1], the package-wide image convention."""
    height, width = (size, size) if isinstance(size, int) else size
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@functools.cache
def _tokenizer():
    return train_word_tokenizer(CORPUS)


def tiny_processor(image_size: int = 32, patch_size: int = 8) -> HydraProcessor:
    image_processor = HydraImageProcessor(size={"height": image_size, "width": image_size}, patch_size=patch_size)
    return HydraProcessor(image_processor=image_processor, tokenizer=_tokenizer())


def save_tiny_hydra(folder):
    """A tiny HYDRA folder, as `from_pretrained` and the CLI read it."""
    tiny_hydra().save_pretrained(folder)
    tiny_processor().save_pretrained(folder)
    return folder


def tiny_config(text_model_type: str = "qwen2", **overrides) -> HydraConfig:
    """The tiny preset wired to the test tokenizer's vocabulary and image-token ids."""
    tokenizer = _tokenizer()
    text = {
        "vocab_size": len(tokenizer),
        "model_type": text_model_type,
        "pad_token_id": tokenizer.pad_token_id,
        **overrides.pop("text_config", {}),
    }
    return HydraConfig.from_preset(
        "tiny",
        text_config=text,
        image_token_id=tokenizer.image_token_id,
        boi_token_id=tokenizer.boi_token_id,
        eoi_token_id=tokenizer.eoi_token_id,
        **overrides,
    )


def tiny_hydra(seed: int = 0, **config_overrides) -> HydraForConditionalGeneration:
    torch.manual_seed(seed)
    return HydraForConditionalGeneration(tiny_config(**config_overrides)).eval()


def flat_shape_image(colour_rgb: tuple[int, int, int], shape: str, size: int = 32, offset: int = 0) -> torch.Tensor:
    """A white canvas with one flat-coloured square or disc, in [-1, 1]."""
    image = torch.ones(3, size, size)
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centre, radius = size // 2 + offset, size // 4
    if shape == "square":
        mask = ((rows - centre).abs() <= radius) & ((cols - centre).abs() <= radius)
    else:
        mask = (rows - centre) ** 2 + (cols - centre) ** 2 <= radius**2
    image[:, mask] = torch.tensor(colour_rgb, dtype=torch.float32)[:, None] / 127.5 - 1
    return image


def load_script(relative_path: str):
    """A script of the repository (scripts/, examples/), which is not an importable package, as a module."""
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row_scene(row: dict) -> Scene:
    """The scene of a `make_shapes_dataset` row."""
    return Scene(tuple(ShapeObject.from_dict(obj) for obj in row["objects"]), row["category"])


def expected_answer(question, scene):
    """Answers the question from the structured objects, independently of the generator's code."""
    objects = scene.objects
    if match := re.fullmatch(r"how many (\w+)s are there\?", question):
        return str(sum(obj.shape == match[1] for obj in objects))
    if match := re.fullmatch(r"what color is the (\w+)\?", question):
        (obj,) = [obj for obj in objects if obj.shape == match[1]]
        return obj.color
    if match := re.fullmatch(r"what shape is the (\w+) object\?", question):
        (obj,) = [obj for obj in objects if obj.color == match[1]]
        return obj.shape
    if match := re.fullmatch(r"is there an? (\w+) (\w+)\?", question):
        return "yes" if any((obj.color, obj.shape) == (match[1], match[2]) for obj in objects) else "no"
    if match := re.fullmatch(r"what is the (\w+) (\w+) to the (\w+) (\w+)\?", question):
        (subject,) = [obj for obj in objects if (obj.color, obj.shape) == (match[1], match[2])]
        (reference,) = [obj for obj in objects if (obj.color, obj.shape) == (match[3], match[4])]
        (relation,) = relations_between((subject.x, subject.y), (reference.x, reference.y), CLEAR_RELATION_MIN_COSINE)
        return relation.split()[0]
    match = re.fullmatch(r"is the (\w+) (\w+) (left of|right of|above|below) the (\w+) (\w+)\?", question)
    (subject,) = [obj for obj in objects if (obj.color, obj.shape) == (match[1], match[2])]
    (reference,) = [obj for obj in objects if (obj.color, obj.shape) == (match[4], match[5])]
    relations = relations_between((subject.x, subject.y), (reference.x, reference.y), CLEAR_RELATION_MIN_COSINE)
    opposite = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}[match[3]]
    assert relations in ({match[3]}, {opposite}), "relation questions must be about a clear relation"
    return "yes" if match[3] in relations else "no"
