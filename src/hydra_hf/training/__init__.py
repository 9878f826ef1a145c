"""Training HYDRA-TOK and HYDRA with `transformers.Trainer`: stages, losses, collators, data loading."""

from .collators import HydraCollator, TokenizerCollator
from .data import decode_image, load_training_dataset
from .discriminator import PatchDiscriminator
from .losses import cosine_distillation_loss, discriminator_hinge_loss, generator_adversarial_loss
from .perceptual import PerceptualLoss
from .stages import TOKENIZER_STAGES, UNIFIED_STAGES, Stage, apply_stage, resolve_stage
from .trainers import HydraTokTrainer, HydraTrainer, last_complete_checkpoint

__all__ = [
    "HydraCollator",
    "HydraTokTrainer",
    "HydraTrainer",
    "PatchDiscriminator",
    "PerceptualLoss",
    "Stage",
    "TOKENIZER_STAGES",
    "TokenizerCollator",
    "UNIFIED_STAGES",
    "apply_stage",
    "cosine_distillation_loss",
    "decode_image",
    "discriminator_hinge_loss",
    "generator_adversarial_loss",
    "last_complete_checkpoint",
    "load_training_dataset",
    "resolve_stage",
]
