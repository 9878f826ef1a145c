"""hydra_hf: HYDRA (arXiv 2603.15228) for the Hugging Face ecosystem.

Importing the package registers its configurations, models and processors with the transformers Auto classes.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForMultimodalLM,
    AutoProcessor,
)

from .models.hydra import (
    HYDRA_PRESETS,
    HydraCausalLMOutputWithPast,
    HydraConfig,
    HydraForConditionalGeneration,
    HydraImageProcessor,
    HydraModel,
    HydraProcessor,
    HydraPromptCache,
)
from .lora import hydra_lora_config
from .models.hydra_tok import HYDRA_TOK_PRESETS, HydraTokConfig, HydraTokModel, HydraTokOutput
from .pipelines import HydraPipeline

__version__ = "0.1.0.dev0"

AutoConfig.register("hydra_tok", HydraTokConfig, exist_ok=True)
AutoModel.register(HydraTokConfig, HydraTokModel, exist_ok=True)
AutoConfig.register("hydra", HydraConfig, exist_ok=True)
AutoModel.register(HydraConfig, HydraModel, exist_ok=True)
AutoModelForImageTextToText.register(HydraConfig, HydraForConditionalGeneration, exist_ok=True)
AutoModelForMultimodalLM.register(HydraConfig, HydraForConditionalGeneration, exist_ok=True)
AutoImageProcessor.register(HydraConfig, image_processor_classes={"pil": HydraImageProcessor}, exist_ok=True)
AutoProcessor.register(HydraConfig, HydraProcessor, exist_ok=True)

__all__ = [
    "HYDRA_PRESETS",
    "HYDRA_TOK_PRESETS",
    "HydraCausalLMOutputWithPast",
    "HydraConfig",
    "HydraForConditionalGeneration",
    "HydraImageProcessor",
    "HydraModel",
    "HydraPipeline",
    "HydraProcessor",
    "HydraPromptCache",
    "HydraTokConfig",
    "HydraTokModel",
    "HydraTokOutput",
    "__version__",
    "hydra_lora_config",
]
