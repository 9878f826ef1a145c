"""HYDRA, the unified model: a stock decoder LLM reads HYDRA-TOK's semantic tokens at image placeholders, answers
with its LM head and, at the tokens of an image being generated, predicts the GSB latent's flow velocity with a
flow head.

Every image in a batch goes through one path, `latent -> (noise) -> unproj -> Sem-ViT -> projector`: for an image
to understand the latent is the clean GSB mean; for an image to generate it is the noised latent, and the time
embedding is added to its tokens. Text attends causally; the tokens of one image attend to each other both ways.
"""

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn
from transformers import AutoModel, Cache, DynamicCache, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from ... import flow_matching
from ..hydra_tok.modeling_hydra_tok import HydraTokModel, ZeroInitLinear, grid_positions, grid_to_tokens, tokens_to_grid
from .configuration_hydra import HydraConfig

__all__ = [
    "HydraCausalLMOutputWithPast",
    "HydraForConditionalGeneration",
    "HydraModel",
    "HydraModelOutputWithPast",
    "HydraPreTrainedModel",
    "HydraPromptCache",
]


@dataclass
class HydraModelOutputWithPast(BaseModelOutputWithPast):
    r"""
    generation_token_mask (`[B, L]` bool): positions of the image tokens of the images being generated.
    flow_time_embeds (`[I_gen, D]`): their time embeddings (the flow head's adaLN condition).
    flow_target (`[I_gen, N, C]`): the velocity `eps - z` the flow head should predict there.
    flow_noisy_latents (`[I_gen, N, C]`): their normalised noisy latents `z_t` (the flow head reads them when
        `config.flow_head_latent_input`).
    repa_target (`[I_gen, N, D_vision]`): the clean images' Sem-ViT features, when `config.repa_weight > 0`.
    """

    generation_token_mask: torch.Tensor | None = None
    flow_time_embeds: torch.Tensor | None = None
    flow_target: torch.Tensor | None = None
    flow_noisy_latents: torch.Tensor | None = None
    repa_target: torch.Tensor | None = None


@dataclass
class HydraCausalLMOutputWithPast(CausalLMOutputWithPast):
    r"""
    loss: `ntp_weight * loss_ntp + flow_weight * loss_flow (+ repa_weight * loss_repa + prompt_contrast_weight *
        loss_prompt_contrast)` over the parts present.
    loss_ntp, loss_flow, loss_repa, loss_prompt_contrast: the unweighted next-token, flow-matching,
        representation-alignment and prompt-contrast losses (None when the batch has no such part).
    flow_prediction (`[I_gen, N, C]`): the flow head's velocity at the generated images' tokens.
    """

    loss_ntp: torch.Tensor | None = None
    loss_flow: torch.Tensor | None = None
    loss_repa: torch.Tensor | None = None
    loss_prompt_contrast: torch.Tensor | None = None
    flow_prediction: torch.Tensor | None = None


@dataclass
class HydraPromptCache:
    """The LLM's KV cache for a batch of (left-padded) generation prompts, reused at every sampling step."""

    cache: Cache
    attention_mask: torch.Tensor
    next_position_ids: torch.Tensor

    @property
    def length(self) -> int:
        return self.attention_mask.shape[1]


@contextmanager
def identity_attention(language_model: nn.Module, layers: Sequence[int], rows: torch.Tensor | None):
    """Perturbed-attention guidance's perturbation (PAG, Ahn et al. 2024): in the LLM decoder `layers`, the tokens of
    the batch rows `rows` (`[B]` bool) attend to themselves only, so a token's attention output is its own value
    projection. Other rows are untouched; the hooks go when the context ends. A no-op without rows or layers.

    The attention still runs and its output is replaced, which keeps the layer's KV cache as usual and works for any
    LLaMA-style attention (`v_proj`, `o_proj`, grouped key-value heads) whatever attention implementation it uses.
    """
    if rows is None or not layers or not bool(rows.any()):
        yield
        return
    decoder_layers = language_model.layers
    unknown = [index for index in layers if not -len(decoder_layers) <= index < len(decoder_layers)]
    if unknown:
        raise ValueError(f"the LLM has {len(decoder_layers)} decoder layers; cannot perturb layers {unknown}")

    def replace_rows(attention, args, kwargs, output):
        hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        values = attention.v_proj(hidden_states[rows]).unflatten(-1, (-1, attention.head_dim))
        values = values.repeat_interleave(attention.num_key_value_groups, dim=-2).flatten(-2)
        attention_output = output[0].clone()
        attention_output[rows] = attention.o_proj(values).to(attention_output.dtype)
        return (attention_output, *output[1:])

    handles = [decoder_layers[index].self_attn.register_forward_hook(replace_rows, with_kwargs=True) for index in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class HydraProjector(nn.Module):
    """Two-layer MLP from the vision width to the LLM width."""

    def __init__(self, config: HydraConfig):
        super().__init__()
        self.linear_1 = nn.Linear(config.vision_config.hidden_size, config.text_config.hidden_size)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(config.text_config.hidden_size, config.text_config.hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(features)))


class HydraFlowHeadBlock(nn.Module):
    """Residual MLP block with adaLN-Zero modulation from the time embedding."""

    def __init__(self, width: int, condition_width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.modulation = ZeroInitLinear(condition_width, 3 * width)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, hidden_states: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(F.silu(condition)).chunk(3, dim=-1)
        return hidden_states + gate * self.mlp(self.norm(hidden_states) * (1 + scale) + shift)


class HydraFlowHead(nn.Module):
    """`v = FlowHead(AdaLN(h_llm, t_emb))`: LLM hidden states at image positions -> latent velocity (C channels).

    With `config.flow_head_latent_input` the head also reads each token's noisy latent `z_t`: the velocity
    `eps - z = (z_t - z) / t` carries `z_t` exactly, which otherwise has to survive Sem-ViT (trained on clean latents)
    and the LLM. Its projection starts at zero, so switching it on for a trained model changes nothing until it trains.
    """

    def __init__(self, config: HydraConfig):
        super().__init__()
        text_width, width = config.text_config.hidden_size, config.flow_head_hidden_size
        self.input_proj = nn.Linear(text_width, width)
        latent_channels = config.vision_config.latent_channels
        self.latent_proj = ZeroInitLinear(latent_channels, width) if config.flow_head_latent_input else None
        self.blocks = nn.ModuleList(HydraFlowHeadBlock(width, text_width) for _ in range(config.flow_head_num_layers))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_modulation = ZeroInitLinear(text_width, 2 * width)
        self.output_proj = nn.Linear(width, latent_channels)

    def forward(
        self, hidden_states: torch.Tensor, time_embeds: torch.Tensor, noisy_latents: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`hidden_states [I, N, D_llm]`, `time_embeds [I, D_llm]` and, for a head with the skip, the normalised
        `noisy_latents [I, N, C]` -> velocity `[I, N, C]`."""
        condition = time_embeds[:, None, :]
        hidden_states = self.input_proj(hidden_states)
        if self.latent_proj is not None:
            if noisy_latents is None:
                raise ValueError("This flow head also reads the noisy latents (config.flow_head_latent_input): pass them")
            hidden_states = hidden_states + self.latent_proj(noisy_latents.to(hidden_states.dtype))
        for block in self.blocks:
            hidden_states = block(hidden_states, condition)
        shift, scale = self.final_modulation(F.silu(condition)).chunk(2, dim=-1)
        return self.output_proj(self.final_norm(hidden_states) * (1 + scale) + shift)


class HydraPreTrainedModel(PreTrainedModel):
    config: HydraConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    output_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["HydraTokEncoderLayer", "HydraTokDecoderLayer"]
    _skip_keys_device_placement = ["cache"]
    _supports_sdpa = True
    _supports_flash_attn = True

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, ZeroInitLinear):
            init.zeros_(module.weight)
            init.zeros_(module.bias)


def check_contrast_pairs(pairs: torch.Tensor, num_generated: int) -> torch.Tensor:
    """`[P, 2]` indices among the generated images (true prompt, contradicting prompt), each image in one pair at most."""
    if pairs.ndim != 2 or pairs.shape[1] != 2 or pairs.is_floating_point():
        raise ValueError(f"prompt_contrast_pairs must be integer indices of shape [P, 2], got {pairs.dtype} {tuple(pairs.shape)}")
    flat = pairs.flatten().tolist()
    if any(not 0 <= index < num_generated for index in flat) or len(set(flat)) != len(flat):
        raise ValueError(
            f"prompt_contrast_pairs must index {num_generated} generated image(s), each at most once, got {pairs.tolist()}"
        )
    return pairs


def image_block_ids(image_token_mask: torch.Tensor) -> torch.Tensor:
    """Number each contiguous run of image tokens (0, 1, ...) and mark text -1: the block-causal mask's groups."""
    starts = image_token_mask & ~F.pad(image_token_mask[:, :-1], (1, 0), value=False)
    run_index = torch.cumsum(starts.long(), dim=1) - 1
    return torch.where(image_token_mask, run_index, torch.full_like(run_index, -1))


class HydraModel(HydraPreTrainedModel):
    """HYDRA-TOK + projector + time embedding + the LLM backbone; returns the LLM's hidden states."""

    def __init__(self, config: HydraConfig):
        super().__init__(config)
        self.vision_model = HydraTokModel._from_config(config.vision_config)
        self.projector = HydraProjector(config)
        self.time_proj = Timesteps(config.time_embedding_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(config.time_embedding_dim, config.text_config.hidden_size)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    # ------------------------------------------------------------------------------------------- visual tokens
    def time_embeds(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Flow times in [0, 1] -> LLM-width embeddings (added to noisy image tokens; the flow head's condition)."""
        dtype = self.projector.linear_1.weight.dtype
        return self.time_embedding(self.time_proj(timesteps.float() * 1000).to(dtype))

    def image_latents(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Clean GSB means `[I, C, h, w]` (raw, not normalised) of pixels in [-1, 1]."""
        return self.vision_model.encode(pixel_values).latent_dist.mean

    def visual_tokens(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw (possibly noisy) latents `[I, C, h, w]` -> LLM-width tokens `[I, h*w, D]` (without time embedding),
        plus their 2-D positions when `config.image_position_scale` is set."""
        if self.config.llm_vision_input == "semantic":
            features = self.vision_model.semantic_features_from_latents(latents)
        else:
            features = self.vision_model.bottleneck.unproj(grid_to_tokens(self.vision_model._check_latents(latents)))
        tokens = self.projector(features)
        if self.config.image_position_scale > 0:
            positions = grid_positions(tokens.shape[-1], tuple(latents.shape[2:]), tokens.device)
            tokens = tokens + self.config.image_position_scale * positions.to(tokens.dtype)
        return tokens

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Understanding path: pixels -> projected semantic tokens `[I, N, D]`."""
        return self.visual_tokens(self.image_latents(pixel_values))

    def get_placeholder_mask(self, input_ids: torch.Tensor, num_images: int, tokens_per_image: int) -> torch.Tensor:
        image_token_mask = input_ids == self.config.image_token_id
        found = int(image_token_mask.sum())
        if found != num_images * tokens_per_image:
            raise ValueError(
                f"The text has {found} image tokens but {num_images} image(s) of {tokens_per_image} tokens each need "
                f"{num_images * tokens_per_image}: each image placeholder must be expanded to exactly that many "
                f"image tokens (HydraProcessor does this)."
            )
        return image_token_mask

    def _prepare_images(
        self,
        pixel_values: torch.Tensor | None,
        image_latents: torch.Tensor | None,
        image_generation_mask: torch.Tensor | None,
        timesteps: torch.Tensor | None,
        noise: torch.Tensor | None,
        prompt_contrast_pairs: torch.Tensor | None = None,
    ):
        """Visual tokens of every image plus, for the images being generated, time embeddings, flow targets, their
        noisy latents as tokens and (with REPA on) the clean images' Sem-ViT features. The two images of a
        prompt-contrast pair share the first's noise and time (sampled uniform in [`prompt_contrast_min_time`, 1]
        unless `timesteps` are given)."""
        if image_latents is None:
            image_latents = self.image_latents(pixel_values)
        num_images = image_latents.shape[0]
        if image_generation_mask is None:
            image_generation_mask = torch.zeros(num_images, dtype=torch.bool, device=image_latents.device)
        if image_generation_mask.shape != (num_images,):
            raise ValueError(f"image_generation_mask must have shape [{num_images}] (one flag per image), got {tuple(image_generation_mask.shape)}")
        num_generated = int(image_generation_mask.sum())
        if num_generated == 0:
            return self.visual_tokens(image_latents), None, None, None, None

        vision = self.vision_model
        clean = vision.normalize_latents(image_latents[image_generation_mask].detach())
        if noise is None:
            noise = torch.randn_like(clean)
        given_timesteps = timesteps
        if timesteps is None:
            config = self.config
            timesteps = flow_matching.sample_timesteps(
                num_generated,
                logit_mean=config.timestep_logit_mean,
                logit_std=config.timestep_logit_std,
                uniform_fraction=config.timestep_uniform_fraction,
                device=clean.device,
            )
        if noise.shape != clean.shape or timesteps.shape != (num_generated,):
            raise ValueError(
                f"for {num_generated} generated image(s) expected noise {tuple(clean.shape)} and timesteps "
                f"[{num_generated}], got {tuple(noise.shape)} and {tuple(timesteps.shape)}"
            )
        if prompt_contrast_pairs is not None:
            first, second = check_contrast_pairs(prompt_contrast_pairs, num_generated).unbind(1)
            noise, timesteps = noise.clone(), timesteps.clone()
            if given_timesteps is None:
                low = self.config.prompt_contrast_min_time
                timesteps[first] = low + (1 - low) * torch.rand(len(first), device=timesteps.device)
            noise[second], timesteps[second] = noise[first], timesteps[first]
        noisy = flow_matching.interpolate(clean, noise.to(clean.dtype), timesteps)
        latents = image_latents.clone()
        latents[image_generation_mask] = vision.denormalize_latents(noisy)
        time_embeds = self.time_embeds(timesteps)
        time_per_image = time_embeds.new_zeros(num_images, time_embeds.shape[-1])
        time_per_image[image_generation_mask] = time_embeds
        tokens = self.visual_tokens(latents) + time_per_image[:, None]
        flow_target = grid_to_tokens(flow_matching.velocity_target(clean, noise.to(clean.dtype)))
        repa_target = None
        if self.config.repa_weight > 0:
            with torch.no_grad():
                repa_target = vision.semantic_features_from_latents(image_latents[image_generation_mask])
        return tokens, time_embeds, flow_target, grid_to_tokens(noisy), repa_target

    def block_causal_mask(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cache: Cache | None,
        position_ids: torch.Tensor | None,
        image_token_mask: torch.Tensor,
    ):
        """Causal over text, bidirectional inside each image, in the LLM's own attention-backend format."""
        block_ids = image_block_ids(image_token_mask)
        past = cache.get_seq_length() if cache is not None else 0
        if past:
            block_ids = F.pad(block_ids, (past, 0), value=-1)
        if attention_mask is None:
            attention_mask = torch.ones(block_ids.shape, dtype=torch.long, device=inputs_embeds.device)
        return create_causal_mask(
            config=self.language_model.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
            block_sequence_ids=block_ids,
        )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        image_latents: torch.Tensor | None = None,
        image_generation_mask: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        prompt_contrast_pairs: torch.Tensor | None = None,
        **kwargs,
    ) -> HydraModelOutputWithPast:
        r"""
        pixel_values (`[I, 3, H, W]` in [-1, 1]): one per image placeholder, in reading order (row by row).
        image_latents (`[I, C, h, w]`): raw clean GSB means, instead of `pixel_values` (e.g. precomputed).
        image_generation_mask (`[I]` bool): which images are generation targets (noised, flow loss); the rest are
            read for understanding. Default: none.
        timesteps (`[I_gen]`), noise (`[I_gen, C, h, w]`): for the generated images; sampled when not given.
        prompt_contrast_pairs (`[P, 2]` long): pairs of generated images, the same image under its true prompt and
            under a contradicting one (see `HydraConfig.prompt_contrast_weight`); they share noise and time.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        has_images = pixel_values is not None or image_latents is not None
        time_embeds = flow_target = noisy_latents = repa_target = generation_token_mask = None

        if has_images:
            if input_ids is None:
                raise ValueError("input_ids are needed to place images (their image tokens mark where)")
            visual, time_embeds, flow_target, noisy_latents, repa_target = self._prepare_images(
                pixel_values, image_latents, image_generation_mask, timesteps, noise, prompt_contrast_pairs
            )
            image_token_mask = self.get_placeholder_mask(input_ids, visual.shape[0], visual.shape[1])
            inputs_embeds = inputs_embeds.masked_scatter(image_token_mask[..., None], visual.to(inputs_embeds.dtype))
            if time_embeds is not None:
                per_image = image_generation_mask[:, None].expand(-1, visual.shape[1]).reshape(-1)
                generation_token_mask = torch.zeros_like(image_token_mask)
                generation_token_mask[image_token_mask] = per_image.to(generation_token_mask.device)
        else:
            # An image token sampled while decoding text is just a token; one in a prompt lacks its image.
            prefill = cache is None or cache.get_seq_length() == 0
            if prefill and input_ids is not None and (input_ids == self.config.image_token_id).any():
                raise ValueError("input_ids contain image tokens but neither pixel_values nor image_latents were given")
            image_token_mask = None

        if use_cache and cache is None:
            cache = DynamicCache(config=self.language_model.config)
        if image_token_mask is not None and image_token_mask.any():
            attention_mask = self.block_causal_mask(inputs_embeds, attention_mask, cache, position_ids, image_token_mask)

        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )
        return HydraModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            generation_token_mask=generation_token_mask,
            flow_time_embeds=time_embeds,
            flow_target=flow_target,
            flow_noisy_latents=noisy_latents,
            repa_target=repa_target,
        )


class HydraForConditionalGeneration(HydraPreTrainedModel, GenerationMixin):
    """HYDRA with its two heads. `generate()` answers about images; `flow_velocity` drives text-to-image sampling."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: HydraConfig):
        super().__init__(config)
        self.model = HydraModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.flow_head = HydraFlowHead(config)
        if config.repa_weight > 0:
            # Training-only: maps LLM hidden states to Sem-ViT width for the alignment loss; sampling never uses it.
            text_width = config.text_config.hidden_size
            self.repa_head = nn.Sequential(
                nn.Linear(text_width, text_width), nn.SiLU(), nn.Linear(text_width, config.vision_config.hidden_size)
            )
        self.post_init()
        # The image placeholder only ever marks where visual tokens go: text generation must not produce it.
        self.generation_config.suppress_tokens = [config.image_token_id]
        # A generation config marked as derived from the model config is reloaded without its extra attributes,
        # which would drop the text-to-image defaults (`text_to_image`, read by `HydraPipeline.guidance_settings`).
        self.generation_config._from_model_config = False
        # Generation wants the KV cache whatever the model config says: `Trainer` writes its
        # `TrainingArguments.use_cache` (False) into the configs it trains, and a derived generation config inherits it.
        self.generation_config.use_cache = True

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    @property
    def vision_model(self) -> HydraTokModel:
        return self.model.vision_model

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        image_latents: torch.Tensor | None = None,
        image_generation_mask: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        prompt_contrast_pairs: torch.Tensor | None = None,
        **kwargs,
    ) -> HydraCausalLMOutputWithPast:
        r"""
        labels (`[B, L]`): next-token targets (-100 ignored; image tokens are always ignored).
        Other image arguments: see `HydraModel.forward`. A batch can mix understanding rows (labels on the answer)
        and generation rows (their image flagged in `image_generation_mask`); both losses come from one forward.
        The images of `prompt_contrast_pairs` feed only `loss_prompt_contrast`, not `loss_flow`.
        """
        if self.config.repa_weight > 0 and image_generation_mask is not None and image_generation_mask.any():
            kwargs["output_hidden_states"] = True
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            image_latents=image_latents,
            image_generation_mask=image_generation_mask,
            timesteps=timesteps,
            noise=noise,
            prompt_contrast_pairs=prompt_contrast_pairs,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])

        loss_ntp = loss_flow = loss_repa = loss_prompt_contrast = flow_prediction = None
        if labels is not None:
            if input_ids is not None:
                labels = labels.masked_fill(input_ids == self.config.image_token_id, -100)
            if (labels[:, 1:] != -100).any():
                loss_ntp = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs)
        if outputs.flow_target is not None:
            generated = hidden_states[outputs.generation_token_mask].view(*outputs.flow_target.shape[:2], -1)
            flow_prediction = self.flow_head(generated, outputs.flow_time_embeds, outputs.flow_noisy_latents)
            errors = (flow_prediction.float() - outputs.flow_target.float()).square().mean(dim=(1, 2))
            plain = torch.ones_like(errors, dtype=torch.bool)
            if prompt_contrast_pairs is not None and len(prompt_contrast_pairs):
                plain[prompt_contrast_pairs.flatten()] = False
                true_prompt, contradicting = errors[prompt_contrast_pairs[:, 0]], errors[prompt_contrast_pairs[:, 1]]
                margin = self.config.prompt_contrast_scale * (true_prompt.log() - contradicting.log())
                loss_prompt_contrast = F.softplus(margin).mean()
            if plain.any():
                loss_flow = errors[plain].mean()
        if outputs.repa_target is not None:
            layer_output = outputs.hidden_states[self.config.repa_layer]
            aligned = self.repa_head(layer_output[outputs.generation_token_mask]).view(*outputs.repa_target.shape[:2], -1)
            loss_repa = 1 - F.cosine_similarity(aligned.float(), outputs.repa_target.float(), dim=-1).mean()

        parts = [
            (self.config.ntp_weight, loss_ntp),
            (self.config.flow_weight, loss_flow),
            (self.config.repa_weight, loss_repa),
            (self.config.prompt_contrast_weight, loss_prompt_contrast),
        ]
        present = [weight * part for weight, part in parts if part is not None]
        return HydraCausalLMOutputWithPast(
            loss=sum(present) if present else None,
            loss_ntp=loss_ntp,
            loss_flow=loss_flow,
            loss_repa=loss_repa,
            loss_prompt_contrast=loss_prompt_contrast,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            flow_prediction=flow_prediction,
        )

    # ------------------------------------------------------------------------------------- text-to-image sampling
    # Sampling does not go through `forward`; `apply_forward_hook` lets accelerate's offload hooks move the model.
    @torch.no_grad()
    @apply_forward_hook
    def prepare_prompt_cache(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        perturbed_rows: torch.Tensor | None = None,
        perturbed_layers: Sequence[int] = (),
    ) -> HydraPromptCache:
        """Run the (left-padded) prompts once; every sampling step then only feeds the image tokens. Perturbed rows
        (see `flow_velocity`) get their prompt run with identity attention too."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        with identity_attention(self.model.language_model, perturbed_layers, perturbed_rows):
            outputs = self.model.language_model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True
            )
        return HydraPromptCache(
            cache=outputs.cache, attention_mask=attention_mask, next_position_ids=position_ids[:, -1:] + 1
        )

    @apply_forward_hook
    def flow_velocity(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor | float,
        prompt_cache: HydraPromptCache | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        perturbed_rows: torch.Tensor | None = None,
        perturbed_layers: Sequence[int] = (),
    ) -> torch.Tensor:
        """Velocity `[B, C, h, w]` of normalised latents at time t given prompts ending in begin-of-image.

        With `prompt_cache` (from `prepare_prompt_cache`) only the image tokens run through the LLM and the cache is
        cropped back afterwards, so one cache serves every step; otherwise the prompt is re-run (`input_ids`).
        `perturbed_rows` (`[B]` bool) get identity attention in the LLM layers `perturbed_layers`
        (`identity_attention`): the perturbed velocity of perturbed-attention guidance. Their prompt cache must come
        from `prepare_prompt_cache` with the same perturbation.
        """
        batch, _, height, width = latents.shape
        num_tokens = height * width
        if not torch.is_tensor(timesteps) or timesteps.ndim == 0:
            timesteps = torch.full((batch,), float(timesteps), device=latents.device)
        time_embeds = self.model.time_embeds(timesteps.to(latents.device))
        visual = self.model.visual_tokens(self.vision_model.denormalize_latents(latents)) + time_embeds[:, None]

        if prompt_cache is not None:
            prompt_mask, cache = prompt_cache.attention_mask, prompt_cache.cache
            prompt_length = prompt_cache.length
            positions = prompt_cache.next_position_ids + torch.arange(num_tokens, device=latents.device)
            inputs_embeds = visual
        else:
            if input_ids is None:
                raise ValueError("flow_velocity needs either prompt_cache or the prompt's input_ids")
            prompt_mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
            cache, prompt_length = None, 0
            prompt_positions = (prompt_mask.long().cumsum(-1) - 1).clamp(min=0)
            positions = torch.cat(
                [prompt_positions, prompt_positions[:, -1:] + 1 + torch.arange(num_tokens, device=latents.device)], dim=1
            )
            inputs_embeds = torch.cat([self.get_input_embeddings()(input_ids), visual.to(self.dtype)], dim=1)

        full_mask = torch.cat([prompt_mask, prompt_mask.new_ones(batch, num_tokens)], dim=1)
        query_is_image = torch.zeros(batch, inputs_embeds.shape[1], dtype=torch.bool, device=latents.device)
        query_is_image[:, -num_tokens:] = True
        mask = self.model.block_causal_mask(inputs_embeds, full_mask, cache, positions, query_is_image)
        with identity_attention(self.model.language_model, perturbed_layers, perturbed_rows):
            hidden = self.model.language_model(
                inputs_embeds=inputs_embeds.to(self.dtype), attention_mask=mask, position_ids=positions, cache=cache,
                use_cache=cache is not None,
            ).last_hidden_state[:, -num_tokens:]
        if cache is not None:
            cache.crop(-(cache.get_seq_length() - prompt_length))
        velocity = self.flow_head(hidden, time_embeds, grid_to_tokens(latents))
        return tokens_to_grid(velocity, (height, width))
