"""Image processor for HYDRA: pixels in [-1, 1] on a grid of HYDRA-TOK patches (PIL backend, no torchvision)."""

import numpy as np
import PIL.Image
import torch
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import PILImageResampling
from transformers.processing_utils import ImagesKwargs
from transformers.utils import TensorType


class HydraImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    patch_size (`int`, *optional*, defaults to 8):
        Patch size of HYDRA-TOK. The processed height and width must be multiples of it, and an `H x W` image becomes
        `(H / patch_size) * (W / patch_size)` visual tokens.
    """

    patch_size: int


class HydraImageProcessor(PilBackend):
    r"""
    Turns images into the `pixel_values` HYDRA-TOK reads: RGB, resized (exact `size` by default, or
    `{"shortest_edge": n}`, usually with `do_center_crop`), rescaled and normalised with mean = std = 0.5 so values lie
    in [-1, 1], the range every model and pipeline of the package uses. Every option of [`ImagesKwargs`] plus
    `patch_size` can be set at construction (e.g. `HydraImageProcessor(size={"height": 32, "width": 48},
    patch_size=4)`) or per call, and is saved in `preprocessor_config.json`.

    It is a PIL/NumPy backend on purpose: torchvision is not reliably importable on CPU-only machines.
    """

    resample = PILImageResampling.BICUBIC
    image_mean = [0.5, 0.5, 0.5]
    image_std = [0.5, 0.5, 0.5]
    size = {"height": 64, "width": 64}
    patch_size = 8
    do_resize = True
    do_center_crop = False
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    valid_kwargs = HydraImageProcessorKwargs
    model_input_names = ["pixel_values"]

    def _preprocess(
        self,
        images: list[np.ndarray],
        patch_size: int,
        return_tensors: str | TensorType | None,
        **kwargs,
    ) -> BatchFeature:
        pixel_values = super()._preprocess(images, return_tensors=None, **kwargs)["pixel_values"]
        pixel_values = [image.astype(np.float32, copy=False) for image in pixel_values]
        for image in pixel_values:
            self._check_patch_multiple(*image.shape[-2:], patch_size)
        sizes = {tuple(image.shape[-2:]) for image in pixel_values}
        if return_tensors is not None and len(sizes) > 1:
            raise ValueError(
                f"The images were processed to different sizes {sorted(sizes)} and cannot be stacked into one tensor. "
                "Use an exact `size` (or `do_center_crop` with `crop_size`), or `return_tensors=None` for a list."
            )
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)

    @staticmethod
    def _check_patch_multiple(height: int, width: int, patch_size: int) -> None:
        if height % patch_size or width % patch_size:
            raise ValueError(
                f"Image size {height}x{width} is not a multiple of the patch size {patch_size}: height and width must "
                f"both be multiples of {patch_size} (e.g. {max(height // patch_size, 1) * patch_size}x"
                f"{max(width // patch_size, 1) * patch_size}). Set `size` or `crop_size` accordingly."
            )

    def num_image_tokens(self, height: int, width: int) -> int:
        """Visual tokens of a processed `height x width` image: patch tokens only, as HYDRA-TOK drops any CLS token."""
        self._check_patch_multiple(height, width, self.patch_size)
        return (height // self.patch_size) * (width // self.patch_size)

    def postprocess(
        self, images: torch.Tensor | np.ndarray, output_type: str = "pil"
    ) -> list[PIL.Image.Image] | np.ndarray:
        """
        Undoes the normalisation and rescaling of `preprocess` on model outputs (`[B, 3, H, W]` or `[3, H, W]`, in
        [-1, 1] by default), clamping out-of-range values. Returns a list of PIL images for `output_type="pil"`, or a
        `uint8` array `[B, H, W, 3]` for `output_type="np"`.
        """
        if output_type not in ("pil", "np"):
            raise ValueError(f"`output_type` must be 'pil' or 'np', got {output_type!r}.")
        if isinstance(images, torch.Tensor):
            images = images.detach().to(device="cpu", dtype=torch.float32).numpy()
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"Expected images of shape [B, 3, H, W] or [3, H, W], got {list(images.shape)}.")
        if self.do_normalize:
            mean = np.asarray(self.image_mean, dtype=np.float32).reshape(1, -1, 1, 1)
            std = np.asarray(self.image_std, dtype=np.float32).reshape(1, -1, 1, 1)
            images = images * std + mean
        if self.do_rescale:
            images = images / self.rescale_factor
        images = np.clip(np.round(images), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        if output_type == "np":
            return images
        return [PIL.Image.fromarray(image) for image in images]


__all__ = ["HydraImageProcessor", "HydraImageProcessorKwargs"]
