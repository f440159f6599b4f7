"""Causal depthwise conv1d followed by SiLU, forward and backward in Triton.

The Mamba mixer's convolution on CUDA where causal-conv1d's kernel is not installed. ``F.conv1d`` runs it as cuDNN's
grouped convolution: 0.635 ms of GPU time per forward+backward at the mixer's (2, 128, 32768) on the H100, against
0.180 ms here and 0.165 ms for causal-conv1d (``benchmarks/conv.py``, docs/performance.md). One program takes a tile
of (steps, channels): the forward sums the K shifted inputs; the backward recomputes the pre-activation where it
needs it instead of storing it, and writes the weight and bias gradients per tile, summed afterwards in a fixed
order (deterministic).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["causal_conv1d_silu_triton"]

BLOCK_T = 64  # steps of a tile
BLOCK_C = 32  # channels of a tile


@triton.jit
def _tap(x_ptr, row, c, c_ok, t, k, length, stride_c, stride_t, K: tl.constexpr):
    """x[c, t - K + 1 + k], the input that tap k of the filter meets at steps t, in fp32; 0 outside the sequence."""
    source = t - (K - 1) + k
    ok = c_ok & (source >= 0) & (source < length)
    return tl.load(x_ptr + row + c * stride_c + source * stride_t, mask=ok, other=0.0).to(tl.float32)


@triton.jit
def _weight(w_ptr, c, c_ok, k, K: tl.constexpr):
    """w[c, k] in fp32, (1, channels)."""
    return tl.load(w_ptr + c * K + k, mask=c_ok, other=0.0).to(tl.float32)


@triton.jit
def _pre_activation(x_ptr, w_ptr, bias, row, c, c_ok, t, length, stride_c, stride_t, K: tl.constexpr):
    """bias + sum_k w[c, k] x[c, t - K + 1 + k] over a (steps, channels) tile, in fp32."""
    a = tl.zeros([t.shape[0], c.shape[1]], tl.float32) + bias
    for k in tl.static_range(K):
        a += _weight(w_ptr, c, c_ok, k, K) * _tap(x_ptr, row, c, c_ok, t, k, length, stride_c, stride_t, K)
    return a


@triton.jit
def _tile(channels, stride_b, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """The program's batch index, steps as (BLOCK_T, 1), channels and their mask as (1, BLOCK_C), and the offset of
    its batch row in x."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)[:, None]
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    batch = tl.program_id(2)
    return batch, t, c, c < channels, batch.to(tl.int64) * stride_b


@triton.jit
def _sequence(batch, c, out_stride_b, out_stride_c):
    """Offsets of the channels' rows in y, dy and dx, which share one layout with adjacent steps."""
    return batch.to(tl.int64) * out_stride_b + c.to(tl.int64) * out_stride_c


@triton.jit
def _bias(bias_ptr, c, c_ok, HAS_BIAS: tl.constexpr):
    return tl.load(bias_ptr + c, mask=c_ok, other=0.0).to(tl.float32) if HAS_BIAS else 0.0


@triton.jit
def _forward_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr, channels, length, stride_b, stride_c, stride_t, out_stride_b, out_stride_c,
    K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """y = silu(causal depthwise conv(x) + bias)."""
    batch, t, c, c_ok, row = _tile(channels, stride_b, BLOCK_T, BLOCK_C)
    bias = _bias(bias_ptr, c, c_ok, HAS_BIAS)
    a = _pre_activation(x_ptr, w_ptr, bias, row, c, c_ok, t, length, stride_c, stride_t, K)
    tl.store(
        y_ptr + _sequence(batch, c, out_stride_b, out_stride_c) + t,
        (a * tl.sigmoid(a)).to(y_ptr.dtype.element_ty),
        mask=c_ok & (t < length),
    )


@triton.jit
def _backward_kernel(
    x_ptr, w_ptr, bias_ptr, dy_ptr, dx_ptr, dw_ptr, dbias_ptr, channels, length, stride_b, stride_c, stride_t,
    out_stride_b, out_stride_c, K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """dx (laid out like y and dy), and this tile's partial dw (K, channels) and dbias (channels) at its program index.

    With da_s = dy_s silu'(a_s): dx_t = sum_j w[K - 1 - j] da_{t + j}, dw[k] = sum_t da_t x_{t - K + 1 + k}, dbias
    = sum_t da_t. da is recomputed at the K shifts it is needed at.
    """
    batch, t, c, c_ok, row = _tile(channels, stride_b, BLOCK_T, BLOCK_C)
    bias = _bias(bias_ptr, c, c_ok, HAS_BIAS)
    dx = tl.zeros([BLOCK_T, BLOCK_C], tl.float32)
    for j in tl.static_range(K):
        a = _pre_activation(x_ptr, w_ptr, bias, row, c, c_ok, t + j, length, stride_c, stride_t, K)
        ok = c_ok & (t + j < length)
        dy = tl.load(dy_ptr + _sequence(batch, c, out_stride_b, out_stride_c) + t + j, mask=ok, other=0.0)
        sig = tl.sigmoid(a)
        da = tl.where(ok, dy.to(tl.float32) * sig * (1.0 + a * (1.0 - sig)), 0.0)
        dx += _weight(w_ptr, c, c_ok, K - 1 - j, K) * da
        if j == 0:
            tile = (batch * tl.num_programs(0) + tl.program_id(0)).to(tl.int64)
            for k in tl.static_range(K):
                x = _tap(x_ptr, row, c, c_ok, t, k, length, stride_c, stride_t, K)
                tl.store(dw_ptr + (tile * K + k) * channels + c, tl.sum(da * x, 0, keep_dims=True), mask=c_ok)
            if HAS_BIAS:
                tl.store(dbias_ptr + tile * channels + c, tl.sum(da, 0, keep_dims=True), mask=c_ok)
    tl.store(
        dx_ptr + _sequence(batch, c, out_stride_b, out_stride_c) + t,
        dx.to(dx_ptr.dtype.element_ty),
        mask=c_ok & (t < length),
    )


def _grid(batch: int, channels: int, length: int) -> tuple[int, int, int]:
    return triton.cdiv(length, BLOCK_T), triton.cdiv(channels, BLOCK_C), batch


def _empty_like_input(x: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor laid out like ``x`` where x is dense with adjacent steps (the Mamba mixer's x in
    (channels, batch, L) order), else contiguous."""
    y = torch.empty_like(x)
    return y if y.stride(-1) == 1 else torch.empty(x.shape, dtype=x.dtype, device=x.device)


class CausalConv1dSiluTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        batch, channels, length = x.shape
        weight = weight.contiguous()
        y = _empty_like_input(x)
        constants = dict(K=weight.shape[1], HAS_BIAS=bias is not None, BLOCK_T=BLOCK_T, BLOCK_C=BLOCK_C)
        _forward_kernel[_grid(batch, channels, length)](
            x, weight, bias, y, channels, length, *x.stride(), *y.stride()[:2], **constants
        )
        ctx.save_for_backward(x, weight, bias)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias = ctx.saved_tensors
        batch, channels, length = x.shape
        grid = _grid(batch, channels, length)
        tiles, K = batch * grid[0], weight.shape[1]
        dx = _empty_like_input(x)  # laid out like y
        if dy.stride() != dx.stride():
            dy = torch.empty_like(dx).copy_(dy)
        dw_tiles = torch.empty(tiles, K, channels, dtype=torch.float32, device=x.device)
        dbias_tiles = None if bias is None else torch.empty(tiles, channels, dtype=torch.float32, device=x.device)
        constants = dict(K=K, HAS_BIAS=bias is not None, BLOCK_T=BLOCK_T, BLOCK_C=BLOCK_C)
        _backward_kernel[grid](
            x, weight, bias, dy, dx, dw_tiles, dbias_tiles, channels, length, *x.stride(), *dx.stride()[:2],
            **constants,
        )  # fmt: skip
        dw = dw_tiles.sum(0).t().to(weight.dtype)
        dbias = None if bias is None else dbias_tiles.sum(0).to(bias.dtype)
        return dx, dw, dbias


def causal_conv1d_silu_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """silu(causal depthwise conv1d(x, weight) + bias).

    Args:
        x: (batch, channels, L) CUDA tensor (fp32, fp16 or bf16), any strides.
        weight: (channels, K).
        bias: (channels,) or None.

    Returns:
        (batch, channels, L) in x's dtype, laid out like x where x is dense with adjacent steps (the Mamba mixer passes
        x in (channels, batch, L) order), else contiguous.

    Raises:
        ValueError: a shape does not match (the message names the argument).
    """
    if x.dim() != 3:
        raise ValueError(f"causal_conv1d_silu_triton: `x` must be (batch, channels, L), got shape {tuple(x.shape)}.")
    if weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(
            f"causal_conv1d_silu_triton: `weight` must be (channels={x.shape[1]}, K), got shape {tuple(weight.shape)}."
        )
    if bias is not None and tuple(bias.shape) != (x.shape[1],):
        raise ValueError(
            f"causal_conv1d_silu_triton: `bias` must be (channels={x.shape[1]},), got shape {tuple(bias.shape)}."
        )
    return CausalConv1dSiluTriton.apply(x, weight, bias)
