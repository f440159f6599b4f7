"""Whole networks on a GPU with each selective-scan backend: training step and inference time.

    python benchmarks/networks.py

Runs LightM-UNet 3D (batch 2, 128^3), LightM-UNet 2D (batch 8, 512^2) and Mamba-UNet 2D (batch 8, 224^2), fp32,
with the scan backend chosen through $MONAI_MAMBA_SCAN_BACKEND (cuda, triton, auto; cuda only where mamba-ssm is
installed). A training step is forward, mean-square loss and backward. Prints medians (CUDA events).
"""

from __future__ import annotations

import os

import torch

from mixer import median_ms  # the sibling script's: benchmarks/ is on sys.path when this one runs

from monai_mamba_nets.nets import LightMUNet, MambaUNet
from monai_mamba_nets.ops import BACKEND_ENV, available_backends

CASES = [
    ("LightMUNet 3D", lambda: LightMUNet(3, 1, 3), (2, 1, 128, 128, 128)),
    ("LightMUNet 2D", lambda: LightMUNet(2, 1, 2), (8, 1, 512, 512)),
    ("MambaUNet 2D", lambda: MambaUNet(2, 1, 4), (8, 1, 224, 224)),
]


def main() -> None:
    backends = [b for b in ("cuda", "triton") if b in available_backends()] + ["auto"]
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, fp32, medians of 7")
    print(f"{'network':14} {'input':22} {'scan':7} {'train step ms':>14} {'inference ms':>13}")
    for name, make, shape in CASES:
        torch.manual_seed(0)
        net = make().cuda()
        x = torch.randn(shape, device="cuda")

        def train():
            net(x).square().mean().backward()
            for p in net.parameters():
                p.grad = None

        def infer():
            with torch.no_grad():
                net(x)

        for backend in backends:
            os.environ[BACKEND_ENV] = backend
            train_ms, infer_ms = median_ms(train, 7, warmup=2), median_ms(infer, 7, warmup=2)
            print(f"{name:14} {str(shape):22} {backend:7} {train_ms:14.2f} {infer_ms:13.2f}", flush=True)
        del net, x
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
