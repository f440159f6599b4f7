"""Mamba mixer benchmark on a GPU: ``monai_mamba_nets.Mamba`` against ``mamba_ssm.Mamba``'s fused fast path.

    python benchmarks/mixer.py                       # (batch, L, d_model) = (2, 32768, 64)
    python benchmarks/mixer.py --profile             # also the GPU time of one forward+backward of ours by kernel

Both mixers get the same weights. Prints medians (CUDA events) of forward and forward+backward, which scan
backend and causal-convolution path ours took, and whether mamba_ssm is importable (it is only compared when it
is installed with its compiled extensions).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from monai_mamba_nets import Mamba
from monai_mamba_nets.layers import mamba as mamba_layer
from monai_mamba_nets.ops import resolve_backend


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` runs, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def forward_and_backward(mixer, x, grad):
    def forward():
        with torch.no_grad():
            mixer(x)

    def both():
        mixer(x).backward(grad)
        x.grad = None
        for p in mixer.parameters():
            p.grad = None

    return forward, both


def conv_path() -> str:
    if mamba_layer._causal_conv1d_kernel() is not None:
        return "causal-conv1d kernel"
    return "F.conv1d + SiLU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=32768)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--profile", action="store_true", help="print ours' GPU time per kernel")
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.length, args.d_model, device="cuda", requires_grad=True)
    grad = torch.randn_like(x)
    ours = Mamba(args.d_model).cuda()
    inner = torch.empty(args.batch, 2 * args.d_model, args.length, device="cuda")
    A = -torch.exp(ours.A_log)
    backend = resolve_backend(ours.scan_backend, inner, A, inner[:, :16], inner[:, :16])
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, shape (B, L, C) = "
          f"{(args.batch, args.length, args.d_model)}, fp32, medians of {args.repeats}")  # fmt: skip
    rows = [("ours", f"scan {backend}, {conv_path()}", ours)]
    try:
        import mamba_ssm
    except ImportError as error:
        print(f"mamba_ssm not importable ({error}): ours only")
    else:
        theirs = mamba_ssm.Mamba(d_model=args.d_model, d_state=16, d_conv=4, expand=2).cuda()
        theirs.load_state_dict(ours.state_dict())
        rows.append(("mamba_ssm", f"fast path = {theirs.use_fast_path}", theirs))
    print(f"{'mixer':10} {'path':45} {'fwd ms':>8} {'fwd+bwd ms':>11}")
    for name, path, mixer in rows:
        forward, both = forward_and_backward(mixer, x, grad)
        print(f"{name:10} {path:45} {median_ms(forward, args.repeats):8.3f} {median_ms(both, args.repeats):11.3f}")
    if args.profile:
        _, both = forward_and_backward(ours, x, grad)
        both()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            both()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=20, max_name_column_width=70))


if __name__ == "__main__":
    main()
