"""Mamba mixer benchmark on a GPU: ``monai_mamba_nets.Mamba`` against ``mamba_ssm.Mamba``'s fused fast path.

    python benchmarks/mixer.py                       # (batch, L, d_model) = (2, 32768, 64)
    python benchmarks/mixer.py --profile             # also the GPU time of one forward+backward by kernel

All mixers get the same weights. Prints, per mixer, medians of forward and forward+backward per call (CUDA events,
host launch gaps included) and the GPU time of the kernels of one forward+backward (torch.profiler), which scan
backend and causal-convolution path ours took, and whether mamba_ssm is importable (it is only compared when it
is installed with its compiled extensions). Ours is also timed as it runs without mamba-ssm and causal-conv1d (Triton
scan, Triton convolution) and with ``F.conv1d`` as the convolution. The mixers take turns, one call each per round,
in one process: timings of separate processes, or of one mixer after another, on a shared GPU machine drift by more
than the differences measured.
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


def call_ms(fn) -> float:
    """Milliseconds of one call of ``fn()`` from an idle GPU, timed with CUDA events."""
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    """Median milliseconds of ``repeats`` calls of ``fn()`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    return statistics.median(call_ms(fn) for _ in range(repeats))


def kernel_ms(fn) -> float:
    """GPU milliseconds of the kernels (and memory operations) that one call of ``fn()`` runs."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(e.device_time for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA) / 1e3


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
    parser.add_argument("--repeats", type=int, default=50, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds first")
    parser.add_argument("--profile", action="store_true", help="print each mixer's GPU time per kernel")
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.length, args.d_model, device="cuda", requires_grad=True)
    grad = torch.randn_like(x)
    ours = Mamba(args.d_model).cuda()
    inner = torch.empty(args.batch, 2 * args.d_model, args.length, device="cuda")
    A = -torch.exp(ours.A_log)
    backend = resolve_backend(ours.scan_backend, inner, A, inner[:, :16], inner[:, :16])
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, shape (B, L, C) = "
          f"{(args.batch, args.length, args.d_model)}, fp32, medians of {args.repeats} rounds")  # fmt: skip
    # (mixer, path, module, a factory of the context it runs in)
    rows = [("ours", f"scan {backend}, {conv_path()}", ours, contextlib.nullcontext)]
    # what ours runs where mamba-ssm and causal-conv1d are not installed, and the same with F.conv1d
    alone = Mamba(args.d_model, scan_backend="triton").cuda()
    alone.load_state_dict(ours.state_dict())
    with without_kernels("_causal_conv1d_kernel"):
        path = f"as without mamba-ssm: scan triton, {conv_path()}"
    rows.append(("ours", path, alone, lambda: without_kernels("_causal_conv1d_kernel")))
    torch_conv = lambda: without_kernels("_causal_conv1d_kernel", "_triton_conv_kernel")  # noqa: E731
    rows.append(("ours", "as without mamba-ssm: scan triton, F.conv1d + SiLU", alone, torch_conv))
    try:
        import mamba_ssm
    except ImportError as error:
        print(f"mamba_ssm not importable ({error}): ours only")
    else:
        theirs = mamba_ssm.Mamba(d_model=args.d_model, d_state=16, d_conv=4, expand=2).cuda()
        theirs.load_state_dict(ours.state_dict())
        rows.append(("mamba_ssm", f"fast path = {theirs.use_fast_path}", theirs, contextlib.nullcontext))
    calls = [forward_and_backward(mixer, x, grad) for _, _, mixer, _ in rows]
    times = [([], []) for _ in rows]
    for round_ in range(args.warmup + args.repeats):
        for (_, _, _, context), (forward, both), (forward_times, both_times) in zip(rows, calls, times):
            with context():
                forward_ms, both_ms = call_ms(forward), call_ms(both)
            if round_ >= args.warmup:
                forward_times.append(forward_ms)
                both_times.append(both_ms)
    print(f"{'mixer':10} {'path':56} {'fwd ms':>8} {'fwd+bwd ms':>11} {'fwd+bwd GPU ms':>15}")
    for (name, path, _, context), (_, both), (forward_times, both_times) in zip(rows, calls, times):
        with context():
            gpu = kernel_ms(both)
        print(f"{name:10} {path:56} {statistics.median(forward_times):8.3f} {statistics.median(both_times):11.3f} "
              f"{gpu:15.3f}")  # fmt: skip
    if args.profile:
        for (name, path, _, context), (_, both) in zip(rows, calls):
            with context(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                both()
                torch.cuda.synchronize()
            print(f"\n{name}, {path}: GPU time of one forward+backward by kernel")
            print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=20, max_name_column_width=70))


if __name__ == "__main__":
    main()
