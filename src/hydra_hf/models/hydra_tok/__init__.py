from .configuration_hydra_tok import HYDRA_TOK_PRESETS, HydraTokConfig
from .modeling_hydra_tok import HydraTokModel, HydraTokOutput, HydraTokPreTrainedModel

__all__ = ["HYDRA_TOK_PRESETS", "HydraTokConfig", "HydraTokModel", "HydraTokOutput", "HydraTokPreTrainedModel"]
