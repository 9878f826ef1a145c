"""LoRA for HYDRA with peft.

`hydra_lora_config` scopes the adapters by regex to the LLM's attention and MLP projections: peft's
`"all-linear"` would also wrap HYDRA-TOK (whose Gen-ViT and decoder define the latent space the flow head is
trained in) and the heads, and `hydra` is not in peft's default target table. The small heads (flow head,
projector, time embedding) are trained in full through `modules_to_save`. The config works with
`peft.get_peft_model` and with transformers' `model.add_adapter` / `model.load_adapter`.

The adapter operations below (`fuse_lora`, `unfuse_lora`, `unload_lora`) give the diffusers meanings to adapters
that transformers/peft injected into a model; `HydraPipeline.load_lora_weights` and friends call them.
"""

from __future__ import annotations

import os

from peft import LoraConfig
from peft.functional import set_adapter
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper, ModulesToSaveWrapper
from torch import nn

__all__ = [
    "HEAD_MODULES",
    "LORA_TARGETS",
    "fuse_lora",
    "hydra_lora_config",
    "load_lora_adapter",
    "lora_stage",
    "lora_target_regex",
    "lora_trainable_patterns",
    "unfuse_lora",
    "unload_lora",
]

# Projection names of the stock decoder LLMs HYDRA builds with AutoModel (Qwen2, Llama, Mistral, ...).
LORA_TARGETS: dict[str, dict[str, tuple[str, ...]]] = {
    "llm": {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")},
    "attention": {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj")},
    "mlp": {"mlp": ("gate_proj", "up_proj", "down_proj")},
}
# Sem-ViT only: Gen-ViT, the GSB and the pixel decoder fix the latent space and stay frozen (as in stages I-III).
_SEM_VIT = r"model\.vision_model\.sem_vit\.layers\.\d+\.(?:attn\.(?:qkv|proj)|mlp\.(?:fc1|fc2))"
# Trained in full and saved with the adapter (peft matches these names as module-name suffixes and skips those a
# model lacks: `repa_head` exists only when `HydraConfig.repa_weight` > 0, and its loss still runs under LoRA).
HEAD_MODULES = ("flow_head", "projector", "time_embedding", "repa_head")
_FUSE_SCALING = "_hydra_scaling_before_fuse"
# Download arguments, which `load_adapter` takes in `adapter_kwargs`.
_HUB_KWARGS = ("token", "revision", "cache_dir", "force_download", "proxies", "subfolder")


def lora_target_regex(target: str = "llm", include_vision: bool = False) -> str:
    """The `target_modules` regex (peft full-matches it against module names relative to the HYDRA model)."""
    if target not in LORA_TARGETS:
        raise ValueError(f"Unknown LoRA target {target!r}; expected one of {sorted(LORA_TARGETS)}")
    blocks = "|".join(f"{block}\\.(?:{'|'.join(names)})" for block, names in LORA_TARGETS[target].items())
    parts = [rf"model\.language_model\.layers\.\d+\.(?:{blocks})"]
    if include_vision:
        parts.append(_SEM_VIT)
    return "|".join(parts) if len(parts) == 1 else "(?:" + ")|(?:".join(parts) + ")"


def hydra_lora_config(
    r: int = 16,
    alpha: int | None = None,
    dropout: float = 0.0,
    include_vision: bool = False,
    train_heads: bool = True,
    target: str = "llm",
    **kwargs,
) -> LoraConfig:
    """
    A `LoraConfig` for HYDRA.

    Args:
        r: LoRA rank. alpha: `lora_alpha`, default `r` (scaling 1). dropout: `lora_dropout`.
        include_vision: also adapt the Sem-ViT blocks (the vision tower is left alone by default).
        train_heads: train the flow head, projector and time embedding in full (`modules_to_save`); they are
            small and they are what learns a new visual concept for generation.
        target: `"llm"` (attention and MLP projections), `"attention"` or `"mlp"`.
        kwargs: any other `LoraConfig` field (`use_dora`, `use_rslora`, `trainable_token_indices`, ...).
    """
    return LoraConfig(
        r=r,
        lora_alpha=r if alpha is None else alpha,
        lora_dropout=dropout,
        target_modules=lora_target_regex(target, include_vision),
        modules_to_save=list(HEAD_MODULES) if train_heads else None,
        bias="none",
        **kwargs,
    )


def lora_trainable_patterns(adapter_name: str = "default") -> list[str]:
    """Parameter-name regexes of one adapter's trainable weights (LoRA matrices, DoRA magnitudes, trainable token
    rows, `modules_to_save` copies), for a `HydraTrainer` stage: the stage sets `requires_grad` by name, so it must
    select exactly what peft would train, whether the model is a `PeftModel` or has adapters added by transformers."""
    name = adapter_name.replace(".", r"\.")
    return [
        rf"\.lora_(?:A|B|embedding_A|embedding_B|magnitude_vector)\.{name}(?:\.|$)",
        rf"\.modules_to_save\.{name}\.",
        rf"\.trainable_tokens_delta\.{name}$",
    ]


def lora_stage(adapter_name: str = "default"):
    """A `hydra_hf.training.Stage` that trains one adapter and nothing else (pass it as `HydraTrainer(stage=...)`)."""
    from .training.stages import Stage  # the training stack is only needed when training

    return Stage("lora", lora_trainable_patterns(adapter_name), description=f"LoRA adapter {adapter_name!r}")


# ------------------------------------------------------------------------------ adapters on an injected model
def load_lora_adapter(
    model,
    pretrained_model_name_or_path: str | os.PathLike,
    adapter_name: str | None = None,
    is_trainable: bool = False,
    **kwargs,
) -> str:
    """Load an adapter folder or Hub repo into a transformers model (`model.load_adapter`) and make it the only
    active one; unnamed adapters get `default_0`, `default_1`, ... as in diffusers. Download arguments (`token`,
    `revision`, `cache_dir`, ...) go where `load_adapter` expects them. Returns the adapter's name.

    Activation goes through `peft.functional.set_adapter`: transformers 5.24's `model.set_adapter` (like
    `add_adapter`, `active_adapters`, `delete_adapter` and `save_pretrained` with adapters) refuses peft < 0.22.
    """
    loaded = set(model.peft_config) if getattr(model, "_hf_peft_config_loaded", False) else set()
    if adapter_name is None:
        adapter_name = next(f"default_{i}" for i in range(len(loaded) + 1) if f"default_{i}" not in loaded)
    if adapter_name in loaded:
        raise ValueError(f"An adapter named {adapter_name!r} is already loaded ({sorted(loaded)}); pick another name")
    adapter_kwargs = {name: kwargs.pop(name) for name in _HUB_KWARGS if name in kwargs}
    model.load_adapter(
        str(pretrained_model_name_or_path),
        adapter_name=adapter_name,
        is_trainable=is_trainable,
        adapter_kwargs=adapter_kwargs or None,
        **kwargs,
    )
    set_adapter(model, adapter_name, inference_mode=not is_trainable)
    return adapter_name


def _tuner_layers(model: nn.Module) -> list[BaseTunerLayer]:
    return [module for module in model.modules() if isinstance(module, BaseTunerLayer)]


def fuse_lora(
    model: nn.Module, lora_scale: float = 1.0, safe_fusing: bool = False, adapter_names: list[str] | None = None
) -> None:
    """Merge the active (or the named) adapters into the base weights, scaled by `lora_scale`: same outputs, no
    adapter overhead. `modules_to_save` copies already replace their modules and need no merge."""
    layers = _tuner_layers(model)
    if not layers:
        raise ValueError("The model has no LoRA layers to fuse; load an adapter first")
    for layer in layers:
        if layer.merged:
            continue
        if lora_scale != 1.0 and hasattr(layer, "scale_layer"):
            setattr(layer, _FUSE_SCALING, dict(layer.scaling))  # restored by unfuse_lora
            layer.scale_layer(lora_scale)
        layer.merge(safe_merge=safe_fusing, adapter_names=adapter_names)


def unfuse_lora(model: nn.Module) -> None:
    """Undo `fuse_lora`: subtract the merged adapters from the base weights again, and restore their scale."""
    for layer in _tuner_layers(model):
        layer.unmerge()
        scaling = getattr(layer, _FUSE_SCALING, None)
        if scaling is not None:
            layer.scaling.update(scaling)
            delattr(layer, _FUSE_SCALING)


def unload_lora(model: nn.Module) -> None:
    """Remove every adapter layer and wrapper, restoring plain modules (diffusers' `unload_lora_weights`).

    Unfused adapters are simply dropped, so the model computes what it did before they were loaded. Fused ones stay
    in the weights (the diffusers idiom `fuse_lora(); unload_lora_weights()` keeps the adapted model, without
    adapter layers), and with them the trained `modules_to_save` copies.
    """
    fused = any(layer.merged for layer in _tuner_layers(model))
    for kind in (AuxiliaryTrainingWrapper, BaseTunerLayer):  # wrappers first: one may hold a tuner layer
        names = [name for name, module in model.named_modules() if isinstance(module, kind)]
        for name in names:
            parent_name, _, child_name = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            module = getattr(parent, child_name)
            if isinstance(module, ModulesToSaveWrapper) and not fused:
                replacement = module.original_module
            elif isinstance(module, AuxiliaryTrainingWrapper):
                replacement = module.unload_and_optionally_merge_module(
                    merge=False, safe_merge=False, adapter_names=None
                )
            else:
                replacement = module.get_base_layer()
            setattr(parent, child_name, replacement)
    if hasattr(model, "peft_config"):
        del model.peft_config
    if getattr(model, "_hf_peft_config_loaded", False):
        model._hf_peft_config_loaded = False
