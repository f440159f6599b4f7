"""GradientNormClipHandler: clips the global gradient norm between backward and optimiser step."""

import pytest
import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents

from monai_mamba_nets.handlers import GradientNormClipHandler


def _trainer(**kwargs) -> SupervisedTrainer:
    network = torch.nn.Linear(4, 1)
    data = [{"image": torch.full((2, 4), 100.0), "label": torch.zeros(2, 1)}]
    return SupervisedTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=data,
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.0),
        loss_function=torch.nn.MSELoss(),
        **kwargs,
    )


@pytest.mark.parametrize("max_norm", [12.0, 0.5])
def test_gradient_norm_is_clipped_before_the_step(max_norm):
    trainer = _trainer()
    GradientNormClipHandler(max_norm).attach(trainer)
    norms = []

    def record(engine):
        norms.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in engine.network.parameters()])))

    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, record)  # runs after the clipping handler
    trainer.run()
    assert norms[0] == pytest.approx(max_norm, rel=1e-5)  # the raw norm is in the tens of thousands


def test_invalid_settings():
    with pytest.raises(ValueError, match="max_norm must be positive"):
        GradientNormClipHandler(0)
    with pytest.raises(ValueError, match="accumulation_steps > 1"):
        GradientNormClipHandler(12).attach(_trainer(accumulation_steps=2))
