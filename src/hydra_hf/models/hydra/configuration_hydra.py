"""Configuration of HYDRA, the unified model: a stock decoder LLM + HYDRA-TOK + projector, time embedding, flow head."""

import copy

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from ..hydra_tok.configuration_hydra_tok import HYDRA_TOK_PRESETS, HydraTokConfig

__all__ = ["HydraConfig", "HYDRA_PRESETS"]


def _qwen25(hidden, layers, heads, kv_heads, intermediate, vocab, tie):
    """A Qwen2.5-Instruct shape (the paper's LLMs)."""
    return dict(
        model_type="qwen2",
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=tie,
        bos_token_id=151643,
        eos_token_id=151645,
    )


# Qwen2.5 pads its embedding table beyond the 151,665 tokens its tokenizer defines; the three image tokens take the
# first free rows, so no resize is needed.
_QWEN_IMAGE_TOKENS = dict(image_token_id=151665, boi_token_id=151666, eoi_token_id=151667)

HYDRA_PRESETS: dict[str, dict] = {
    "tiny": dict(
        text_config=dict(
            model_type="qwen2",
            vocab_size=128,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=False,
        ),
        vision_config=HYDRA_TOK_PRESETS["tiny"],
        image_token_id=125,
        boi_token_id=126,
        eoi_token_id=127,
        flow_head_hidden_size=64,
    ),
    "hydra-1.5b": dict(
        text_config=_qwen25(1536, 28, 12, 2, 8960, 151936, tie=True),
        vision_config=HYDRA_TOK_PRESETS["hydra-tok-300m"],
        **_QWEN_IMAGE_TOKENS,
    ),
    "hydra-7b": dict(
        text_config=_qwen25(3584, 28, 28, 4, 18944, 152064, tie=False),
        vision_config=HYDRA_TOK_PRESETS["hydra-tok-300m"],
        **_QWEN_IMAGE_TOKENS,
    ),
}


@strict
class HydraConfig(PreTrainedConfig):
    r"""
    HYDRA (arXiv 2603.15228): an LLM reads `projector(Sem-ViT(...))` tokens at image placeholders and has two heads,
    the LM head (text) and a flow head that predicts the velocity of the GSB latent at image positions.

    Args:
        text_config (`dict` or `PreTrainedConfig`): any decoder LLM that `AutoModel.from_config` builds
            (default `qwen2`; `llama` works too).
        vision_config (`dict` or `HydraTokConfig`): HYDRA-TOK.
        image_token_id, boi_token_id, eoi_token_id (`int`): the image placeholder and the begin/end-of-image tokens.
        llm_vision_input (`str`): what the projector reads: `"semantic"` (Sem-ViT output; default, as Hydra-X
            describes HYDRA) or `"bottleneck"` (H_bn = unproj(z), skipping Sem-ViT).
        projector_hidden_act (`str`): activation of the two-layer projector MLP (vision width -> LLM width).
        image_position_scale (`float`): scale of fixed 2-D sin-cos positions added to the visual tokens the LLM
            reads (not in the paper; 0, the default, adds none). Sem-ViT sees no positions and RoPE rotates only
            queries and keys, so without them a token's row and column never reach the values attention mixes.
        time_embedding_dim (`int`): sinusoidal features of t before the time-embedding MLP (to LLM width).
        flow_head_hidden_size, flow_head_num_layers (`int`): the flow head, residual MLP blocks with adaLN driven by
            the time embedding, ending in a projection to `vision_config.latent_channels`.
        flow_head_latent_input (`bool`): the flow head also reads each token's noisy latent `z_t` (a skip around
            Sem-ViT and the LLM, as MAR's diffusion head reads its noisy input; not in the paper, off by default).
        cfg_dropout_prob (`float`): probability that a generation example's prompt is replaced by the empty
            prompt in training, so classifier-free guidance has an unconditional model to contrast with.
        timestep_logit_mean, timestep_logit_std, timestep_uniform_fraction (`float`): training times are
            logit-normal (with a small uniform share).
        timestep_shift (`float`): SD3-style shift of the sampling schedule (1.0 = none).
        ntp_weight, flow_weight (`float`): `loss = ntp_weight * L_ntp + flow_weight * L_flow`.
        repa_weight (`float`): weight of a representation-alignment term (REPA, Yu et al. 2024; not in the paper,
            off by default): an MLP on the LLM's hidden states at the generated image's tokens after layer
            `repa_layer` (default: half the depth) predicts the clean image's Sem-ViT features (cosine loss).
        prompt_contrast_weight, prompt_contrast_scale, prompt_contrast_min_time (`float`): a prompt-contrastive
            flow term (not in the paper, off by default), for batches that pair a generated image with a copy under
            a contradicting prompt (`prompt_contrast_pairs`, e.g. from `HydraCollator(negative_caption=...)`): both
            rows share one noise draw and one time, uniform in [`prompt_contrast_min_time`, 1], and the term is
            `softplus(prompt_contrast_scale * (log L_true - log L_contradicting))`, the cross-entropy of the model as
            a diffusion classifier choosing the true prompt, so the velocity must depend on what the prompts differ in.

    Presets: `HydraConfig.from_preset("tiny" | "hydra-1.5b" | "hydra-7b")` (Qwen2.5-1.5B / 7B-Instruct shapes with
    `hydra-tok-300m`).
    """

    model_type = "hydra"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2"),
        "vision_config": HydraTokConfig,
    }

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 151665
    boi_token_id: int = 151666
    eoi_token_id: int = 151667
    llm_vision_input: str = "semantic"
    projector_hidden_act: str = "gelu"
    image_position_scale: float = 0.0
    time_embedding_dim: int = 256
    flow_head_hidden_size: int | None = None
    flow_head_num_layers: int = 2
    flow_head_latent_input: bool = False
    cfg_dropout_prob: float = 0.1
    timestep_logit_mean: float = 0.0
    timestep_logit_std: float = 1.0
    timestep_uniform_fraction: float = 0.1
    timestep_shift: float = 1.0
    ntp_weight: float = 1.0
    flow_weight: float = 1.0
    repa_weight: float = 0.0
    repa_layer: int | None = None
    prompt_contrast_weight: float = 0.0
    prompt_contrast_scale: float = 20.0
    prompt_contrast_min_time: float = 0.6
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.flow_head_hidden_size is None:
            self.flow_head_hidden_size = self.text_config.hidden_size
        if self.repa_layer is None:
            self.repa_layer = max(1, self.text_config.num_hidden_layers // 2)
        # The LM head is tied exactly when the LLM ties its own.
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))

    def validate_architecture(self):
        super().validate_architecture()
        if self.llm_vision_input not in ("semantic", "bottleneck"):
            raise ValueError(f"llm_vision_input must be 'semantic' or 'bottleneck', got {self.llm_vision_input!r}")
        if self.image_position_scale < 0:
            raise ValueError(f"image_position_scale must be >= 0, got {self.image_position_scale}")
        if self.flow_head_hidden_size < 1 or self.flow_head_num_layers < 0:
            raise ValueError(
                f"flow_head_hidden_size must be at least 1 and flow_head_num_layers at least 0, got "
                f"{self.flow_head_hidden_size} and {self.flow_head_num_layers}"
            )
        vocab = self.text_config.vocab_size
        for name in ("image_token_id", "boi_token_id", "eoi_token_id"):
            if not 0 <= getattr(self, name) < vocab:
                raise ValueError(f"{name}={getattr(self, name)} is outside the LLM vocabulary (size {vocab})")
        if not 0.0 <= self.cfg_dropout_prob < 1.0:
            raise ValueError(f"cfg_dropout_prob must be in [0, 1), got {self.cfg_dropout_prob}")
        if self.repa_weight < 0 or not 1 <= self.repa_layer <= self.text_config.num_hidden_layers:
            raise ValueError(
                f"repa_weight must be >= 0 and repa_layer in [1, {self.text_config.num_hidden_layers}] (an LLM layer), "
                f"got {self.repa_weight} and {self.repa_layer}"
            )
        if self.prompt_contrast_weight < 0 or self.prompt_contrast_scale <= 0 or not 0.0 <= self.prompt_contrast_min_time < 1.0:
            raise ValueError(
                "prompt_contrast_weight must be >= 0, prompt_contrast_scale > 0 and prompt_contrast_min_time in [0, 1), "
                f"got {self.prompt_contrast_weight}, {self.prompt_contrast_scale} and {self.prompt_contrast_min_time}"
            )

    @property
    def num_image_tokens(self) -> int:
        """Visual tokens per image at the default size (one per patch; the CLS token is dropped at the GSB)."""
        return self.vision_config.num_patches_per_side**2

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "HydraConfig":
        """Build a named configuration (see `HYDRA_PRESETS`); `text_config`/`vision_config` overrides merge."""
        if name not in HYDRA_PRESETS:
            raise ValueError(f"Unknown HYDRA preset {name!r}; expected one of {sorted(HYDRA_PRESETS)}")
        values = copy.deepcopy(HYDRA_PRESETS[name])
        for key in ("text_config", "vision_config"):
            values[key] = {**values[key], **overrides.pop(key, {})}
        return cls(**{**values, **overrides})
