"""Gradient-norm clipping for MONAI's ``SupervisedTrainer``, which has no clipping option of its own."""

from __future__ import annotations

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents

__all__ = ["GradientNormClipHandler"]


class GradientNormClipHandler:
    """Clip the global gradient norm of the trainer's network after every backward pass, before the step.

    nnU-Net, and hence LightM-UNet's trainer, clips the gradient norm at 12. With AMP the gradients are unscaled
    first so that ``max_norm`` applies to the true gradients.

    Args:
        max_norm: largest allowed total gradient norm.
        norm_type: p of the p-norm (``inf`` for the max norm).
    """

    def __init__(self, max_norm: float, norm_type: float = 2.0) -> None:
        if not max_norm > 0:
            raise ValueError(f"max_norm must be positive, got {max_norm}.")
        self.max_norm = float(max_norm)
        self.norm_type = float(norm_type)

    def attach(self, engine: SupervisedTrainer) -> None:
        """Register on ``IterationEvents.BACKWARD_COMPLETED`` of ``engine``.

        Raises:
            ValueError: with gradient accumulation, where clipping each micro-batch would not clip the step.
        """
        if getattr(engine, "accumulation_steps", 1) > 1:
            raise ValueError("GradientNormClipHandler does not support accumulation_steps > 1.")
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: SupervisedTrainer) -> None:
        if engine.amp and engine.scaler is not None:
            engine.scaler.unscale_(engine.optimizer)
        torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.max_norm, norm_type=self.norm_type)
