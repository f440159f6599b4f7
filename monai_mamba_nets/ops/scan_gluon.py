"""The chunked forward's two walks in Gluon, their operands staged through shared memory by asynchronous copies.

The Triton walks of ``scan_triton`` load each sub-tile of 4 steps straight into registers. At about 180 registers an
SM keeps 8 warps of them, and a warp has one sub-tile of loads in flight: the walks are bound by the bytes in flight
per SM, not by DRAM bandwidth (docs/performance.md, "Steps across threads"). Plain Triton gives no hand over shared
memory; Gluon (``triton.experimental.gluon``) does. Here a program copies SUB steps of its channels' rows (u, delta
and, for the output, z) and of B and C into shared memory with ``cp.async``, STAGES - 1 stages ahead of the one it
computes on, and with SUB / 4 threads along each row, so that each row is read in 64-byte pieces. The loads hold no
registers while in flight. It then reads every sub-tile from shared memory in the Triton walks' register layout
((steps, state lanes, channels, states per thread), a thread per channel and lane) and does their arithmetic:
the same chunks, the same summaries and entry states, the same operand strides and masks.

Same arguments as ``_forward_summary_kernel`` and ``_forward_output_kernel`` of ``scan_triton``, plus SUB, STAGES,
EXACT and DEPENDENT. With DEPENDENT (sm_90; the carry kernel between the walks and the output walk are then launched
as programmatic dependents), the summary walk lets the carry's programs start at once, and the output walk starts
copying its first stages before it waits for the carry's entry states. Masked copies fill shared memory with zeros,
and every step outside the sequence or channel outside the group gets dt = 0, which makes it the identity, as in the
Triton walks. With EXACT (L a multiple of the chunk, the group a multiple of the channel block, N a power of two)
there is nothing to mask, and the kernels leave the masks out: they cost the output walk 29 registers a thread (217
against 188 for sm_90), one program less per SM, and on the H100 30 % more time at (16, 64, 16384)
(docs/performance.md, "The forward walks in Gluon").

Gluon runs on the GPU only: Triton's interpreter, on which the CPU tests of the kernels rely, cannot run it. Those
tests run the Triton walks, and ``tests/test_triton_compile.py`` compiles these for sm_90 on the CPU.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp

__all__ = ["forward_summary_kernel", "forward_output_kernel"]

LOG2E = gl.constexpr(1.4426950408889634)


@gluon.jit
def _combine(a_left, b_left, a_right, b_right):
    """Compose h -> a_left h + b_left, then h -> a_right h + b_right."""
    return a_left * a_right, a_right * b_left + b_right


@gluon.jit
def _softplus(x):
    """log(1 + e^x) through the GPU's approximate log2, as ``scan_triton._softplus``."""
    log2 = gl.inline_asm_elementwise(
        "lg2.approx.ftz.f32 $0, $1;", "=r,r", [1.0 + gl.exp(x)], dtype=gl.float32, is_pure=True, pack=1
    )
    return gl.where(x > 20.0, x, gl.where(x < -15.0, gl.exp(x), log2 * 0.6931471805599453))


@gluon.jit
def _launch_dependents():
    """Let the next kernel's programs, launched as dependents (programmatic dependent launch), start."""
    gl.inline_asm_elementwise(
        "griddepcontrol.launch_dependents; // $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1
    )


@gluon.jit
def _wait_for_prior_grid():
    """Wait until the kernel before this one in the stream has finished and its writes are visible."""
    gl.inline_asm_elementwise("griddepcontrol.wait; // $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1)


@gluon.constexpr_function
def _tile_layout(steps, lanes, per_thread, warps):
    """The register layout of a (steps, state lanes, channels, states per thread) tile: a thread holds the steps
    and ``per_thread`` states of one channel, and the lanes of a channel are neighbouring threads."""
    return gl.BlockedLayout([steps, 1, 1, per_thread], [1, lanes, 32 // lanes, 1], [1, 1, warps, 1], [3, 0, 1, 2])


@gluon.constexpr_function
def _swizzled(steps, element_bits, rank):
    """The shared layout of tiles with ``steps`` steps along their last axis and ``rank`` axes, swizzled in 16-byte
    units so that reading a few steps of every row at once has no bank conflicts."""
    row_bytes = steps * element_bits // 8
    order = list(range(rank))[::-1]
    return gl.SwizzledSharedLayout(128 // element_bits, max(1, 128 // row_bytes), max(1, row_bytes // 16), order)


@gluon.constexpr_function
def _copy_layout(shape, element_bits, warps):
    """The register layout of a copy of a tile of ``shape``: 16 bytes a thread along the last axis (the steps), the
    threads left over along the axes before it, last first, and the warps along the axis before the steps."""
    vector = 128 // element_bits
    threads = [1] * len(shape)
    threads[-1] = shape[-1] // vector
    left = 32 // threads[-1]
    for axis in range(len(shape) - 2, -1, -1):
        threads[axis] = min(shape[axis], left) if axis else left
        left //= threads[axis]
    per_thread = [1] * (len(shape) - 1) + [vector]
    # warps along the rows (the states of B and C, not their lanes, which are few): the fewest copies repeated
    warps_per_cta = [1] * (len(shape) - 2) + [warps, 1]
    return gl.BlockedLayout(per_thread, threads, warps_per_cta, list(range(len(shape)))[::-1])


@gluon.jit
def _row_stages(ptr, STAGES: gl.constexpr, ROWS: gl.constexpr, SUB: gl.constexpr):
    """Shared memory for STAGES (ROWS, SUB) tiles of ``ptr``'s dtype: u, delta or z."""
    layout: gl.constexpr = _swizzled(SUB, ptr.dtype.element_ty.primitive_bitwidth, 2)
    return gl.allocate_shared_memory(ptr.dtype.element_ty, [STAGES, ROWS, SUB], layout)


@gluon.jit
def _matrix_stages(ptr, STAGES: gl.constexpr, NL: gl.constexpr, NP: gl.constexpr, SUB: gl.constexpr):
    """Shared memory for STAGES (lanes, states per lane, SUB) tiles of ``ptr``'s dtype: B or C."""
    layout: gl.constexpr = _swizzled(SUB, ptr.dtype.element_ty.primitive_bitwidth, 3)
    return gl.allocate_shared_memory(ptr.dtype.element_ty, [STAGES, NL, NP, SUB], layout)


@gluon.jit
def _copy_rows(
    buffer, ptr, first, row_stride, valid_rows, t, length, ROWS: gl.constexpr, SUB: gl.constexpr, EXACT: gl.constexpr
):  # fmt: skip
    """Start copying steps t .. t + SUB of ROWS rows ``row_stride`` apart, from row ``first``, into ``buffer``;
    zeros from row ``valid_rows`` on and past the sequence's end, unless EXACT says there are none."""
    layout: gl.constexpr = _copy_layout([ROWS, SUB], ptr.dtype.element_ty.primitive_bitwidth, gl.num_warps())
    row = gl.arange(0, ROWS, gl.SliceLayout(1, layout))
    step = t + gl.arange(0, SUB, gl.SliceLayout(0, layout))
    offsets = (first + row).to(gl.int64)[:, None] * row_stride + step[None, :]
    if EXACT:
        cp.async_copy_global_to_shared(buffer, ptr + offsets)
    else:
        mask = (row < valid_rows)[:, None] & (step < length)[None, :]
        cp.async_copy_global_to_shared(buffer, ptr + offsets, mask=mask)


@gluon.jit
def _copy_matrix(
    buffer, ptr, row_stride, dstate, t, length, NL: gl.constexpr, NP: gl.constexpr, SUB: gl.constexpr,
    EXACT: gl.constexpr,
):  # fmt: skip
    """Start copying steps t .. t + SUB of the N rows of B or C into ``buffer`` as (lanes, states per lane, SUB);
    zeros from state ``dstate`` on and past the sequence's end, unless EXACT says there are none."""
    layout: gl.constexpr = _copy_layout([NL, NP, SUB], ptr.dtype.element_ty.primitive_bitwidth, gl.num_warps())
    lane = gl.arange(0, NL, gl.SliceLayout(1, gl.SliceLayout(2, layout)))[:, None, None]
    n = lane * NP + gl.arange(0, NP, gl.SliceLayout(0, gl.SliceLayout(2, layout)))[None, :, None]
    step = t + gl.arange(0, SUB, gl.SliceLayout(0, gl.SliceLayout(1, layout)))[None, None, :]
    if EXACT:
        cp.async_copy_global_to_shared(buffer, ptr + n * row_stride + step)
    else:
        cp.async_copy_global_to_shared(buffer, ptr + n * row_stride + step, mask=(n < dstate) & (step < length))


@gluon.jit
def _start_stage(
    k, start, u_rows, delta_rows, z_rows, B_rows, C_rows, u_ptr, delta_ptr, z_ptr, B_ptr, C_ptr,
    first, left, row_stride, B_row, C_row, dstate, length,
    OUTPUT: gl.constexpr, HAS_Z: gl.constexpr, CHUNK: gl.constexpr, STAGES: gl.constexpr, BD: gl.constexpr,
    NL: gl.constexpr, NP: gl.constexpr, SUB: gl.constexpr, EXACT: gl.constexpr,
):  # fmt: skip
    """Start copying stage k of the chunk from ``start`` into buffer k % STAGES, where the chunk has a stage k: SUB
    steps of the program's rows of u and delta and of B, and with OUTPUT of C and (HAS_Z) z. The group of copies is
    closed either way, so that every stage waits on the same count of groups."""
    if k < CHUNK // SUB:
        at = start + k * SUB
        stage = k % STAGES
        _copy_rows(u_rows.index(stage), u_ptr, first, row_stride, left, at, length, BD, SUB, EXACT)
        _copy_rows(delta_rows.index(stage), delta_ptr, first, row_stride, left, at, length, BD, SUB, EXACT)
        _copy_matrix(B_rows.index(stage), B_ptr, B_row, dstate, at, length, NL, NP, SUB, EXACT)
        if OUTPUT:
            _copy_matrix(C_rows.index(stage), C_ptr, C_row, dstate, at, length, NL, NP, SUB, EXACT)
            if HAS_Z:
                _copy_rows(z_rows.index(stage), z_ptr, first, row_stride, left, at, length, BD, SUB, EXACT)
    cp.commit_group()


@gluon.jit
def _wait_stage(STAGES: gl.constexpr):
    """Wait for the next stage's copies (all groups but the STAGES - 2 started after it). The barrier makes the stage
    in for every thread, and every thread done with the stage before, whose buffer the next copies refill."""
    cp.wait_group(STAGES - 2)
    gl.thread_barrier()


@gluon.jit
def _steps_of_rows(buffer, stage, j, STEPS: gl.constexpr, layout: gl.constexpr):
    """(STEPS, rows) at steps j * STEPS .. of a stage's (rows, SUB) tile, in fp32."""
    return buffer.index(stage).slice(j * STEPS, STEPS, dim=1).permute([1, 0]).load(layout).to(gl.float32)


@gluon.jit
def _matrix_steps(
    buffer, stage, j, STEPS: gl.constexpr, NL: gl.constexpr, NP: gl.constexpr, SUB: gl.constexpr, layout: gl.constexpr
):  # fmt: skip
    """(STEPS, lanes, states per thread) at steps j * STEPS .. of a stage's tile of B or C, in fp32."""
    tile = buffer.index(stage).slice(j * STEPS, STEPS, dim=2)
    return tile.permute([2, 0, 1]).load(layout).to(gl.float32)


@gluon.jit
def _program(group_size, groups, blocks, BD: gl.constexpr):
    """The program's batch index, group and chunk, its first channel and the channels of its group from there on."""
    batch_group = gl.program_id(0) // blocks
    batch, group = batch_group // groups, batch_group % groups
    in_group = gl.program_id(0) % blocks * BD
    return batch, group, gl.program_id(1), group * group_size + in_group, group_size - in_group


@gluon.jit
def _walk_setup(
    A_ptr, bias_ptr, batch, first, left, dim, dstate,
    HAS_BIAS: gl.constexpr, NL: gl.constexpr, BD: gl.constexpr, NP: gl.constexpr, TILE: gl.constexpr,
):  # fmt: skip
    """A * log2(e) as a (1, lanes, channels, states) tile, delta_bias as (1, channels), the state indices, mask and
    row of every (lane, channel, state), and the channel mask as (channels,) in the sequence tiles' layout."""
    STATE: gl.constexpr = gl.SliceLayout(0, TILE)
    SEQ: gl.constexpr = gl.SliceLayout(1, gl.SliceLayout(3, TILE))
    lane = gl.arange(0, NL, gl.SliceLayout(1, gl.SliceLayout(2, STATE)))[:, None, None]
    channel = gl.arange(0, BD, gl.SliceLayout(0, gl.SliceLayout(2, STATE)))[None, :, None]
    per_thread = gl.arange(0, NP, gl.SliceLayout(0, gl.SliceLayout(1, STATE)))[None, None, :]
    n = lane * NP + per_thread
    state_ok = (channel < left) & (n < dstate)
    A = gl.load(A_ptr + (first + channel) * dstate + n, mask=state_ok, other=0.0).to(gl.float32) * LOG2E
    seq_channel = gl.arange(0, BD, gl.SliceLayout(0, SEQ))
    seq_ok = seq_channel < left
    if HAS_BIAS:
        bias = gl.load(bias_ptr + first + seq_channel, mask=seq_ok, other=0.0).to(gl.float32)[None, :]
    else:
        bias = gl.zeros([1, BD], gl.float32, SEQ)
    row = batch * dim + first + channel
    return A[None], bias, n, state_ok, row, seq_channel, seq_ok


@gluon.jit
def _sub_tile(
    u_rows, delta_rows, B_rows, stage, j, A, bias, h, t, length, seq_ok,
    SOFTPLUS: gl.constexpr, STEPS: gl.constexpr, NL: gl.constexpr, NP: gl.constexpr, SUB: gl.constexpr,
    TILE: gl.constexpr, EXACT: gl.constexpr,
):  # fmt: skip
    """Discretise sub-tile j of a stage and scan it from entry state ``h``: (u and dt as (STEPS, channels),
    the states after every step as (STEPS, lanes, channels, states))."""
    SEQ: gl.constexpr = gl.SliceLayout(1, gl.SliceLayout(3, TILE))
    MATRIX: gl.constexpr = gl.SliceLayout(2, TILE)
    u = _steps_of_rows(u_rows, stage, j, STEPS, SEQ)
    x = _steps_of_rows(delta_rows, stage, j, STEPS, SEQ) + bias
    dt = _softplus(x) if SOFTPLUS else x
    if not EXACT:  # steps past the end and channels past the group's: the identity
        dt = gl.where(seq_ok[None, :] & (t < length)[:, None], dt, 0.0)
    B = _matrix_steps(B_rows, stage, j, STEPS, NL, NP, SUB, MATRIX)
    a = gl.exp2(dt[:, None, :, None] * A)
    b = (dt * u)[:, None, :, None] * B[:, :, None, :]
    step = gl.arange(0, STEPS, gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(3, TILE))))
    b = gl.where((step == 0)[:, None, None, None], b + a * h[None], b)
    _, states = gl.associative_scan((a, b), 0, _combine)
    return u, dt, states


@gluon.jit
def _last_step(states, STEPS: gl.constexpr, TILE: gl.constexpr):
    """The states after a sub-tile's last step, (lanes, channels, states)."""
    step = gl.arange(0, STEPS, gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(3, TILE))))
    return gl.sum(gl.where((step == STEPS - 1)[:, None, None, None], states, 0.0), axis=0)


@gluon.jit
def forward_summary_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, bias_ptr, state_ptr, dtsum_ptr,
    dim, length, dstate, group_size, groups, blocks, chunks, u_batch, delta_batch, row_stride, B_batch, B_row,
    HAS_BIAS: gl.constexpr, SOFTPLUS: gl.constexpr,
    CHUNK: gl.constexpr, STEPS: gl.constexpr, BD: gl.constexpr, NP: gl.constexpr, NL: gl.constexpr,
    SUB: gl.constexpr, STAGES: gl.constexpr, EXACT: gl.constexpr, DEPENDENT: gl.constexpr,
):  # fmt: skip
    """End state from a zero state and sum of dt of one chunk: (rows, chunks, N) and (rows, chunks)."""
    if DEPENDENT:
        _launch_dependents()
    TILE: gl.constexpr = _tile_layout(STEPS, NL, NP, gl.num_warps())
    SEQ: gl.constexpr = gl.SliceLayout(1, gl.SliceLayout(3, TILE))
    batch, group, c, first, left = _program(group_size, groups, blocks, BD)
    u_ptr += batch.to(gl.int64) * u_batch
    delta_ptr += batch.to(gl.int64) * delta_batch
    B_ptr += batch.to(gl.int64) * B_batch + group.to(gl.int64) * dstate * B_row
    A, bias, n, state_ok, row, seq_channel, seq_ok = _walk_setup(
        A_ptr, bias_ptr, batch, first, left, dim, dstate, HAS_BIAS, NL, BD, NP, TILE
    )
    u_rows, delta_rows = _row_stages(u_ptr, STAGES, BD, SUB), _row_stages(delta_ptr, STAGES, BD, SUB)
    B_rows = _matrix_stages(B_ptr, STAGES, NL, NP, SUB)
    start = c * CHUNK
    for k in gl.static_range(STAGES - 1):
        _start_stage(
            k, start, u_rows, delta_rows, u_rows, B_rows, B_rows, u_ptr, delta_ptr, u_ptr, B_ptr, B_ptr, first, left,
            row_stride, B_row, B_row, dstate, length, False, False, CHUNK, STAGES, BD, NL, NP, SUB, EXACT,
        )  # fmt: skip
    h = gl.zeros([NL, BD, NP], gl.float32, gl.SliceLayout(0, TILE))
    dtsum = gl.zeros([STEPS, BD], gl.float32, SEQ)
    step = gl.arange(0, STEPS, gl.SliceLayout(1, SEQ))
    for k in range(CHUNK // SUB):
        _wait_stage(STAGES)
        _start_stage(
            k + STAGES - 1, start, u_rows, delta_rows, u_rows, B_rows, B_rows, u_ptr, delta_ptr, u_ptr, B_ptr, B_ptr,
            first, left, row_stride, B_row, B_row, dstate, length, False, False, CHUNK, STAGES, BD, NL, NP, SUB, EXACT,
        )  # fmt: skip
        for j in gl.static_range(SUB // STEPS):
            t = start + k * SUB + j * STEPS + step
            _, dt, states = _sub_tile(
                u_rows, delta_rows, B_rows, k % STAGES, j, A, bias, h, t, length, seq_ok,
                SOFTPLUS, STEPS, NL, NP, SUB, TILE, EXACT,
            )  # fmt: skip
            h = _last_step(states, STEPS, TILE)
            dtsum += dt
    cp.wait_group(0)
    summary = row.to(gl.int64) * chunks + c
    gl.store(state_ptr + summary * dstate + n, h, mask=state_ok)
    dtsum_at = (batch * dim + first + seq_channel).to(gl.int64) * chunks + c
    gl.store(dtsum_ptr + dtsum_at, gl.sum(dtsum, axis=0), mask=seq_ok)


@gluon.jit
def forward_output_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, entry_ptr, final_ptr, out_ptr,
    dim, length, dstate, group_size, groups, blocks, chunks, u_batch, delta_batch, z_batch, row_stride, out_batch,
    B_batch, B_row, C_batch, C_row,
    HAS_D: gl.constexpr, HAS_Z: gl.constexpr, HAS_BIAS: gl.constexpr, SOFTPLUS: gl.constexpr,
    SINGLE_CHUNK: gl.constexpr,
    CHUNK: gl.constexpr, STEPS: gl.constexpr, BD: gl.constexpr, NP: gl.constexpr, NL: gl.constexpr,
    SUB: gl.constexpr, STAGES: gl.constexpr, EXACT: gl.constexpr, DEPENDENT: gl.constexpr,
):  # fmt: skip
    """One chunk from its entry state: out = (C h + D u) * silu(z). With SINGLE_CHUNK, the sequence's only chunk
    from a zero state: the program writes the zero entry state (the backward starts from it) and the final state."""
    TILE: gl.constexpr = _tile_layout(STEPS, NL, NP, gl.num_warps())
    SEQ: gl.constexpr = gl.SliceLayout(1, gl.SliceLayout(3, TILE))
    MATRIX: gl.constexpr = gl.SliceLayout(2, TILE)
    batch, group, c, first, left = _program(group_size, groups, blocks, BD)
    u_ptr += batch.to(gl.int64) * u_batch
    delta_ptr += batch.to(gl.int64) * delta_batch
    B_ptr += batch.to(gl.int64) * B_batch + group.to(gl.int64) * dstate * B_row
    C_ptr += batch.to(gl.int64) * C_batch + group.to(gl.int64) * dstate * C_row
    out_ptr += batch.to(gl.int64) * out_batch
    A, bias, n, state_ok, row, seq_channel, seq_ok = _walk_setup(
        A_ptr, bias_ptr, batch, first, left, dim, dstate, HAS_BIAS, NL, BD, NP, TILE
    )
    if HAS_D:
        D = gl.load(D_ptr + first + seq_channel, mask=seq_ok, other=0.0).to(gl.float32)[None, :]
    else:
        D = gl.zeros([1, BD], gl.float32, SEQ)
    u_rows, delta_rows = _row_stages(u_ptr, STAGES, BD, SUB), _row_stages(delta_ptr, STAGES, BD, SUB)
    B_rows, C_rows = _matrix_stages(B_ptr, STAGES, NL, NP, SUB), _matrix_stages(C_ptr, STAGES, NL, NP, SUB)
    if HAS_Z:  # a None z_ptr has no address to move
        z_ptr += batch.to(gl.int64) * z_batch
        z_rows = _row_stages(z_ptr, STAGES, BD, SUB)
    else:
        z_rows = u_rows
    start = c * CHUNK
    for k in gl.static_range(STAGES - 1):
        _start_stage(
            k, start, u_rows, delta_rows, z_rows, B_rows, C_rows, u_ptr, delta_ptr, z_ptr, B_ptr, C_ptr, first, left,
            row_stride, B_row, C_row, dstate, length, True, HAS_Z, CHUNK, STAGES, BD, NL, NP, SUB, EXACT,
        )  # fmt: skip
    entry = entry_ptr + (row.to(gl.int64) * chunks + c) * dstate + n
    if SINGLE_CHUNK:
        h = gl.zeros([NL, BD, NP], gl.float32, gl.SliceLayout(0, TILE))
        gl.store(entry, h, mask=state_ok)
    else:
        if DEPENDENT:  # the operands' first stages are on their way; the entry states come from the carry kernel
            _wait_for_prior_grid()
        h = gl.load(entry, mask=state_ok, other=0.0)
    out_rows = (first + seq_channel).to(gl.int64)[None, :] * row_stride
    step = gl.arange(0, STEPS, gl.SliceLayout(1, SEQ))
    for k in range(CHUNK // SUB):
        _wait_stage(STAGES)
        _start_stage(
            k + STAGES - 1, start, u_rows, delta_rows, z_rows, B_rows, C_rows, u_ptr, delta_ptr, z_ptr, B_ptr, C_ptr,
            first, left, row_stride, B_row, C_row, dstate, length, True, HAS_Z, CHUNK, STAGES, BD, NL, NP, SUB, EXACT,
        )  # fmt: skip
        for j in gl.static_range(SUB // STEPS):
            t = start + k * SUB + j * STEPS + step
            u, _, states = _sub_tile(
                u_rows, delta_rows, B_rows, k % STAGES, j, A, bias, h, t, length, seq_ok,
                SOFTPLUS, STEPS, NL, NP, SUB, TILE, EXACT,
            )  # fmt: skip
            h = _last_step(states, STEPS, TILE)
            C = _matrix_steps(C_rows, k % STAGES, j, STEPS, NL, NP, SUB, MATRIX)
            y = gl.sum(gl.sum(C[:, :, None, :] * states, axis=3), axis=1) + D * u
            if HAS_Z:
                z = _steps_of_rows(z_rows, k % STAGES, j, STEPS, SEQ)
                y = y * z / (1.0 + gl.exp(-z))
            if EXACT:
                gl.store(out_ptr + out_rows + t[:, None], y.to(out_ptr.dtype.element_ty))
            else:
                valid = seq_ok[None, :] & (t < length)[:, None]
                gl.store(out_ptr + out_rows + t[:, None], y.to(out_ptr.dtype.element_ty), mask=valid)
    cp.wait_group(0)
    if SINGLE_CHUNK:
        gl.store(final_ptr + row.to(gl.int64) * dstate + n, h, mask=state_ok)
