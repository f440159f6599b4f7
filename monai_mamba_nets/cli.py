"""Command line: ``python -m monai_mamba_nets <command> ...`` (python-fire)."""

from __future__ import annotations

import fire

from .ops import available_backends


def backends() -> list[str]:
    """The selective-scan backends that can run on this machine."""
    return available_backends()


COMMANDS = {"backends": backends}


def main() -> None:
    fire.Fire(COMMANDS)
