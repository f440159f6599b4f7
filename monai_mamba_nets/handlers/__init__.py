"""Ignite/MONAI engine handlers used by the bundles' training configs."""

from .gradient_clip import GradientNormClipHandler

__all__ = ["GradientNormClipHandler"]
