"""hydra_hf: HYDRA (arXiv 2603.15228) for the Hugging Face ecosystem.

Importing the package registers its configurations and models with the transformers Auto classes.
"""

from transformers import AutoConfig, AutoModel

from .models.hydra_tok import HYDRA_TOK_PRESETS, HydraTokConfig, HydraTokModel, HydraTokOutput

__version__ = "0.1.0.dev0"

AutoConfig.register("hydra_tok", HydraTokConfig, exist_ok=True)
AutoModel.register(HydraTokConfig, HydraTokModel, exist_ok=True)

__all__ = ["HYDRA_TOK_PRESETS", "HydraTokConfig", "HydraTokModel", "HydraTokOutput", "__version__"]
