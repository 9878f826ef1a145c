"""Rectified-flow maths shared by the pixel decoder, the unified model's loss and the samplers.

Convention (HYDRA Eq. 7): ``t = 0`` is clean data and ``t = 1`` is pure noise,
``x_t = (1 - t) * x + t * eps`` and the velocity target is ``eps - x``. Keeping the
convention in one module means the decoder, the flow head and the pipeline cannot drift apart.
"""

from __future__ import annotations

import torch

__all__ = [
    "clean_estimate",
    "euler_step",
    "interpolate",
    "sample_timesteps",
    "shift_timesteps",
    "sampling_timesteps",
    "velocity_from_clean",
    "velocity_target",
]

# Below this time the clean-sample -> velocity conversion divides by a vanishing t; clamp as JiT does.
MIN_SAMPLE_PREDICTION_TIME = 0.05


def _broadcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """View per-sample timesteps ``[B]`` so they broadcast over a ``[B, ...]`` tensor."""
    return t.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


def interpolate(clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Point on the straight path between data and noise at time ``t`` (shape ``[B]``)."""
    t = _broadcast(t, clean)
    return (1.0 - t) * clean + t * noise


def velocity_target(clean: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The constant velocity of the straight path, ``d x_t / d t``."""
    return noise - clean


def clean_estimate(noisy: torch.Tensor, velocity: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """One-step estimate of the clean sample; the perceptual and GAN losses look at it."""
    return noisy - _broadcast(t, noisy) * velocity


def velocity_from_clean(noisy: torch.Tensor, clean: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The velocity ``(x_t - x) / t`` implied by a predicted clean sample (x-prediction, trained on the velocity).

    A network narrower than its target (the pixel decoder, against a pixel patch) can still predict the clean
    sample, which lies on a low-dimensional manifold; the noise part of the velocity then comes from ``x_t`` itself.
    """
    return (noisy - clean) / _broadcast(t, noisy).clamp(min=MIN_SAMPLE_PREDICTION_TIME)


def euler_step(sample: torch.Tensor, velocity: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """Move ``sample`` from time ``t`` to ``t_next`` along ``velocity`` (``t_next < t`` when denoising)."""
    return sample + (t_next - t) * velocity


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3-style resolution shift ``s t / (1 + (s - 1) t)``; ``shift > 1`` spends more steps near noise."""
    if shift == 1.0:
        return t
    return shift * t / (1.0 + (shift - 1.0) * t)


def sampling_timesteps(num_steps: int, shift: float = 1.0, device: torch.device | str | None = None) -> torch.Tensor:
    """``num_steps + 1`` times from 1 (noise) down to 0 (clean) for an Euler sampler."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return shift_timesteps(torch.linspace(1.0, 0.0, num_steps + 1, device=device), shift)


def sample_timesteps(
    batch_size: int,
    *,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    uniform_fraction: float = 0.1,
    shift: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Training times: logit-normal (SD3) mixed with a small uniform share so the ends are still seen."""
    normal = torch.randn(batch_size, generator=generator, device=device) * logit_std + logit_mean
    t = torch.sigmoid(normal)
    if uniform_fraction > 0:
        uniform = torch.rand(batch_size, generator=generator, device=device)
        pick_uniform = torch.rand(batch_size, generator=generator, device=device) < uniform_fraction
        t = torch.where(pick_uniform, uniform, t)
    return shift_timesteps(t, shift)
