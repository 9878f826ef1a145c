"""Text-to-image throughput of HydraPipeline, with the prompt's KV cache reused at every step and without it.

    python benchmarks/pipeline_speed.py [--configs tiny mid] [--steps 30] [--batch 2] [--warmup 1] [--runs 3]
                                        [--device cpu] [--threads N] [--json benchmarks/results/pipeline_speed.json]

Randomly initialised models (speed does not depend on the weights), fp32, guidance 5 (one doubled batch per step),
shapes-world captions. `tiny` is the test preset (32 px); `mid` has an 8-layer, 512-wide LLM and a 6 + 6-layer,
384-wide HYDRA-TOK at 64 px with a 4-layer decoder. Prints a markdown table and writes the figures as JSON.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import time_runs
from hydra_hf import HydraConfig, HydraForConditionalGeneration, HydraImageProcessor, HydraPipeline, HydraProcessor
from hydra_hf.data.text_tokenizer import train_word_tokenizer

# Shapes-world captions (DESIGN.md section 4), written out so the script needs no `datasets`.
PROMPTS = [
    "a red circle to the left of a blue square",
    "three green triangles",
    "a yellow square above a purple circle",
    "two orange circles and a blue triangle",
]

CONFIGS = {
    "tiny": dict(text_config={}, vision_config={}),
    "mid": dict(
        text_config=dict(
            hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2
        ),
        vision_config=dict(
            image_size=64,
            hidden_size=384,
            num_attention_heads=6,
            intermediate_size=1536,
            num_gen_layers=6,
            num_sem_layers=6,
            latent_channels=16,
            decoder_hidden_size=384,
            decoder_num_layers=4,
            decoder_num_attention_heads=6,
            decoder_intermediate_size=1536,
            distillation_layers=None,
        ),
        flow_head_hidden_size=512,
    ),
}


def build_pipeline(name: str, prompts: list[str]) -> HydraPipeline:
    tokenizer = train_word_tokenizer(prompts)
    overrides = CONFIGS[name]
    config = HydraConfig.from_preset(
        "tiny",
        text_config={**overrides["text_config"], "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id},
        vision_config=overrides["vision_config"],
        image_token_id=tokenizer.image_token_id,
        boi_token_id=tokenizer.boi_token_id,
        eoi_token_id=tokenizer.eoi_token_id,
        **{k: v for k, v in overrides.items() if k not in ("text_config", "vision_config")},
    )
    torch.manual_seed(0)
    model = HydraForConditionalGeneration(config).eval()
    vision = config.vision_config
    image_processor = HydraImageProcessor(
        size={"height": vision.image_size, "width": vision.image_size}, patch_size=vision.patch_size
    )
    pipe = HydraPipeline(model=model, processor=HydraProcessor(image_processor=image_processor, tokenizer=tokenizer))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def time_calls(pipe: HydraPipeline, prompts: list[str], args, use_prompt_cache: bool) -> list[float]:
    seeds = iter(range(args.warmup + args.runs))

    def call():
        pipe(
            prompts,
            num_inference_steps=args.steps,
            guidance_scale=5.0,
            generator=torch.Generator(args.device).manual_seed(next(seeds)),
            output_type="pt",
            use_prompt_cache=use_prompt_cache,
        )

    return time_runs(call, args.warmup, args.runs, args.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["tiny", "mid"])
    parser.add_argument("--steps", type=int, default=30, help="latent Euler steps per image")
    parser.add_argument("--batch", type=int, default=2, help="prompts per pipeline call")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    parser.add_argument("--runs", type=int, default=3, help="timed calls (the median is reported)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/pipeline_speed.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    batch = [PROMPTS[i % len(PROMPTS)] for i in range(args.batch)]
    results = {}
    for name in args.configs:
        pipe = build_pipeline(name, PROMPTS).to(args.device)
        prompt_tokens = pipe.encode_prompt(batch, num_images_per_prompt=1)[0].shape[1]
        row = {
            "parameters_M": round(sum(p.numel() for p in pipe.model.parameters()) / 1e6, 2),
            "image_size": pipe.model.vision_model.config.image_size,
            "image_tokens": pipe.model.config.num_image_tokens,
            "prompt_tokens": prompt_tokens,
        }
        for label, cached in (("cache_on", True), ("cache_off", False)):
            seconds = time_calls(pipe, batch, args, cached)
            row[label] = {"seconds_per_call": seconds, "images_per_s": args.batch / statistics.median(seconds)}
        row["speedup"] = row["cache_on"]["images_per_s"] / row["cache_off"]["images_per_s"]
        results[name] = row

    print(
        f"\n{args.steps} steps, guidance 5 (batched), {args.batch} prompts per call, fp32, {args.device}, "
        f"{torch.get_num_threads()} threads; median of {args.runs} calls after {args.warmup} warm-up\n"
    )
    print("| config | params | image px (tokens) | prompt tokens | images/s cache on | images/s cache off | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, row in results.items():
        print(
            f"| {name} | {row['parameters_M']:.2f} M | {row['image_size']} ({row['image_tokens']}) | "
            f"{row['prompt_tokens']} | {row['cache_on']['images_per_s']:.2f} | "
            f"{row['cache_off']['images_per_s']:.2f} | "
            f"{row['speedup']:.2f}x |"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report = {"settings": settings, "torch_threads": torch.get_num_threads(), "results": results}
    args.json.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
