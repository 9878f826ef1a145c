"""HYDRA-TOK: one ViT whose early half (Gen-ViT) feeds a narrow Gaussian bottleneck (the GSB) whose latent both
restores into the late half (Sem-ViT, semantic features for the LLM) and conditions a pixel flow decoder.

The model is a transformers `PreTrainedModel` (Auto classes, safetensors, attention interface) and also a drop-in
diffusers VAE: `encode` returns `AutoencoderKLOutput(latent_dist=...)`, `decode` returns `DecoderOutput(sample=...)`,
latents are laid out `[B, C, H/p, W/p]` and pixels live in [-1, 1].
"""


from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.embeddings import TimestepEmbedding, Timesteps, get_2d_sincos_pos_embed_from_grid
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.utils.accelerate_utils import apply_forward_hook
from diffusers.utils.torch_utils import randn_tensor
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from ... import flow_matching
from .configuration_hydra_tok import HydraTokConfig

__all__ = ["HydraTokModel", "HydraTokOutput", "HydraTokPreTrainedModel"]


@dataclass
class HydraTokOutput(ModelOutput):
    r"""
    Everything one encoder pass produces; training reads the regularisers and distillation states, understanding
    reads `semantic_features`, generation training reads the latent statistics.

    latent_mean, latent_logvar (`[B, C, h, w]`): the GSB's Gaussian (mu, rho); the latent grid is `H/p x W/p`.
    latents (`[B, C, h, w]`): a reparameterised sample `mu + eps * exp(rho / 2)` (the pixel decoder's condition).
    hidden_mid (`[B, N(+1), D]`): Gen-ViT output H_mid (with the CLS token first when the config uses one).
    hidden_bottleneck (`[B, N, D]`): H_bn = unproj(mu), the restored width that Sem-ViT reads.
    semantic_features (`[B, N, D]`): Sem-ViT output, what the unified model's projector reads.
    distillation_hidden_states (`tuple` of `[B, N, D]`): patch-token outputs of the blocks in
        `config.distillation_layers`, in that order.
    kl_loss, cosine_loss (scalars): the GSB regularisers of Eq. 3 and Eq. 4, averaged over tokens.
    loss (scalar, with `return_loss=True`): `flow_weight * loss_flow + kl_weight * kl_loss + cosine_weight *
        cosine_loss`, the terms of the tokenizer objective that need nothing outside the model.
    loss_flow (scalar): the pixel decoder's flow-matching loss (Eq. 7) at a random time.
    clean_estimate (`[B, 3, H, W]`): the decoder's one-step estimate of the clean image at that time, on which
        trainers add the perceptual and adversarial terms.
    """

    latent_mean: torch.Tensor | None = None
    latent_logvar: torch.Tensor | None = None
    latents: torch.Tensor | None = None
    hidden_mid: torch.Tensor | None = None
    hidden_bottleneck: torch.Tensor | None = None
    semantic_features: torch.Tensor | None = None
    distillation_hidden_states: tuple[torch.Tensor, ...] | None = None
    kl_loss: torch.Tensor | None = None
    cosine_loss: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    loss_flow: torch.Tensor | None = None
    clean_estimate: torch.Tensor | None = None


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
):
    attn_weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


def patchify(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """`[B, c, H, W]` -> `[B, (H/p)*(W/p), p*p*c]`, row-major over the patch grid."""
    batch, channels, height, width = pixels.shape
    h, w = height // patch_size, width // patch_size
    patches = pixels.reshape(batch, channels, h, patch_size, w, patch_size)
    return patches.permute(0, 2, 4, 3, 5, 1).reshape(batch, h * w, patch_size * patch_size * channels)


def unpatchify(patches: torch.Tensor, patch_size: int, grid: tuple[int, int], channels: int = 3) -> torch.Tensor:
    """Inverse of `patchify`."""
    batch = patches.shape[0]
    h, w = grid
    pixels = patches.reshape(batch, h, w, patch_size, patch_size, channels).permute(0, 5, 1, 3, 2, 4)
    return pixels.reshape(batch, channels, h * patch_size, w * patch_size)


def tokens_to_grid(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """`[B, h*w, C]` -> `[B, C, h, w]` (the VAE latent layout)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


def grid_to_tokens(latents: torch.Tensor) -> torch.Tensor:
    """`[B, C, h, w]` -> `[B, h*w, C]`."""
    return latents.flatten(2).transpose(1, 2)


def grid_positions(width: int, grid: tuple[int, int], device: torch.device | str | None = None) -> torch.Tensor:
    """Fixed 2-D sin-cos positions `[h*w, width]` of a token grid in raster order (half the features per axis)."""
    rows, cols = torch.meshgrid(
        torch.arange(grid[0], device=device, dtype=torch.float32),
        torch.arange(grid[1], device=device, dtype=torch.float32),
        indexing="ij",
    )
    return get_2d_sincos_pos_embed_from_grid(width, torch.stack([rows.flatten(), cols.flatten()]))


class HydraTokAttention(nn.Module):
    """Bidirectional multi-head self-attention dispatched through transformers' attention interface."""

    def __init__(self, config: HydraTokConfig, hidden_size: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=qkv_bias)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, length, _ = hidden_states.shape
        qkv = self.qkv(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, _ = attention_interface(
            self,
            query,
            key,
            value,
            None,
            dropout=self.config.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=False,
        )
        return self.proj(attn_output.reshape(batch, length, -1))


class HydraTokMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.act = ACT2FN[hidden_act]
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class HydraTokEncoderLayer(GradientCheckpointingLayer):
    """InternViT-style pre-norm block with LayerScale (`ls1`, `ls2`), so InternViT weights map one to one."""

    def __init__(self, config: HydraTokConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = HydraTokAttention(config, config.hidden_size, config.num_attention_heads, config.qkv_bias)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = HydraTokMLP(config.hidden_size, config.intermediate_size, config.hidden_act)
        use_layerscale = config.layerscale_init is not None
        self.ls1 = nn.Parameter(torch.ones(config.hidden_size)) if use_layerscale else None
        self.ls2 = nn.Parameter(torch.ones(config.hidden_size)) if use_layerscale else None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        update = self.attn(self.norm1(hidden_states))
        hidden_states = hidden_states + (update * self.ls1 if self.ls1 is not None else update)
        update = self.mlp(self.norm2(hidden_states))
        return hidden_states + (update * self.ls2 if self.ls2 is not None else update)


class HydraTokEncoder(nn.Module):
    """A run of ViT blocks; Gen-ViT and Sem-ViT are two of these."""

    def __init__(self, config: HydraTokConfig, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(HydraTokEncoderLayer(config) for _ in range(num_layers))

    def forward(
        self, hidden_states: torch.Tensor, record_after: frozenset[int] = frozenset()
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns the final states and the outputs of the (0-based, local) layers in `record_after`."""
        recorded = []
        for index, layer in enumerate(self.layers):
            hidden_states = layer(hidden_states)
            if index in record_after:
                recorded.append(hidden_states)
        return hidden_states, recorded


class HydraTokEmbeddings(nn.Module):
    """Patch embedding + (optional) CLS token + learned position embeddings that interpolate to any grid."""

    def __init__(self, config: HydraTokConfig):
        super().__init__()
        self.config = config
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        num_positions = config.num_patches_per_side**2 + int(config.use_cls_token)
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.use_cls_token else None
        self.position_embedding = nn.Parameter(torch.zeros(1, num_positions, config.hidden_size))

    def _patch_position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        side = self.config.num_patches_per_side
        patch_positions = self.position_embedding[:, int(self.config.use_cls_token) :]
        if grid == (side, side):
            return patch_positions
        table = patch_positions.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        table = F.interpolate(table.float(), size=grid, mode="bicubic", align_corners=False)
        return table.to(patch_positions.dtype).flatten(2).transpose(1, 2)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixel_values)
        grid = (patches.shape[2], patches.shape[3])
        embeddings = patches.flatten(2).transpose(1, 2) + self._patch_position_embedding(grid)
        if self.class_embedding is not None:
            cls = self.class_embedding.expand(embeddings.shape[0], -1, -1) + self.position_embedding[:, :1]
            embeddings = torch.cat([cls, embeddings], dim=1)
        return embeddings


class HydraTokBottleneck(nn.Module):
    """The Generation-Semantic Bottleneck: `Linear(D, 2C)` -> (mu, rho); `unproj = Linear(C, D)` restores width."""

    def __init__(self, config: HydraTokConfig):
        super().__init__()
        self.proj = nn.Linear(config.hidden_size, 2 * config.latent_channels)
        self.unproj = nn.Linear(config.latent_channels, config.hidden_size)

    def forward(self, hidden_mid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.proj(hidden_mid).chunk(2, dim=-1)
        return mean, logvar


class ZeroInitLinear(nn.Linear):
    """A linear layer initialised to zero (adaLN-Zero), so each decoder block starts as the identity.

    It is its own class because transformers initialises custom code module by module, on the module that owns
    the parameters.
    """


class HydraTokDecoderLayer(GradientCheckpointingLayer):
    """DiT block with adaLN-Zero whose modulation is computed per token from `t_emb + embed(z)`."""

    def __init__(self, config: HydraTokConfig):
        super().__init__()
        width = config.decoder_hidden_size
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = HydraTokAttention(config, width, config.decoder_num_attention_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = HydraTokMLP(width, config.decoder_intermediate_size, "gelu_pytorch_tanh")
        self.modulation = ZeroInitLinear(width, 6 * width)

    def forward(self, hidden_states: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(condition)).chunk(6, dim=-1)
        hidden_states = hidden_states + gate1 * self.attn(self.norm1(hidden_states) * (1 + scale1) + shift1)
        return hidden_states + gate2 * self.mlp(self.norm2(hidden_states) * (1 + scale2) + shift2)


class HydraTokDecoderFinalLayer(nn.Module):
    def __init__(self, config: HydraTokConfig):
        super().__init__()
        width = config.decoder_hidden_size
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.modulation = ZeroInitLinear(width, 2 * width)
        self.linear = ZeroInitLinear(width, config.patch_size * config.patch_size * config.num_channels)

    def forward(self, hidden_states: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(F.silu(condition)).chunk(2, dim=-1)
        return self.linear(self.norm(hidden_states) * (1 + scale) + shift)


class HydraTokPixelDecoder(nn.Module):
    """Predicts the rectified-flow velocity of pixel patches given the noisy patches, the time and the latent z."""

    def __init__(self, config: HydraTokConfig):
        super().__init__()
        width = config.decoder_hidden_size
        self.patch_embed = nn.Linear(config.patch_size * config.patch_size * config.num_channels, width)
        self.latent_embed = nn.Linear(config.latent_channels, width)
        self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(256, width)
        self.layers = nn.ModuleList(HydraTokDecoderLayer(config) for _ in range(config.decoder_num_layers))
        self.final_layer = HydraTokDecoderFinalLayer(config)

    def forward(
        self, noisy_patches: torch.Tensor, timesteps: torch.Tensor, latent_tokens: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        positions = grid_positions(self.patch_embed.out_features, grid, noisy_patches.device)
        hidden_states = self.patch_embed(noisy_patches) + positions.to(noisy_patches.dtype)
        # The time embedding sees t in [0, 1000] like diffusers' DiTs.
        time_emb = self.time_embed(self.time_proj(timesteps * 1000).to(noisy_patches.dtype))
        condition = time_emb[:, None, :] + self.latent_embed(latent_tokens)
        for layer in self.layers:
            hidden_states = layer(hidden_states, condition)
        return self.final_layer(hidden_states, condition)


class HydraTokPreTrainedModel(PreTrainedModel):
    config: HydraTokConfig
    base_model_prefix = "hydra_tok"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["HydraTokEncoderLayer", "HydraTokDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        config = self.config
        if isinstance(module, HydraTokEmbeddings):
            init.trunc_normal_(module.position_embedding, std=config.initializer_range)
            if module.class_embedding is not None:
                init.trunc_normal_(module.class_embedding, std=config.initializer_range)
        elif isinstance(module, HydraTokEncoderLayer) and module.ls1 is not None:
            init.constant_(module.ls1, config.layerscale_init)
            init.constant_(module.ls2, config.layerscale_init)
        elif isinstance(module, ZeroInitLinear):
            init.zeros_(module.weight)
            init.zeros_(module.bias)


class HydraTokModel(HydraTokPreTrainedModel):
    """HYDRA-TOK. See the module docstring; `forward` is the training/understanding pass, `encode`/`decode` the VAE."""

    def __init__(self, config: HydraTokConfig):
        super().__init__(config)
        self.embeddings = HydraTokEmbeddings(config)
        self.gen_vit = HydraTokEncoder(config, config.num_gen_layers)
        self.bottleneck = HydraTokBottleneck(config)
        self.sem_vit = HydraTokEncoder(config, config.num_sem_layers)
        self.decoder = HydraTokPixelDecoder(config)
        self.post_init()

    # ----------------------------------------------------------------------------------------------- validation
    def _check_pixel_values(self, pixel_values: torch.Tensor) -> torch.Tensor:
        config = self.config
        expected = (
            f"[batch, {config.num_channels}, H, W] with H and W multiples of the patch size {config.patch_size} "
            f"(e.g. [batch, {config.num_channels}, {config.image_size}, {config.image_size}])"
        )
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
            raise ValueError(f"pixel_values must be a 4-D tensor {expected}; got {shape}")
        _, channels, height, width = pixel_values.shape
        if channels != config.num_channels:
            raise ValueError(f"pixel_values must have {config.num_channels} channels: {expected}; got {tuple(pixel_values.shape)}")
        if height % config.patch_size or width % config.patch_size or height == 0 or width == 0:
            raise ValueError(f"pixel_values must be {expected}; got {tuple(pixel_values.shape)}")
        if not pixel_values.is_floating_point():
            raise ValueError(
                f"pixel_values must be a floating-point tensor in [-1, 1], got dtype {pixel_values.dtype} "
                "(convert uint8 images with HydraImageProcessor or `x / 127.5 - 1`)"
            )
        return pixel_values.to(self.dtype)

    def _check_latents(self, latents: torch.Tensor) -> torch.Tensor:
        channels = self.config.latent_channels
        expected = f"[batch, {channels}, h, w] (latent_channels={channels}, one position per {self.config.patch_size}px patch)"
        if not isinstance(latents, torch.Tensor) or latents.ndim != 4 or latents.shape[1] != channels:
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"latents must have shape {expected}; got {shape}")
        if not latents.is_floating_point():
            raise ValueError(f"latents must be a floating-point tensor, got dtype {latents.dtype}")
        return latents.to(self.dtype)

    # ---------------------------------------------------------------------------------------------- encoder side
    def _normalize_for_encoder(self, pixel_values: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.config.image_mean, device=pixel_values.device, dtype=pixel_values.dtype)
        std = torch.tensor(self.config.image_std, device=pixel_values.device, dtype=pixel_values.dtype)
        return ((pixel_values + 1) / 2 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)

    def _split_distillation_layers(self) -> tuple[frozenset[int], frozenset[int]]:
        """Global 1-based depths -> 0-based indices inside Gen-ViT and Sem-ViT."""
        num_gen = self.config.num_gen_layers
        layers = self.config.distillation_layers
        return (
            frozenset(depth - 1 for depth in layers if depth <= num_gen),
            frozenset(depth - 1 - num_gen for depth in layers if depth > num_gen),
        )

    def forward(
        self,
        pixel_values: torch.Tensor,
        generator: torch.Generator | None = None,
        output_distillation_states: bool = False,
        bypass_bottleneck: bool = False,
        return_loss: bool = False,
        output_semantic_features: bool = True,
        return_dict: bool = True,
        **kwargs,
    ) -> HydraTokOutput | tuple:
        r"""
        One pass through Gen-ViT, the GSB and Sem-ViT.

        generator: seeds the reparameterised latent sample (and, with `return_loss`, the decoder's noise and time).
        output_distillation_states: also return the outputs of `config.distillation_layers`.
        bypass_bottleneck: run the blocks as the plain pretrained ViT (Sem-ViT reads H_mid, CLS included): the
            self-distillation teacher and the converters' equivalence checks use this.
        return_loss: also run the pixel decoder at a random time (logit-normal) and return the tokenizer loss.
            It lives in `forward` so that distributed wrappers see every trainable parameter used in one call.
        output_semantic_features: `False` skips Sem-ViT (`semantic_features` is then `None`): no loss term needs it
            once the encoder is frozen, so decoder refinement (stage 2) saves its cost.
        """
        pixel_values = self._check_pixel_values(pixel_values)
        if output_distillation_states and not output_semantic_features:
            raise ValueError("output_distillation_states needs Sem-ViT's states: keep output_semantic_features=True")
        grid = (pixel_values.shape[2] // self.config.patch_size, pixel_values.shape[3] // self.config.patch_size)
        has_cls = int(self.config.use_cls_token)
        gen_record, sem_record = self._split_distillation_layers() if output_distillation_states else (frozenset(),) * 2

        hidden_states = self.embeddings(self._normalize_for_encoder(pixel_values))
        hidden_mid, gen_states = self.gen_vit(hidden_states, gen_record)
        patch_mid = hidden_mid[:, has_cls:]

        if bypass_bottleneck:
            semantic, sem_states = self.sem_vit(hidden_mid, sem_record)
            distill = [state[:, has_cls:] for state in gen_states + sem_states]
            output = HydraTokOutput(
                hidden_mid=hidden_mid,
                semantic_features=semantic,
                distillation_hidden_states=tuple(distill) if output_distillation_states else None,
            )
            return output if return_dict else output.to_tuple()

        mean, logvar = self.bottleneck(patch_mid)
        noise = randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        latent_tokens = mean + noise * torch.exp(0.5 * logvar)
        hidden_bottleneck = self.bottleneck.unproj(mean)
        semantic, sem_states = self.sem_vit(hidden_bottleneck, sem_record) if output_semantic_features else (None, [])

        kl_loss = (-0.5 * (1 + logvar - mean.pow(2) - logvar.exp()).sum(dim=-1)).mean()
        cosine_loss = (1 - F.cosine_similarity(patch_mid, hidden_bottleneck, dim=-1)).mean()
        distill = [state[:, has_cls:] for state in gen_states] + sem_states
        latents = tokens_to_grid(latent_tokens, grid)
        loss = loss_flow = clean_estimate = None
        if return_loss:
            config = self.config
            decoder_latents = latents if config.decoder_training_latents == "sample" else tokens_to_grid(mean, grid)
            loss_flow, clean_estimate = self._decoder_flow_loss(pixel_values, decoder_latents, generator)
            loss = config.flow_weight * loss_flow + config.kl_weight * kl_loss + config.cosine_weight * cosine_loss
        output = HydraTokOutput(
            latent_mean=tokens_to_grid(mean, grid),
            latent_logvar=tokens_to_grid(logvar, grid),
            latents=latents,
            hidden_mid=hidden_mid,
            hidden_bottleneck=hidden_bottleneck,
            semantic_features=semantic,
            distillation_hidden_states=tuple(distill) if output_distillation_states else None,
            kl_loss=kl_loss,
            cosine_loss=cosine_loss,
            loss=loss,
            loss_flow=loss_flow,
            clean_estimate=clean_estimate,
        )
        return output if return_dict else output.to_tuple()

    @apply_forward_hook
    def encode(self, pixel_values: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        """Pixels in [-1, 1] -> the GSB posterior over latents `[B, C, H/p, W/p]` (diffusers' VAE contract)."""
        pixel_values = self._check_pixel_values(pixel_values)
        has_cls = int(self.config.use_cls_token)
        grid = (pixel_values.shape[2] // self.config.patch_size, pixel_values.shape[3] // self.config.patch_size)
        hidden_mid, _ = self.gen_vit(self.embeddings(self._normalize_for_encoder(pixel_values)))
        mean, logvar = self.bottleneck(hidden_mid[:, has_cls:])
        posterior = DiagonalGaussianDistribution(torch.cat([tokens_to_grid(mean, grid), tokens_to_grid(logvar, grid)], dim=1))
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def semantic_features_from_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """unproj + Sem-ViT on (possibly noisy) latents `[B, C, h, w]` -> `[B, h*w, D]`: the generation path."""
        latents = self._check_latents(latents)
        semantic, _ = self.sem_vit(self.bottleneck.unproj(grid_to_tokens(latents)))
        return semantic

    # ---------------------------------------------------------------------------------------------- decoder side
    def decoder_velocity(self, noisy_pixels: torch.Tensor, timesteps: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """The pixel decoder's predicted velocity `[B, 3, H, W]` at `noisy_pixels` (training calls this)."""
        patch = self.config.patch_size
        grid = (latents.shape[2], latents.shape[3])
        if noisy_pixels.shape[2:] != (grid[0] * patch, grid[1] * patch):
            raise ValueError(
                f"noisy_pixels must be [batch, {self.config.num_channels}, {grid[0] * patch}, {grid[1] * patch}] "
                f"to match latents of grid {grid}; got {tuple(noisy_pixels.shape)}"
            )
        prediction = self.decoder(patchify(noisy_pixels, patch), timesteps, grid_to_tokens(latents), grid)
        prediction = unpatchify(prediction, patch, grid, self.config.num_channels)
        if self.config.decoder_prediction_type == "velocity":
            return prediction
        # x-prediction: the network outputs the clean image, a low-dimensional target that a decoder narrower
        # than a pixel patch can represent (unlike the noise inside the velocity); the velocity follows from it.
        return flow_matching.velocity_from_clean(noisy_pixels, prediction, timesteps)

    def _decoder_flow_loss(
        self, pixel_values: torch.Tensor, latents: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 7 at logit-normal times, and the one-step clean estimate for the perceptual/GAN terms."""
        augmentation = self.config.decoder_noise_augmentation
        if augmentation > 0:
            scale = augmentation * torch.rand(latents.shape[0], 1, 1, 1, generator=generator, device=latents.device)
            channel_std = latents.detach().std(dim=(0, 2, 3), keepdim=True)
            latent_noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
            latents = latents + scale.to(latents.dtype) * channel_std * latent_noise
        noise = randn_tensor(pixel_values.shape, generator=generator, device=pixel_values.device, dtype=pixel_values.dtype)
        t = flow_matching.sample_timesteps(pixel_values.shape[0], generator=generator, device=pixel_values.device)
        t = t.to(pixel_values.dtype)
        noisy = flow_matching.interpolate(pixel_values, noise, t)
        velocity = self.decoder_velocity(noisy, t, latents)
        loss = F.mse_loss(velocity.float(), flow_matching.velocity_target(pixel_values, noise).float())
        return loss, flow_matching.clean_estimate(noisy, velocity, t)

    @apply_forward_hook
    def decode(
        self,
        latents: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int | None = None,
        return_dict: bool = True,
    ) -> DecoderOutput | tuple:
        """Latents `[B, C, h, w]` -> pixels `[B, 3, h*p, w*p]` in [-1, 1] by Euler-integrating the pixel flow."""
        latents = self._check_latents(latents)
        steps = num_inference_steps or self.config.decoder_num_inference_steps
        patch = self.config.patch_size
        shape = (latents.shape[0], self.config.num_channels, latents.shape[2] * patch, latents.shape[3] * patch)
        sample = randn_tensor(shape, generator=generator, device=latents.device, dtype=latents.dtype)
        times = flow_matching.sampling_timesteps(steps, device=latents.device)
        for t, t_next in zip(times[:-1].tolist(), times[1:].tolist()):
            timestep = torch.full((shape[0],), t, device=latents.device, dtype=latents.dtype)
            sample = flow_matching.euler_step(sample, self.decoder_velocity(sample, timestep, latents), t, t_next)
        sample = sample.clamp(-1, 1)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    # ------------------------------------------------------------------------------------ latent normalisation
    def _latent_stats(self, latents: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        config = self.config
        if config.latents_mean is not None:
            mean = torch.tensor(config.latents_mean, device=latents.device, dtype=latents.dtype).view(1, -1, 1, 1)
            std = torch.tensor(config.latents_std, device=latents.device, dtype=latents.dtype).view(1, -1, 1, 1)
            return mean, std
        return (config.shift_factor or 0.0), 1.0

    def normalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw GSB latents -> the space generative models are trained in (config's shift/mean/std and scale)."""
        mean, std = self._latent_stats(latents)
        return (latents - mean) / std * self.config.scaling_factor

    def denormalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of `normalize_latents`; apply before `decode` / `semantic_features_from_latents`."""
        mean, std = self._latent_stats(latents)
        return latents / self.config.scaling_factor * std + mean
