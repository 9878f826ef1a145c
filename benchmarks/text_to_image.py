"""Section 2: text-to-image s/image, HydraPipeline (prompt cache on and off) against transformers' Janus
(`generate(generation_mode="image")` then `decode_image_tokens`), same LLM config and image-token count."""

import torch

from hydra_hf import HydraPipeline

from .common import count_flops, median, time_runs
from .models import PROMPT, build_hydra, build_janus, build_processor, parameter_count

TITLE = "Text-to-image"
PEER = "janus"
GUIDANCE = 5.0


def cases(opts: dict) -> list[str]:
    return ["hydra-cache-on", "hydra-cache-off", PEER]


def run_case(case: str, opts: dict) -> dict:
    return _run_janus(opts) if case == PEER else _run_hydra(opts, use_prompt_cache=case == "hydra-cache-on")


def _run_hydra(opts: dict, use_prompt_cache: bool) -> dict:
    device, dtype = opts["device"], opts["dtype"]
    model, processor = build_hydra(opts)
    pipe = HydraPipeline(model=model, processor=processor).to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    steps = opts["t2i_steps"]
    vision = model.vision_model

    def generate(output_type="pt"):
        return pipe(
            PROMPT,
            num_inference_steps=steps,
            guidance_scale=GUIDANCE,
            generator=torch.Generator(device).manual_seed(0),
            output_type=output_type,
            use_prompt_cache=use_prompt_cache,
        ).images

    latents = vision.denormalize_latents(generate("latent"))

    def decode():
        with torch.inference_mode():
            return vision.decode(latents).sample

    total_s = time_runs(generate, opts["warmup"], opts["runs"], device)
    decode_s = time_runs(decode, opts["warmup"], opts["runs"], device)
    flops = count_flops(generate)
    prompt_tokens = pipe.encode_prompt(PROMPT, device=device)[0].shape[1]
    return {
        "parameters": parameter_count(model),
        "image_size": vision.config.image_size,
        "image_tokens": model.config.num_image_tokens,
        "prompt_tokens": prompt_tokens,
        "procedure": f"{steps} flow steps x (uncond + cond) over all image tokens, then "
        f"{vision.config.decoder_num_inference_steps} pixel-decoder steps",
        **_times(total_s, decode_s, flops, opts),
    }


def _run_janus(opts: dict) -> dict:
    device, dtype = opts["device"], opts["dtype"]
    model = build_janus(opts).to(device=device, dtype=dtype)
    processor = build_processor(opts)
    prompt = processor(text=processor.build_generation_prompt(PROMPT)).to(device)
    state = {}

    def sample():
        torch.manual_seed(0)
        state["tokens"] = model.generate(
            prompt["input_ids"],
            attention_mask=prompt["attention_mask"],
            generation_mode="image",
            do_sample=True,
            guidance_scale=GUIDANCE,
        )
        return state["tokens"]

    def generate():
        with torch.inference_mode():
            return model.decode_image_tokens(sample())

    def decode():
        with torch.inference_mode():
            return model.decode_image_tokens(state["tokens"])

    total_s = time_runs(generate, opts["warmup"], opts["runs"], device)
    decode_s = time_runs(decode, opts["warmup"], opts["runs"], device)
    flops = count_flops(generate)
    image_tokens = model.config.vision_config.num_image_tokens
    return {
        "parameters": parameter_count(model),
        "image_size": model.config.vision_config.image_size,
        "image_tokens": image_tokens,
        "prompt_tokens": prompt["input_ids"].shape[1],
        "procedure": f"{image_tokens} autoregressive token steps x (uncond + cond), then the VQ decoder",
        **_times(total_s, decode_s, flops, opts),
    }


def _times(total_s: list[float], decode_s: list[float], flops: int, opts: dict) -> dict:
    seconds = median(total_s)
    achieved = flops / seconds / 1e9
    return {
        "seconds_per_call": total_s,
        "decode_seconds_per_call": decode_s,
        "s_per_image": seconds,
        "decode_s_per_image": median(decode_s),
        "sampling_s_per_image": seconds - median(decode_s),
        "gflops_per_image": flops / 1e9,
        "achieved_gflops": achieved,
        "mfu": achieved / opts["peak_gflops"],
    }


def table(results: dict, opts: dict) -> str:
    peer = results.get(PEER, {})
    lines = [
        "| pipeline | params | px (image tokens) | prompt tokens | s/image | of which sampling | of which pixel decode "
        "| GFLOP/image | MFU | speed vs Janus |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case, row in results.items():
        if "error" in row:
            lines.append(f"| {case} | failed: {row['error']} |" + " |" * 8)
            continue
        ratio = f"{peer['s_per_image'] / row['s_per_image']:.2f}x" if "s_per_image" in peer else "n/a"
        lines.append(
            f"| {case} | {row['parameters'] / 1e6:.1f} M | {row['image_size']} ({row['image_tokens']}) | "
            f"{row['prompt_tokens']} | {row['s_per_image']:.3g} | {row['sampling_s_per_image']:.3g} | "
            f"{row['decode_s_per_image']:.3g} | {row['gflops_per_image']:.4g} | {row['mfu']:.0%} | {ratio} |"
        )
    return "\n".join(lines)
