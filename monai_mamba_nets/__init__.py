"""Mamba (selective state-space) UNets for MONAI: LightM-UNet, LKM-UNet and Mamba-UNet."""

from . import complexity
from .layers import BidirectionalMamba, Mamba
from .nets import LightMUNet, LKMUNet, MambaUNet
from .ops import available_backends, selective_scan

__version__ = "0.1.0"

__all__ = [
    "selective_scan",
    "available_backends",
    "Mamba",
    "BidirectionalMamba",
    "LightMUNet",
    "LKMUNet",
    "MambaUNet",
    "complexity",
    "__version__",
]
