"""CPU schedules for the kernels TVM legalizes with a plain loop nest.

`schedule_matmul` gives every matmul-shaped kernel (one block, spatial loops ... i, j and one reduction
k, as TVM legalizes ONNX MatMul/Gemm, batched or not) the classic register-blocked CPU schedule:
an `i_block x j_block` tile of the output is accumulated in a local buffer (registers) over the whole
k loop, the j tile vectorised and the i tile unrolled, so each loaded weight vector feeds `i_block`
multiply-adds. Block sizes divide the extents, so no predicate blocks vectorisation. A kernel that TVM
fused from a matmul and elementwise ops after it (Gemm's bias add: `fused_matmul_add`) gets the same
schedule, with those ops applied to each output tile as it leaves the accumulator.
"""

from __future__ import annotations

import tvm
from tvm import s_tir
from tvm.s_tir.schedule import SBlockRV

_OUT_ELEMWISE_FUSABLE = 4


def _largest_divisor(extent: int, candidates: tuple[int, ...]) -> int:
    return next((factor for factor in candidates if extent % factor == 0), 1)


def _iter_types(schedule: s_tir.Schedule, block: SBlockRV) -> list[int] | None:
    """The block's iteration types if it has a loop of its own for each, else None."""
    iter_types = [var.iter_type for var in schedule.get(block).iter_vars]
    return iter_types if len(schedule.get_loops(block)) == len(iter_types) else None


def _matmul_blocks(schedule: s_tir.Schedule) -> tuple[SBlockRV, list[SBlockRV]] | None:
    """(the matmul block, the elementwise blocks after it) if the function is a single reduction over k of
    spatial loops, possibly followed by elementwise blocks; else None."""
    blocks = schedule.get_child_blocks(schedule.get_sblock("root"))
    if not blocks:
        return None
    block, *epilogue = blocks
    spatial, reduction = tvm.tirx.IterVar.DataPar, tvm.tirx.IterVar.CommReduce
    iter_types = _iter_types(schedule, block)
    if iter_types is None or len(iter_types) < 3:
        return None
    if iter_types[-1] != reduction or any(t != spatial for t in iter_types[:-1]):
        return None
    if len(schedule.get(block).reads) != 2:  # a product of two operands, not a sum or mean of one
        return None
    for after in epilogue:
        after_types = _iter_types(schedule, after)
        if after_types is None or any(t != spatial for t in after_types):
            return None
    return block, epilogue


def schedule_matmul(func: tvm.tirx.PrimFunc, vector_floats: int) -> tvm.tirx.PrimFunc:
    """`func` register-blocked if it is a matmul-shaped kernel; any other kernel is returned as is.

    `vector_floats` is the SIMD width in floats; 0 for targets whose code generator emits no vector types
    (TVM's C target), where the j tile is unrolled instead.
    """
    # AnnotateTIROpPattern marks reductions whose output can take an elementwise epilogue (4, kOutEWiseFusable),
    # fused ones too (rt3c.codegen.onnx_ops annotates after fusion); hand-written kernels such as SparseLinear
    # carry no pattern and keep their own structure.
    if func.attrs is None or int(func.attrs.get("op_pattern", -1)) != _OUT_ELEMWISE_FUSABLE:
        return func
    schedule = s_tir.Schedule(func)
    blocks = _matmul_blocks(schedule)
    if blocks is None:
        return func
    block, epilogue = blocks
    *batch, i, j, k = schedule.get_loops(block)
    i_extent, j_extent = (int(schedule.get(loop).extent) for loop in (i, j))
    # Scalar FPUs (Cortex-M: 32 single registers) hold at most 16 accumulators, e.g. 4 rows x 4 columns.
    i_block = _largest_divisor(i_extent, (8, 6, 4, 3, 2) if vector_floats else (4, 3, 2))
    if vector_floats:
        # Up to 16 accumulator vectors: few activation rows (GEMV) get a wider j tile, so enough independent
        # multiply-adds are in flight and each weight row is read in long runs (1 token, host: 0.40-0.67x
        # of onnxruntime with 2 vectors, 0.69-1.11x with 8).
        # The accumulator stays under TVM's 1 KiB stack limit (above it, it would be a workspace request).
        vectors = [
            count
            for count in (16, 8, 4, 2)
            if count * i_block <= 16 and count * i_block * vector_floats * 4 < 1024
        ] or [1]
        widths = (*(count * vector_floats for count in vectors), vector_floats, 8, 4, 2)
        j_block = _largest_divisor(j_extent, widths)
    else:
        # As many columns as 16 accumulators allow: 4 with 4 rows, 16 for one row (a GEMV then loads each
        # activation once per 16 multiply-adds, not 4).
        j_block = _largest_divisor(j_extent, tuple(w for w in (16, 8, 4, 2) if w * i_block <= 16))
    i_outer, i_inner = schedule.split(i, [None, i_block])
    j_outer, j_inner = schedule.split(j, [None, j_block])
    schedule.reorder(*batch, j_outer, i_outer, k, i_inner, j_inner)
    # Default scope: TVM keeps small buffers on the stack (registers after optimisation), where a "local"
    # buffer would be a TVMBackendAllocWorkspace request on the C target (then every FMA loads and stores).
    accumulator = schedule.cache_write(block, 0, "global")
    try:
        # Each reads the one before it: folded, in order, into the write-back of the accumulator.
        for after in epilogue:
            schedule.reverse_compute_inline(after)
    except s_tir.schedule.ScheduleError:
        return func  # an epilogue that is not a chain on the matmul's output (Gemm with beta: a scaled bias)
    schedule.reverse_compute_at(accumulator, i_outer)
    schedule.unroll(i_inner)
    if vector_floats:
        schedule.vectorize(j_inner)
    else:
        schedule.unroll(j_inner)
    schedule.decompose_reduction(block, k)
    return schedule.mod["main"].with_attr("global_symbol", func.attrs["global_symbol"])
