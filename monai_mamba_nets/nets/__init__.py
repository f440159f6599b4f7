"""Networks."""

from .mamba_unet import MambaUNet

__all__ = ["MambaUNet"]
