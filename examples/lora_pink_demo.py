"""Teach `hydra-tiny-shapes` the held-out colour pink with a CPU LoRA run, and measure it with the shapes scorer.

    python examples/lora_pink_demo.py --work_dir outputs/pink-lora [--model hydra-tiny-shapes] [--max_steps 300]

Base training never shows pink (the word is in the vocabulary, its embedding row untrained). The demo renders scenes
that feature pink, fine-tunes a LoRA adapter on them with examples/finetune_lora.py (the HydraTrainer path), then
scores GenEval-style prompts that name pink, from a seed neither run trained on, before and after loading the
adapter into the pipeline, along with how often a pink object of any shape appears at all. Prints a table and writes
`scores.json` in --work_dir.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from hydra_hf import HydraPipeline
from hydra_hf.cli import resolve_model
from hydra_hf.data import ALL_COLORS, make_shapes_dataset
from hydra_hf.data.shapes import generation_prompts
from hydra_hf.evaluation.shapes import detect_objects, score_generation
from hydra_hf.evaluation.shapes_eval import EVAL_SEED, generate_for_specs

CATEGORIES = ("colors", "counting", "color_attribution")


def pink_prompts(count: int):
    pool = generation_prompts(20 * count, seed=EVAL_SEED + 1, categories=CATEGORIES, colors=tuple(ALL_COLORS))
    return [spec for spec in pool if "pink" in spec.prompt][:count]


def pink_scores(images, specs) -> dict[str, float]:
    """GenEval-style scores, plus how often the detector finds a pink object of any shape: the concept itself,
    measurable even while the base model's shapes are too rough for the exact-shape categories."""
    scores = score_generation(images, specs)
    scores["pink object present"] = sum(
        any(found.color == "pink" for found in detect_objects(image)) for image in images
    ) / len(images)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", type=Path, required=True)
    parser.add_argument("--model", default="hydra-tiny-shapes", help="base HYDRA folder or Hub id")
    parser.add_argument("--num_scenes", type=int, default=2000, help="pink training scenes")
    parser.add_argument("--num_prompts", type=int, default=60, help="pink prompts scored")
    parser.add_argument("--max_steps", type=int, default=300)
    parser.add_argument("--steps", type=int, default=30, help="sampling steps")
    parser.add_argument("--guidance", type=float, default=5.0)
    args = parser.parse_args()
    model = resolve_model(args.model)
    data, adapter = args.work_dir / "data", args.work_dir / "adapter"
    if not data.exists():
        make_shapes_dataset(args.num_scenes, seed=7, featured_color="pink").save_to_disk(str(data))
    if not (adapter / "adapter_config.json").exists():
        subprocess.run(
            [sys.executable, str(Path(__file__).with_name("finetune_lora.py")), "--model_name_or_path", model,
             "--dataset", str(data), "--output_dir", str(adapter), "--max_steps", str(args.max_steps),
             "--learning_rate", "1e-3", "--train_tokens", "pink", "--generation_ratio", "0.7",
             "--per_device_train_batch_size", "32", "--use_cpu", "--report_to", "none", "--save_strategy", "no",
             "--logging_steps", "25"],
            check=True,
        )
    specs = pink_prompts(args.num_prompts)
    pipe = HydraPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    before = pink_scores(generate_for_specs(pipe, specs, args.steps, args.guidance, batch_size=25), specs)
    pipe.load_lora_weights(str(adapter))
    after = pink_scores(generate_for_specs(pipe, specs, args.steps, args.guidance, batch_size=25), specs)
    print(f"{len(specs)} prompts naming pink (seed {EVAL_SEED + 1}); {args.steps} steps, guidance {args.guidance}\n")
    print("| score | before | after LoRA |\n|---|---:|---:|")
    for name in before:
        print(f"| {name} | {before[name]:.3f} | {after[name]:.3f} |")
    (args.work_dir / "scores.json").write_text(json.dumps({"before": before, "after": after, "prompts": len(specs)}, indent=2))


if __name__ == "__main__":
    main()
