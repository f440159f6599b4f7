"""Causal depthwise conv1d + SiLU on a GPU: our Triton kernel against causal-conv1d's CUDA kernel and ``F.conv1d``.

    python benchmarks/conv.py          # the Mamba(64) mixer's convolution: (batch, channels, L) = (2, 128, 32768)

The input is x as the mixer passes it, the first half of its input projection's (2 channels, batch, L) rows, and
the output's gradient comes in the same channel-major order. Each path's forward and forward+backward are captured
once in a CUDA graph and their replays timed (medians, GPU time without the host's). causal-conv1d's row is left
out where it is not installed.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from scan import graph_seconds  # the sibling script's: benchmarks/ is on sys.path when this one runs

from monai_mamba_nets.ops.conv_triton import causal_conv1d_silu_triton


def graph_ms(fn, repeats: int) -> float:
    """Median milliseconds of replays of ``fn()`` captured once in a CUDA graph."""
    return statistics.median(graph_seconds(fn, repeats)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--length", type=int, default=32768)
    parser.add_argument("--width", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    batch, channels, length, K = args.batch, args.channels, args.length, args.width
    torch.manual_seed(0)
    x = torch.randn(2 * channels, batch, length, device="cuda")[:channels].transpose(0, 1).requires_grad_()
    weight = torch.randn(channels, K, device="cuda", requires_grad=True)
    bias = torch.randn(channels, device="cuda", requires_grad=True)
    grad = torch.randn(channels, batch, length, device="cuda").transpose(0, 1)
    paths = {
        "Triton (ours)": lambda: causal_conv1d_silu_triton(x, weight, bias),
        "F.conv1d + SiLU": lambda: F.silu(
            F.conv1d(x, weight.unsqueeze(1), bias, padding=K - 1, groups=channels)[..., :length]
        ),
    }
    try:
        from causal_conv1d import causal_conv1d_fn
    except ImportError:
        print("causal-conv1d is not installed: its row is left out")
    else:
        paths["causal-conv1d"] = lambda: causal_conv1d_fn(x, weight, bias, activation="silu")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, (batch, channels, L, K) = "
          f"{(batch, channels, length, K)}, fp32, medians of {args.repeats} CUDA-graph replays")  # fmt: skip
    print(f"{'path':18} {'fwd ms':>8} {'fwd+bwd ms':>11}")
    for name, conv in paths.items():

        def forward():
            with torch.no_grad():
                conv()

        def both():
            torch.autograd.grad(conv(), (x, weight, bias), grad)

        print(f"{name:18} {graph_ms(forward, args.repeats):8.4f} {graph_ms(both, args.repeats):11.4f}")


if __name__ == "__main__":
    main()
