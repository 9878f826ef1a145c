"""Evaluation for HYDRA: shapes-world generation and VQA scores, and reconstruction PSNR."""

from . import shapes
from .shapes import *  # noqa: F403

__all__ = list(shapes.__all__)
