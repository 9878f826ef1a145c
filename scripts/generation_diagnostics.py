"""Diagnostics of a HYDRA checkpoint's text-to-image on the shapes world, beyond `hydra-hf eval shapes`.

    python scripts/generation_diagnostics.py flow-loss outputs/a/final outputs/b/final [--times 0.5 0.7 0.85 0.95]
    python scripts/generation_diagnostics.py word-effect outputs/a/final [--seeds 4]
    python scripts/generation_diagnostics.py word-probe outputs/a/final [--steps 0 10 20 29]
    python scripts/generation_diagnostics.py stochastic-steps outputs/a/final [--bands 0:1.01 0:0.5 0.5:1.01]
    python scripts/generation_diagnostics.py self-verify outputs/a/final [--num-prompts 120 --candidates 4]
    python scripts/generation_diagnostics.py failures outputs/a/final [--num-prompts 480]
    python scripts/generation_diagnostics.py shape-guidance outputs/a/final [--scales 1.5 2 3]
    python scripts/generation_diagnostics.py word-classifier outputs/a/final [--num-scenes 120 --times 0.3 0.5 0.7 0.9]
    python scripts/generation_diagnostics.py relation-flip outputs/a/final [--num-scenes 2000]
    python scripts/generation_diagnostics.py relation-probe outputs/a/final [--num-scenes 4000]

flow-loss: held-out flow-matching loss at fixed flow times (1 = noise), with the caption and with the empty prompt
(their difference is how much the velocity uses the prompt). Training logs one loss averaged over sampled times,
which did not rank runs by their generation scores (docs/experiments.md, thirteenth round); every model here sees the
same scenes (seed 12345, never trained on) and the same noise, so the columns compare across checkpoints.

word-effect, word-probe and stochastic-steps sample without classifier-free guidance and with perturbed-attention
guidance at a fixed setting (--pag-scale 3 --pag-layers 1, the default of the checkpoint shipped before the
eighteenth round of docs/experiments.md, at which its figures were measured), whatever the checkpoint's own defaults,
so that checkpoints compare. PAG's best layer differs between checkpoints (eighteenth round), so pass --pag-layers to
change it.

word-effect: how much each word of a one-object prompt ("a red circle") changes the image drawn from the same
noise. It prints the mean absolute pixel difference (0-255) when the shape word, the colour word or the seed
changes, and the overlap (IoU) of the drawn pixels when the shape word or the seed changes: a model that draws
shapes gives shape swaps an IoU well below 1.

word-probe: whether the prompt's words reach the image tokens at all. While sampling "a {colour} {shape}" (every
palette colour and shape, 8 noise seeds), it keeps the flow head's input averaged over the image tokens at the
chosen steps, and prints how often a linear probe trained on 6 seeds names the colour and the shape of the 2
others' prompts (chance: 1/6 and 1/3).

stochastic-steps: the development scores (480 prompts, seed 777, as `hydra-hf eval shapes --num-scenes 480 --seed
777 --parts generation`) when the sampler takes stochastic steps in a band of flow times instead of Euler steps:
diffusers' `stochastic_sampling` step, which re-noises the step's clean estimate `x0 = x_t - t v` to the next time
with fresh noise from the call's generator, so that a blob committed to early can be redrawn later.

self-verify: whether the model can tell which of its own images fits a prompt, so that drawing several and keeping
the one it prefers would raise the scores. For development prompts (seed 777) it draws --candidates images each
(candidate k of prompt i from seed 777 + k * prompts + i: the first candidate is the image `eval shapes` draws) under
the checkpoint's default guidance, and scores each candidate two ways: by its answers, the summed log-likelihood of
the answers the prompt implies to questions in the training's own templates ("is there a red circle?" yes, "how many
circles are there?" 1, "is the red circle left of the blue square?" yes); and as a diffusion classifier, how much
the prompt lowers the flow loss of the image's latent against the empty prompt, at fixed times and noise. It prints the
GenEval-style overall of the first candidate, of a candidate drawn at random (the mean over candidates), of each
pick, and of an oracle that knows which candidates the detector accepts; then how often the model's answer to "what
shape is the <colour> object?" names the shape the detector reads, on its own candidates and on the prompts' rendered
reference scenes (detected objects whose colour is unique in their image).

failures: why the development images (480 prompts of seed 777 under the checkpoint's default guidance, the images
`eval shapes --seed 777` draws) miss their prompts, per category: nothing detected, a required colour absent, the
right number of objects of the colour but a wrong shape, a wrong number of them, or only the relation wrong.

shape-guidance: classifier-free guidance along the shape words alone, against the prompt with each shape word
rotated (circle -> square -> triangle -> circle: "a red circle" against "a red square"), so that guidance amplifies
what tells the shapes apart rather than the whole prompt; with the checkpoint's PAG defaults kept. For each --scales
value it prints the development scores (480 prompts of seed 777, the images `eval shapes --seed 777` draws at the
checkpoint's defaults being the baseline) and the paired difference of the overall against the baseline with its
standard error; the control is the same scale against the empty prompt (--control-scale).

word-classifier: whether the velocity depends on the shape word when the image is real. For rendered one-object
scenes ("a blue circle", seed 777) noised to each flow time, the model as a diffusion classifier picks the prompt
whose flow loss is lowest among the caption with each shape word (chance 1/3), and, as the control, among the caption
with each palette colour (chance 1/6), with the same noise for every candidate. A model whose velocity follows the
shape word picks the true shape; sampling can still go wrong, but not for want of the word.

relation-flip (an understanding check): whether the answers to relation questions read the relation word. Each
relation question of the development scenes (seed 777) is asked as it is and with its relation word replaced by the
opposite ("left of" -> "right of"); a model that reads both the image and the word answers the two differently every
time. It prints the accuracy on the questions as asked, the share of "yes", and that flip consistency, per axis;
and, whether the model sees the relation at all, its accuracy on each scene's training-only relation-word question
("what is the red circle to the blue square?" -> "left", chance 0.25), which only a model trained with
`make_shapes_dataset(relation_word_share=...)` has been taught to answer: how often its answer lies on the right axis,
and how often, when it does, it has the right direction along each axis.

relation-probe (an understanding check): where a yes/no relation answer is lost. Each relation question of the
development scenes is asked as it is and flipped, so that the asked word says nothing of the true relation; linear
probes on the LLM's hidden state at the answer position, after each layer (0: the embeddings), trained on 70% of the
scenes and tested on the rest, read the asked word, the true relation of the two objects and the yes/no answer (chance
0.25, 0.25, 0.5), and the true relation at the answer position of the relation-word question. A model that answers by
comparing the relation it sees with the word it was asked must hold both at the answer position before its last
layer.
"""

import argparse
import itertools
import json

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from hydra_hf import HydraForConditionalGeneration, HydraPipeline, HydraProcessor, flow_matching
from hydra_hf.data import PALETTE, SHAPES, make_shapes_dataset, rotate_shape_words
from hydra_hf.data.shapes import (
    GENERATION_CATEGORIES,
    OPPOSITE_RELATION,
    PromptSpec,
    Scene,
    ShapeObject,
    example_rng,
    generation_scenes,
    prompt_spec_for,
    relation_word_question,
    render_scene,
    verification_questions,
)
from hydra_hf.evaluation.shapes import (
    detect_objects,
    drawn_iou,
    generation_outcomes,
    paired_differences,
    scores_from_outcomes,
    spec_satisfied,
)
from hydra_hf.evaluation.shapes_eval import EVAL_SEED, answer_questions, evaluate_shapes, generate_for_specs
from hydra_hf.pipelines.answer_guidance import answer_batch, summed_answer_log_probs
from hydra_hf.training import HydraCollator


@torch.no_grad()
def flow_loss(model, batches: list[dict], time: float) -> float:
    """Mean flow loss over `batches` with every image at flow time `time` and noise fixed per batch."""
    vision = model.config.vision_config
    grid = vision.image_size // vision.patch_size
    losses = []
    for index, batch in enumerate(batches):
        count = int(batch["image_generation_mask"].sum())
        noise = torch.randn(count, vision.latent_channels, grid, grid, generator=torch.Generator().manual_seed(index))
        output = model(**batch, timesteps=torch.full((count,), time), noise=noise)
        losses.append(output.loss_flow.item())
    return sum(losses) / len(losses)


def flow_loss_table(args) -> dict:
    scenes = make_shapes_dataset(args.num_scenes, seed=EVAL_SEED)
    rows = [list(scenes.select(range(start, min(start + args.batch_size, len(scenes)))))
            for start in range(0, len(scenes), args.batch_size)]
    results = {}
    print("model | prompt | " + " | ".join(f"t={time}" for time in args.times))
    for path in args.models:
        model = HydraForConditionalGeneration.from_pretrained(path).eval()
        processor = HydraProcessor.from_pretrained(path)
        results[path] = {}
        for prompt, dropout in (("caption", 0.0), ("empty", 1.0)):
            collator = HydraCollator(processor, generation_ratio=1.0, cfg_dropout_prob=dropout)
            batches = [collator(chunk) for chunk in rows]
            losses = {time: flow_loss(model, batches, time) for time in args.times}
            results[path][prompt] = losses
            print(f"{path} | {prompt} | " + " | ".join(f"{loss:.3f}" for loss in losses.values()), flush=True)
    return results


def sampling_settings(args) -> dict:
    """No classifier-free guidance (so a call's conditional rows come first), PAG as the command line says."""
    return dict(guidance_scale=1.0, pag_scale=args.pag_scale, pag_applied_layers=args.pag_layers)


def pixel_change(first: np.ndarray, second: np.ndarray) -> float:
    """Mean absolute difference of two uint8 images, 0-255."""
    return float(np.abs(first.astype(np.float32) - second).mean())


def word_effect_table(args) -> dict:
    colours = list(PALETTE)[: args.colors]
    prompts = [f"a {colour} {shape}" for colour in colours for shape in SHAPES]
    results = {}
    for path in args.models:
        pipe = HydraPipeline.from_pretrained(path)
        pipe.set_progress_bar_config(disable=True)
        images = {}  # (seed, prompt) -> pixels
        for seed in range(args.seeds + 1):  # the last seed only serves as the seed swap of the one before it
            generators = [torch.Generator().manual_seed(seed) for _ in prompts]
            for prompt, image in zip(prompts, pipe(prompts, generator=generators, **sampling_settings(args)).images):
                images[seed, prompt] = np.asarray(image)
        difference = {"shape word": [], "colour word": [], "seed": []}
        iou = {"shape word": [], "seed": []}
        for seed, colour in itertools.product(range(args.seeds), colours):
            for shape, other in itertools.combinations(SHAPES, 2):
                first, second = images[seed, f"a {colour} {shape}"], images[seed, f"a {colour} {other}"]
                difference["shape word"].append(pixel_change(first, second))
                iou["shape word"].append(drawn_iou(first, second))
            for shape in SHAPES:
                first, second = images[seed, f"a {colour} {shape}"], images[seed + 1, f"a {colour} {shape}"]
                difference["seed"].append(pixel_change(first, second))
                iou["seed"].append(drawn_iou(first, second))
            for shape, other in itertools.product(SHAPES, colours):
                if other != colour:
                    pair = images[seed, f"a {colour} {shape}"], images[seed, f"a {other} {shape}"]
                    difference["colour word"].append(pixel_change(*pair))
        results[path] = {
            **{f"pixel difference, {change}": float(np.mean(values)) for change, values in difference.items()},
            **{f"drawn-pixel IoU, {change}": float(np.mean(values)) for change, values in iou.items()},
        }
        print(path, " | ".join(f"{name}: {value:.3f}" for name, value in results[path].items()), flush=True)
    return results


class BandStochasticScheduler(FlowMatchEulerDiscreteScheduler):
    """Euler steps, except a stochastic one (the config's `stochastic_sampling`) at every flow time t with
    `low <= t < high`; the first step has t = 1, so a `high` above 1 takes it in."""

    band = (0.0, 0.0)

    def step(self, model_output, timestep, sample, *args, **kwargs):
        index = self.index_for_timestep(timestep) if self.step_index is None else self.step_index
        low, high = self.band
        self.register_to_config(stochastic_sampling=low <= float(self.sigmas[index]) < high)
        return super().step(model_output, timestep, sample, *args, **kwargs)


def stochastic_steps_table(args) -> dict:
    results = {}
    for path in args.models:
        pipe = HydraPipeline.from_pretrained(path)
        pipe.set_progress_bar_config(disable=True)
        results[path] = {}
        for low, high in args.bands:
            pipe.scheduler = BandStochasticScheduler.from_config(pipe.scheduler.config)
            pipe.scheduler.band = (low, high)
            scores = evaluate_shapes(pipe, num_scenes=480, seed=777, parts=("generation",), **sampling_settings(args))
            results[path][f"{low}:{high}"] = row = {
                "overall": scores.generation["overall"], "well-drawn": scores.well_drawn_overall,
                "specks": scores.specks_per_image,
            }
            print(f"{path} | stochastic for {low} <= t < {high} | "
                  + " | ".join(f"{name}: {value:.3f}" for name, value in row.items()), flush=True)
    return results


def band(text: str) -> tuple[float, float]:
    low, _, high = text.partition(":")
    try:
        return float(low), float(high)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW:HIGH flow times such as 0.5:1.01, got {text!r}") from None


def probe_accuracy(features: torch.Tensor, labels: torch.Tensor, train_seeds: int) -> float:
    """Test accuracy of a linear probe on `features` `[seeds, prompts, dim]`, trained on the first `train_seeds`
    seeds and tested on the rest."""
    return linear_probe_accuracy(features[:train_seeds].flatten(0, 1), labels.repeat(train_seeds),
                                 features[train_seeds:].flatten(0, 1), labels.repeat(len(features) - train_seeds))


def linear_probe_accuracy(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor,
                          test_labels: torch.Tensor) -> float:
    """Test accuracy of an L2-regularised logistic regression on standardised features `[rows, dim]`."""
    train, test = train.float(), test.float()
    mean, std = train.mean(0), train.std(0) + 1e-6
    train, test = (train - mean) / std, (test - mean) / std
    weight = torch.zeros(train.shape[-1], int(max(train_labels.max(), test_labels.max())) + 1, requires_grad=True)
    bias = torch.zeros(weight.shape[1], requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(train @ weight + bias, train_labels) + 1e-3 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return ((test @ weight + bias).argmax(1) == test_labels).float().mean().item()


def word_probe_table(args, seeds: int = 8, train_seeds: int = 6) -> dict:
    colours = list(PALETTE)
    prompts = [f"a {colour} {shape}" for colour in colours for shape in SHAPES]
    colour_labels = torch.tensor([index // len(SHAPES) for index in range(len(prompts))])
    shape_labels = torch.tensor([index % len(SHAPES) for index in range(len(prompts))])
    results = {}
    for path in args.models:
        pipe = HydraPipeline.from_pretrained(path)
        pipe.set_progress_bar_config(disable=True)
        calls = []  # the flow head's input at every step
        hook = pipe.model.flow_head.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0]))
        features = {step: [] for step in args.steps}
        with torch.no_grad():
            for seed in range(seeds):
                calls.clear()
                pipe(prompts, generator=[torch.Generator().manual_seed(seed) for _ in prompts],
                     num_inference_steps=args.num_inference_steps, **sampling_settings(args))
                for step in args.steps:
                    features[step].append(calls[step][: len(prompts)].mean(dim=1))
        hook.remove()
        results[path] = {
            step: {"colour": probe_accuracy(torch.stack(rows), colour_labels, train_seeds),
                   "shape": probe_accuracy(torch.stack(rows), shape_labels, train_seeds)}
            for step, rows in features.items()
        }
        print(path, " | ".join(f"step {step}: colour {accuracy['colour']:.2f}, shape {accuracy['shape']:.2f}"
                               for step, accuracy in results[path].items()), flush=True)
    return results


@torch.no_grad()
def answer_log_likelihoods(model, processor, images: list, pairs: list[tuple[str, str]]) -> list[float]:
    """log p(answer | image, question) under the model, one per (image, (question, answer)), batched right-padded."""
    batch, spans = answer_batch(processor, images, pairs)
    return summed_answer_log_probs(model(**batch).logits, batch["input_ids"], spans).tolist()


@torch.no_grad()
def prompt_flow_losses(
    pipe, prompts: list[str], images: list, times=(0.3, 0.5, 0.7, 0.9), draws: int = 2
) -> np.ndarray:
    """`[len(prompts), len(images)]`: each image's flow loss with each prompt, summed over `times` and `draws` noise
    draws, the noise shared by every image and prompt, so that the prompts compare on each image."""
    model = pipe.model
    pixels = pipe.processor.image_processor(images, return_tensors="pt")["pixel_values"]
    clean = model.vision_model.normalize_latents(model.model.image_latents(pixels))
    tokens = pipe.processor(text=pipe.processor.build_generation_prompt(prompts))
    generator, losses = torch.Generator().manual_seed(0), np.zeros((len(prompts), len(images)))
    for time in times:
        for _ in range(draws):
            noise = torch.randn(clean.shape[1:], generator=generator).expand_as(clean)
            noisy = flow_matching.interpolate(clean, noise, torch.full((len(images),), time))
            target = flow_matching.velocity_target(clean, noise)
            for row, (ids, mask) in enumerate(zip(tokens["input_ids"], tokens["attention_mask"])):
                velocity = model.flow_velocity(noisy, time, input_ids=ids.expand(len(images), -1),
                                               attention_mask=mask.expand(len(images), -1))
                losses[row] += (velocity - target).square().mean(dim=(1, 2, 3)).numpy()
    return losses


def prompt_flow_gain(pipe, prompt: str, images: list, times=(0.3, 0.5, 0.7, 0.9), draws: int = 2) -> np.ndarray:
    """Per image, the flow loss of its latent with the empty prompt minus with `prompt` (a diffusion classifier's
    evidence for the prompt)."""
    empty, prompted = prompt_flow_losses(pipe, ["", prompt], images, times, draws)
    return empty - prompted


def geneval_overall(specs: list[PromptSpec], values) -> float:
    """GenEval's overall (`scores_from_outcomes`) of per-prompt scores in [0, 1]."""
    grouped = {}
    for spec, value in zip(specs, values):
        grouped.setdefault(spec.category, []).append(value)
    return scores_from_outcomes(grouped)["overall"]


def shape_answer_agreement(pipe, images: list) -> float:
    """How often the model's answer to "what shape is the <colour> object?" names the shape the detector reads, over
    the detected objects whose colour no other detected object in their image shares."""
    asked = []
    for image in images:
        found = detect_objects(image)
        colors = [obj.color for obj in found]
        asked += [(image, obj) for obj in found if colors.count(obj.color) == 1]
    answers = answer_questions(pipe, [image for image, _ in asked], [f"what shape is the {obj.color} object?"
                                                                     for _, obj in asked])
    return float(np.mean([answer == obj.shape for answer, (_, obj) in zip(answers, asked)]))


def self_verify_table(args) -> dict:
    scenes = generation_scenes(args.num_prompts, seed=args.seed)
    specs = [prompt_spec_for(scene) for scene in scenes]
    results = {}
    for path in args.models:
        pipe = HydraPipeline.from_pretrained(path)
        pipe.set_progress_bar_config(disable=True)
        candidates = [generate_for_specs(pipe, specs, seed=args.seed + k * len(specs)) for k in range(args.candidates)]
        by_prompt = [[candidate[index] for candidate in candidates] for index in range(len(specs))]
        satisfied = np.array([[spec_satisfied(detect_objects(image), spec) for image in images]
                              for spec, images in zip(specs, by_prompt)])
        answers, gains = [], []
        for spec, images in zip(specs, by_prompt):
            pairs = verification_questions(spec)
            likelihoods = answer_log_likelihoods(pipe.model, pipe.processor, [i for i in images for _ in pairs],
                                                 pairs * len(images))
            answers.append(np.array(likelihoods).reshape(len(images), len(pairs)).sum(axis=1))
            gains.append(prompt_flow_gain(pipe, spec.prompt, images))
        rows = np.arange(len(specs))
        results[path] = row = {
            "first candidate": geneval_overall(specs, satisfied[:, 0]),
            "random candidate": geneval_overall(specs, satisfied.mean(axis=1)),
            "picked by its answers": geneval_overall(specs, satisfied[rows, np.argmax(answers, axis=1)]),
            "picked as a diffusion classifier": geneval_overall(specs, satisfied[rows, np.argmax(gains, axis=1)]),
            "oracle": geneval_overall(specs, satisfied.any(axis=1)),
            "shape answers agree with the detector, own images": shape_answer_agreement(pipe, sum(by_prompt, [])),
            "the same, the prompts' reference scenes": shape_answer_agreement(pipe, [render_scene(s) for s in scenes]),
        }
        print(f"{path} | {args.candidates} candidates, {len(specs)} prompts | "
              + " | ".join(f"{name}: {value:.3f}" for name, value in row.items()), flush=True)
    return results


FAILURE_REASONS = ("nothing detected", "colour absent", "shape", "count", "relation")


def failure_reason(detections: list, spec: PromptSpec) -> str | None:
    """The first way the detections miss the prompt, in the order of `FAILURE_REASONS`; None when they satisfy it.
    "shape": as many objects of a required colour as asked (at least as many, unless counting) but too few of them of
    the required shape; "count": a wrong number of objects of that colour."""
    if spec_satisfied(detections, spec):
        return None
    if not detections:
        return "nothing detected"
    for requirement in spec.objects:
        coloured = [detection for detection in detections if requirement.color in (None, detection.color)]
        if not coloured:
            return "colour absent"
        right = [detection for detection in coloured if detection.shape == requirement.shape]
        if len(right) < requirement.count or (requirement.exact and len(right) > requirement.count):
            enough = len(coloured) == requirement.count if requirement.exact else len(coloured) >= requirement.count
            return "shape" if enough else "count"
    return "relation"


def failures_table(args) -> dict:
    specs = [prompt_spec_for(scene) for scene in generation_scenes(args.num_prompts, seed=args.seed)]
    categories = sorted({spec.category for spec in specs}, key=GENERATION_CATEGORIES.index)
    results = {}
    for path in args.models:
        pipe = HydraPipeline.from_pretrained(path)
        pipe.set_progress_bar_config(disable=True)
        images = generate_for_specs(pipe, specs, seed=args.seed)
        reasons = [failure_reason(detect_objects(image), spec) for image, spec in zip(images, specs)]
        results[path] = table = {}
        print(f"{path}: share of each category's prompts\n| category | satisfied | " + " | ".join(FAILURE_REASONS)
              + " |\n|---|" + "---:|" * (len(FAILURE_REASONS) + 1))
        for category in categories:
            chosen = [reason for reason, spec in zip(reasons, specs) if spec.category == category]
            table[category] = {reason or "satisfied": chosen.count(reason) / len(chosen)
                               for reason in (None, *FAILURE_REASONS)}
            print(f"| {category} | " + " | ".join(f"{share:.2f}" for share in table[category].values()) + " |")
    return results


def shape_guidance_table(args) -> dict:
    specs = [prompt_spec_for(scene) for scene in generation_scenes(args.num_prompts, seed=args.seed)]
    rotated = [rotate_shape_words(spec.prompt) for spec in specs]
    settings = {"defaults": {},
                f"CFG {args.control_scale} against the empty prompt": dict(guidance_scale=args.control_scale)}
    settings.update({f"CFG {scale} against rotated shapes": dict(guidance_scale=scale, negative_prompts=rotated)
                     for scale in args.scales})
    results = {}
    for path in args.models:
        pipe = HydraPipeline.from_pretrained(path)
        pipe.set_progress_bar_config(disable=True)
        results[path] = rows = {}
        print(f"{path}: {len(specs)} development prompts (seed {args.seed})\n| setting | overall | paired difference "
              "| " + " | ".join(GENERATION_CATEGORIES) + " |\n|---|" + "---:|" * (len(GENERATION_CATEGORIES) + 2))
        for name, setting in settings.items():
            outcomes = generation_outcomes(generate_for_specs(pipe, specs, seed=args.seed, **setting), specs)
            scores = scores_from_outcomes(outcomes)
            difference = paired_differences(outcomes, rows["defaults"]["outcomes"])["overall"] if rows else (0.0, 0.0)
            rows[name] = {"scores": scores, "paired_difference": difference, "outcomes": outcomes}
            print(f"| {name} | {scores['overall']:.3f} | {difference[0]:+.3f} +- {difference[1]:.3f} | "
                  + " | ".join(f"{scores[category]:.3f}" for category in GENERATION_CATEGORIES) + " |", flush=True)
    return results


def word_classifier_accuracy(pipe, scenes, kind: str, time: float) -> float:
    """How often the diffusion classifier at `time` names the `kind` ("shape" or "color") of one-object `scenes`:
    among captions that differ in that word only, the one whose flow loss is lowest (`prompt_flow_losses`: the same
    noise for every candidate)."""
    candidates = list(SHAPES) if kind == "shape" else list(PALETTE)
    other = "color" if kind == "shape" else "shape"
    objects = [scene_objects[0] for scene_objects in scenes["objects"]]
    right = 0
    for kept in sorted({obj[other] for obj in objects}):  # scenes sharing the other word share their candidates
        chosen = [index for index, obj in enumerate(objects) if obj[other] == kept]
        images = [scenes[index]["image"] for index in chosen]
        prompts = [f"a {kept} {word}" if kind == "shape" else f"a {word} {kept}" for word in candidates]
        losses = prompt_flow_losses(pipe, prompts, images, (time,))
        right += sum(candidates[pick] == objects[index][kind] for pick, index in zip(losses.argmin(axis=0), chosen))
    return right / len(objects)


def word_classifier_table(args) -> dict:
    scenes = make_shapes_dataset(args.num_scenes, seed=args.seed, categories=("colors",))
    results = {}
    for path in args.models:
        pipe = HydraPipeline.from_pretrained(path)
        results[path] = table = {}
        for time in args.times:
            row = {kind: word_classifier_accuracy(pipe, scenes, kind, time) for kind in ("shape", "color")}
            table[str(time)] = row
            print(f"{path} | t={time} | shape picked right: {row['shape']:.3f} (chance {1 / len(SHAPES):.3f}) | "
                  f"colour picked right: {row['color']:.3f} (chance {1 / len(PALETTE):.3f})", flush=True)
    return results


def asked_relation(question: str) -> str:
    """The relation a yes/no relation question asks about: "is the red circle left of the blue square?" -> "left of"."""
    return next(relation for relation in OPPOSITE_RELATION if f" {relation} the " in question)


def flip_relation(question: str) -> str:
    """"is the red circle left of the blue square?" -> "is the red circle right of the blue square?"."""
    relation = asked_relation(question)
    return question.replace(f" {relation} the ", f" {OPPOSITE_RELATION[relation]} the ")


def relation_scenes(num_scenes: int, seed: int):
    """The scenes of seed `seed` (among the first `num_scenes`) that ask a yes/no relation question, with each one's
    relation-word question and its answer ("what is the red circle to the blue square?", "left")."""
    scenes = make_shapes_dataset(num_scenes, seed=seed)
    scenes = scenes.select([index for index, kind in enumerate(scenes["question_type"]) if kind == "relation"])
    word_questions, words = zip(*(
        relation_word_question(Scene(tuple(map(ShapeObject.from_dict, objects))), example_rng(seed, index))[:2]
        for index, objects in enumerate(scenes["objects"])
    ))
    return scenes, list(word_questions), list(words)


def relation_flip_table(args) -> dict:
    scenes, word_questions, words = relation_scenes(args.num_scenes, args.seed)
    questions, truths = list(scenes["question"]), list(scenes["answer"])
    axes = ["horizontal" if " left of " in q or " right of " in q else "vertical" for q in questions]
    results = {}
    for path in args.models:
        pipe = HydraPipeline.from_pretrained(path)
        asked = answer_questions(pipe, list(scenes["image"]), questions)
        flipped = answer_questions(pipe, list(scenes["image"]), [flip_relation(q) for q in questions])
        results[path] = table = {}
        for axis in ("horizontal", "vertical"):
            rows = [index for index, row_axis in enumerate(axes) if row_axis == axis]
            table[axis] = row = {
                "questions": len(rows),
                "accuracy": sum(asked[i] == truths[i] for i in rows) / len(rows),
                "yes": sum(asked[i] == "yes" for i in rows) / len(rows),
                "flip_consistency": sum(asked[i] != flipped[i] for i in rows) / len(rows),
            }
            print(f"{path} | {axis} ({row['questions']} questions) | accuracy {row['accuracy']:.3f} | yes "
                  f"{row['yes']:.3f} | answer changes when the relation word flips: {row['flip_consistency']:.3f}",
                  flush=True)
        answered = answer_questions(pipe, list(scenes["image"]), word_questions)
        table["relation_word"] = row = relation_word_scores(answered, words)
        direction = " / ".join("-" if row["direction"][axis] is None else f"{row['direction'][axis]:.3f}"
                               for axis in ("horizontal", "vertical"))
        print(f"{path} | relation word ({row['questions']} questions, chance 0.25) | accuracy {row['accuracy']:.3f} | "
              f"right axis {row['axis']:.3f} | right direction on the right axis (h / v) {direction}", flush=True)
    return results


@torch.no_grad()
def last_position_states(pipe, images: list, questions: list[str], batch_size: int = 50) -> torch.Tensor:
    """The LLM's hidden state after each layer (index 0: the embeddings) at the position that predicts the answer's
    first token, `[layers + 1, questions, hidden]`; the processor pads on the left, so that is the last position."""
    states = []
    for start in range(0, len(questions), batch_size):
        conversations = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
                         for question in questions[start : start + batch_size]]
        texts = pipe.processor.apply_chat_template(conversations, add_generation_prompt=True)
        inputs = pipe.processor(text=texts, images=images[start : start + batch_size]).to(pipe.device)
        hidden = pipe.model(**inputs, output_hidden_states=True).hidden_states
        states.append(torch.stack([layer[:, -1] for layer in hidden]))
    return torch.cat(states, dim=1)


def relation_probe_table(args, train_share: float = 0.7) -> dict:
    """Per LLM layer, how well a linear probe at the answer position reads the asked relation word, the true relation
    and the yes/no answer of relation questions, and the true relation at the relation-word question's answer
    position; the first `train_share` of the scenes train the probes, the rest test them."""
    scenes, word_questions, words = relation_scenes(args.num_scenes, args.seed)
    relations = list(OPPOSITE_RELATION)
    questions, asked, truths, answers = [], [], [], []
    for question, answer in zip(scenes["question"], scenes["answer"]):
        word = asked_relation(question)
        truth = word if answer == "yes" else OPPOSITE_RELATION[word]
        # each scene asked both ways, so that the asked word says nothing of the true relation
        for asked_word, text in ((word, question), (OPPOSITE_RELATION[word], flip_relation(question))):
            questions.append(text)
            asked.append(relations.index(asked_word))
            truths.append(relations.index(truth))
            answers.append(int(asked_word == truth))
    word_labels = torch.tensor([relations.index(next(r for r in relations if r.startswith(word))) for word in words])
    images = list(scenes["image"])
    split = int(train_share * len(images))
    labels = {"asked word": torch.tensor(asked), "true relation": torch.tensor(truths), "answer": torch.tensor(answers)}
    results = {}
    for path in args.models:
        pipe = HydraPipeline.from_pretrained(path)
        yes_no = last_position_states(pipe, [image for image in images for _ in range(2)], questions)
        word = last_position_states(pipe, images, word_questions)
        results[path] = table = {}
        for layer in range(len(yes_no)):
            table[layer] = row = {
                name: linear_probe_accuracy(yes_no[layer, : 2 * split], values[: 2 * split],
                                            yes_no[layer, 2 * split :], values[2 * split :])
                for name, values in labels.items()
            }
            row["true relation, relation-word question"] = linear_probe_accuracy(
                word[layer, :split], word_labels[:split], word[layer, split:], word_labels[split:])
            print(f"{path} | layer {layer} | " + " | ".join(f"{name} {value:.3f}" for name, value in row.items()),
                  flush=True)
    return results


_WORD_AXIS = {"left": "horizontal", "right": "horizontal", "above": "vertical", "below": "vertical"}


def relation_word_scores(answered: list[str], words: list[str]) -> dict:
    """Accuracy on the relation-word questions, split into seeing the axis (the answer names a relation along the
    true one) and, among those answers, the direction along each axis (None where no answer had that axis)."""
    on_axis = [(answer, word) for answer, word in zip(answered, words) if _WORD_AXIS.get(answer) == _WORD_AXIS[word]]
    direction = {}
    for axis in ("horizontal", "vertical"):
        pairs = [(answer, word) for answer, word in on_axis if _WORD_AXIS[word] == axis]
        direction[axis] = sum(answer == word for answer, word in pairs) / len(pairs) if pairs else None
    return {"questions": len(words), "accuracy": sum(a == w for a, w in zip(answered, words)) / len(words),
            "axis": len(on_axis) / len(words), "direction": direction}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    flow = commands.add_parser("flow-loss", help="held-out flow loss by flow time, with and without the prompt")
    flow.add_argument("--num-scenes", type=int, default=128)
    flow.add_argument("--batch-size", type=int, default=32)
    flow.add_argument("--times", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.85, 0.95])
    word = commands.add_parser("word-effect", help="how much the shape word, colour word and seed change an image")
    word.add_argument("--seeds", type=int, default=4, help="noise seeds per prompt")
    word.add_argument("--colors", type=int, default=4, help="the first this many palette colours")
    probe = commands.add_parser("word-probe", help="can a linear probe read the prompt's words from the image tokens")
    probe.add_argument("--steps", type=int, nargs="+", default=[0, 10, 20, 29], help="sampling steps to probe at")
    probe.add_argument("--num-inference-steps", type=int, default=30)
    stochastic = commands.add_parser("stochastic-steps", help="development scores with stochastic steps in bands of t")
    stochastic.add_argument("--bands", type=band, nargs="+", default=[(0.0, 0.0), (0.0, 1.01), (0.0, 0.5), (0.5, 1.01)],
                            metavar="LOW:HIGH", help="stochastic steps at LOW <= t < HIGH (0:0 = Euler throughout)")
    verify = commands.add_parser("self-verify", help="can the model pick which of its own images fits the prompt")
    verify.add_argument("--num-prompts", type=int, default=120, help="development prompts (seed --seed)")
    verify.add_argument("--candidates", type=int, default=4, help="images drawn per prompt")
    verify.add_argument("--seed", type=int, default=777)
    failures = commands.add_parser("failures", help="why the development images miss their prompts, per category")
    failures.add_argument("--num-prompts", type=int, default=480, help="development prompts (seed --seed)")
    failures.add_argument("--seed", type=int, default=777)
    shape = commands.add_parser("shape-guidance", help="development scores under guidance against rotated shape words")
    shape.add_argument("--scales", type=float, nargs="+", default=[1.5, 2.0, 3.0], help="CFG scales, each > 1")
    shape.add_argument("--control-scale", type=float, default=2.0, help="CFG scale against the empty prompt")
    shape.add_argument("--num-prompts", type=int, default=480, help="development prompts (seed --seed)")
    shape.add_argument("--seed", type=int, default=777)
    classifier = commands.add_parser("word-classifier", help="does the velocity on real scenes follow the shape word")
    classifier.add_argument("--num-scenes", type=int, default=120, help="one-object scenes (seed --seed)")
    classifier.add_argument("--times", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.9])
    classifier.add_argument("--seed", type=int, default=777)
    relation = commands.add_parser("relation-flip", help="do the answers to relation questions read the relation word")
    relation.add_argument("--num-scenes", type=int, default=2000, help="development scenes (seed --seed)")
    relation.add_argument("--seed", type=int, default=777)
    relation_probe = commands.add_parser("relation-probe", help="which LLM layer holds the relation, the asked word "
                                         "and the yes/no answer at the answer position")
    relation_probe.add_argument("--num-scenes", type=int, default=4000, help="development scenes (seed --seed)")
    relation_probe.add_argument("--seed", type=int, default=777)
    for command in (word, probe, stochastic):
        command.add_argument("--pag-scale", type=float, default=3.0, help="0: no guidance")
        command.add_argument("--pag-layers", type=int, nargs="+", default=[1])
    for command in (flow, word, probe, stochastic, verify, failures, shape, classifier, relation,
                    relation_probe):
        command.add_argument("models", nargs="+", help="HYDRA folders")
        command.add_argument("--json", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.command in ("flow-loss", "word-classifier") and any(not 0 <= time <= 1 for time in args.times):
        parser.error(f"--times must lie in [0, 1], got {args.times}")
    if args.command == "word-probe" and any(not 0 <= step < args.num_inference_steps for step in args.steps):
        probe.error(f"--steps must lie in [0, {args.num_inference_steps}), got {args.steps}")
    if args.command == "shape-guidance" and any(scale <= 1 for scale in [*args.scales, args.control_scale]):
        shape.error(f"guidance scales must exceed 1 (1 is the baseline), got {args.scales} and {args.control_scale}")
    if args.command == "self-verify" and (args.candidates < 2 or args.num_prompts < 1):
        verify.error(f"expected --candidates >= 2 and --num-prompts >= 1, got {args.candidates} and {args.num_prompts}")
    tables = {"flow-loss": flow_loss_table, "word-effect": word_effect_table, "word-probe": word_probe_table,
              "stochastic-steps": stochastic_steps_table, "self-verify": self_verify_table,
              "failures": failures_table, "shape-guidance": shape_guidance_table,
              "word-classifier": word_classifier_table, "relation-flip": relation_flip_table,
              "relation-probe": relation_probe_table}
    results = tables[args.command](args)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
