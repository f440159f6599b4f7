"""Whole networks on a GPU with each selective-scan backend: training step and inference time.

    python benchmarks/networks.py            # per call, the host included
    python benchmarks/networks.py --graph    # GPU time alone: replays of CUDA graphs

Runs LightM-UNet 3D (batch 2, 128^3), LightM-UNet 2D (batch 8, 512^2) and Mamba-UNet 2D (batch 8, 224^2), fp32,
with the scan backend chosen through $MONAI_MAMBA_SCAN_BACKEND (cuda, triton, auto; cuda only where mamba-ssm is
installed). A training step is forward, mean-square loss and backward. Prints medians (CUDA events). Per call, the
host's launch gaps count, and a busy host moves a backend's rows by up to 30 % between runs. With ``--graph``, each
round captures every backend's training step and inference in turn and replays each graph 5 times, so that the
machine's drift over the rounds hits all backends alike.
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch

from mixer import median_ms  # the sibling scripts': benchmarks/ is on sys.path when this one runs
from scan import captured, replay_seconds

from monai_mamba_nets.nets import LightMUNet, MambaUNet
from monai_mamba_nets.ops import BACKEND_ENV, available_backends

CASES = [
    ("LightMUNet 3D", lambda: LightMUNet(3, 1, 3), (2, 1, 128, 128, 128)),
    ("LightMUNet 2D", lambda: LightMUNet(2, 1, 2), (8, 1, 512, 512)),
    ("MambaUNet 2D", lambda: MambaUNet(2, 1, 4), (8, 1, 224, 224)),
]


def graph_rows(train, infer, backends, rounds: int, replays: int = 5) -> dict[str, tuple[float, float]]:
    """{backend: (train step ms, inference ms)}: medians of ``replays`` replays in each of ``rounds`` rounds, a round
    capturing and replaying every backend's graphs in turn. One graph is held at a time: a training graph of
    LightM-UNet 3D holds its activations in its own memory pool, and three of them do not fit in 80 GB. The training
    graphs accumulate into the parameters' gradients, which stay allocated."""
    times = {backend: ([], []) for backend in backends}
    for _ in range(rounds):
        for backend in backends:
            os.environ[BACKEND_ENV] = backend
            for fn, column in zip((train, infer), times[backend]):
                graph = captured(fn)
                column.extend(1e3 * replay_seconds(graph) for _ in range(replays))
                del graph
    return {backend: tuple(statistics.median(column) for column in columns) for backend, columns in times.items()}


def call_rows(train, infer, net, backends) -> dict[str, tuple[float, float]]:
    """{backend: (train step ms, inference ms)}: medians of 7 calls each, the host included; every training step
    starts without gradients, as in a training loop."""

    def fresh_train():
        train()
        for p in net.parameters():
            p.grad = None

    rows = {}
    for backend in backends:
        os.environ[BACKEND_ENV] = backend
        rows[backend] = median_ms(fresh_train, 7, warmup=2), median_ms(infer, 7, warmup=2)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graph", action="store_true", help="GPU time alone: replays of captured CUDA graphs")
    parser.add_argument("--rounds", type=int, default=4, help="capture-and-replay rounds with --graph")
    args = parser.parse_args()
    backends = [b for b in ("cuda", "triton") if b in available_backends()] + ["auto"]
    timing = (
        f"CUDA-graph replays, medians of 5 replays in each of {args.rounds} rounds"
        if args.graph
        else "per call, medians of 7"
    )
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, fp32, {timing}")
    print(f"{'network':14} {'input':22} {'scan':7} {'train step ms':>14} {'inference ms':>13}")
    for name, make, shape in CASES:
        torch.manual_seed(0)
        net = make().cuda()
        x = torch.randn(shape, device="cuda")

        def train():
            net(x).square().mean().backward()

        def infer():
            with torch.no_grad():
                net(x)

        rows = graph_rows(train, infer, backends, args.rounds) if args.graph else call_rows(train, infer, net, backends)
        for backend, (train_ms, infer_ms) in rows.items():
            print(f"{name:14} {str(shape):22} {backend:7} {train_ms:14.2f} {infer_ms:13.2f}", flush=True)
        del net, x, rows
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
