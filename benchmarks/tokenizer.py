"""Section 1: HYDRA-TOK encode/decode images/s at about 256 px against diffusers' SD-VAE (AutoencoderKL)."""

import torch

from .common import count_flops, median, time_runs
from .models import (
    build_hydra_tok,
    build_sd_vae,
    image_size_for,
    parameter_count,
    tokenizer_config,
)

TITLE = "Tokenizer: encode / decode"
PEER = "sd-vae"


def cases(opts: dict) -> list[str]:
    return [f"hydra-tok-{size}" for size in opts["tokenizer_sizes"]] + [PEER]


def run_case(case: str, opts: dict) -> dict:
    device, dtype = opts["device"], opts["dtype"]
    batch = opts["tokenizer_batch"]
    if case == PEER:
        image_size = opts["image_size"]
        model = build_sd_vae(image_size, opts["sd_vae_channels"])
        decode_steps = 1
        tokens = None
    else:
        size = case.removeprefix("hydra-tok-")
        config = tokenizer_config(size, opts["image_size"])
        image_size = image_size_for(config.patch_size, opts["image_size"])
        model = build_hydra_tok(size, opts["image_size"])
        decode_steps = config.decoder_num_inference_steps
        tokens = config.num_patches_per_side**2
    model = model.to(device=device, dtype=dtype)
    generator = torch.Generator().manual_seed(0)
    pixels = (torch.rand(batch, 3, image_size, image_size, generator=generator) * 2 - 1).to(device, dtype)

    with torch.inference_mode():
        latents = model.encode(pixels).latent_dist.sample()

        def encode(x=pixels):
            return model.encode(x).latent_dist.mean

        def decode(z=latents):
            return model.decode(z).sample

        # FLOPs per image: one image, so the count does not depend on the batch.
        encode_flops = count_flops(lambda: encode(pixels[:1]))
        decode_flops = count_flops(lambda: decode(latents[:1]))
        encode_s = time_runs(encode, opts["warmup"], opts["runs"], device)
        decode_s = time_runs(decode, opts["warmup"], opts["runs"], device)
    return {
        "parameters": parameter_count(model),
        "image_size": image_size,
        "patch_size": model.config.patch_size if case != PEER else None,
        "latent_shape": list(latents.shape[1:]),
        "image_tokens": tokens,
        "decode_steps": decode_steps,
        "batch": batch,
        "block_out_channels": list(model.config.block_out_channels) if case == PEER else None,
        "encode": _rates(encode_s, batch, encode_flops, opts),
        "decode": _rates(decode_s, batch, decode_flops, opts),
    }


def _rates(seconds: list[float], batch: int, flops_per_image: int, opts: dict) -> dict:
    images_per_s = batch / median(seconds)
    achieved = flops_per_image * images_per_s / 1e9
    return {
        "seconds_per_call": seconds,
        "images_per_s": images_per_s,
        "gflops_per_image": flops_per_image / 1e9,
        "achieved_gflops": achieved,
        "mfu": achieved / opts["peak_gflops"],
    }


def table(results: dict, opts: dict) -> str:
    peer = results.get(PEER, {})
    lines = [
        "| model | params | px (latent) | dec. steps | encode img/s | decode img/s | enc. GFLOP/img | dec. GFLOP/img "
        "| enc. MFU | dec. MFU | encode vs SD-VAE | decode vs SD-VAE |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case, row in results.items():
        if "error" in row:
            lines.append(f"| {case} | failed: {row['error']} |" + " |" * 10)
            continue
        ratios = []
        for part in ("encode", "decode"):
            ratios.append(
                f"{row[part]['images_per_s'] / peer[part]['images_per_s']:.2f}x" if "encode" in peer else "n/a"
            )
        latent = "x".join(str(v) for v in row["latent_shape"])
        lines.append(
            f"| {case} | {row['parameters'] / 1e6:.1f} M | {row['image_size']} ({latent}) | {row['decode_steps']} | "
            f"{row['encode']['images_per_s']:.2f} | {row['decode']['images_per_s']:.2f} | "
            f"{row['encode']['gflops_per_image']:.4g} | {row['decode']['gflops_per_image']:.4g} | "
            f"{row['encode']['mfu']:.0%} | {row['decode']['mfu']:.0%} | {ratios[0]} | {ratios[1]} |"
        )
    return "\n".join(lines)
