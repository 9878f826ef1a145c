"""Datasets for HYDRA: the synthetic shapes world that every stage trains and is scored on."""

from . import shapes
from .shapes import *  # noqa: F403

__all__ = list(shapes.__all__)
