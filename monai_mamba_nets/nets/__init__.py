"""Networks."""

from .lightm_unet import LightMUNet
from .lkm_unet import LKM_UNET_REFERENCE_PLANS, LKMUNet, LKMUNetPlan, reference_window_factors
from .mamba_unet import MambaUNet

__all__ = ["LightMUNet", "LKMUNet", "LKMUNetPlan", "LKM_UNET_REFERENCE_PLANS", "reference_window_factors", "MambaUNet"]
