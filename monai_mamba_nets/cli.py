"""Command line: ``python -m monai_mamba_nets <command> ...`` (python-fire)."""

from __future__ import annotations

import fire

from .complexity import build_network, count_complexity
from .ops import available_backends


def backends() -> list[str]:
    """The selective-scan backends that can run on this machine."""
    return available_backends()


def complexity(network: str, shape: int | tuple[int, ...], **network_kwargs) -> str:
    """True parameters, parameters and MACs as the papers' thop saw them, and full MACs (scans included).

    Example: ``python -m monai_mamba_nets complexity LightMUNet --shape=12,3,512,512 --spatial_dims=2
    --in_channels=3 --out_channels=2 --variant=v0``.

    Args:
        network: class name in ``monai_mamba_nets.nets`` (``LightMUNet``, ``LKMUNet``, ``MambaUNet``), or
            ``Class.constructor``, e.g. ``LKMUNet.from_reference_plan``.
        shape: input shape, batch and channels included, e.g. ``1,3,512,512``.
        network_kwargs: constructor arguments of the network.
    """
    shape = tuple(shape) if isinstance(shape, (list, tuple)) else (shape,)
    arguments = ", ".join(f"{k}={v!r}" for k, v in network_kwargs.items())
    report = count_complexity(build_network(network, **network_kwargs), shape, name=f"{network}({arguments})")
    return str(report)


COMMANDS = {"backends": backends, "complexity": complexity}


def main() -> None:
    fire.Fire(COMMANDS)
