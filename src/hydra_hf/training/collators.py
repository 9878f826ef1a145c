"""Collators built on the processors: datasets rows -> model inputs. Unreadable images and empty texts are skipped
and counted (`collator.skipped`), never fatal. Random choices (task, prompt dropout) are seeded by the collator's
seed and the batch's position in the run (`batches_seen`), not by a running random state: data loaders collate
ahead of training, so only a position-keyed draw lets a resumed run (which sets `batches_seen` from the checkpoint's
step) draw exactly what the uninterrupted run drew."""

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers.utils import logging

from ..models.hydra.image_processing_hydra import HydraImageProcessor
from ..models.hydra.processing_hydra import HydraProcessor
from .data import decode_image

__all__ = ["HydraCollator", "TokenizerCollator"]

logger = logging.get_logger(__name__)


class _SkippingCollator:
    """Shared skip accounting."""

    skipped: Counter

    def _skip(self, reason: str) -> None:
        self.skipped[reason] += 1
        logger.warning_once(f"skipping examples with {reason} (counted in collator.skipped)")

    def _read_image(self, value):
        try:
            return decode_image(value)
        except Exception:
            self._skip("unreadable image")
            return None

    def _fallback(self, batch: dict | None) -> dict:
        """A batch in which every example was skipped repeats the last good batch rather than stopping training."""
        if batch is None:
            raise ValueError("every example of the first batch was skipped; check the dataset's columns and images")
        return batch


@dataclass
class TokenizerCollator(_SkippingCollator):
    """Images -> `pixel_values` in [-1, 1] for HYDRA-TOK training."""

    image_processor: HydraImageProcessor
    image_column: str = "image"
    skipped: Counter = field(default_factory=Counter)

    def __post_init__(self):
        self._last_batch = None

    def __call__(self, examples: list[dict]) -> dict:
        images = [image for image in (self._read_image(e.get(self.image_column)) for e in examples) if image is not None]
        if not images:
            return self._fallback(self._last_batch)
        self._last_batch = {"pixel_values": self.image_processor(images, return_tensors="pt")["pixel_values"]}
        return self._last_batch


@dataclass
class HydraCollator(_SkippingCollator):
    """Rows with an image and a caption and/or a question-answer pair -> one mixed batch for the unified model.

    Each row becomes a text-to-image example (its caption is the prompt, replaced by the empty prompt with
    probability `cfg_dropout_prob`) with probability `generation_ratio`, otherwise an understanding example: the
    question (or `caption_prompt` when the row has none) and the answer (or the caption) as the target. Rows that
    can serve only one task serve that one. Labels cover the answer and the end-of-turn token only.

    With `caption_ratio` > 0, that share of the understanding rows with a caption are trained to describe the
    image instead (`caption_prompt` -> caption) even when they have a question: a caption states what a yes/no
    question only tests, e.g. "a red circle to the left of a blue square", where the answer to "is the red circle
    left of the blue square?" depends on neither the picture nor the words alone, only on both.

    With `negative_caption` (a function from a caption to one that contradicts it, or None when it has none, e.g.
    `hydra_hf.data.shapes.rotate_shape_words`), a share `prompt_contrast_ratio` of the generation rows with a
    caption also get a prompt-contrast pair appended to the batch: their image under the caption and under the
    contradicting caption (`prompt_contrast_pairs`, see `HydraConfig.prompt_contrast_weight`).
    """

    processor: HydraProcessor
    generation_ratio: float = 0.5
    cfg_dropout_prob: float = 0.1
    image_column: str = "image"
    caption_column: str | None = "caption"
    question_column: str | None = "question"
    answer_column: str | None = "answer"
    caption_prompt: str = "describe the image ."
    caption_ratio: float = 0.0
    negative_caption: Callable[[str], str | None] | None = None
    prompt_contrast_ratio: float = 0.5
    turn_end: str = "<|im_end|>"
    seed: int = 0
    skipped: Counter = field(default_factory=Counter)
    batches_seen: int = 0

    def __post_init__(self):
        if not 0.0 <= self.generation_ratio <= 1.0:
            raise ValueError(f"generation_ratio must be in [0, 1], got {self.generation_ratio}")
        if not 0.0 <= self.caption_ratio <= 1.0:
            raise ValueError(f"caption_ratio must be in [0, 1], got {self.caption_ratio}")
        if not 0.0 <= self.prompt_contrast_ratio <= 1.0:
            raise ValueError(f"prompt_contrast_ratio must be in [0, 1], got {self.prompt_contrast_ratio}")
        self._last_batch = None

    def _next_batch_generator(self) -> torch.Generator:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.batches_seen)
        self.batches_seen += 1
        return generator

    def _text(self, example: dict, column: str | None) -> str:
        value = example.get(column) if column else None
        return value.strip() if isinstance(value, str) else ""

    def _understanding_text(self, question: str, answer: str) -> tuple[str, str]:
        conversation = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]]
        prompt = self.processor.apply_chat_template(conversation, add_generation_prompt=True)[0]
        target = answer + self.turn_end
        return prompt + target, target

    def __call__(self, examples: list[dict]) -> dict:
        texts, targets, images, generate, contrasts = [], [], [], [], []
        generator = self._next_batch_generator()
        draws = torch.rand(len(examples), 2, generator=generator).tolist()
        # Drawn after (not with) the task draws, so that runs without contrast or captions draw exactly what they
        # always did.
        contrast_draws = torch.rand(len(examples), generator=generator).tolist() if self.negative_caption else None
        caption_draws = torch.rand(len(examples), generator=generator).tolist() if self.caption_ratio > 0 else None
        for index, (example, (task_draw, dropout_draw)) in enumerate(zip(examples, draws)):
            caption = self._text(example, self.caption_column)
            answer = self._text(example, self.answer_column) or caption
            if not caption and not answer:
                self._skip("empty text")
                continue
            image = self._read_image(example.get(self.image_column))
            if image is None:
                continue
            as_generation = bool(caption) and (task_draw < self.generation_ratio or not answer)
            if as_generation:
                prompt = "" if dropout_draw < self.cfg_dropout_prob else caption
                texts.append(self.processor.build_generation_prompt(prompt, target_image=True))
                targets.append(None)
                if contrast_draws is not None and prompt and contrast_draws[index] < self.prompt_contrast_ratio:
                    negative = self.negative_caption(caption)
                    if negative and negative != caption:
                        contrasts.append((caption, negative, image))
            else:
                question = self._text(example, self.question_column)
                if caption and caption_draws is not None and caption_draws[index] < self.caption_ratio:
                    question, answer = "", caption
                text, target = self._understanding_text(question or self.caption_prompt, answer)
                texts.append(text)
                targets.append(target)
            images.append(image)
            generate.append(as_generation)
        if not texts:
            return self._fallback(self._last_batch)
        pairs = []
        for caption, negative, image in contrasts:
            first = sum(generate)
            pairs.append((first, first + 1))
            texts.extend(self.processor.build_generation_prompt([caption, negative], target_image=True))
            targets.extend([None, None])
            images.extend([image, image])
            generate.extend([True, True])

        batch = self.processor(text=texts, images=images, padding_side="right")
        labels = torch.full_like(batch["input_ids"], -100)
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        for row, target in enumerate(targets):
            if target is None:
                continue
            num_target = len(self.processor.tokenizer(target, add_special_tokens=False)["input_ids"])
            end = lengths[row]
            labels[row, end - num_target : end] = batch["input_ids"][row, end - num_target : end]
        self._last_batch = {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "pixel_values": batch["pixel_values"],
            "labels": labels,
            "image_generation_mask": torch.tensor(generate),
        }
        if pairs:
            self._last_batch["prompt_contrast_pairs"] = torch.tensor(pairs)
        return self._last_batch
