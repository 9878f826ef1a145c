"""Which parameters train in each stage of the recipe (DESIGN.md section 1), as regular expressions over
parameter names, so that a stage is configuration, can be overridden, and can be audited."""

import re
from dataclasses import dataclass, field

from torch import nn

__all__ = ["Stage", "TOKENIZER_STAGES", "UNIFIED_STAGES", "apply_stage", "resolve_stage"]

# The generative half of HYDRA-TOK: the latent space the flow head is trained in. It is fixed after tokenizer
# training (as Hydra-X keeps Gen-ViT and the decoder frozen in the unified stages), otherwise the flow targets of
# the unified model would move under it.
_UNIFIED_HEADS = [r"^model\.projector\.", r"^model\.time_embedding\.", r"^flow_head\.", r"^repa_head\."]
_UNIFIED_ALL = _UNIFIED_HEADS + [
    r"^model\.language_model\.",
    r"^lm_head\.",
    r"^model\.vision_model\.sem_vit\.",
    r"^model\.vision_model\.bottleneck\.unproj\.",
]


@dataclass(frozen=True)
class Stage:
    """A training stage: the parameters it trains and, for the tokenizer, whether the GAN loss is on."""

    name: str
    trainable: list[str] = field(default_factory=list)
    adversarial: bool = False
    description: str = ""


TOKENIZER_STAGES: dict[str, Stage] = {
    "1": Stage("1", [r".*"], adversarial=False, description="end to end: reconstruction + regularisers + distillation"),
    "2": Stage(
        "2", [r"^decoder\."], adversarial=True,
        description="decoder refinement, encoder frozen; GAN term unless adversarial_weight is 0",
    ),
}

UNIFIED_STAGES: dict[str, Stage] = {
    "I": Stage("I", _UNIFIED_HEADS, description="alignment: LLM frozen; projector, time embedding, flow head train"),
    "II": Stage("II", _UNIFIED_ALL, description="joint pre-training of LLM, Sem-ViT and heads on both tasks"),
    "III": Stage("III", _UNIFIED_ALL, description="instruction tuning, same parameters as stage II"),
}


def resolve_stage(stage: str | Stage, stages: dict[str, Stage], trainable: list[str] | None = None) -> Stage:
    """A named stage, optionally with its trainable patterns replaced (e.g. from a training config)."""
    if isinstance(stage, str):
        if stage not in stages:
            raise ValueError(f"Unknown stage {stage!r}; expected one of {sorted(stages)}")
        stage = stages[stage]
    if trainable is not None:
        stage = Stage(stage.name, list(trainable), stage.adversarial, stage.description)
    return stage


def apply_stage(model: nn.Module, stage: Stage) -> list[str]:
    """Set `requires_grad` by the stage's patterns; return the names that train (for logging and audits)."""
    patterns = [re.compile(pattern) for pattern in stage.trainable]
    trainable = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(any(pattern.search(name) for pattern in patterns))
        if parameter.requires_grad:
            trainable.append(name)
    if not trainable:
        raise ValueError(f"Stage {stage.name} trains nothing: no parameter matches {stage.trainable}")
    return trainable
