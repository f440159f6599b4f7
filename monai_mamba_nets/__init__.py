"""Mamba (selective state-space) UNets for MONAI."""

from .layers import BidirectionalMamba, Mamba
from .nets import LightMUNet
from .nets import LKMUNet
from .nets import MambaUNet
from .ops import available_backends, selective_scan

__version__ = "0.1.0"

__all__ = ["selective_scan", "available_backends", "Mamba", "BidirectionalMamba", "__version__"]
__all__ += ["MambaUNet"]
__all__ += ["LKMUNet"]
__all__ += ["LightMUNet"]
