"""Tokenizer and unified-model losses, one home each (HYDRA Eqs. 3-7).

The GSB regularisers (KL, cosine consistency) are computed inside `HydraTokModel.forward`, next to the tensors
they need; this module combines them with the flow-matching and distillation terms using the config's weights.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import flow_matching

__all__ = ["TokenizerLosses", "cosine_distillation_loss", "flow_matching_loss", "tokenizer_losses"]


def flow_matching_loss(predicted_velocity: torch.Tensor, target_velocity: torch.Tensor) -> torch.Tensor:
    """Eq. 7: mean squared error between predicted and straight-path velocity."""
    return F.mse_loss(predicted_velocity.float(), target_velocity.float())


def cosine_distillation_loss(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Eq. 6: sum over the selected layers of the token-averaged `1 - cos(student, teacher)`."""
    if len(student) != len(teacher):
        raise ValueError(f"got {len(student)} student layers but {len(teacher)} teacher layers")
    return sum(
        (1 - F.cosine_similarity(s.float(), t.float().detach(), dim=-1)).mean() for s, t in zip(student, teacher)
    )


@dataclass
class TokenizerLosses:
    """The weighted total and each unweighted term, so trainers can log them separately."""

    total: torch.Tensor
    flow: torch.Tensor
    kl: torch.Tensor
    cosine: torch.Tensor
    distillation: torch.Tensor | None
    clean_estimate: torch.Tensor


def tokenizer_losses(
    model,
    pixel_values: torch.Tensor,
    *,
    teacher_states: tuple[torch.Tensor, ...] | None = None,
    generator: torch.Generator | None = None,
) -> TokenizerLosses:
    """Stage-1 objective of HYDRA-TOK: flow matching on pixels conditioned on z, plus GSB regularisers and
    (when the frozen teacher's states are given) self-distillation. Perceptual and adversarial terms are added by
    the trainer on `clean_estimate`, the one-step estimate of the clean image."""
    config = model.config
    encoded = model(pixel_values, generator=generator, output_distillation_states=teacher_states is not None)
    pixels = pixel_values.to(encoded.latents.dtype)
    noise = torch.randn(pixels.shape, generator=generator, device=pixels.device, dtype=pixels.dtype)
    t = flow_matching.sample_timesteps(pixels.shape[0], generator=generator, device=pixels.device)
    noisy = flow_matching.interpolate(pixels, noise, t)
    velocity = model.decoder_velocity(noisy, t.to(pixels.dtype), encoded.latents)
    flow = flow_matching_loss(velocity, flow_matching.velocity_target(pixels, noise))
    total = config.flow_weight * flow + config.kl_weight * encoded.kl_loss + config.cosine_weight * encoded.cosine_loss
    distillation = None
    if teacher_states is not None:
        distillation = cosine_distillation_loss(encoded.distillation_hidden_states, teacher_states)
        total = total + config.distillation_weight * distillation
    return TokenizerLosses(
        total=total,
        flow=flow,
        kl=encoded.kl_loss,
        cosine=encoded.cosine_loss,
        distillation=distillation,
        clean_estimate=flow_matching.clean_estimate(noisy, velocity, t),
    )
