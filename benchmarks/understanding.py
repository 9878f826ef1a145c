"""Section 3: understanding, prompt (prefill, image encoding included) and decode tokens/s of HYDRA's `generate()`
against Janus text mode at equal size, with one image in the prompt for both (greedy, fixed answer length).

One `generate` call gives both: a stopping criterion stamps each new token, so prefill is the time to the first
token and decode the mean interval between the first and the last."""

import time

import torch
from PIL import Image
from transformers import StoppingCriteria, StoppingCriteriaList

from .common import count_flops, median, synchronize
from .models import QUESTION, build_hydra, build_janus, build_processor, parameter_count

TITLE = "Understanding: prefill and decode"
PEER = "janus"


def cases(opts: dict) -> list[str]:
    return ["hydra", PEER]


class _TokenClock(StoppingCriteria):
    """Stamps the time each new token is chosen (generate calls stopping criteria once per token, both models)."""

    def __init__(self, device):
        self.device = device
        self.start = None
        self.stamps = []

    def __call__(self, input_ids, scores, **kwargs):
        synchronize(self.device)
        self.stamps.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def _inputs(opts: dict) -> dict:
    """One shapes-style image and a question, through HYDRA's processor; Janus reads the same ids (its image
    token id is set to HYDRA's) and the same pixels."""
    processor = build_processor(opts)
    size = processor.image_processor.size["height"]
    image = Image.new("RGB", (size, size), (255, 255, 255))
    conversation = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    return dict(processor(text=text, images=[image]))


def run_case(case: str, opts: dict) -> dict:
    device, dtype = opts["device"], opts["dtype"]
    inputs = _inputs(opts)
    if case == PEER:
        model = build_janus(opts)
        extra = {"generation_mode": "text"}
    else:
        model, _ = build_hydra(opts)
        extra = {}
    model = model.to(device=device, dtype=dtype)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    new_tokens = opts["new_tokens"]
    prompt_tokens = inputs["input_ids"].shape[1]

    def generate(n: int, clock: "_TokenClock | None" = None):
        with torch.inference_mode():
            out = model.generate(
                **inputs, **extra, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                pad_token_id=model.generation_config.pad_token_id,
                stopping_criteria=StoppingCriteriaList([clock]) if clock else None,
            )
        if out.shape[1] != prompt_tokens + n:
            raise RuntimeError(f"expected {n} new tokens, got {out.shape[1] - prompt_tokens}")
        return out

    prefill_s, decode_s = [], []
    for index in range(opts["warmup"] + opts["runs"]):
        clock = _TokenClock(device)
        synchronize(device)
        clock.start = time.perf_counter()
        generate(new_tokens, clock)
        if index >= opts["warmup"]:
            prefill_s.append(clock.stamps[0] - clock.start)
            decode_s.append((clock.stamps[-1] - clock.stamps[0]) / (new_tokens - 1))
    prefill_flops = count_flops(lambda: generate(1))
    decode_flops = (count_flops(lambda: generate(new_tokens)) - prefill_flops) / (new_tokens - 1)
    prefill, decode = median(prefill_s), median(decode_s)
    peak = opts["peak_gflops"]
    return {
        "parameters": parameter_count(model),
        "prompt_tokens": prompt_tokens,
        "image_tokens": int((inputs["input_ids"] == model.config.image_token_id).sum()),
        "new_tokens": new_tokens,
        "prefill_seconds": prefill_s,
        "decode_seconds_per_token": decode_s,
        "prefill_tokens_per_s": prompt_tokens / prefill,
        "decode_tokens_per_s": 1 / decode,
        "prefill_gflops": prefill_flops / 1e9,
        "decode_gflops_per_token": decode_flops / 1e9,
        "prefill_mfu": prefill_flops / prefill / 1e9 / peak,
        "decode_mfu": decode_flops / decode / 1e9 / peak,
    }


def table(results: dict, opts: dict) -> str:
    peer = results.get(PEER, {})
    lines = [
        "| model | params | prompt tokens (image) | prefill tok/s | decode tok/s | prefill GFLOP | decode GFLOP/tok "
        "| prefill MFU | decode MFU | prefill vs Janus | decode vs Janus |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case, row in results.items():
        if "error" in row:
            lines.append(f"| {case} | failed: {row['error']} |" + " |" * 9)
            continue
        ratios = [
            f"{row[key] / peer[key]:.2f}x" if key in peer else "n/a"
            for key in ("prefill_tokens_per_s", "decode_tokens_per_s")
        ]
        lines.append(
            f"| {case} | {row['parameters'] / 1e6:.1f} M | {row['prompt_tokens']} ({row['image_tokens']}) | "
            f"{row['prefill_tokens_per_s']:.0f} | {row['decode_tokens_per_s']:.1f} | {row['prefill_gflops']:.4g} | "
            f"{row['decode_gflops_per_token']:.3g} | {row['prefill_mfu']:.0%} | {row['decode_mfu']:.1%} | "
            f"{ratios[0]} | {ratios[1]} |"
        )
    return "\n".join(lines)
