from .configuration_hydra import HYDRA_PRESETS, HydraConfig
from .image_processing_hydra import HydraImageProcessor
from .modeling_hydra import (
    HydraCausalLMOutputWithPast,
    HydraForConditionalGeneration,
    HydraModel,
    HydraPreTrainedModel,
    HydraPromptCache,
)
from .processing_hydra import HydraProcessor

__all__ = [
    "HYDRA_PRESETS",
    "HydraCausalLMOutputWithPast",
    "HydraConfig",
    "HydraForConditionalGeneration",
    "HydraImageProcessor",
    "HydraModel",
    "HydraPreTrainedModel",
    "HydraProcessor",
    "HydraPromptCache",
]
