"""The models the benchmarks compare, all randomly initialised from configs (speed does not depend on the weights,
and nothing is downloaded): HYDRA-TOK at a few sizes, diffusers' SD-VAE, a HYDRA model and a Janus model whose LLM
config and image-token count match it.

Two profiles: `full` (the README figures: 256 px, patch 16, 256 image tokens, a 512-wide 8-layer Llama LLM,
Janus's own LLM architecture: Janus's image generation fails with a Qwen2 text config in transformers 5.24) and
`quick` (tiny models at 32-64 px, a smoke test that runs in seconds).
"""

import copy
import functools

import torch

from hydra_hf import (
    HYDRA_TOK_PRESETS,
    HydraConfig,
    HydraForConditionalGeneration,
    HydraImageProcessor,
    HydraProcessor,
    HydraTokConfig,
    HydraTokModel,
)
from hydra_hf.data.text_tokenizer import train_word_tokenizer

# Shapes-world texts (DESIGN.md section 4) for the word tokenizer the HYDRA processor needs.
CORPUS = [
    "a red circle to the left of a blue square",
    "three green triangles",
    "a yellow square above a purple circle",
    "two orange circles and a blue triangle",
    "how many circles are there ?",
    "what color is the square ?",
    "what shape is the red object ?",
    "is there a blue square ?",
    "describe the image .",
    "yes no 0 1 2 3 4",
]
PROMPT = "a red circle to the left of a blue square"
QUESTION = "what color is the square ?"

# HYDRA-TOK sizes. ViT widths/depths follow ViT-S and ViT-B (split half Gen-ViT, half Sem-ViT); `300m` is the
# paper's preset (InternViT-300M + decoder), run at its native patch 14 (252 px, 324 tokens).
TOKENIZER_SIZES = {
    "tiny": dict(HYDRA_TOK_PRESETS["tiny"]),
    "small": dict(
        patch_size=16, hidden_size=384, num_attention_heads=6, intermediate_size=1536, num_gen_layers=6,
        num_sem_layers=6, latent_channels=32, decoder_hidden_size=384, decoder_num_layers=4,
        decoder_num_attention_heads=6, decoder_intermediate_size=1536, decoder_num_inference_steps=10,
        distillation_layers=[3, 6, 9, 12],
    ),
    "base": dict(
        patch_size=16, hidden_size=768, num_attention_heads=12, intermediate_size=3072, num_gen_layers=6,
        num_sem_layers=6, latent_channels=64, decoder_hidden_size=768, decoder_num_layers=6,
        decoder_num_attention_heads=12, decoder_intermediate_size=3072, decoder_num_inference_steps=10,
        distillation_layers=[3, 6, 9, 12],
    ),
    "300m": dict(HYDRA_TOK_PRESETS["hydra-tok-300m"]),
}

PROFILES = {
    "full": dict(
        image_size=256,  # for patch 16; patch-14 sizes use the nearest multiple (252)
        tokenizer_sizes=["small", "base", "300m"],
        tokenizer_batch=2,
        sd_vae_channels=[128, 256, 512, 512],
        unified_tokenizer="small",
        llm=dict(
            model_type="llama", vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
            num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=False,
        ),
        janus_vq=dict(num_embeddings=16384, embed_dim=8, latent_channels=256, base_channels=128,
                      channel_multiplier=[1, 1, 2, 2, 4], num_res_blocks=2),
        t2i_steps=30,
        new_tokens=64,
        train_batch=4,
        train_warmup_steps=2,
        train_steps=4,
        warmup=1,
        runs=2,
    ),
    "quick": dict(
        image_size=32,
        tokenizer_sizes=["tiny"],
        tokenizer_batch=1,
        sd_vae_channels=[32, 32, 64, 64],  # SD-VAE's layout at a quarter of its width or less: a smoke test
        unified_tokenizer="tiny",
        llm=dict(
            model_type="llama", vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
        ),
        janus_vq=dict(num_embeddings=256, embed_dim=8, latent_channels=32, base_channels=32,
                      channel_multiplier=[1, 2, 2, 4], num_res_blocks=1),
        t2i_steps=3,
        new_tokens=4,
        train_batch=2,
        train_warmup_steps=1,
        train_steps=2,
        warmup=1,
        runs=1,
    ),
}


def image_size_for(patch_size: int, target: int) -> int:
    """The multiple of `patch_size` nearest to `target` (256 px -> 252 for patch 14)."""
    return max(1, round(target / patch_size)) * patch_size


def tokenizer_config(size: str, target_image_size: int) -> HydraTokConfig:
    values = dict(TOKENIZER_SIZES[size])
    values["image_size"] = image_size_for(values["patch_size"], target_image_size)
    return HydraTokConfig(**values)


def build_hydra_tok(size: str, target_image_size: int) -> HydraTokModel:
    torch.manual_seed(0)
    return HydraTokModel(tokenizer_config(size, target_image_size)).eval()


def build_sd_vae(image_size: int, block_out_channels: list[int]):
    """diffusers' AutoencoderKL with the Stable Diffusion VAE architecture (8x downsampling, 4 latent channels;
    SD's widths are [128, 256, 512, 512])."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=block_out_channels,
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=image_size,
        scaling_factor=0.18215,
    ).eval()


@functools.cache
def word_tokenizer():
    return train_word_tokenizer(CORPUS)


def hydra_config(profile: dict) -> HydraConfig:
    tokenizer = word_tokenizer()
    vision = dict(TOKENIZER_SIZES[profile["unified_tokenizer"]])
    vision["image_size"] = image_size_for(vision["patch_size"], profile["image_size"])
    text = {**profile["llm"], "pad_token_id": tokenizer.pad_token_id}
    return HydraConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=tokenizer.image_token_id,
        boi_token_id=tokenizer.boi_token_id,
        eoi_token_id=tokenizer.eoi_token_id,
    )


def build_processor(profile: dict) -> HydraProcessor:
    """HYDRA's processor (prompts for both models: Janus reads the same token ids)."""
    vision = hydra_config(profile).vision_config
    image_processor = HydraImageProcessor(
        size={"height": vision.image_size, "width": vision.image_size}, patch_size=vision.patch_size
    )
    return HydraProcessor(image_processor=image_processor, tokenizer=word_tokenizer())


def build_hydra(profile: dict) -> tuple[HydraForConditionalGeneration, HydraProcessor]:
    torch.manual_seed(0)
    model = HydraForConditionalGeneration(hydra_config(profile)).eval()
    return model, build_processor(profile)


def janus_config(profile: dict):
    """Janus with HYDRA's LLM config (same architecture, width, depth, heads, vocabulary) and the same number of
    image tokens: its SigLIP-style encoder has HYDRA-TOK's width, depth, image and patch size, and its VQ tokenizer
    downsamples by that patch size, so understanding and generation both see (image_size / patch)^2 tokens."""
    from transformers import JanusConfig

    hydra = hydra_config(profile)
    vision = hydra.vision_config
    llm_width = hydra.text_config.hidden_size
    vq = dict(profile["janus_vq"])
    downsampling = 2 ** (len(vq["channel_multiplier"]) - 1)
    if downsampling != vision.patch_size:
        raise ValueError(f"Janus VQ downsamples by {downsampling}, HYDRA-TOK's patch is {vision.patch_size}")
    return JanusConfig(
        text_config=copy.deepcopy(hydra.text_config.to_dict()),
        vision_config=dict(
            hidden_size=vision.hidden_size,
            num_hidden_layers=vision.num_layers,
            num_attention_heads=vision.num_attention_heads,
            mlp_ratio=vision.intermediate_size / vision.hidden_size,
            image_size=vision.image_size,
            patch_size=vision.patch_size,
            projection_dim=llm_width,
            num_image_tokens=vision.num_patches_per_side**2,
        ),
        vq_config=dict(**vq, projection_dim=llm_width, image_token_embed_dim=llm_width),
        image_token_id=hydra.image_token_id,
        tie_word_embeddings=False,
    )


def build_janus(profile: dict):
    from transformers import JanusForConditionalGeneration

    torch.manual_seed(0)
    model = JanusForConditionalGeneration(janus_config(profile)).eval()
    tokenizer = word_tokenizer()
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.generation_kwargs = {"boi_token_id": tokenizer.boi_token_id}
    return model


def parameter_count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())
