"""The `hydra-hf` command: `demo`, `generate`, `chat`, `eval shapes` and `eval compare`, on the embedded
`hydra-tiny-shapes` model by default or on any HYDRA folder or Hub repo (`--model`)."""

import argparse
import json
import logging
import sys
from importlib import resources
from pathlib import Path

__all__ = ["DEFAULT_MODEL", "main"]

DEFAULT_MODEL = "hydra-tiny-shapes"
DEMO_PROMPTS = (
    "a red circle",
    "a blue square and a yellow triangle",
    "three green circles",
    "a purple triangle to the left of an orange square",
)
GRID_SCALE = 3
DEMO_QUESTIONS = ("how many objects are there?", "what color is the circle?", "is there a blue square?")


def resolve_model(name: str) -> str:
    """The embedded model's folder for `hydra-tiny-shapes`; anything else is a path or a Hub id."""
    if name != DEFAULT_MODEL:
        return name
    folder = resources.files("hydra_hf") / "assets" / DEFAULT_MODEL
    if not (Path(str(folder)) / "config.json").is_file():
        raise SystemExit(
            f"the embedded {DEFAULT_MODEL} model is missing from this installation ({folder}); train it with "
            "examples/train_hydra_tiny_shapes.py or pass --model PATH_OR_REPO"
        )
    return str(folder)


def load_pipeline(name: str, quiet: bool = False):
    from .pipelines import HydraPipeline

    pipe = HydraPipeline.from_pretrained(resolve_model(name))
    pipe.set_progress_bar_config(disable=quiet, leave=False)
    return pipe


def _guidance(args) -> dict:
    """The pipeline's guidance arguments; those not given on the command line stay None, the model's defaults."""
    return {
        "guidance_scale": args.guidance, "pag_scale": args.pag_scale, "pag_applied_layers": args.pag_layers,
        "guidance_interval": args.guidance_interval, "answer_guidance_scale": args.answer_guidance,
    }


def _guidance_questions(pipe, prompts: list[str], args) -> list | None:
    """Each prompt's shapes-world binding questions when answer guidance is on (`--answer-guidance` > 0, or the
    model's own scale), else None. A prompt outside the world's grammar is an error when guidance was asked for on
    the command line, and is drawn unguided when it is only the model's default."""
    from .data.shapes import binding_questions, prompt_spec_from_text

    if not pipe.guidance_settings(answer_guidance_scale=args.answer_guidance)["answer_guidance_scale"]:
        return None
    questions = []
    for prompt in prompts:
        try:
            questions.append(binding_questions(prompt_spec_from_text(prompt)))
        except ValueError as error:
            if args.answer_guidance is not None:
                raise SystemExit(f"--answer-guidance asks the prompt's questions: {error}") from error
            logging.getLogger(__name__).warning("drawing %r without answer guidance: %s", prompt, error)
            questions.append([])
    return questions


def _seeded(pipe, seed: int, count: int):
    import torch

    return [torch.Generator(pipe.device).manual_seed(seed + index) for index in range(count)]


def generate(args) -> None:
    pipe = load_pipeline(args.model)
    images = pipe(
        [args.prompt], num_inference_steps=args.steps, **_guidance(args),
        guidance_questions=_guidance_questions(pipe, [args.prompt], args),
        num_images_per_prompt=args.num_images, generator=_seeded(pipe, args.seed, args.num_images),
    ).images
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        path = output if len(images) == 1 else output.with_name(f"{output.stem}-{index}{output.suffix}")
        image.save(path)
        print(path)


def chat(args) -> None:
    from PIL import Image, UnidentifiedImageError

    from .evaluation.shapes_eval import answer_questions

    try:
        image = Image.open(args.image).convert("RGB")
    except (FileNotFoundError, UnidentifiedImageError) as error:
        raise SystemExit(f"cannot read image {args.image}: {error}") from error
    pipe = load_pipeline(args.model)
    print(answer_questions(pipe, [image], [args.question], max_new_tokens=args.max_new_tokens)[0])


def demo(args) -> None:
    from PIL import Image

    from .evaluation.shapes_eval import answer_questions

    pipe = load_pipeline(args.model)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    images = pipe(list(DEMO_PROMPTS), num_inference_steps=args.steps, **_guidance(args),
                  guidance_questions=_guidance_questions(pipe, list(DEMO_PROMPTS), args),
                  generator=_seeded(pipe, args.seed, len(DEMO_PROMPTS))).images
    grid = Image.new("RGB", (GRID_SCALE * sum(i.width for i in images), GRID_SCALE * max(i.height for i in images)), "white")
    for index, (prompt, image) in enumerate(zip(DEMO_PROMPTS, images)):
        path = output / f"{index}-{prompt.replace(' ', '_')}.png"
        image.save(path)
        grid.paste(image.resize((GRID_SCALE * image.width, GRID_SCALE * image.height), Image.NEAREST), (GRID_SCALE * image.width * index, 0))
        pairs = [(image, question) for question in DEMO_QUESTIONS]
        answers = answer_questions(pipe, [i for i, _ in pairs], [q for _, q in pairs])
        print(f"{path}  <- {prompt!r}")
        for question, answer in zip(DEMO_QUESTIONS, answers):
            print(f"    {question} {answer}")
    grid.save(output / "grid.png")
    print(f"{output / 'grid.png'}  (all four, enlarged {GRID_SCALE}x)")


def evaluate(args) -> None:
    from .evaluation.shapes_eval import evaluate_shapes

    pipe = load_pipeline(args.model, quiet=True)
    result = evaluate_shapes(pipe, num_scenes=args.num_scenes, seed=args.seed, num_inference_steps=args.steps,
                             batch_size=args.batch_size, parts=tuple(args.parts),
                             edit_strengths=tuple(args.edit_strengths), images_per_prompt=args.images_per_prompt,
                             **_guidance(args))
    print(result.to_markdown())
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2))


def _read_evaluation(path: str) -> dict:
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise SystemExit(f"cannot read scores {path}: {error}") from error
    if not result.get("generation_outcomes"):
        raise SystemExit(f"{path} holds no per-prompt generation outcomes; write it with `hydra-hf eval shapes --json` "
                         "with the generation part (files from before the outcomes were recorded lack them)")
    return result


def compare(args) -> None:
    from .evaluation.shapes import paired_differences, paired_score_rows, prompts_for_power

    first, second = _read_evaluation(args.first), _read_evaluation(args.second)
    prompts = [(result["num_scenes"], result["seed"]) for result in (first, second)]
    if prompts[0] != prompts[1]:
        raise SystemExit(f"a paired comparison needs the same prompts and noise seeds; got (num_scenes, seed) "
                         f"{prompts[0]} and {prompts[1]}")
    sizes = []
    if args.size_for:  # sized before any output, so that a bad --power is refused with nothing printed
        overall_error = paired_differences(first["generation_outcomes"], second["generation_outcomes"])["overall"][1]
        try:
            sizes = [(effect, prompts_for_power(overall_error, prompts[0][0], effect, args.power))
                     for effect in args.size_for]
        except ValueError as problem:
            raise SystemExit(f"--size-for/--power: {problem}") from problem
    images = [result.get("images_per_prompt", 1) for result in (first, second)]
    drawn = ("each image" if images == [1, 1]
             else f"{images[0]} and {images[1]} images per prompt, the j-th of each prompt")
    print(f"{args.first} (A) against {args.second} (B): {prompts[0][0]} prompts of seed {prompts[0][1]}, {drawn} from "
          "the same noise seed in both; A - B +- its standard error over the prompts")
    print("| score | A | B | A - B |\n|---|---:|---:|---:|")
    groups = [("GenEval-style", "generation_outcomes"), ("well-drawn", "well_drawn_outcomes"),
              ("only asked", "only_asked_outcomes")]
    for label, key in groups:
        if not (first.get(key) and second.get(key)):  # scores from before it was measured lack it
            continue
        rows = paired_score_rows(first[key], second[key], categories=key != "well_drawn_outcomes")
        for row, (a, b, difference, error) in rows.items():
            print(f"| {label} {row.replace('_', ' ')} | {a:.4f} | {b:.4f} | {difference:+.4f} +- {error:.4f} |")
    for effect, needed in sizes:
        print(f"To show a true GenEval-style overall difference of {effect:+.3f} above two standard errors with "
              f"probability {args.power:g}, a test of this design needs about {needed} prompts (this one had "
              f"{prompts[0][0]}).")


def build_parser() -> argparse.ArgumentParser:
    from .evaluation.shapes_eval import EVAL_SEED

    parser = argparse.ArgumentParser(prog="hydra-hf", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def add_model(sub, sampling: bool = True):
        sub.add_argument("--model", default=DEFAULT_MODEL, help=f"a HYDRA folder or Hub repo (default: {DEFAULT_MODEL})")
        if sampling:
            sub.add_argument("--steps", type=int, default=30, help="Euler steps of the latent flow")
            sub.add_argument("--guidance", type=float,
                             help="classifier-free guidance scale (default: the model's, else 5)")
            sub.add_argument("--pag-scale", type=float,
                             help="perturbed-attention guidance scale, 0 = off (default: the model's, else 0)")
            sub.add_argument("--pag-layers", type=int, nargs="+",
                             help="LLM decoder layers PAG perturbs (default: the model's, else the middle one)")
            sub.add_argument("--guidance-interval", type=float, nargs=2, metavar=("LOW", "HIGH"),
                             help="flow times (1 = noise) of the steps that use classifier-free guidance (default: "
                                  "the model's, else 0 1: every step)")
            sub.add_argument("--answer-guidance", type=float, metavar="SCALE",
                             help="answer guidance: after each early step, move the latents SCALE (latent RMS) down "
                                  "the loss of the model's own answers to the prompt's questions (is each coloured "
                                  "object there, does the relation hold; shapes-world prompts only); 0 = off, 0.03 = "
                                  "the measured setting, about 7x slower for prompts with such questions (default: "
                                  "the model's, else off)")

    sub = commands.add_parser("demo", help="generate images for a few fixed prompts and answer questions about them")
    add_model(sub)
    sub.add_argument("--output-dir", default="hydra-demo", help="where the PNGs go")
    sub.add_argument("--seed", type=int, default=0)
    sub.set_defaults(func=demo)

    sub = commands.add_parser("generate", help="text to image")
    sub.add_argument("prompt")
    add_model(sub)
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--num-images", type=int, default=1)
    sub.add_argument("--output", default="hydra.png", help="PNG path (numbered when --num-images > 1)")
    sub.set_defaults(func=generate)

    sub = commands.add_parser("chat", help="answer a question about an image")
    sub.add_argument("question")
    sub.add_argument("--image", required=True, help="image file")
    add_model(sub, sampling=False)
    sub.add_argument("--max-new-tokens", type=int, default=16)
    sub.set_defaults(func=chat)

    sub = commands.add_parser("eval", help="score a model")
    suite = sub.add_subparsers(dest="suite", required=True)
    shapes = suite.add_parser("shapes", help="held-out shapes-world scenes: PSNR, GenEval-style scores, VQA")
    add_model(shapes)
    shapes.add_argument("--num-scenes", type=int, default=500)
    shapes.add_argument("--seed", type=int, default=EVAL_SEED, help="scene seed (training uses 0)")
    shapes.add_argument("--batch-size", type=int, default=50)
    shapes.add_argument("--parts", nargs="+", default=["reconstruction", "generation", "vqa"],
                        choices=["reconstruction", "generation", "vqa", "editing"],
                        help="what to score (default: all but editing, a diagnostic: see --edit-strengths)")
    shapes.add_argument("--edit-strengths", nargs="+", type=float, default=[0.3, 0.5, 0.7],
                        help="for --parts editing: flow times the generation prompts' reference scenes are noised to "
                             "before the model denoises them (low scores already at small times: it loses the shapes' "
                             "details; only at large ones: the layout)")
    shapes.add_argument("--images-per-prompt", type=int, default=1,
                        help="images drawn per generation prompt (GenEval draws 4); the first of each is the one a "
                             "single-image run draws, and more of them make `eval compare` less noisy")
    shapes.add_argument("--json", help="also write the scores as JSON here (with per-prompt outcomes, for compare)")
    shapes.set_defaults(func=evaluate)
    paired = suite.add_parser("compare", help="paired differences (overall and per category) of two "
                                               "`eval shapes --json` results on the same prompts")
    paired.add_argument("first", help="scores JSON of model A")
    paired.add_argument("second", help="scores JSON of model B, from the same --num-scenes and --seed")
    paired.add_argument("--size-for", type=float, nargs="+", metavar="EFFECT",
                        help="also print how many prompts a test of this design (same images per prompt, similar "
                             "models) needs to show each true overall difference EFFECT above two standard errors; "
                             "size a decision's test with this before it runs")
    paired.add_argument("--power", type=float, default=0.8,
                        help="for --size-for: the chance the test should have of showing the effect (default 0.8)")
    paired.set_defaults(func=compare)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for name in ("steps", "images_per_prompt"):
        if getattr(args, name, 1) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("guidance", "pag_scale", "answer_guidance"):
        if (getattr(args, name, None) or 0) < 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 0")
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
