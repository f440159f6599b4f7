"""Command line: ``python -m monai_mamba_nets <command> ...`` (python-fire)."""

from __future__ import annotations

import logging
import sys

import fire

from .bundle_demo import run_demo
from .complexity import build_network, count_complexity
from .data import prepare_montgomery_shenzhen
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


def demo(bundle: str = "montgomery_shenzhen_lightm", bundles_dir: str = "bundles", work_dir: str | None = None) -> str:
    """Train, evaluate and infer a bundle on its synthetic demo data (minutes on a CPU) and report the metrics.

    Run from the repository root (``bundles_dir`` defaults to ``bundles``); see ``monai_mamba_nets.bundle_demo``.
    """
    result = run_demo(bundle, bundles_dir, work_dir)
    metrics = ", ".join(f"{name} {value:.4f}" for name, value in result["metrics"].items())
    return (
        f"{bundle} demo finished in {result['seconds']:.0f} s (synthetic demo data, not a medical result).\n"
        f"Test-split metrics: {metrics}\n"
        f"{len(result['predictions'])} predicted masks and the model are in {result['work_dir']}"
    )


COMMANDS = {
    "backends": backends,
    "complexity": complexity,
    "demo": demo,
    "prepare": {"montgomery_shenzhen": prepare_montgomery_shenzhen},
}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        fire.Fire(COMMANDS)
    except ValueError as error:  # bad input: the message says what to fix, a traceback would only bury it
        sys.exit(f"error: {error}")
