"""PatchGAN discriminator for HYDRA-TOK's decoder refinement (stage 2, adversarial weight 0.075)."""

from huggingface_hub import PyTorchModelHubMixin
from torch import nn

__all__ = ["PatchDiscriminator"]


class PatchDiscriminator(nn.Module, PyTorchModelHubMixin, library_name="hydra_hf", tags=["hydra", "discriminator"]):
    """pix2pix-style patch discriminator: one real/fake logit per receptive-field patch.

    GroupNorm instead of BatchNorm so that its statistics do not depend on the batch split across processes.
    `save_pretrained`/`from_pretrained` (safetensors + config) come from `PyTorchModelHubMixin`.
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, base_channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        channels = base_channels
        for index in range(1, num_layers + 1):
            out_channels = base_channels * min(2**index, 8)
            stride = 2 if index < num_layers else 1
            layers += [
                nn.Conv2d(channels, out_channels, 4, stride=stride, padding=1, bias=False),
                nn.GroupNorm(min(32, out_channels // 4), out_channels),
                nn.LeakyReLU(0.2),
            ]
            channels = out_channels
        layers.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, pixels):
        """Pixels in [-1, 1] `[B, 3, H, W]` -> patch logits `[B, 1, h, w]`."""
        return self.layers(pixels)
