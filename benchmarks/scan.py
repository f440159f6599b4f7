"""Selective-scan benchmark: time and peak memory of each backend and of the naive sequential loop.

    python benchmarks/scan.py                     # CPU: torch backend vs the loop under autograd
    python benchmarks/scan.py --device cuda       # GPU: every available backend
    python benchmarks/scan.py --device cuda --graph   # GPU time alone: each call replayed from a CUDA graph
    python benchmarks/scan.py --device cuda --host    # host time alone: from the call to its return

Prints medians over ``--repeats`` runs, forward and forward+backward, with the extra peak memory of one call
(CPU: resident-set growth measured in a fresh process per case; GPU: ``torch.cuda.max_memory_allocated``)
and the effective bandwidth (bytes of u, delta, B, C, z read and y written, divided by the time). CPU times are
host wall-clock; GPU times are CUDA-event times of one call each, with the L2 cache flushed before it (so the
Python launch overhead counts only where the GPU would wait for it). With ``--graph``, each call is captured once in
a CUDA graph and its replays are timed: GPU time alone, without the host's launch costs, and with a warm L2. With
``--host``, the host's time from the call to its return is timed, the GPU idle before each call: what the Python
side of a call costs (no bandwidth is printed then). On the GPU the backends take turns on the same inputs, one call
(or replay) each per round, so that the machine's drift between rounds hits them alike.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import resource
import statistics
import time

import torch

from monai_mamba_nets.ops import available_backends, selective_scan, selective_scan_ref

CPU_SHAPES = [(2, 64, 4096, 16), (1, 64, 4096, 16), (1, 64, 65536, 16), (2, 128, 4096, 16)]
GPU_SHAPES = [(2, 64, 32768, 16), (2, 128, 4096, 16), (16, 64, 16384, 16), (2, 256, 512, 16), (1, 64, 2097152, 16)]
# the loop's autograd graph grows super-linearly with L (kernels.md section 5): it runs only where it takes seconds
LOOP_SHAPES = [(1, 64, 4096, 16)]


def _inputs(shape, device, dtype, requires_grad):
    batch, dim, length, dstate = shape
    g = torch.Generator().manual_seed(0)
    tensors = {
        "u": torch.randn(batch, dim, length, generator=g),
        "delta": 0.5 * torch.randn(batch, dim, length, generator=g),
        "A": -torch.exp(torch.rand(dim, dstate, generator=g) * 3.4),
        "B": torch.randn(batch, dstate, length, generator=g),
        "C": torch.randn(batch, dstate, length, generator=g),
        "D": torch.randn(dim, generator=g),
        "z": torch.randn(batch, dim, length, generator=g),
        "delta_bias": torch.randn(dim, generator=g),
    }
    fp32 = ("A", "D", "delta_bias")
    return {
        k: v.to(device=device, dtype=torch.float32 if k in fp32 else dtype).requires_grad_(requires_grad)
        for k, v in tensors.items()
    }


def _call(backend, tensors, backward):
    if backend == "loop":
        out = selective_scan_ref(**tensors, delta_softplus=True)
    else:
        out = selective_scan(**tensors, delta_softplus=True, backend=backend)
    if backward:
        out.backward(torch.ones_like(out))
        for t in tensors.values():
            t.grad = None


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def run_cases(
    backends: list[str],
    shape,
    device: str,
    dtype: torch.dtype,
    backward: bool,
    repeats: int,
    graph: bool = False,
    host: bool = False,
) -> dict[str, dict]:
    """One shape and mode for each of ``backends``, on the same inputs: {backend: median seconds and extra peak bytes
    of one call over the inputs' footprint}. The backends take turns, one call (or replay) each per round, so that
    the machine's drift between rounds hits them alike. On CPU the peak is the process's: one backend per process."""
    torch.manual_seed(0)
    tensors = _inputs(shape, device, dtype, requires_grad=backward)
    context = torch.enable_grad() if backward else torch.no_grad()
    with context:
        peaks = {backend: _peak_bytes(backend, tensors, backward) for backend in backends}
        if graph:  # the graphs read ``tensors``, which outlive them
            graphs = {backend: captured(functools.partial(_call, backend, tensors, backward)) for backend in backends}
            timers = {backend: functools.partial(replay_seconds, graphs[backend]) for backend in backends}
        else:
            timer = _gpu_seconds if device == "cuda" and not host else _host_seconds
            timers = {backend: functools.partial(timer, backend, tensors, backward) for backend in backends}
        times = {backend: [] for backend in backends}
        for _ in range(repeats):
            for backend in backends:
                times[backend].append(timers[backend]())
    return {
        backend: {"seconds": statistics.median(times[backend]), "peak_bytes": peaks[backend]} for backend in backends
    }


def _peak_bytes(backend, tensors, backward) -> int:
    """Extra peak memory of one call: on the GPU over what is allocated before it (after a first call), on the CPU
    the growth of the resident set, which needs a fresh process."""
    if tensors["u"].is_cuda:
        _call(backend, tensors, backward)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _call(backend, tensors, backward)
        torch.cuda.synchronize()
        return max(0, torch.cuda.max_memory_allocated() - base)
    base = _rss_bytes()
    _call(backend, tensors, backward)
    # ru_maxrss is the process's high-water mark in KiB: this process is fresh, so it is this call's peak
    return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base)


def _host_seconds(backend, tensors, backward) -> float:
    if tensors["u"].is_cuda:  # the GPU idle: a full launch queue would make the host wait
        torch.cuda.synchronize()
    start = time.perf_counter()
    _call(backend, tensors, backward)
    return time.perf_counter() - start


_L2_FLUSH = {}


def _gpu_seconds(backend, tensors, backward) -> float:
    """GPU time of one call (CUDA events), starting from a cold L2 cache as a network layer would."""
    flush = _L2_FLUSH.setdefault("buffer", torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda"))
    flush.zero_()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    _call(backend, tensors, backward)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def captured(fn) -> torch.cuda.CUDAGraph:
    """``fn()`` captured in a CUDA graph, after two calls on a side stream."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # capture needs its warm-up off the default stream
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def replay_seconds(graph: torch.cuda.CUDAGraph) -> float:
    """GPU time of one replay of ``graph``."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def graph_seconds(fn, repeats: int) -> list[float]:
    """GPU times of ``repeats`` replays of ``fn()`` captured once in a CUDA graph."""
    graph = captured(fn)
    return [replay_seconds(graph) for _ in range(repeats)]


def _run_isolated(args) -> dict:
    """CPU cases run in a fresh process so that the resident-set high-water mark belongs to them alone."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(run_cases, args)


def traffic_bytes(shape, dtype) -> int:
    """Minimum forward traffic: read u, delta, z, B, C and write y (kernels.md section 6.1, with z)."""
    batch, dim, length, dstate = shape
    size = torch.finfo(dtype).bits // 8
    return size * (4 * batch * dim * length + 2 * batch * dstate * length)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--backends", nargs="*", help="default: every available backend, and the loop on CPU")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--graph", action="store_true", help="GPU: time replays of a CUDA graph (no host overhead)")
    parser.add_argument("--host", action="store_true", help="GPU: time the host from the call to its return")
    args = parser.parse_args()
    if (args.graph or args.host) and args.device != "cuda":
        parser.error("--graph and --host need --device cuda")
    if args.graph and args.host:
        parser.error("--graph and --host time different things: choose one")
    dtype = getattr(torch, args.dtype)
    shapes = GPU_SHAPES if args.device == "cuda" else CPU_SHAPES
    backends = args.backends or (
        [b for b in available_backends() if args.device == "cuda" or b == "torch"]
        + (["loop"] if args.device == "cpu" else [])
    )
    print(
        f"device: {torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, dtype {args.dtype}, medians of {args.repeats}"
        + (", CUDA-graph replays" if args.graph else "")
        + (", host time" if args.host else "")
    )
    # GPU calls take fractions of a millisecond: print milliseconds there
    unit, scale = ("ms", 1e3) if args.device == "cuda" else ("s", 1.0)
    print(
        f"{'backend':8} {'(B, D, L, N)':22} {'fwd ' + unit:>10} {'fwd GB/s':>9} {'fwd+bwd ' + unit:>10} "
        f"{'peak MB fwd':>12} {'peak MB f+b':>12}"
    )
    results = {}
    for shape in shapes:
        if "loop" in backends and shape not in LOOP_SHAPES:
            print(f"{'loop':8} {str(shape):22} {'not run: the loop takes minutes at this size':>60}", flush=True)
        timed = [backend for backend in backends if backend != "loop" or shape in LOOP_SHAPES]
        rows = {}
        for backward in (False, True):
            if args.device == "cuda":  # the backends take turns in this process
                rows[backward] = run_cases(
                    timed, shape, args.device, dtype, backward, args.repeats, args.graph, args.host
                )
            else:  # one fresh process per backend
                rows[backward] = {}
                for backend in timed:
                    repeats = 1 if backend == "loop" else args.repeats
                    rows[backward].update(_run_isolated(([backend], shape, args.device, dtype, backward, repeats)))
        for backend in timed:
            results[backend, shape] = row = {backward: rows[backward][backend] for backward in (False, True)}
            fwd, both = row[False], row[True]
            bandwidth = "" if args.host else f"{traffic_bytes(shape, dtype) / fwd['seconds'] / 1e9:.1f}"
            print(
                f"{backend:8} {str(shape):22} {fwd['seconds'] * scale:10.4f} {bandwidth:>9} "
                f"{both['seconds'] * scale:10.4f} "
                f"{fwd['peak_bytes'] / 2**20:12.1f} {both['peak_bytes'] / 2**20:12.1f}",
                flush=True,
            )
    if args.device == "cpu":
        _report_cpu_targets(results)


def _report_cpu_targets(results) -> None:
    """The foundation issue's CPU targets, checked against this run."""
    small, large = (1, 64, 4096, 16), (1, 64, 65536, 16)
    if ("torch", small) in results:
        t = results["torch", small][True]["seconds"]
        print(f"target: torch fwd+bwd at {small} = {t:.3f} s (<= 0.15 s): {'met' if t <= 0.15 else 'MISSED'}")
        if ("loop", small) in results:
            ratio = results["loop", small][True]["seconds"] / t
            print(
                f"target: loop / torch fwd+bwd at {small} = {ratio:.0f}x (>= 50x): {'met' if ratio >= 50 else 'MISSED'}"
            )
    if ("torch", large) in results:
        peak = results["torch", large][True]["peak_bytes"]
        limit = 4 * large[0] * large[1] * large[2] * large[3]
        print(
            f"target: torch fwd+bwd extra peak at {large} = {peak / 2**20:.0f} MB (<= one (B,D,L,N) fp32 tensor, "
            f"{limit / 2**20:.0f} MB): {'met' if peak <= limit else 'MISSED'}"
        )


if __name__ == "__main__":
    main()
