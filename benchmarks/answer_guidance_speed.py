"""What answer guidance costs: HydraPipeline on shapes-world prompts with and without `guidance_questions`.

    python benchmarks/answer_guidance_speed.py [--model hydra-tiny-shapes] [--batch 4] [--steps 30] [--warmup 1]
                                               [--runs 3] [--threads N] [--json benchmarks/results/answer_guidance_speed.json]

Both runs use the model's own sampling defaults and the same seeds; the guided one asks each prompt's
`binding_questions` (every prompt here has some), at the model's answer guidance settings or the package defaults
(scale 0.03 after the steps ending at t >= 0.3, 4 smoothed reads). Each guided step adds 4 understanding passes with
a backward pass, so the FLOPs are counted for both runs (FlopCounterMode) and MFU is given against this machine's
fp32 matmul peak, measured first. Prints a markdown table and writes the figures as JSON.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import count_flops, matmul_peak_gflops, median, time_runs
from hydra_hf.cli import load_pipeline
from hydra_hf.data.shapes import binding_questions, prompt_spec_from_text

# Prompts of the guided categories (colours, position, colour attribution), written out.
PROMPTS = [
    "a red circle to the left of a blue square",
    "a green triangle",
    "a yellow square above a purple circle",
    "an orange circle and a blue triangle",
]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="hydra-tiny-shapes", help="a HYDRA folder (default: the embedded model)")
    parser.add_argument("--batch", type=int, default=4, help="prompts per pipeline call")
    parser.add_argument("--steps", type=int, default=30, help="latent Euler steps per image")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    parser.add_argument("--runs", type=int, default=3, help="timed calls (the median is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/answer_guidance_speed.json"))
    args = parser.parse_args(argv)
    if min(args.batch, args.steps, args.runs) < 1 or args.warmup < 0:
        parser.error("--batch, --steps and --runs must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)

    peak = matmul_peak_gflops("cpu", torch.float32)
    pipe = load_pipeline(args.model, quiet=True)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.batch)]
    questions = [binding_questions(prompt_spec_from_text(prompt)) for prompt in prompts]
    results = {}
    for label, asked in (("plain", None), ("answer-guided", questions)):
        def call():
            generators = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
            return pipe(prompts, num_inference_steps=args.steps, generator=generators, guidance_questions=asked,
                        output_type="pt").images

        seconds = time_runs(call, args.warmup, args.runs)
        s_per_image = median(seconds) / len(prompts)
        gflops_per_image = count_flops(call) / len(prompts) / 1e9
        results[label] = {
            "seconds_per_call": seconds, "s_per_image": s_per_image, "gflops_per_image": gflops_per_image,
            "mfu": gflops_per_image / s_per_image / peak["gflops"],
        }
    results["answer-guided"]["cost_vs_plain"] = results["answer-guided"]["s_per_image"] / results["plain"]["s_per_image"]
    settings = pipe.guidance_settings()
    print(f"\n{args.model}: {len(prompts)} shapes-world prompts per call (all with binding questions), {args.steps} steps, "
          f"fp32, {torch.get_num_threads()} threads; median of {args.runs} calls after {args.warmup} warm-up; matmul "
          f"peak {peak['gflops']:.0f} GFLOP/s; sampling defaults {settings}\n")
    print("| sampler | s/image | GFLOP/image | MFU | time vs plain |\n|---|---:|---:|---:|---:|")
    for label, row in results.items():
        ratio = row["s_per_image"] / results["plain"]["s_per_image"]
        print(f"| {label} | {row['s_per_image']:.3f} | {row['gflops_per_image']:.2f} | {row['mfu']:.1%} | {ratio:.2f}x |")
    report = {"settings": {**vars(args), "json": str(args.json)}, "torch_threads": torch.get_num_threads(),
              "matmul_peak": peak, "sampling": settings, "questions": questions, "results": results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.json}")
    return report


if __name__ == "__main__":
    main()
