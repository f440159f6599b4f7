"""Layers built on the selective scan."""

from .mamba import BidirectionalMamba, Mamba, causal_conv1d_silu
from .patch import PatchEmbed2D, PatchExpand2D, PatchMerging2D
from .pim_pam import PatchMambaLayer, PixelMambaLayer, fit_window_factors
from .residual_blocks import ResidualBlockD, ResidualUpBlock, StackedResidualBlocks
from .rvm import ResidualVisionMamba, ResMambaBlock, get_rvm_layer
from .ss2d import SS2D, VSSBlock, cross_merge, cross_scan

__all__ = ["Mamba", "BidirectionalMamba", "causal_conv1d_silu"]
__all__ += ["SS2D", "VSSBlock", "cross_scan", "cross_merge", "PatchEmbed2D", "PatchMerging2D", "PatchExpand2D"]
__all__ += ["PixelMambaLayer", "PatchMambaLayer", "fit_window_factors"]
__all__ += ["ResidualVisionMamba", "ResMambaBlock", "get_rvm_layer"]
__all__ += ["ResidualBlockD", "StackedResidualBlocks", "ResidualUpBlock"]
