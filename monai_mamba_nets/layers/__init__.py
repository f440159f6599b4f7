"""Layers built on the selective scan."""

from .mamba import BidirectionalMamba, Mamba, causal_conv1d_silu, init_dt_projection
from .patch import PatchEmbed2D, PatchExpand2D, PatchMerging2D
from .pim_pam import PatchMambaLayer, PixelMambaLayer, fit_window_factors
from .residual_blocks import ResidualBlockD, ResidualUpBlock, StackedResidualBlocks
from .rvm import ResidualVisionMamba, ResMambaBlock, get_rvm_layer
from .ss2d import SS2D, VSSBlock, cross_merge, cross_scan

__all__ = [
    "Mamba",
    "BidirectionalMamba",
    "causal_conv1d_silu",
    "init_dt_projection",
    "ResidualVisionMamba",
    "ResMambaBlock",
    "get_rvm_layer",
    "PixelMambaLayer",
    "PatchMambaLayer",
    "fit_window_factors",
    "ResidualBlockD",
    "StackedResidualBlocks",
    "ResidualUpBlock",
    "SS2D",
    "VSSBlock",
    "cross_scan",
    "cross_merge",
    "PatchEmbed2D",
    "PatchMerging2D",
    "PatchExpand2D",
]
