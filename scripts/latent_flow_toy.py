"""Can a small flow transformer draw the named shape in HYDRA-TOK's latent space, and does it matter how the label
enters? A diagnostic for docs/experiments.md (thirty-sixth and thirty-seventh rounds), apart from the unified model.

    python scripts/latent_flow_toy.py --out outputs/toy [--arms adaln token semvit] [--steps 3000] [--baseline]

Every HYDRA model so far draws a blob in the right colour whatever shape word it is given (docs/experiments.md,
fifteenth and twenty-fifth rounds: the shape word barely moves the drawing, and the velocity ignores it mid-flow even
when the model trains on one-object scenes only). This isolates that path. On one-object scenes ("a blue circle": 6
colours x 3 shapes, 18 labels) encoded by a HYDRA checkpoint's HYDRA-TOK into the normalised latents the unified model
generates, it trains a DiT-style flow transformer of the unified model's LLM size (192 wide, 4 layers, 64 latent
tokens with 2-D sin-cos positions, diffusers' `BasicTransformerBlock` with adaLN-zero) by the same flow matching
(`hydra_hf.flow_matching`, logit-normal times, 10% label dropout), one arm per way the label can enter:

- `adaln`: the label's embedding joins the time embedding in every block's adaLN (DiT's class conditioning);
- `token`: the label is one extra token that the image tokens attend to, and adaLN sees the time only (the way the
  prompt reaches HYDRA's image tokens: through attention in the LLM);
- `semvit`: as `token`, but the latents enter through a trainable copy of the checkpoint's own path for noisy image
  tokens (GSB unproj -> Sem-ViT -> projector, plus its 2-D positions) instead of a linear patch embedding; the width
  must be the checkpoint's LLM width.

Each arm then draws every label from the same noises (Euler, FlowMatchEulerDiscreteScheduler, 30 steps, without and
with classifier-free guidance), decodes with the checkpoint's pixel decoder and scores: the share of images whose
detections hold an object of the asked shape and colour (GenEval's "colors" rule, `spec_satisfied`), the same with
nothing else drawn, the share whose largest detection has the asked shape, and the drawn-pixel overlap (IoU) of the
three shape words drawn from one noise in one colour (a model that draws shapes gives well below 1). `--baseline`
scores the checkpoint itself on the same prompts under its evaluation settings (answer guidance 0.03).

If an arm draws the shapes, the latent space and that conditioning path can carry shape at this size and budget.
`--space pixels` trains the arms on the same grid of patches in pixel space instead (each patch's raw pixels, 192
numbers against the latent's 16): the control for whether the latent is what makes shape hard to generate.
`--latent-noise SIGMA ...` measures the other side, how much error the latent tolerates: 180 rendered one-object scenes
(seed --eval-seed + 1) encoded, their normalised latents perturbed by SIGMA times Gaussian noise, decoded and scored
as above (the shape-word IoU does not apply).

`--eval-at STEP ...` draws and scores mid-run as well (a curve over training steps from one run, with its flow loss
per 100 steps in toy_results.json), from an EMA of the weights when `--ema-decay` is given. `--word-loss [TOY_WEIGHTS
...]` prices the label's words in flow loss (`word_losses`) for --model and for saved toys alike, placing the unified
model on a toy's training curve (docs/experiments.md, thirty-seventh round).
"""

import argparse
import copy
import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.utils import make_image_grid
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.embeddings import get_2d_sincos_pos_embed
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from hydra_hf import HydraForConditionalGeneration, HydraPipeline, flow_matching
from hydra_hf.data import PALETTE, SHAPES
from hydra_hf.data.shapes import binding_questions, example_rng, prompt_spec_from_text, render_scene, sample_scene
from hydra_hf.evaluation.shapes import detect_objects, drawn_iou, spec_satisfied

LABELS = [(color, shape) for color in PALETTE for shape in SHAPES]  # label = colour index * 3 + shape index
ARMS = ("adaln", "token", "semvit")


class HydraInputPath(nn.Module):
    """A trainable copy of a unified model's path for noisy image tokens: normalised latents -> `visual_tokens`."""

    def __init__(self, model: HydraForConditionalGeneration):
        super().__init__()
        self.model = copy.deepcopy(model.model)
        self.model.language_model = nn.Identity()  # not on the path; keeps its weights out of the optimiser

    @property
    def width(self) -> int:
        return self.model.config.text_config.hidden_size

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.model.visual_tokens(self.model.vision_model.denormalize_latents(latents))


class ToyFlowTransformer(nn.Module):
    """Velocity of normalised latents `[B, C, h, w]` at flow time t given a label (`len(LABELS)` = no label)."""

    def __init__(self, channels: int, grid: int, width: int, layers: int, heads: int, conditioning: str,
                 input_path: HydraInputPath | None = None):
        super().__init__()
        if conditioning not in ARMS:
            raise ValueError(f"conditioning must be one of {ARMS}, got {conditioning!r}")
        if (conditioning == "semvit") != (input_path is not None):
            raise ValueError("the semvit arm, and only it, takes an input_path (HydraInputPath)")
        if input_path is not None and input_path.width != width:
            raise ValueError(f"width must be the input path's LLM width {input_path.width}, got {width}")
        self.conditioning, self.null_label = conditioning, len(LABELS)
        self.patch = nn.Linear(channels, width) if input_path is None else input_path
        positions = get_2d_sincos_pos_embed(width, grid, output_type="pt")
        self.register_buffer("positions", positions.float()[None], persistent=False)
        # `num_embeds_ada_norm` gives each block diffusers' time + label embedding; the `token` arm feeds it the null
        # label always, so there its adaLN carries the time alone and the label travels as a token
        self.blocks = nn.ModuleList(
            BasicTransformerBlock(width, heads, width // heads, num_embeds_ada_norm=len(LABELS),
                                  norm_type="ada_norm_zero", activation_fn="gelu-approximate")
            for _ in range(layers)
        )
        self.label_token = nn.Embedding(len(LABELS) + 1, width)
        self.norm_out = nn.LayerNorm(width)
        self.proj_out = nn.Linear(width, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, latents: torch.Tensor, times: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = latents.shape
        if self.conditioning == "semvit":
            tokens = self.patch(latents) + self.positions
        else:
            tokens = self.patch(latents.flatten(2).transpose(1, 2)) + self.positions
        block_labels = labels
        if self.conditioning in ("token", "semvit"):
            tokens = torch.cat([self.label_token(labels)[:, None], tokens], dim=1)
            block_labels = torch.full_like(labels, self.null_label)
        for block in self.blocks:
            tokens = block(tokens, timestep=times * 1000, class_labels=block_labels)
        velocity = self.proj_out(self.norm_out(tokens[:, -height * width :]))
        return velocity.transpose(1, 2).reshape(batch, channels, height, width)


def one_object_scenes(num_scenes: int, seed: int):
    """(images, labels) of `colors`-category scenes: one object, any palette colour, shape, size and place."""
    scenes = [sample_scene(example_rng(seed, index), "colors") for index in range(num_scenes)]
    labels = [LABELS.index((scene.objects[0].color, scene.objects[0].shape)) for scene in scenes]
    return [render_scene(scene) for scene in scenes], torch.tensor(labels)


@torch.no_grad()
def encode(pipe: HydraPipeline, images: list, space: str = "latents", batch_size: int = 250) -> torch.Tensor:
    """Normalised GSB means, the latents the unified model generates; or, in `pixels` space, the pixels in [-1, 1]
    folded into one 3 * p * p vector per patch of the same p x p grid (`pixel_unshuffle`)."""
    model, latents = pipe.model, []
    for start in tqdm(range(0, len(images), batch_size), desc="encoding", leave=False):
        pixels = pipe.processor.image_processor(images[start : start + batch_size], return_tensors="pt")["pixel_values"]
        if space == "pixels":
            latents.append(F.pixel_unshuffle(pixels, model.config.vision_config.patch_size))
        else:
            latents.append(model.vision_model.normalize_latents(model.model.image_latents(pixels)))
    return torch.cat(latents)


def train(model: ToyFlowTransformer, latents: torch.Tensor, labels: torch.Tensor, args,
          checkpoint: Callable[[int, list[float]], None] | None = None) -> list[float]:
    """Flow matching as the unified model trains (`hydra_hf.flow_matching`), with `args.label_dropout` null labels.

    At every step in `args.eval_at` it calls `checkpoint(step, losses)` with the model in eval mode and holding, when
    `args.ema_decay` is set, the EMA of its weights (diffusers' `EMAModel`): mid-run weights under a learning rate
    still high are a poor sample of what the run has learnt, their average a better one (DiT samples from its EMA).
    """
    generator = torch.Generator().manual_seed(args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 100) * 0.5 * (1 + np.cos(np.pi * step / args.steps))
    )
    ema = EMAModel(model.parameters(), decay=args.ema_decay) if args.ema_decay else None
    losses = []
    model.train()
    for step in tqdm(range(args.steps), desc=f"training {model.conditioning}"):
        rows = torch.randint(len(latents), (args.batch_size,), generator=generator)
        clean, label = latents[rows], labels[rows].clone()
        label[torch.rand(args.batch_size, generator=generator) < args.label_dropout] = model.null_label
        noise = torch.randn(clean.shape, generator=generator)
        times = flow_matching.sample_timesteps(args.batch_size, generator=generator)
        velocity = model(flow_matching.interpolate(clean, noise, times), times, label)
        loss = (velocity - flow_matching.velocity_target(clean, noise)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if ema is not None:
            ema.step(model.parameters())
        if checkpoint is not None and step + 1 in args.eval_at:
            model.eval()
            if ema is not None:
                ema.store(model.parameters())
                ema.copy_to(model.parameters())
            checkpoint(step + 1, losses)
            if ema is not None:
                ema.restore(model.parameters())
            model.train()
    model.eval()
    return losses


@torch.no_grad()
def sample(model: ToyFlowTransformer, noise: torch.Tensor, labels: torch.Tensor, guidance: float, steps: int):
    """Euler sampling from t = 1 with classifier-free guidance against the null label when `guidance` > 1."""
    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(sigmas=flow_matching.sampling_timesteps(steps)[:-1].tolist())
    latents = noise.clone()
    null = torch.full_like(labels, model.null_label)
    for t in scheduler.timesteps:
        times = torch.full((len(labels),), float(t) / scheduler.config.num_train_timesteps)
        velocity = model(latents, times, labels)
        if guidance > 1:
            unconditional = model(latents, times, null)
            velocity = unconditional + guidance * (velocity - unconditional)
        latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
    return latents


@torch.no_grad()
def decode(pipe: HydraPipeline, latents: torch.Tensor, seed: int, space: str = "latents", batch_size: int = 180) -> list:
    vision, images = pipe.model.vision_model, []
    if space == "pixels":
        return pipe.processor.postprocess(F.pixel_shuffle(latents, vision.config.patch_size).clamp(-1, 1), output_type="pil")
    for start in range(0, len(latents), batch_size):
        generator = torch.Generator().manual_seed(seed + start)
        pixels = vision.decode(vision.denormalize_latents(latents[start : start + batch_size]), generator=generator)
        images += pipe.processor.postprocess(pixels.sample, output_type="pil")
    return images


def evaluation_prompts(num_noises: int) -> list[tuple[int, str, str]]:
    """(noise index, colour, shape) for every label and noise, each noise shared by all 18 labels."""
    return [(noise, color, shape) for noise in range(num_noises) for color, shape in LABELS]


def scores(images: list, prompts: list[tuple[int, str, str]]) -> dict:
    """The shares described in the module docstring, and the shape-word IoU (`drawn_iou`, over every pair of shape
    words drawn from one noise in one colour)."""
    right = only = largest_shape = 0
    drawn = {}
    for image, (noise, color, shape) in zip(images, prompts):
        spec = prompt_spec_from_text(f"a {color} {shape}")
        detections = detect_objects(image)
        right += spec_satisfied(detections, spec)
        only += spec_satisfied(detections, spec, only_asked=True)
        if detections:
            largest_shape += max(detections, key=lambda found: found.num_pixels).shape == shape
        drawn[noise, color, shape] = image
    ious = [
        drawn_iou(drawn[noise, color, first], drawn[noise, color, second])
        for noise, color in {(noise, color) for noise, color, _ in prompts}
        for first, second in itertools.combinations(SHAPES, 2)
        if (noise, color, first) in drawn and (noise, color, second) in drawn
    ]
    total = len(prompts)
    return {"colors_rule": right / total, "only_asked": only / total, "largest_has_shape": largest_shape / total,
            "shape_word_iou": float(np.mean(ious)) if ious else float("nan"), "images": total}


def save_grid(images: list, path: Path) -> None:
    """One row per noise, one column per label (`evaluation_prompts`' order)."""
    make_image_grid(images, len(images) // len(LABELS), len(LABELS)).save(path)


def baseline_images(pipe: HydraPipeline, prompts: list, seed: int, batch_size: int = 54) -> list:
    """The checkpoint's own drawings of the prompts, under `hydra-hf eval shapes`' settings (answer guidance 0.03);
    one noise seed per noise index, so that the shape words share it."""
    images = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="baseline", leave=False):
        batch = prompts[start : start + batch_size]
        specs = [prompt_spec_from_text(f"a {color} {shape}") for _, color, shape in batch]
        images += pipe([spec.prompt for spec in specs],
                       generator=[torch.Generator().manual_seed(seed + noise) for noise, _, _ in batch],
                       guidance_questions=[binding_questions(spec) for spec in specs],
                       answer_guidance_scale=0.03).images
    return images


@torch.no_grad()
def latent_noise_scores(pipe: HydraPipeline, sigmas: list[float], seed: int, num_scenes: int = 180) -> dict:
    """Scores of decoded reference latents under Gaussian errors of each std in `sigmas` (normalised units)."""
    images, labels = one_object_scenes(num_scenes, seed)
    prompts = [(index, *LABELS[label]) for index, label in enumerate(labels.tolist())]
    latents = encode(pipe, images)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(latents.shape, generator=generator)
    return {f"{sigma:g}": scores(decode(pipe, latents + sigma * noise, seed), prompts) for sigma in sigmas}


WORD_LOSS_TIMES = (0.1, 0.3, 0.5, 0.7, 0.9)


def build_toy(arm: str, pipe: HydraPipeline, latent_shape: tuple, args) -> ToyFlowTransformer:
    """A fresh toy of `arm` at --width/--layers/--heads (the semvit arm at the checkpoint's LLM width)."""
    input_path = HydraInputPath(pipe.model) if arm == "semvit" else None
    width = args.width if input_path is None else input_path.width
    return ToyFlowTransformer(*latent_shape[:2], width, args.layers, args.heads, arm, input_path)


def load_toy(weights: Path, pipe: HydraPipeline, latent_shape: tuple, args) -> ToyFlowTransformer:
    """A toy saved by `main` as `{arm}.safetensors`; its size must be given as it was trained (--width, --layers)."""
    arm = weights.stem
    if arm not in ARMS:
        raise ValueError(f"toy weights are saved as one of {[arm + '.safetensors' for arm in ARMS]}, got {weights}")
    model = build_toy(arm, pipe, latent_shape, args)
    model.load_state_dict(load_file(weights))
    return model.eval()


def label_velocity(model: ToyFlowTransformer | HydraForConditionalGeneration, pipe: HydraPipeline):
    """`velocity(noisy, times, labels)` of a toy, or of a unified model prompted "a {colour} {shape}" (the null label:
    the empty prompt, which it trained as unconditional)."""
    if isinstance(model, ToyFlowTransformer):
        return model
    prompts = [prompt_spec_from_text(f"a {color} {shape}").prompt for color, shape in LABELS] + [""]

    def velocity(noisy: torch.Tensor, times: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        input_ids, attention_mask = pipe.encode_prompt([prompts[label] for label in labels.tolist()],
                                                       do_classifier_free_guidance=False)
        return model.flow_velocity(noisy, times, input_ids=input_ids, attention_mask=attention_mask)

    return velocity


@torch.no_grad()
def word_losses(velocity, latents: torch.Tensor, labels: torch.Tensor, seed: int, batch_size: int = 90) -> dict:
    """Flow loss on held-out `latents` at each of `WORD_LOSS_TIMES`, given the right label, the same colour with each
    other shape (mean of the two), the next colour with the same shape, and no label; one noise per latent (`seed`).

    What the shape word is worth to the velocity: `wrong_shape - right` against `wrong_colour - right`. Measured the
    same way on a toy and on the unified model, it places the unified model on the toy's training curve."""
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
    color_index, shape_index = labels // len(SHAPES), labels % len(SHAPES)
    shift = torch.arange(1, len(SHAPES))
    candidates = {
        "right": [labels],
        "wrong_shape": [color_index * len(SHAPES) + (shape_index + step) % len(SHAPES) for step in shift],
        "wrong_colour": [(color_index + 1) % len(PALETTE) * len(SHAPES) + shape_index],
        "null": [torch.full_like(labels, len(LABELS))],
    }
    table = {}
    for time_value in WORD_LOSS_TIMES:
        times = torch.full((len(latents),), time_value)
        noisy, target = flow_matching.interpolate(latents, noise, times), flow_matching.velocity_target(latents, noise)
        row = {}
        for name, label_sets in candidates.items():
            squared_error = sum(
                (velocity(noisy[start : start + batch_size], times[start : start + batch_size],
                          label_set[start : start + batch_size]) - target[start : start + batch_size]).square().sum()
                for label_set in label_sets for start in range(0, len(latents), batch_size)
            )
            row[name] = float(squared_error) / (len(label_sets) * target.numel())
        table[f"{time_value:g}"] = row
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder for toy_results.json, weights and grids")
    parser.add_argument("--model", default="src/hydra_hf/assets/hydra-tiny-shapes",
                        help="HYDRA checkpoint whose HYDRA-TOK encodes and decodes")
    parser.add_argument("--arms", nargs="*", choices=ARMS, default=["adaln", "token"],
                        help="arms to train (none: only --baseline / --latent-noise)")
    parser.add_argument("--num-scenes", type=int, default=20000, help="one-object training scenes (seed --data-seed)")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--label-dropout", type=float, default=0.1)
    parser.add_argument("--width", type=int, default=192, help="the semvit arm takes the checkpoint's LLM width")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--sampling-steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--eval-noises", type=int, default=10, help="noises per label when scoring (18 labels each)")
    parser.add_argument("--eval-seed", type=int, default=12345)
    parser.add_argument("--seed", type=int, default=0, help="initialisation, batches, noise and times in training")
    parser.add_argument("--space", choices=("latents", "pixels"), default="latents",
                        help="what the arms generate: the checkpoint's normalised latents, or its patches' raw pixels")
    parser.add_argument("--word-loss", nargs="*", type=Path, metavar="TOY_WEIGHTS",
                        help="also measure what the label's words are worth to the flow loss (`word_losses`) for "
                        "--model and for each toy's saved weights (`{arm}.safetensors`; built with --width/--layers/"
                        "--heads), on --word-loss-scenes held-out one-object scenes (seed --eval-seed + 2)")
    parser.add_argument("--word-loss-scenes", type=int, default=900)
    parser.add_argument("--eval-at", type=int, nargs="+", default=[], metavar="STEP",
                        help="also draw and score at these training steps (grids `{arm}_step{STEP}_guidance_*.png`)")
    parser.add_argument("--ema-decay", type=float, help="keep an EMA of the weights (diffusers' EMAModel) and draw "
                        "from it at --eval-at; the final scores use the trained weights themselves")
    parser.add_argument("--baseline", action="store_true", help="also score --model itself on the same prompts")
    parser.add_argument("--latent-noise", type=float, nargs="+", metavar="SIGMA",
                        help="also score reference latents decoded with Gaussian errors of these stds")
    args = parser.parse_args(argv)
    if args.space == "pixels" and ("semvit" in args.arms or args.latent_noise or args.word_loss is not None):
        parser.error("--space pixels has no latents: the semvit arm, --latent-noise and --word-loss need latents")
    if any(not 0 < step < args.steps for step in args.eval_at):
        parser.error(f"--eval-at takes steps between 1 and --steps - 1 ({args.steps - 1}); the last is always scored")
    if args.ema_decay is not None and not 0 < args.ema_decay < 1:
        parser.error(f"--ema-decay must lie in (0, 1), got {args.ema_decay}")
    args.out.mkdir(parents=True, exist_ok=True)

    pipe = HydraPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    vision_config = pipe.model.config.vision_config
    grid_size = vision_config.image_size // vision_config.patch_size
    channels = vision_config.latent_channels if args.space == "latents" else 3 * vision_config.patch_size**2
    latent_shape = (channels, grid_size, grid_size)
    prompts = evaluation_prompts(args.eval_noises)
    eval_labels = torch.tensor([LABELS.index((color, shape)) for _, color, shape in prompts])
    noises = torch.randn((args.eval_noises, *latent_shape), generator=torch.Generator().manual_seed(args.eval_seed))
    eval_noise = noises[[noise for noise, _, _ in prompts]]

    results = {"args": {key: str(value) for key, value in vars(args).items()}, "arms": {}}
    if args.latent_noise:
        results["latent_noise"] = latent_noise_scores(pipe, args.latent_noise, args.eval_seed + 1)
        print(f"latent noise: {json.dumps(results['latent_noise'])}", flush=True)
    if args.word_loss is not None:
        images, labels = one_object_scenes(args.word_loss_scenes, args.eval_seed + 2)
        held_out = encode(pipe, images, args.space)
        results["word_loss"] = {}
        for source in [args.model, *args.word_loss]:
            model = pipe.model if source == args.model else load_toy(Path(source), pipe, latent_shape, args)
            table = word_losses(label_velocity(model, pipe), held_out, labels, args.eval_seed + 2)
            results["word_loss"][str(source)] = table
            print(f"word loss {source}: {json.dumps(table)}", flush=True)
    if args.baseline:
        drawn = baseline_images(pipe, prompts, args.eval_seed)
        results["baseline"] = scores(drawn, prompts)
        save_grid(drawn, args.out / "baseline.png")
        print(f"baseline {args.model}: {results['baseline']}", flush=True)
    (args.out / "toy_results.json").write_text(json.dumps(results, indent=2))
    if args.arms:
        images, labels = one_object_scenes(args.num_scenes, args.data_seed)
        latents = encode(pipe, images, args.space)
    for arm in args.arms:
        torch.manual_seed(args.seed)
        model = build_toy(arm, pipe, latent_shape, args)
        arm_results = results["arms"][arm] = {"parameters": sum(p.numel() for p in model.parameters())}

        def draw_and_score(name: str) -> dict:
            """Scores at each guidance of `model` as it stands; grids saved as `{name}_guidance_{g}.png`."""
            row = {}
            for guidance in args.guidance:
                drawn = decode(pipe, sample(model, eval_noise, eval_labels, guidance, args.sampling_steps),
                               args.eval_seed, args.space)
                row[f"guidance_{guidance:g}"] = scores(drawn, prompts)
                save_grid(drawn, args.out / f"{name}_guidance_{guidance:g}.png")
            return row

        def checkpoint(step: int, losses: list[float]) -> None:
            checkpoint_started = time.perf_counter()
            row = {"loss_last_100": float(np.mean(losses[-100:])), **draw_and_score(f"{arm}_step{step}")}
            arm_results.setdefault("checkpoints", {})[str(step)] = row
            print(f"{arm} step {step}: {json.dumps(row)}", flush=True)
            (args.out / "toy_results.json").write_text(json.dumps(results, indent=2))
            drawing_seconds.append(time.perf_counter() - checkpoint_started)

        started, drawing_seconds = time.perf_counter(), []
        losses = train(model, latents, labels, args, checkpoint)
        save_file(model.state_dict(), args.out / f"{arm}.safetensors")
        loss_per_100_steps = [float(np.mean(losses[start : start + 100])) for start in range(0, len(losses), 100)]
        arm_results.update({"train_seconds": time.perf_counter() - started - sum(drawing_seconds),
                            "loss_first_100": loss_per_100_steps[0], "loss_last_100": float(np.mean(losses[-100:])),
                            "loss_per_100_steps": loss_per_100_steps, **draw_and_score(arm)})
        print(f"{arm}: {json.dumps({k: v for k, v in arm_results.items() if k != 'checkpoints'})}", flush=True)
        (args.out / "toy_results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
