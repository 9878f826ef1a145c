"""Configuration of HYDRA-TOK, the ViT tokenizer shared by understanding and generation."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

__all__ = ["HydraTokConfig", "HYDRA_TOK_PRESETS"]


# Named shapes. `hydra-tok-300m` is InternViT-300M-448px (the paper's initialisation) split 12 + 12,
# with the paper's C = 64 bottleneck; the decoder size is a guess inside the paper's 144M-358M range.
HYDRA_TOK_PRESETS: dict[str, dict] = {
    "tiny": dict(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        num_gen_layers=2,
        num_sem_layers=2,
        latent_channels=8,
        decoder_hidden_size=32,
        decoder_num_layers=2,
        decoder_num_attention_heads=4,
        decoder_intermediate_size=64,
        decoder_num_inference_steps=4,
        distillation_layers=[1, 2, 3, 4],
    ),
    "hydra-tok-300m": dict(
        image_size=448,
        patch_size=14,
        hidden_size=1024,
        num_attention_heads=16,
        intermediate_size=4096,
        num_gen_layers=12,
        num_sem_layers=12,
        use_cls_token=True,
        qkv_bias=True,
        layerscale_init=0.1,
        latent_channels=64,
        decoder_hidden_size=1024,
        decoder_num_layers=12,
        decoder_num_attention_heads=16,
        decoder_intermediate_size=4096,
        decoder_num_inference_steps=10,
        distillation_layers=[3, 6, 9, 12, 15, 18, 21, 24],
    ),
}


@strict
class HydraTokConfig(PreTrainedConfig):
    r"""
    HYDRA-TOK: pixels -> Gen-ViT -> Generation-Semantic Bottleneck (GSB) -> Sem-ViT, plus a pixel flow decoder
    conditioned on the bottleneck latent ``z`` (arXiv 2603.15228, section 2.1).

    Args:
        image_size (`int`): default input side; any multiple of `patch_size` works (position embeddings interpolate).
        patch_size (`int`): side of the square patches; the latent grid is `image_size / patch_size`.
        num_channels (`int`): image channels (3).
        hidden_size, num_attention_heads, intermediate_size, hidden_act, layer_norm_eps, qkv_bias, attention_dropout:
            the ViT blocks (InternViT-style pre-norm blocks).
        use_cls_token (`bool`): prepend a class token to Gen-ViT as InternViT does. It is dropped at the GSB, so
            understanding and generation feed Sem-ViT the same set of patch tokens.
        layerscale_init (`float` or `None`): initial LayerScale value (InternViT uses 0.1); `None` disables it.
        num_gen_layers, num_sem_layers (`int`): the split of the ViT depth (paper: 12 + 12).
        latent_channels (`int`): C, the bottleneck width (paper: 64; generation collapses for C >= 256).
        decoder_* : the pixel flow decoder (a small DiT over pixel patches, conditioned per token on `z`) and the
            default number of Euler steps it takes when decoding.
        decoder_prediction_type (`str`): what the decoder network outputs: `"sample"` (the clean patches; the
            velocity `(x_t - x) / t` follows, which works when the decoder is narrower than a pixel patch) or
            `"velocity"` (`eps - x` directly). Either way the decoder is trained with the velocity loss of Eq. 7.
        decoder_training_latents (`str`): what the decoder reads in training: `"sample"` (the reparameterised
            posterior sample, as a VAE trains) or `"mean"` (the posterior mean, which is what `decode` is given at
            inference; for refining the decoder once the encoder is frozen, where the sample's noise only blurs).
        decoder_noise_augmentation (`float`): during training, the decoder reads latents with extra Gaussian noise
            of std `u * decoder_noise_augmentation` per channel's batch std (`u` uniform in [0, 1] per image), as
            RAE decoders are trained: generated latents are never exactly on the encoder's manifold, and a decoder
            that only saw the encoder's own latents turns small errors into speckles. 0 turns it off.
        scaling_factor, shift_factor, latents_mean, latents_std: latent normalisation in the diffusers sense:
            generative models see `(z - shift_factor) * scaling_factor`, or `(z - mean) / std * scaling_factor`
            per channel when `latents_mean`/`latents_std` are set.
        image_mean, image_std: the encoder's input normalisation, applied to images given in [0, 1]
            (the model itself takes pixels in [-1, 1], as diffusers VAEs do).
        distillation_layers (`list[int]`): 1-based block depths (over the whole ViT) whose outputs the
            self-distillation loss aligns with the frozen teacher's same-depth features.
        kl_weight, cosine_weight, flow_weight, perceptual_weight, adversarial_weight, distillation_weight:
            the tokenizer loss weights of the paper (1e-4, 1.0, 1.0, 0.1, 0.075, 1.0).
        initializer_range (`float`): std of the truncated-normal initialisation of linear layers.

    Presets: `HydraTokConfig.from_preset("tiny")` (tests) and `HydraTokConfig.from_preset("hydra-tok-300m")`.
    """

    model_type = "hydra_tok"
    base_config_key = "vision_config"

    image_size: int = 448
    patch_size: int = 14
    num_channels: int = 3
    hidden_size: int = 1024
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    attention_dropout: float = 0.0
    use_cls_token: bool = True
    layerscale_init: float | None = 0.1
    num_gen_layers: int = 12
    num_sem_layers: int = 12
    latent_channels: int = 64
    decoder_hidden_size: int = 1024
    decoder_num_layers: int = 12
    decoder_num_attention_heads: int = 16
    decoder_intermediate_size: int = 4096
    decoder_num_inference_steps: int = 10
    decoder_prediction_type: str = "sample"
    decoder_training_latents: str = "sample"
    decoder_noise_augmentation: float = 0.0
    scaling_factor: float = 1.0
    shift_factor: float | None = None
    latents_mean: list[float] | None = None
    latents_std: list[float] | None = None
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    distillation_layers: list[int] | None = None
    kl_weight: float = 1e-4
    cosine_weight: float = 1.0
    flow_weight: float = 1.0
    perceptual_weight: float = 0.1
    adversarial_weight: float = 0.075
    distillation_weight: float = 1.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if self.image_mean is None:
            self.image_mean = [0.485, 0.456, 0.406]
        if self.image_std is None:
            self.image_std = [0.229, 0.224, 0.225]
        if self.distillation_layers is None:
            self.distillation_layers = list(range(1, self.num_layers + 1))
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Catch inconsistent shapes at construction time rather than as a matmul error deep inside a forward."""
        super().validate_architecture()
        sizes = ("image_size", "patch_size", "hidden_size", "num_attention_heads", "intermediate_size", "num_gen_layers",
                 "latent_channels", "decoder_hidden_size", "decoder_num_layers", "decoder_num_attention_heads",
                 "decoder_intermediate_size", "decoder_num_inference_steps")
        too_small = {name: getattr(self, name) for name in sizes if getattr(self, name) < 1}
        if too_small:
            raise ValueError(f"these sizes must be at least 1: {too_small}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})")
        if self.decoder_hidden_size % self.decoder_num_attention_heads:
            raise ValueError(
                f"decoder_hidden_size ({self.decoder_hidden_size}) must be divisible by "
                f"decoder_num_attention_heads ({self.decoder_num_attention_heads})"
            )
        if self.decoder_prediction_type not in ("sample", "velocity"):
            raise ValueError(f"decoder_prediction_type must be 'sample' or 'velocity', got {self.decoder_prediction_type!r}")
        if self.decoder_training_latents not in ("sample", "mean"):
            raise ValueError(f"decoder_training_latents must be 'sample' or 'mean', got {self.decoder_training_latents!r}")
        if self.decoder_noise_augmentation < 0:
            raise ValueError(f"decoder_noise_augmentation must be >= 0, got {self.decoder_noise_augmentation}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})")
        bad = [layer for layer in self.distillation_layers if not 1 <= layer <= self.num_layers]
        if bad:
            raise ValueError(f"distillation_layers must lie in 1..{self.num_layers} (the ViT depth), got {bad}")
        for name in ("latents_mean", "latents_std"):
            stats = getattr(self, name)
            if stats is not None and len(stats) != self.latent_channels:
                raise ValueError(f"{name} needs {self.latent_channels} values (latent_channels), got {len(stats)}")
        if (self.latents_mean is None) != (self.latents_std is None):
            raise ValueError("latents_mean and latents_std must be given together")

    @property
    def num_layers(self) -> int:
        return self.num_gen_layers + self.num_sem_layers

    @property
    def num_patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "HydraTokConfig":
        """Build a named configuration (see `HYDRA_TOK_PRESETS`), with any field overridden."""
        if name not in HYDRA_TOK_PRESETS:
            raise ValueError(f"Unknown HYDRA-TOK preset {name!r}; expected one of {sorted(HYDRA_TOK_PRESETS)}")
        return cls(**{**HYDRA_TOK_PRESETS[name], **overrides})
