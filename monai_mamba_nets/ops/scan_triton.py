"""Fused chunked selective scan in Triton: forward and backward, nothing to compile ahead of time.

The sequence of every (batch, channel) is cut into chunks of ``CHUNK`` steps and each chunk is one program,
so the grid is batch x dim x chunks instead of mamba-ssm's batch x dim. Three launches per direction:

1. chunk summary: discretise the chunk in registers (dt = softplus(delta + delta_bias), a = exp(dt A),
   b = dt B u as a (CHUNK, N) tile), scan it with ``tl.associative_scan`` and keep only the chunk's decay
   product and end state, (batch, dim, chunks, N);
2. carry: a scan over those summaries gives the state entering every chunk;
3. chunk output: rescan the chunk from its entry state, contract with C, add D u, gate with silu(z).

The backward pass runs the same three steps on the adjoint g_t = dy_t C_t + a_{t+1} g_{t+1} (a reverse scan),
recomputing the forward states of a chunk from the entry states saved by the forward pass. No
(batch, dim, L, N) tensor is ever written to memory. Gradients of B and C are summed over a block of
channels in registers and then over blocks with one ``sum``; every reduction has a fixed order, so the
gradients are deterministic. Only products of decays are formed, never quotients, which keeps the scan exact
to fp32 rounding when the cumulative decay underflows (kernels.md, section 4).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["selective_scan_triton", "CHUNK"]

# Steps per chunk for N <= 16: one program scans one (chunk, N) tile. Tuned on an H100 with the warps below;
# larger N gets proportionally shorter chunks, so that a tile keeps the size it was tuned at.
CHUNK = 256
FORWARD_WARPS = 4
BACKWARD_WARPS = 8
# Backward programs wanted (about 16 per SM of an H100): each sums the B/C gradients of as many channels of
# a group as this leaves, so fewer partial sums are written where there are enough chunks.
BACKWARD_PROGRAMS = 2048


@triton.jit
def _combine(a_left, b_left, a_right, b_right):
    """Compose h -> a_left h + b_left, then h -> a_right h + b_right."""
    return a_left * a_right, a_right * b_left + b_right


@triton.jit
def _softplus(x):
    # log(1 + e^x) loses all digits of tiny results in fp32; e^x is exact to rounding there
    return tl.where(x > 20.0, x, tl.where(x < -15.0, tl.exp(x), tl.log(1.0 + tl.exp(x))))


@triton.jit
def _row(x, index, rows, BLOCK_T: tl.constexpr):
    """Row ``index`` of a (BLOCK_T, BLOCK_N) tile."""
    return tl.sum(tl.where((rows == index)[:, None], x, 0.0), axis=0)


@triton.jit
def _time_step(delta_ptr, bias_ptr, offset, t, d, length, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """(delta + bias, dt) at steps ``t`` (fp32); dt is 0 past the end, which makes those steps the identity."""
    valid = t < length
    x = tl.load(delta_ptr + offset + t, mask=valid, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x += tl.load(bias_ptr + d).to(tl.float32)
    dt = _softplus(x) if SOFTPLUS else x
    return x, tl.where(valid, dt, 0.0)


@triton.jit
def _matrix_tile(ptr, offset, t, n, length, dstate):
    """(BLOCK_T, BLOCK_N) tile of a (.., N, L) matrix B or C, zero outside."""
    mask = (t < length)[:, None] & (n < dstate)[None, :]
    return tl.load(ptr + offset + n[None, :] * length + t[:, None], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _chunk_program(dim, length, dstate, group_size, groups, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr):
    """Where the program (row = batch * dim + channel, chunk) works: channel, tile rows, steps t, states n, the
    offset of its sequences and of its group's B/C."""
    row, chunk = tl.program_id(0), tl.program_id(1)
    batch, d = row // dim, row % dim
    rows = tl.arange(0, BLOCK_T)
    t = chunk * BLOCK_T + rows
    n = tl.arange(0, BLOCK_N)
    offset = row.to(tl.int64) * length
    group_offset = (batch * groups + d // group_size).to(tl.int64) * dstate * length
    return row, chunk, d, rows, t, n, offset, group_offset


@triton.jit
def _chunk_scan(
    u_ptr, delta_ptr, bias_ptr, A, B, offset, t, d, length, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr
):  # fmt: skip
    """Discretise a chunk in registers and scan it from a zero state.

    Returns (u, delta + bias, dt, b = dt B u, decay products since the chunk start, states), the last three as
    (BLOCK_T, BLOCK_N) tiles; A is the channel's (BLOCK_N,) row and B its (BLOCK_T, BLOCK_N) tile.
    """
    u = tl.load(u_ptr + offset + t, mask=t < length, other=0.0).to(tl.float32)
    x, dt = _time_step(delta_ptr, bias_ptr, offset, t, d, length, HAS_BIAS, SOFTPLUS)
    b = (dt * u)[:, None] * B
    decay, state = tl.associative_scan((tl.exp(dt[:, None] * A[None, :]), b), 0, _combine)
    return u, x, dt, b, decay, state


@triton.jit
def _chunk_output(state, decay, entry, C, u, D_ptr, d, HAS_D: tl.constexpr):
    """(states h from the chunk's entry state, pre-gate output y = C h + D u)."""
    h = state + decay * entry[None, :]
    y = tl.sum(h * C, axis=1)
    if HAS_D:
        y += tl.load(D_ptr + d).to(tl.float32) * u
    return h, y


@triton.jit
def _gate(dout, z, y):
    """(gradient into the pre-gate output, gradient into z) of out = y * silu(z)."""
    sig = tl.sigmoid(z)
    return dout * z * sig, dout * y * sig * (1.0 + z * (1.0 - sig))


@triton.jit
def _fwd_chunk_summary_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, bias_ptr, decay_ptr, state_ptr,
    dim, length, chunks, dstate, group_size, groups,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Decay product and end state (from a zero state) of one chunk of one (batch, channel)."""
    row, chunk, d, rows, t, n, offset, group_offset = _chunk_program(
        dim, length, dstate, group_size, groups, BLOCK_T, BLOCK_N
    )
    A = tl.load(A_ptr + d * dstate + n, mask=n < dstate, other=0.0)
    B = _matrix_tile(B_ptr, group_offset, t, n, length, dstate)
    _, _, _, _, decay, state = _chunk_scan(u_ptr, delta_ptr, bias_ptr, A, B, offset, t, d, length, HAS_BIAS, SOFTPLUS)
    out = (row.to(tl.int64) * chunks + chunk) * dstate + n
    tl.store(decay_ptr + out, _row(decay, BLOCK_T - 1, rows, BLOCK_T), mask=n < dstate)
    tl.store(state_ptr + out, _row(state, BLOCK_T - 1, rows, BLOCK_T), mask=n < dstate)


@triton.jit
def _chunk_carry_kernel(
    decay_ptr, state_ptr, entry_ptr, final_ptr, chunks, dstate,
    REVERSE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """State entering every chunk, from each chunk's (decay product, state from zero).

    entry[c] = decay[c - 1] * entry[c - 1] + state[c - 1], entry[0] = 0; with ``REVERSE`` the chunks are walked
    from the last one (entry[c] then comes from chunk c + 1). The state after the walk goes to ``final``.
    """
    row = tl.program_id(0)
    n = tl.arange(0, BLOCK_N)
    base = row.to(tl.int64) * chunks * dstate
    first = chunks - 1 if REVERSE else 0
    tl.store(entry_ptr + base + first * dstate + n, tl.zeros([BLOCK_N], tl.float32), mask=n < dstate)
    carry = tl.zeros([BLOCK_N], tl.float32)
    for start in range(0, chunks, BLOCK_C):
        step = start + tl.arange(0, BLOCK_C)
        c = chunks - 1 - step if REVERSE else step
        mask = (step < chunks)[:, None] & (n < dstate)[None, :]
        tile = c[:, None] * dstate + n[None, :]
        decay = tl.load(decay_ptr + base + tile, mask=mask, other=1.0)
        state = tl.load(state_ptr + base + tile, mask=mask, other=0.0)
        decay, state = tl.associative_scan((decay, state), 0, _combine)
        after = decay * carry[None, :] + state
        following = c - 1 if REVERSE else c + 1
        ok = (following >= 0) & (following < chunks)
        tl.store(entry_ptr + base + following[:, None] * dstate + n[None, :], after, mask=mask & ok[:, None])
        carry = _row(after, BLOCK_C - 1, tl.arange(0, BLOCK_C), BLOCK_C)
    tl.store(final_ptr + row.to(tl.int64) * dstate + n, carry, mask=n < dstate)


@triton.jit
def _fwd_chunk_output_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, entry_ptr, out_ptr,
    dim, length, chunks, dstate, group_size, groups,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Rescan one chunk from its entry state and write (C h + D u) * silu(z)."""
    row, chunk, d, rows, t, n, offset, group_offset = _chunk_program(
        dim, length, dstate, group_size, groups, BLOCK_T, BLOCK_N
    )
    A = tl.load(A_ptr + d * dstate + n, mask=n < dstate, other=0.0)
    B = _matrix_tile(B_ptr, group_offset, t, n, length, dstate)
    u, _, _, _, decay, state = _chunk_scan(u_ptr, delta_ptr, bias_ptr, A, B, offset, t, d, length, HAS_BIAS, SOFTPLUS)
    entry = tl.load(entry_ptr + (row.to(tl.int64) * chunks + chunk) * dstate + n, mask=n < dstate, other=0.0)
    C = _matrix_tile(C_ptr, group_offset, t, n, length, dstate)
    _, y = _chunk_output(state, decay, entry, C, u, D_ptr, d, HAS_D)
    if HAS_Z:
        z = tl.load(z_ptr + offset + t, mask=t < length, other=0.0).to(tl.float32)
        y *= z * tl.sigmoid(z)
    tl.store(out_ptr + offset + t, y.to(out_ptr.dtype.element_ty), mask=t < length)


@triton.jit
def _next_decay(delta_ptr, bias_ptr, A, offset, t, d, length, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """a_{t+1} as a (BLOCK_T, BLOCK_N) tile; 1 where t + 1 is past the end (nothing flows back from there)."""
    _, dt = _time_step(delta_ptr, bias_ptr, offset, t + 1, d, length, HAS_BIAS, SOFTPLUS)
    return tl.where((t + 1 < length)[:, None], tl.exp(dt[:, None] * A[None, :]), 1.0)


@triton.jit
def _output_gradient(dout_ptr, z_ptr, offset, t, length, y, HAS_Z: tl.constexpr):
    """(dy, dz): the gradient into the pre-gate output y and into z."""
    dout = tl.load(dout_ptr + offset + t, mask=t < length, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + offset + t, mask=t < length, other=0.0).to(tl.float32)
        dy, dz = _gate(dout, z, y)
    else:
        dy, dz = dout, dout
    return dy, dz


@triton.jit
def _bwd_chunk_summary_kernel(
    u_ptr, delta_ptr, A_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h_entry_ptr, B_ptr, dout_ptr, decay_ptr, state_ptr,
    dim, length, chunks, dstate, group_size, groups,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Reverse decay product and adjoint at the chunk start (from a zero adjoint after the chunk).

    The adjoint solves g_t = dy_t C_t + a_{t+1} g_{t+1}; the summary is (prod a_{t+1} over the chunk, g_start).
    With a gate, dy needs the pre-gate output, so the chunk's forward states are recomputed here too.
    """
    row, chunk, d, rows, t, n, offset, group_offset = _chunk_program(
        dim, length, dstate, group_size, groups, BLOCK_T, BLOCK_N
    )
    A = tl.load(A_ptr + d * dstate + n, mask=n < dstate, other=0.0)
    C = _matrix_tile(C_ptr, group_offset, t, n, length, dstate)
    y = tl.zeros([BLOCK_T], tl.float32)
    if HAS_Z:
        B = _matrix_tile(B_ptr, group_offset, t, n, length, dstate)
        u, _, _, _, decay, state = _chunk_scan(
            u_ptr, delta_ptr, bias_ptr, A, B, offset, t, d, length, HAS_BIAS, SOFTPLUS
        )
        entry = tl.load(h_entry_ptr + (row.to(tl.int64) * chunks + chunk) * dstate + n, mask=n < dstate, other=0.0)
        _, y = _chunk_output(state, decay, entry, C, u, D_ptr, d, HAS_D)
    dy, _ = _output_gradient(dout_ptr, z_ptr, offset, t, length, y, HAS_Z)
    a_next = _next_decay(delta_ptr, bias_ptr, A, offset, t, d, length, HAS_BIAS, SOFTPLUS)
    decay, adjoint = tl.associative_scan((a_next, dy[:, None] * C), 0, _combine, reverse=True)
    out = (row.to(tl.int64) * chunks + chunk) * dstate + n
    tl.store(decay_ptr + out, _row(decay, 0, rows, BLOCK_T), mask=n < dstate)
    tl.store(state_ptr + out, _row(adjoint, 0, rows, BLOCK_T), mask=n < dstate)


@triton.jit
def _bwd_chunk_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h_entry_ptr, g_entry_ptr, dout_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    dim, length, chunks, dstate, group_size, groups, channel_blocks, channels,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """All gradients of one chunk for ``channels`` channels of one group.

    Per channel: the forward states h (from the saved entry state) and the adjoint g (from the adjoint entering
    from the next chunk), then with a_t h_{t-1} = h_t - b_t:
    dA = sum dt g (h - b), ddt = sum_n g (A (h - b) + B u), du = dt sum_n g B + D dy, dB = g dt u, dC = dy h.
    dA, dD and ddelta_bias are written per (batch, channel, chunk); dB and dC per (batch, group, channel block).
    """
    chunk, program = tl.program_id(0), tl.program_id(1)
    batch_group, block = program // channel_blocks, program % channel_blocks
    batch, group = batch_group // groups, batch_group % groups
    rows = tl.arange(0, BLOCK_T)
    t = chunk * BLOCK_T + rows
    valid = t < length
    n = tl.arange(0, BLOCK_N)
    group_offset = batch_group.to(tl.int64) * dstate * length
    B = _matrix_tile(B_ptr, group_offset, t, n, length, dstate)
    C = _matrix_tile(C_ptr, group_offset, t, n, length, dstate)
    dB = tl.zeros([BLOCK_T, BLOCK_N], tl.float32)
    dC = tl.zeros([BLOCK_T, BLOCK_N], tl.float32)
    first = group * group_size + block * channels
    for d in range(first, tl.minimum(first + channels, (group + 1) * group_size)):
        row = batch * dim + d
        offset = row.to(tl.int64) * length
        summary = (row.to(tl.int64) * chunks + chunk) * dstate + n
        A = tl.load(A_ptr + d * dstate + n, mask=n < dstate, other=0.0)
        u, x, dt, b, decay, state = _chunk_scan(
            u_ptr, delta_ptr, bias_ptr, A, B, offset, t, d, length, HAS_BIAS, SOFTPLUS
        )
        entry = tl.load(h_entry_ptr + summary, mask=n < dstate, other=0.0)
        h, y = _chunk_output(state, decay, entry, C, u, D_ptr, d, HAS_D)
        D = tl.load(D_ptr + d).to(tl.float32) if HAS_D else 0.0
        dy, dz = _output_gradient(dout_ptr, z_ptr, offset, t, length, y, HAS_Z)
        if HAS_Z:
            tl.store(dz_ptr + offset + t, dz.to(dz_ptr.dtype.element_ty), mask=valid)
        a_next = _next_decay(delta_ptr, bias_ptr, A, offset, t, d, length, HAS_BIAS, SOFTPLUS)
        decay, adjoint = tl.associative_scan((a_next, dy[:, None] * C), 0, _combine, reverse=True)
        g = adjoint + decay * tl.load(g_entry_ptr + summary, mask=n < dstate, other=0.0)[None, :]
        g_decay = g * (h - b)  # g_t a_t h_{t-1}
        tl.store(dA_ptr + summary, tl.sum(g_decay * dt[:, None], axis=0), mask=n < dstate)
        gB = tl.sum(g * B, axis=1)
        ddt = tl.sum(g_decay * A[None, :], axis=1) + gB * u
        if SOFTPLUS:
            ddt *= tl.sigmoid(x)
        ddt = tl.where(valid, ddt, 0.0)
        tl.store(du_ptr + offset + t, (gB * dt + D * dy).to(du_ptr.dtype.element_ty), mask=valid)
        tl.store(ddelta_ptr + offset + t, ddt.to(ddelta_ptr.dtype.element_ty), mask=valid)
        if HAS_D:
            tl.store(dD_ptr + row.to(tl.int64) * chunks + chunk, tl.sum(dy * u, axis=0))
        if HAS_BIAS:
            tl.store(dbias_ptr + row.to(tl.int64) * chunks + chunk, tl.sum(ddt, axis=0))
        dB += g * (dt * u)[:, None]
        dC += dy[:, None] * h
    partial = (batch_group.to(tl.int64) * channel_blocks + block) * dstate * length
    mask = valid[:, None] & (n < dstate)[None, :]
    tile = n[None, :] * length + t[:, None]
    tl.store(dB_ptr + partial + tile, dB, mask=mask)
    tl.store(dC_ptr + partial + tile, dC, mask=mask)


def _chunk_carry(decay: torch.Tensor, state: torch.Tensor, reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(entry states (rows, chunks, N), state after the last chunk (rows, N)) from chunk summaries."""
    rows, chunks, dstate = decay.shape
    entry = torch.empty_like(decay)
    final = torch.empty(rows, dstate, dtype=decay.dtype, device=decay.device)
    block_n = triton.next_power_of_2(dstate)
    block_c = max(16, min(triton.next_power_of_2(chunks), 4096 // block_n))
    _chunk_carry_kernel[(rows,)](
        decay, state, entry, final, chunks, dstate, REVERSE=reverse, BLOCK_C=block_c, BLOCK_N=block_n
    )
    return entry, final


def _chunk_length(block_n: int) -> int:
    return max(16, CHUNK * 16 // max(16, block_n))


def _as_groups(x: torch.Tensor) -> torch.Tensor:
    """B or C as a contiguous (batch, groups, N, L) tensor."""
    return (x.unsqueeze(1) if x.dim() == 3 else x).contiguous()


class SelectiveScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        batch, dim, length = u.shape
        dstate = A.shape[1]
        grouped_B, grouped_C = _as_groups(B), _as_groups(C)
        groups = grouped_B.shape[1]
        u, delta, A = u.contiguous(), delta.contiguous(), A.contiguous()
        D, z, delta_bias = (None if x is None else x.contiguous() for x in (D, z, delta_bias))
        block_n = triton.next_power_of_2(dstate)
        chunk = _chunk_length(block_n)
        chunks = triton.cdiv(length, chunk)
        shapes = (dim, length, chunks, dstate, dim // groups, groups)
        flags = dict(HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus), BLOCK_T=chunk, BLOCK_N=block_n)
        decay = torch.empty(batch * dim, chunks, dstate, dtype=torch.float32, device=u.device)
        state = torch.empty_like(decay)
        grid = (batch * dim, chunks)
        _fwd_chunk_summary_kernel[grid](
            u, delta, A, grouped_B, delta_bias, decay, state, *shapes, num_warps=FORWARD_WARPS, **flags
        )
        entry, last_state = _chunk_carry(decay, state, reverse=False)
        out = torch.empty_like(u)
        _fwd_chunk_output_kernel[grid](
            u, delta, A, grouped_B, grouped_C, D, z, delta_bias, entry, out, *shapes,
            HAS_D=D is not None, HAS_Z=z is not None, num_warps=FORWARD_WARPS, **flags,
        )  # fmt: skip
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, entry)
        ctx.delta_softplus, ctx.chunk = bool(delta_softplus), chunk
        if not return_last_state:
            return out
        last_state = last_state.view(batch, dim, dstate)
        ctx.mark_non_differentiable(last_state)
        return out, last_state

    @staticmethod
    def backward(ctx, dout, *unused):
        u, delta, A, B, C, D, z, delta_bias, h_entry = ctx.saved_tensors
        batch, dim, length = u.shape
        dstate = A.shape[1]
        grouped_B, grouped_C = _as_groups(B), _as_groups(C)
        groups = grouped_B.shape[1]
        group_size = dim // groups
        dout = dout.contiguous()
        chunks = h_entry.shape[1]
        block_n = triton.next_power_of_2(dstate)
        shapes = (dim, length, chunks, dstate, group_size, groups)
        flags = dict(
            HAS_D=D is not None,
            HAS_Z=z is not None,
            HAS_BIAS=delta_bias is not None,
            SOFTPLUS=ctx.delta_softplus,
            BLOCK_T=ctx.chunk,
            BLOCK_N=block_n,
        )
        decay = torch.empty_like(h_entry)
        adjoint = torch.empty_like(h_entry)
        _bwd_chunk_summary_kernel[(batch * dim, chunks)](
            u, delta, A, grouped_C, D, z, delta_bias, h_entry, grouped_B, dout, decay, adjoint, *shapes,
            num_warps=FORWARD_WARPS, **flags,
        )  # fmt: skip
        g_entry, _ = _chunk_carry(decay, adjoint, reverse=True)
        channels = triton.cdiv(group_size, max(1, min(group_size, BACKWARD_PROGRAMS // (chunks * batch * groups))))
        channel_blocks = triton.cdiv(group_size, channels)
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        dz = None if z is None else torch.empty_like(z)
        dA = torch.empty(batch, dim, chunks, dstate, dtype=torch.float32, device=u.device)
        per_chunk = torch.empty(2, batch, dim, chunks, dtype=torch.float32, device=u.device)
        dBC = torch.empty(2, batch, groups, channel_blocks, dstate, length, dtype=torch.float32, device=u.device)
        _bwd_chunk_kernel[(chunks, batch * groups * channel_blocks)](
            u, delta, A, grouped_B, grouped_C, D, z, delta_bias, h_entry, g_entry, dout,
            du, ddelta, dz, dA, dBC[0], dBC[1], per_chunk[0], per_chunk[1], *shapes, channel_blocks, channels,
            num_warps=BACKWARD_WARPS, **flags,
        )  # fmt: skip
        dB, dC = dBC.sum(3)
        return (
            du,
            ddelta,
            dA.sum((0, 2)).to(A.dtype),
            dB.reshape(B.shape).to(B.dtype),
            dC.reshape(C.shape).to(C.dtype),
            None if D is None else per_chunk[0].sum((0, 2)).to(D.dtype),
            dz,
            None if delta_bias is None else per_chunk[1].sum((0, 2)).to(delta_bias.dtype),
            None,
            None,
        )


def selective_scan_triton(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """The ``triton`` backend of :func:`monai_mamba_nets.selective_scan`; arguments are assumed validated and
    applicable (CUDA tensors, B and C time-varying)."""
    return SelectiveScanTriton.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
