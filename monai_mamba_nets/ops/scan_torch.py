"""Pure-PyTorch selective scan: chunked, multiply-only, with a hand-written reverse-scan backward.

The sequence is processed in segments so that no (batch, dim, L, N) tensor is ever alive for the whole
sequence: a segment of about ``SEGMENT_ELEMENTS`` state elements is discretised, scanned and contracted
with C, and only the state entering each segment (batch, dim, N) is kept for the backward pass, which
recomputes the segment's states and runs the adjoint recurrence backwards.

Inside a segment the scan is two-level: a sequential pass over the ``chunk`` steps of every chunk at once
(vectorised across chunks), a carry pass over the chunks, and one correction. Only products of decays
are formed, so the result matches a float64 sequential scan to fp32 rounding even when the cumulative
decay underflows (kernels.md, section 4).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["selective_scan_torch", "SEGMENT_ELEMENTS"]

# (batch, dim, segment, N) elements materialised at once: 16 MiB per fp32 temporary.
SEGMENT_ELEMENTS = 1 << 22


def _chunked_scan(decay: torch.Tensor, state: torch.Tensor, entry: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Solve ``s_t = decay_t * s_prev + state_t`` in place on step-major (..., chunk, chunks, N) tensors.

    Position ``c * chunk + t`` of the sequence sits at ``[..., t, c, :]``, so each step touches one contiguous
    block for all chunks at once. ``s_prev`` is ``s_{t-1}`` (``s_{t+1}`` when ``reverse``) and the state before
    the first step is ``entry`` (..., N). On return ``state`` holds the solution and ``decay`` the product of
    decays since each step's chunk was entered. Returns the state after the last step.
    """
    chunk, num_chunks = state.shape[-3], state.shape[-2]
    steps = range(chunk - 2, -1, -1) if reverse else range(1, chunk)
    offset = 1 if reverse else -1
    for t in steps:
        state[..., t, :, :].addcmul_(decay[..., t, :, :], state[..., t + offset, :, :])
        decay[..., t, :, :].mul_(decay[..., t + offset, :, :])
    exit_step = 0 if reverse else chunk - 1
    entries = torch.empty_like(state[..., 0, :, :])
    current = entry
    for c in range(num_chunks - 1, -1, -1) if reverse else range(num_chunks):
        entries[..., c, :] = current
        current = torch.addcmul(state[..., exit_step, c, :], decay[..., exit_step, c, :], current)
    state.addcmul_(decay, entries.unsqueeze(-3))
    return current


def _plan(batch: int, dim: int, length: int, dstate: int) -> tuple[int, int]:
    """Segment length and chunk length: segments hold about SEGMENT_ELEMENTS states, chunk ~ sqrt(segment)."""
    segment = max(1, min(length, SEGMENT_ELEMENTS // max(1, batch * dim * dstate)))
    chunk = 1 << max(0, math.ceil(math.log2(segment) / 2))
    segment = max(chunk, segment // chunk * chunk)
    return segment, chunk


def _step_major(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """(..., S) -> (..., chunk, S // chunk): position c * chunk + t goes to [..., t, c]."""
    return x.unflatten(-1, (-1, chunk)).transpose(-1, -2)


def _sequence_major(x: torch.Tensor, length: int) -> torch.Tensor:
    """Inverse of :func:`_step_major`, cropped to ``length`` positions."""
    return x.transpose(-1, -2).flatten(-2)[..., :length]


class _Segment:
    """One segment [start, stop) of the operands, zero-padded to whole chunks, in step-major layout.

    Per-channel sequences are (batch, groups, dim/groups, chunk, chunks); B and C are
    (batch | 1, groups, 1 | dim/groups, chunk | 1, chunks | 1, N). Padded steps have dt = 0 and u = 0: they
    leave the state unchanged.
    """

    def __init__(self, ops: "_Operands", start: int, stop: int, chunk: int):
        self.ops, self.start, self.stop, self.chunk = ops, start, stop, chunk
        self.padded = -(-(stop - start) // chunk) * chunk

    def sequence(self, x: torch.Tensor, start: int | None = None, stop: int | None = None) -> torch.Tensor:
        start = self.start if start is None else start
        stop = self.stop if stop is None else stop
        x = x[..., start:stop].to(self.ops.dtype)
        return _step_major(F.pad(x, (0, self.padded - x.shape[-1])), self.chunk)

    def dt_input(self, start: int | None = None, stop: int | None = None) -> torch.Tensor:
        """delta + delta_bias over the segment (or over [start, stop))."""
        x = self.sequence(self.ops.delta, start, stop)
        return x if self.ops.delta_bias is None else x + self.ops.delta_bias

    def dt(self, start: int | None = None, stop: int | None = None) -> torch.Tensor:
        start = self.start if start is None else start
        stop = self.stop if stop is None else stop
        x = self.dt_input(start, stop)
        dt = F.softplus(x) if self.ops.softplus else x
        if stop - start == self.padded:
            return dt
        return dt * _step_major(torch.arange(self.padded, device=x.device) < stop - start, self.chunk)

    def matrix(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return x.to(self.ops.dtype).reshape(1, self.ops.groups, -1, 1, 1, x.shape[-1])
        x = x if x.dim() == 4 else x.unsqueeze(1)
        x = x[..., self.start : self.stop].to(self.ops.dtype)
        x = F.pad(x, (0, self.padded - x.shape[-1])).unflatten(-1, (-1, self.chunk))
        return x.permute(0, 1, 4, 3, 2).unsqueeze(2)

    def states(self, dt: torch.Tensor, B: torch.Tensor, u: torch.Tensor, entry: torch.Tensor, work: "_Workspace"):
        """Discretise and scan into ``work[1]``; ``work[0]`` is left holding cumulative decays.

        Returns (states, exit state).
        """
        decay = torch.mul(dt.unsqueeze(-1), self.ops.A, out=work.buffer(0, self)).exp_()
        states = torch.mul((dt * u).unsqueeze(-1), B, out=work.buffer(1, self))
        return states, _chunked_scan(decay, states, entry)


class _Workspace:
    """Scratch (batch, groups, dim/groups, chunk, chunks, N) tensors reused by every segment of one call."""

    def __init__(self, ops: "_Operands", segment: int, dstate: int, count: int):
        numel = math.prod(ops.shape4[:3]) * segment * dstate
        self.storage = [torch.empty(numel, dtype=ops.dtype, device=ops.u.device) for _ in range(count)]
        self.dstate = dstate

    def buffer(self, index: int, seg: "_Segment") -> torch.Tensor:
        shape = (*seg.ops.shape4[:3], seg.chunk, seg.padded // seg.chunk, self.dstate)
        return self.storage[index][: math.prod(shape)].view(shape)


def _sum_states(x: torch.Tensor) -> torch.Tensor:
    """Sum over the last (state) dim as one matrix-vector product, faster than ``sum(-1)`` for small N."""
    return (x.reshape(-1, x.shape[-1]) @ x.new_ones(x.shape[-1], 1)).view(x.shape[:-1])


class _Operands:
    """The scan operands with channels split into groups: sequences are (batch, groups, dim // groups, L)."""

    def __init__(self, u, delta, A, B, C, D, z, delta_bias, delta_softplus, compute_dtype):
        batch, dim, self.length = u.shape
        self.groups = max(x.shape[1] if x.dim() == 4 else 1 for x in (B, C))
        self.shape4 = (batch, self.groups, dim // self.groups, self.length)
        self.dtype = compute_dtype
        self.u = u.reshape(self.shape4)
        self.delta = delta.reshape(self.shape4)
        self.z = None if z is None else z.reshape(self.shape4)
        self.A = A.to(compute_dtype).reshape(1, self.groups, -1, 1, 1, A.shape[-1])
        self.D = None if D is None else D.to(compute_dtype).reshape(1, self.groups, -1, 1)
        self.delta_bias = None if delta_bias is None else delta_bias.to(compute_dtype).reshape(1, self.groups, -1, 1, 1)
        self.softplus = delta_softplus

    def segments(self, segment: int, chunk: int) -> list[_Segment]:
        return [_Segment(self, s, min(self.length, s + segment), chunk) for s in range(0, self.length, segment)]


class SelectiveScanTorch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        compute_dtype = torch.promote_types(u.dtype, torch.float32)
        ops = _Operands(u, delta, A, B, C, D, z, delta_bias, delta_softplus, compute_dtype)
        batch, groups, dim_g, length = ops.shape4
        dstate = A.shape[-1]
        segment, chunk = _plan(batch, groups * dim_g, length, dstate)
        y = torch.empty(ops.shape4, dtype=compute_dtype, device=u.device)
        state = torch.zeros(batch, groups, dim_g, dstate, dtype=compute_dtype, device=u.device)
        entries = []
        work = _Workspace(ops, segment, dstate, count=2)
        for seg in ops.segments(segment, chunk):
            entries.append(state)
            states, state = seg.states(seg.dt(), seg.matrix(B), seg.sequence(ops.u), state, work)
            y_seg = _sum_states(states.mul_(seg.matrix(C)))
            y[..., seg.start : seg.stop] = _sequence_major(y_seg, seg.stop - seg.start)
        if ops.D is not None:
            y.addcmul_(ops.u.to(compute_dtype), ops.D)
        out = y if z is None else F.silu(ops.z.to(compute_dtype)).mul_(y)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, torch.stack(entries), y if z is not None else None)
        ctx.delta_softplus = delta_softplus
        ctx.plan = (segment, chunk)
        out = out.reshape(u.shape).to(u.dtype)
        if not return_last_state:
            return out
        last_state = state.reshape(batch, -1, dstate)
        ctx.mark_non_differentiable(last_state)
        return out, last_state

    @staticmethod
    def backward(ctx, dout, *unused):
        u, delta, A, B, C, D, z, delta_bias, entries, y = ctx.saved_tensors
        compute_dtype = entries.dtype
        ops = _Operands(u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, compute_dtype)
        dout = dout.reshape(ops.shape4).to(compute_dtype)
        if z is None:
            dy, dz = dout, None
        else:
            # in place where possible: each temporary here is as large as u
            zc = ops.z.to(compute_dtype)
            sig = torch.sigmoid(zc)
            dz = torch.sub(1, sig).mul_(zc).add_(1).mul_(sig).mul_(y).mul_(dout)  # silu'(z) * y * dout
            dz = dz.reshape(u.shape).to(z.dtype)
            dy = sig.mul_(zc).mul_(dout)  # silu(z) * dout
        du = torch.empty(ops.shape4, dtype=compute_dtype, device=u.device)
        ddelta = torch.empty_like(du)
        dA = torch.zeros_like(ops.A)
        dB = torch.zeros(B.shape, dtype=compute_dtype, device=u.device)
        dC = torch.zeros(C.shape, dtype=compute_dtype, device=u.device)
        adjoint = torch.zeros_like(entries[0])
        A_column = ops.A.transpose(-1, -2)
        work = _Workspace(ops, ctx.plan[0], A.shape[-1], count=4)
        for index, seg in reversed(list(enumerate(ops.segments(*ctx.plan)))):
            n = seg.stop - seg.start
            dt, u_seg, dy_seg = seg.dt(), seg.sequence(ops.u), seg.sequence(dy)
            B_seg, C_seg = seg.matrix(B), seg.matrix(C)
            dt_u = (dt * u_seg).unsqueeze(-1)
            states, _ = seg.states(dt, B_seg, u_seg, entries[index], work)
            # adjoint g_t = dy_t C_t + a_{t+1} g_{t+1}: a reverse scan whose decay at t is a_{t+1}
            dt_next = seg.dt(seg.start + 1, min(seg.stop + 1, ops.length))
            decay_next = torch.mul(dt_next.unsqueeze(-1), ops.A, out=work.buffer(0, seg)).exp_()
            adj = torch.mul(dy_seg.unsqueeze(-1), C_seg, out=work.buffer(2, seg))
            adjoint = _chunked_scan(decay_next, adj, adjoint, reverse=True)
            scratch = work.buffer(0, seg)
            _accumulate(dC, torch.mul(states, dy_seg.unsqueeze(-1), out=scratch).sum_to_size(C_seg.shape), seg)
            # a_t h_{t-1} = h_t - dt_t B_t u_t: the decay's gradient without shifting the states
            decay_term = states.sub_(torch.mul(dt_u, B_seg, out=scratch)).mul_(adj)
            ddt = torch.matmul(decay_term, A_column).squeeze(-1)
            dA_seg = torch.matmul(dt.flatten(-2).unsqueeze(-2), decay_term.flatten(-3, -2))
            dA += dA_seg.sum(0, keepdim=True).unsqueeze(-2)
            adj_B = _sum_states(torch.mul(adj, B_seg, out=scratch))
            ddt.addcmul_(adj_B, u_seg)
            du[..., seg.start : seg.stop] = _sequence_major(adj_B * dt, n)
            _accumulate(dB, torch.mul(adj, dt_u, out=scratch).sum_to_size(B_seg.shape), seg)
            if ctx.delta_softplus:
                ddt.mul_(torch.sigmoid(seg.dt_input()))
            ddelta[..., seg.start : seg.stop] = _sequence_major(ddt, n)
        dD = None
        if D is not None:
            du.addcmul_(dy, ops.D)
            dD = (dy * ops.u.to(compute_dtype)).sum_to_size(ops.D.shape).reshape(D.shape).to(D.dtype)
        ddelta_bias = None
        if delta_bias is not None:
            ddelta_bias = ddelta.sum((0, 3)).reshape(delta_bias.shape).to(delta_bias.dtype)
        return (
            du.reshape(u.shape).to(u.dtype),
            ddelta.reshape(delta.shape).to(delta.dtype),
            dA.reshape(A.shape).to(A.dtype),
            dB.to(B.dtype),
            dC.to(C.dtype),
            dD,
            dz,
            ddelta_bias,
            None,
            None,
        )


def _accumulate(grad: torch.Tensor, segment_grad: torch.Tensor, seg: _Segment) -> None:
    """Add a segment's gradient of B or C, in :meth:`_Segment.matrix` layout, into ``grad``."""
    if grad.dim() == 2:
        grad += segment_grad.reshape(grad.shape)
        return
    segment_grad = segment_grad.squeeze(2).permute(0, 1, 4, 3, 2).flatten(-2)[..., : seg.stop - seg.start]
    target = grad if grad.dim() == 4 else grad.unsqueeze(1)
    target[..., seg.start : seg.stop] += segment_grad


def selective_scan_torch(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """The torch backend of :func:`monai_mamba_nets.selective_scan`; arguments are assumed validated."""
    return SelectiveScanTorch.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
