"""HYDRA's performance next to the models users know, measured in one run on one machine.

    python -m benchmarks [--quick] [--sections tokenizer text-to-image understanding training]
                         [--device cpu|cuda] [--dtype float32|bfloat16|float16] [--threads N] [--json PATH]

Sections: (1) tokenizer encode/decode images/s, HYDRA-TOK at several sizes vs diffusers' SD-VAE; (2) text-to-image
s/image, HydraPipeline with the prompt cache on and off vs Janus image generation; (3) understanding prefill and
decode tokens/s vs Janus text mode; (4) training samples/s of HydraTokTrainer (stages 1 and 2) and HydraTrainer (stage II);
(5) peak RSS of every case. Each case runs in its own process. All models are randomly initialised from configs
(see benchmarks/models.py); every peer ratio comes from the same run. Model FLOP utilisation (MFU) is the FLOPs
counted by torch's FlopCounterMode divided by the measured time, over this machine's fp32 (or --dtype) 2048^3
matmul rate measured at the start of the run.

Prints markdown tables and writes JSON (and the same tables as .md) next to --json.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .common import DTYPES, load_average, machine_description, matmul_peak_gflops
from .models import PROFILES, TOKENIZER_SIZES
from .sections import SECTIONS, section_module

RESULTS = Path(__file__).parent / "results"

NOTES = {
    "tokenizer": (
        "Batch {tokenizer_batch}, median of {runs} calls after {warmup} warm-up. HYDRA-TOK decode integrates the "
        "pixel flow decoder for its default `decoder_num_inference_steps`; SD-VAE decodes in one pass. HYDRA-TOK runs "
        "at the multiple of its patch nearest {image_size} px (patch 16: {image_size} px; the 300m preset's patch 14: "
        "252 px); SD-VAE at {image_size} px. FLOPs per image from one image."
    ),
    "text-to-image": (
        "One prompt, guidance 5 (unconditional and conditional rows batched), median of {runs} calls after {warmup} "
        "warm-up. HYDRA: `HydraPipeline(..., num_inference_steps={t2i_steps}, output_type='pt')`, i.e. {t2i_steps} "
        "flow steps then the pixel decoder at its default steps. Janus: `generate(generation_mode='image')` (one "
        "token per step) then `decode_image_tokens`. Same LLM config; Janus's SigLIP encoder matches HYDRA-TOK's "
        "width and depth and its VQ decoder is Janus's own architecture. 'speed vs Janus' > 1 means faster."
    ),
    "understanding": (
        "One image + a question, greedy, batch 1, {new_tokens} new tokens, median of {runs} calls after {warmup} "
        "warm-up. Prefill = prompt tokens / time to the first new token (image encoding included); decode = mean "
        "interval between new tokens after the first. Params count the whole model (Janus's includes its "
        "generation path, unused here)."
    ),
    "training": (
        "Inside `Trainer.train()`: mean of {train_steps} steps after {train_warmup_steps} warm-up "
        "(collation, forward, backward, optimizer). FLOPs by FlopCounterMode on the same batches, teacher passes "
        "included; HYDRA-TOK stage 2 trains the decoder with the GAN term and includes the discriminator's own "
        "update; the stage II batch mixes understanding and generation rows at random (ratio 0.5)."
    ),
    "memory": (
        "Peak RSS of each case's own process (ru_maxrss), and the part above the RSS the process had after importing "
        "torch/transformers/diffusers/hydra_hf, before building any model."
    ),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny models at 32 px, one run: a smoke test in seconds")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--tokenizer-sizes", nargs="+", choices=list(TOKENIZER_SIZES), default=None,
        help="HYDRA-TOK sizes in the tokenizer section (default: small base 300m; quick: tiny)",
    )
    parser.add_argument("--image-size", type=int, default=None, help="target image side (default 256; quick 32)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls before timing")
    parser.add_argument("--runs", type=int, default=None, help="timed calls (the median is reported)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed per case")
    parser.add_argument(
        "--json", type=Path, default=None,
        help="output (default benchmarks/results/benchmarks.json; with --quick benchmarks_quick.json)",
    )
    return parser.parse_args(argv)


def options(args: argparse.Namespace) -> dict:
    opts = dict(PROFILES["quick" if args.quick else "full"])
    for key in ("tokenizer_sizes", "image_size", "warmup", "runs"):
        if getattr(args, key) is not None:
            opts[key] = getattr(args, key)
    opts.update(device=args.device, dtype=args.dtype, threads=args.threads or torch.get_num_threads())
    return opts


def run_case(section: str, case: str, opts: dict, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        spec, result = Path(folder) / "spec.json", Path(folder) / "result.json"
        spec.write_text(json.dumps({"section": section, "case": case, "options": opts}))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
        repo_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo_root, env.get("PYTHONPATH")]))
        command = [sys.executable, "-m", "benchmarks.worker", str(spec), str(result)]
        try:
            process = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
        if not result.exists():
            tail = process.stderr.strip().splitlines()[-1:] or ["no output"]
            return {"error": f"worker exited with {process.returncode}: {tail[0][:200]}"}
        outcome = json.loads(result.read_text())
        if "error" in outcome:
            print(process.stderr[-3000:], file=sys.stderr)
        return outcome


def memory_table(report: dict) -> str:
    lines = ["| section | case | peak RSS | above import baseline |", "|---|---|---:|---:|"]
    for section, cases in report["sections"].items():
        for case, row in cases.items():
            if "memory" not in row:
                continue
            memory = row["memory"]
            line = (
                f"| {section} | {case} | {memory['peak_rss_mb']:.0f} MB | "
                f"{memory['peak_rss_mb'] - memory['baseline_rss_mb']:.0f} MB |"
            )
            if "peak_cuda_allocated_mb" in memory:
                line += f" {memory['peak_cuda_allocated_mb']:.0f} MB CUDA |"
            lines.append(line)
    return "\n".join(lines)


def render(report: dict, opts: dict) -> str:
    machine, peak = report["machine"], report["matmul_peak"]
    parts = [
        f"Machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs, {machine['torch_threads']} torch threads"
        + (f", {machine['gpu']}" if "gpu" in machine else "")
        + f"; device {machine['device']}, {opts['dtype']}; torch {machine['torch']}, transformers "
        f"{machine['transformers']}, diffusers {machine['diffusers']}, Python {machine['python']}.",
        f"Matmul peak ({peak['size']}^3, {peak['dtype']}): {peak['gflops']:.0f} GFLOP/s at the start, "
        f"{report['matmul_peak_end']['gflops']:.0f} at the end; load average {report['load_average_start']} at the "
        f"start, {report['load_average_end']} at the end.",
    ]
    for number, (section, results) in enumerate(report["sections"].items(), start=1):
        parts.append(f"### {number}. {section_module(section).TITLE}\n\n{NOTES[section].format(**opts)}\n\n")
        parts[-1] += section_module(section).table(results, opts)
    parts.append(f"### {len(report['sections']) + 1}. Memory\n\n{NOTES['memory']}\n\n{memory_table(report)}")
    return "\n\n".join(parts)


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    opts = options(args)
    dtype = DTYPES[args.dtype]
    report = {
        "command": " ".join(["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_description(args.device, opts["threads"]),
        "load_average_start": load_average(),
        "matmul_peak": matmul_peak_gflops(args.device, dtype),
    }
    machine = report["machine"]
    print(
        f"# {machine['cpu']} | {machine['logical_cpus']} logical CPUs | {opts['threads']} torch threads | "
        f"torch {machine['torch']} | {args.device} {args.dtype} | matmul peak "
        f"{report['matmul_peak']['gflops']:.0f} GFLOP/s | load {report['load_average_start']}",
        flush=True,
    )
    opts["peak_gflops"] = report["matmul_peak"]["gflops"]
    report["options"] = opts
    report["sections"] = {}
    for section in args.sections:
        module = section_module(section)
        results = report["sections"][section] = {}
        for case in module.cases(opts):
            start = time.perf_counter()
            print(f"  {section} / {case} ...", end="", file=sys.stderr, flush=True)
            results[case] = run_case(section, case, opts, args.timeout)
            status = "failed" if "error" in results[case] else "ok"
            print(f" {status} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    report["matmul_peak_end"] = matmul_peak_gflops(args.device, dtype)
    report["load_average_end"] = load_average()

    markdown = render(report, opts)
    print("\n" + markdown)
    path = args.json or RESULTS / ("benchmarks_quick.json" if args.quick else "benchmarks.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str))
    path.with_suffix(".md").write_text(markdown + "\n")
    print(f"\nwrote {path} and {path.with_suffix('.md')}")
