"""Training losses that need something outside the model being trained (a teacher, a discriminator, a perceptual
network), one home each. The terms that need only the model itself (the GSB's KL and cosine consistency, the
decoder's and the flow head's flow matching) are computed in the models' `forward`, next to their tensors.
"""

import torch
import torch.nn.functional as F

__all__ = ["cosine_distillation_loss", "discriminator_hinge_loss", "generator_adversarial_loss"]


def cosine_distillation_loss(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """HYDRA Eq. 6: sum over the selected layers of the token-averaged `1 - cos(student, teacher)`."""
    if len(student) != len(teacher):
        raise ValueError(f"got {len(student)} student layers but {len(teacher)} teacher layers")
    return sum(
        (1 - F.cosine_similarity(s.float(), t.float().detach(), dim=-1)).mean() for s, t in zip(student, teacher)
    )


def discriminator_hinge_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge loss of a patch discriminator (VQGAN / StyleGAN-T practice)."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator's side of the hinge GAN: raise the discriminator's score of its images."""
    return -fake_logits.mean()
