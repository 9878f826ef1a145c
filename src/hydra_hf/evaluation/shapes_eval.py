"""Scoring a HYDRA model on held-out shapes-world scenes: tokenizer reconstruction PSNR, GenEval-style generation
scores (also counting only well-drawn shapes, and the specks per image, which the scores cannot see), VQA accuracy
and, as a diagnostic, the generation scores of edits (reference scenes noised to a flow time and denoised).
`hydra-hf eval shapes` prints what `evaluate_shapes` returns."""

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.shapes import binding_questions, generation_scenes, make_shapes_dataset, prompt_spec_for, render_scene
from ..pipelines import HydraPipeline
from .shapes import (
    SPECK_MAX_PIXELS,
    WELL_DRAWN_MIN_FIT,
    count_specks,
    detect_objects,
    format_scores_table,
    outcomes_from_detections,
    overall_standard_error,
    psnr,
    score_generation,
    scores_from_outcomes,
    vqa_accuracy,
)

__all__ = [
    "EVAL_SEED",
    "ShapesEvaluation",
    "answer_questions",
    "evaluate_shapes",
    "generate_for_specs",
    "reconstruction_psnr",
]

# Scenes from this seed are never used in training (the recipe trains on seed 0).
EVAL_SEED = 12345


@dataclass
class ShapesEvaluation:
    num_scenes: int
    seed: int
    settings: dict
    reconstruction_psnr: float | None = None
    generation: dict[str, float] = field(default_factory=dict)
    generation_standard_error: float | None = None
    well_drawn_overall: float | None = None
    specks_per_image: float | None = None
    # GenEval's rule passes a one-object prompt if any detected object has the named shape, so drawing several helps.
    objects_per_single_object_image: float | None = None
    # The same scores when nothing but what was asked may be drawn (`spec_satisfied(only_asked=True)`).
    only_asked: dict[str, float] = field(default_factory=dict)
    vqa_accuracy: float | None = None
    vqa_by_type: dict[str, float] = field(default_factory=dict)
    editing: dict[str, float] = field(default_factory=dict)
    images_per_prompt: int = 1  # GenEval's protocol draws 4; more images per prompt, less noise in a comparison
    # Per prompt, by category in prompt order (`generation_outcomes`): for paired comparisons (`hydra-hf eval compare`).
    generation_outcomes: dict[str, list[float]] = field(default_factory=dict)
    well_drawn_outcomes: dict[str, list[float]] = field(default_factory=dict)
    only_asked_outcomes: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_markdown(self) -> str:
        lines = [f"Held-out shapes-world scenes: {self.num_scenes} (seed {self.seed}); {self.settings}", ""]
        if self.reconstruction_psnr is not None or self.vqa_accuracy is not None:
            lines += ["| metric | value |", "|---|---:|"]
        if self.reconstruction_psnr is not None:
            lines.append(f"| tokenizer reconstruction PSNR (dB) | {self.reconstruction_psnr:.2f} |")
        if self.vqa_accuracy is not None:
            lines.append(f"| VQA accuracy | {self.vqa_accuracy:.3f} |")
            lines += [f"| VQA accuracy: {kind} | {value:.3f} |" for kind, value in self.vqa_by_type.items()]
        if self.generation:
            per_prompt = f" ({self.images_per_prompt} images per prompt)" if self.images_per_prompt > 1 else ""
            lines += ["", f"GenEval-style generation scores{per_prompt}:", "", format_scores_table(self.generation)]
            lines += ["", f"Standard error of the overall over the draw of prompts and noise: {self.generation_standard_error:.4f}"]
            lines += ["", f"Overall counting only well-drawn shapes (fit >= {WELL_DRAWN_MIN_FIT}, which every rendered "
                      f"object passes): {self.well_drawn_overall:.4f}"]
            lines += ["", f"Specks per generated image (blobs under {SPECK_MAX_PIXELS} px, which the scores ignore): {self.specks_per_image:.2f}"]
            if self.objects_per_single_object_image is not None:
                lines += ["", "Objects drawn per image for the single-object prompts (asked: 1; the score passes any "
                          f"image with the named shape among them): {self.objects_per_single_object_image:.2f}"]
            if self.only_asked:
                lines += ["", "With nothing drawn but what was asked (every count exact, no other object): overall "
                          f"{self.only_asked['overall']:.4f}, single object {self.only_asked['single_object']:.4f}"]
        if self.editing:
            lines += ["", "GenEval-style overall of edits (each prompt's reference scene noised to time s, then denoised):",
                      "", "| s | overall |", "|---:|---:|"]
            lines += [f"| {strength} | {overall:.4f} |" for strength, overall in self.editing.items()]
        return "\n".join(lines)


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.inference_mode()
def reconstruction_psnr(pipe: HydraPipeline, images: list, batch_size: int = 50, seed: int = 0) -> float:
    """Mean PSNR (uint8 range) of encode -> decode through HYDRA-TOK, decoding the posterior mean."""
    vision, processor = pipe.model.vision_model, pipe.processor
    values = []
    for batch in tqdm(list(_batches(images, batch_size)), desc="reconstruction", leave=False):
        pixels = processor.image_processor(batch, return_tensors="pt")["pixel_values"].to(pipe.device, vision.dtype)
        latents = vision.encode(pixels).latent_dist.mode()
        decoded = vision.decode(latents, generator=torch.Generator(pipe.device).manual_seed(seed)).sample
        reconstructed = processor.postprocess(decoded, output_type="np")
        targets = ((pixels.float().cpu().numpy().transpose(0, 2, 3, 1) + 1) * 127.5).round().astype(np.uint8)
        values += [psnr(r, t) for r, t in zip(reconstructed, targets)]
    return float(np.mean(values))


@torch.inference_mode()
def answer_questions(pipe: HydraPipeline, images: list, questions: list[str], batch_size: int = 50, max_new_tokens: int = 4) -> list[str]:
    """Greedy answers, one per (image, question)."""
    model, processor = pipe.model, pipe.processor
    answers = []
    pairs = list(zip(images, questions))
    for batch in tqdm(list(_batches(pairs, batch_size)), desc="questions", leave=False):
        conversations = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}] for _, q in batch]
        texts = processor.apply_chat_template(conversations, add_generation_prompt=True)
        inputs = processor(text=texts, images=[image for image, _ in batch]).to(pipe.device)
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answers += processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return [answer.strip() for answer in answers]


def evaluate_shapes(
    pipe: HydraPipeline,
    num_scenes: int = 500,
    seed: int = EVAL_SEED,
    num_inference_steps: int = 30,
    guidance_scale: float | None = None,
    batch_size: int = 50,
    parts: tuple[str, ...] = ("reconstruction", "generation", "vqa"),
    edit_strengths: tuple[float, ...] = (0.3, 0.5, 0.7),
    pag_scale: float | None = None,
    pag_applied_layers: list[int] | None = None,
    guidance_interval: tuple[float, float] | None = None,
    images_per_prompt: int = 1,
    answer_guidance_scale: float | None = None,
) -> ShapesEvaluation:
    """Scores on `num_scenes` scenes (and as many generation prompts, each drawn `images_per_prompt` times: image j of
    prompt i from noise seed `seed + j * num_scenes + i`, so the first image of every prompt is the same whatever the
    number) from a seed the training never used.
    Guidance settings left as None are the model's defaults (`HydraPipeline.guidance_settings`); the result records
    the ones used. Answer guidance (`answer_guidance_scale` > 0, or the model's own scale when None) asks each prompt's
    `binding_questions`, so the single-object, two-object and counting prompts are drawn as without it.

    The `"editing"` part re-generates each generation prompt's reference scene from its latent noised to each of
    `edit_strengths`: the time at which the scores fall says where along the flow the model loses the scene (late
    times: the shapes' details; early ones: the layout), which the end-to-end scores cannot.
    """
    sampling = pipe.guidance_in_effect(pipe.guidance_settings(guidance_scale, pag_scale, pag_applied_layers,
                                                              guidance_interval, answer_guidance_scale))
    settings = {"steps": num_inference_steps, **sampling}
    result = ShapesEvaluation(num_scenes=num_scenes, seed=seed, settings=settings, images_per_prompt=images_per_prompt)
    if "reconstruction" in parts or "vqa" in parts:
        scenes = make_shapes_dataset(num_scenes, seed=seed)
        images = list(scenes["image"])
    if "reconstruction" in parts:
        result.reconstruction_psnr = reconstruction_psnr(pipe, images, batch_size)
    if "vqa" in parts:
        predictions = answer_questions(pipe, images, list(scenes["question"]), batch_size)
        answers, kinds = list(scenes["answer"]), list(scenes["question_type"])
        result.vqa_accuracy = vqa_accuracy(predictions, answers)
        for kind in sorted(set(kinds)):
            chosen = [i for i, k in enumerate(kinds) if k == kind]
            result.vqa_by_type[kind] = vqa_accuracy([predictions[i] for i in chosen], [answers[i] for i in chosen])
    if "generation" in parts or "editing" in parts:
        reference_scenes = generation_scenes(num_scenes, seed=seed)
        specs = [prompt_spec_for(scene) for scene in reference_scenes]
    if "generation" in parts:
        generated = generate_for_specs(pipe, specs * images_per_prompt, num_inference_steps, batch_size=batch_size,
                                       seed=seed, **sampling)
        detections = [detect_objects(image) for image in generated]
        result.generation_outcomes = outcomes_from_detections(detections, specs, images_per_prompt=images_per_prompt)
        result.well_drawn_outcomes = outcomes_from_detections(detections, specs, WELL_DRAWN_MIN_FIT, images_per_prompt)
        result.only_asked_outcomes = outcomes_from_detections(detections, specs, images_per_prompt=images_per_prompt,
                                                              only_asked=True)
        result.generation = scores_from_outcomes(result.generation_outcomes)
        result.generation_standard_error = overall_standard_error(result.generation_outcomes)
        result.well_drawn_overall = scores_from_outcomes(result.well_drawn_outcomes)["overall"]
        result.only_asked = scores_from_outcomes(result.only_asked_outcomes)
        result.specks_per_image = float(np.mean([count_specks(image) for image in generated]))
        one_object = [len(found) for index, found in enumerate(detections)
                      if specs[index % len(specs)].category == "single_object"]
        if one_object:
            result.objects_per_single_object_image = float(np.mean(one_object))
    if "editing" in parts:
        references = [render_scene(scene) for scene in reference_scenes]
        for strength in edit_strengths:
            edited = generate_for_specs(pipe, specs, num_inference_steps, batch_size=batch_size, seed=seed,
                                        references=references, strength=strength, **sampling)
            result.editing[str(strength)] = score_generation(edited, specs)["overall"]
    return result


def generate_for_specs(
    pipe: HydraPipeline,
    specs: list,
    num_inference_steps: int = 30,
    guidance_scale: float | None = None,
    batch_size: int = 50,
    seed: int = EVAL_SEED,
    references: list | None = None,
    strength: float = 1.0,
    pag_scale: float | None = None,
    pag_applied_layers: list[int] | None = None,
    guidance_interval: tuple[float, float] | None = None,
    negative_prompts: list[str] | None = None,
    answer_guidance_scale: float | None = None,
    answer_guidance_min_time: float | None = None,
    answer_guidance_smoothing: tuple[int, float] | None = None,
) -> list:
    """One seeded image per prompt spec (image i uses seed `seed + i`, whatever the batch size); with `references`
    (one image per spec), edits of them at `strength` instead; with `negative_prompts` (one per spec), classifier-free
    guidance against them instead of the empty prompt; with `answer_guidance_scale` > 0, answer guidance with each
    spec's `binding_questions`. Guidance left as None is the model's default, except answer guidance: off."""
    for name, per_spec in (("references", references), ("negative_prompts", negative_prompts)):
        if per_spec is not None and len(per_spec) != len(specs):
            raise ValueError(f"expected one of `{name}` per prompt spec ({len(specs)}), got {len(per_spec)}")
    images = []
    for start in tqdm(range(0, len(specs), batch_size), desc="generation", leave=False):
        batch = specs[start : start + batch_size]
        generators = [torch.Generator(pipe.device).manual_seed(seed + start + i) for i in range(len(batch))]
        edit = {} if references is None else {"image": references[start : start + batch_size], "strength": strength}
        negative = None if negative_prompts is None else negative_prompts[start : start + batch_size]
        questions = [binding_questions(spec) for spec in batch] if answer_guidance_scale else None
        images += pipe([spec.prompt for spec in batch], negative_prompt=negative, generator=generators,
                       num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, pag_scale=pag_scale,
                       pag_applied_layers=pag_applied_layers, guidance_interval=guidance_interval,
                       guidance_questions=questions, answer_guidance_scale=answer_guidance_scale,
                       answer_guidance_min_time=answer_guidance_min_time,
                       answer_guidance_smoothing=answer_guidance_smoothing, **edit).images
    return images
