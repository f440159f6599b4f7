"""Layers built on the selective scan."""

from .mamba import BidirectionalMamba, Mamba, causal_conv1d_silu

__all__ = ["Mamba", "BidirectionalMamba", "causal_conv1d_silu"]
