"""Mamba mixer benchmark on a GPU: ``monai_mamba_nets.Mamba`` against ``mamba_ssm.Mamba``'s fused fast path.

    python benchmarks/mixer.py                       # (batch, L, d_model) = (2, 32768, 64)
    python benchmarks/mixer.py --profile             # also the GPU time of one forward+backward of ours by kernel

All mixers get the same weights. Prints medians (CUDA events) of forward and forward+backward, which scan
backend and causal-convolution path ours took, and whether mamba_ssm is importable (it is only compared when it
is installed with its compiled extensions). Ours is also timed as it runs without mamba-ssm and causal-conv1d (Triton
scan, Triton convolution) and with ``F.conv1d`` as the convolution, in the same process: timings of separate
processes on a shared GPU machine differ by more than the differences measured.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from unittest import mock

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
    if mamba_layer._triton_conv_kernel() is not None:
        return "Triton conv + SiLU"
    return "F.conv1d + SiLU"


@contextlib.contextmanager
def without_kernels(*names: str):
    """Hide the layer's kernel getters ``names``, as on a machine without those kernels."""
    with contextlib.ExitStack() as stack:
        for name in names:
            stack.enter_context(mock.patch.object(mamba_layer, name, lambda: None))
        yield


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
    rows = [("ours", f"scan {backend}, {conv_path()}", ours, contextlib.nullcontext())]
    # what ours runs where mamba-ssm and causal-conv1d are not installed, and the same with F.conv1d
    alone = Mamba(args.d_model, scan_backend="triton").cuda()
    alone.load_state_dict(ours.state_dict())
    with without_kernels("_causal_conv1d_kernel"):
        path = f"as without mamba-ssm: scan triton, {conv_path()}"
    rows.append(("ours", path, alone, without_kernels("_causal_conv1d_kernel")))
    torch_conv = without_kernels("_causal_conv1d_kernel", "_triton_conv_kernel")
    rows.append(("ours", "as without mamba-ssm: scan triton, F.conv1d + SiLU", alone, torch_conv))
    try:
        import mamba_ssm
    except ImportError as error:
        print(f"mamba_ssm not importable ({error}): ours only")
    else:
        theirs = mamba_ssm.Mamba(d_model=args.d_model, d_state=16, d_conv=4, expand=2).cuda()
        theirs.load_state_dict(ours.state_dict())
        rows.append(("mamba_ssm", f"fast path = {theirs.use_fast_path}", theirs, contextlib.nullcontext()))
    print(f"{'mixer':10} {'path':56} {'fwd ms':>8} {'fwd+bwd ms':>11}")
    for name, path, mixer, context in rows:
        forward, both = forward_and_backward(mixer, x, grad)
        with context:
            times = median_ms(forward, args.repeats), median_ms(both, args.repeats)
        print(f"{name:10} {path:56} {times[0]:8.3f} {times[1]:11.3f}")
    if args.profile:
        _, both = forward_and_backward(ours, x, grad)
        both()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            both()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=20, max_name_column_width=70))


if __name__ == "__main__":
    main()
