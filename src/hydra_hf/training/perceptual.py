"""Perceptual loss on the decoder's clean estimate (weight 0.1): LPIPS when it is installed with its weights,
otherwise the distance between the frozen teacher's features of the two images. The choice is logged."""

import importlib.util

import torch
from torch import nn
from transformers.utils import logging

from ..models.hydra_tok.modeling_hydra_tok import HydraTokModel

__all__ = ["PerceptualLoss"]

logger = logging.get_logger(__name__)


def _lpips_network() -> nn.Module | None:
    """LPIPS (VGG) if the `lpips` package and its weights load offline; None otherwise."""
    if importlib.util.find_spec("lpips") is None:
        return None
    try:
        import lpips

        return lpips.LPIPS(net="vgg", verbose=False).eval().requires_grad_(False)
    except Exception as error:  # missing torchvision weights, no network, ...
        logger.warning(f"lpips is installed but could not be loaded ({error}); falling back to teacher features")
        return None


class PerceptualLoss(nn.Module):
    """`backend`: "auto" (LPIPS if available, else teacher), "lpips" or "teacher"."""

    def __init__(self, teacher: HydraTokModel | None = None, backend: str = "auto"):
        super().__init__()
        if backend not in ("auto", "lpips", "teacher"):
            raise ValueError(f"backend must be 'auto', 'lpips' or 'teacher', got {backend!r}")
        self.lpips = _lpips_network() if backend in ("auto", "lpips") else None
        if backend == "lpips" and self.lpips is None:
            raise ValueError("backend='lpips' needs the `lpips` package and its VGG weights available offline")
        if self.lpips is None and teacher is None:
            raise ValueError("the perceptual loss needs LPIPS or a teacher HydraTokModel for its feature space")
        self.teacher = None if self.lpips is not None else teacher
        self.backend = "lpips" if self.lpips is not None else "teacher"
        logger.info(f"perceptual loss: {self.backend}")

    def forward(
        self, estimate: torch.Tensor, target: torch.Tensor, target_features: tuple[torch.Tensor, ...] | None = None
    ) -> torch.Tensor:
        """Both in [-1, 1] `[B, 3, H, W]`; gradients flow into `estimate` only. `target_features`: the teacher's
        distillation states of `target`, when the caller has them already (saves a teacher pass)."""
        if self.lpips is not None:
            return self.lpips(estimate.float(), target.float()).mean()
        estimate_features = self.teacher(estimate, bypass_bottleneck=True, output_distillation_states=True)
        if target_features is None:
            with torch.no_grad():
                target_features = self.teacher(target, bypass_bottleneck=True, output_distillation_states=True)
            target_features = target_features.distillation_hidden_states
        pairs = zip(estimate_features.distillation_hidden_states, target_features)
        return torch.stack(
            [(1 - nn.functional.cosine_similarity(e.float(), t.float(), dim=-1)).mean() for e, t in pairs]
        ).mean()
