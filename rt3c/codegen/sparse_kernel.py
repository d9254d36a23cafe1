"""The SparseLinear kernel: TVMScript rendered from a jinja2 template with one level's patterns baked in.

Each tile row's tiles come in runs, one per chain of patterns (docs/FORMAT.md); the kernel has one loop
per chain with that chain's pattern at this level unrolled inside, so a tile costs its multiply-adds and
the loop step, with no pattern decode or dispatch. It reads `tile_run_ptr`, `tile_col` and the level's
sections of the section-major `values` (a prefix of the buffer: a sparse level streams only its own
bytes), so the kernels of all levels of a layer read the same arrays. int8 values are converted to float
as they are loaded, and each output channel's scale is applied once to its accumulated sum.

The loop order is what makes it fast. Tokens are processed in blocks: a block of activations is first
transposed (`x_t[column, token]`, a scratch buffer of k x block floats), so each weight of a pattern
multiplies `block` contiguous floats, one SIMD FMA per vector of tokens with the weight broadcast. Each
tile row accumulates into a `rows x block` block that stays in registers over all the row's tiles and is
written to `y` once, with the bias. The block size is chosen from the target's vector width and register
file (`rt3c.codegen.targets.token_block`). One-row tiles (1xN row segments) go two at a time through a
run on SIMD targets (`_pair_variables`). Edge tiles need no guard inside the hot loop: the padding columns of `x_t` are zero
and padding rows are never written.

One token on a SIMD target (a GEMV) has a block of one token, where each weight is a scalar multiply-add;
there the kernel comes from `sparse_gemv.py.j2` instead, vectorised over each tile's values
(`_gemv_variables`), when a tile keeps at least `GEMV_MIN_VALUES` of them.
"""

from __future__ import annotations

from pathlib import Path

import jinja2
import numpy as np
import tvm
from tvm.script.parser import parse

from rt3c.codegen.targets import Target, token_block
from rt3c.core.sparse_format import EncodedLayer

TEMPLATE = Path(__file__).resolve().parent / "templates" / "sparse_linear.py.j2"
GEMV_TEMPLATE = TEMPLATE.with_name("sparse_gemv.py.j2")
GEMV_MIN_VALUES = 4
"""The GEMV template needs a whole vector of values per tile: with 3 or fewer, its per-tile loads cost more
than the token-block template's scalar multiply-adds (aarch64, 768x768, 1 token: 4x4 tiles at 3 values per
tile 244,681 -> 269,941 instructions, 1x8 at 3 values 588,857 -> 624,478)."""
GEMV_MAX_GATHERED = 32
"""Its workspace x_p (the token gathered once per chain, chains x tile columns x values rounded up to 4)
may hold at most this many floats per input feature (128 bytes: 393 KB for 3072 inputs); beyond that (many
chains), the token-block template."""


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE.parent),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_sparse_linear(name: str, layer: EncodedLayer, level: int, rows_of_x: int, target: Target) -> str:
    """TVMScript source of the kernel of `layer` at `level` for an activation of `rows_of_x` rows."""
    encoding = layer.levels[level]
    rows, cols = layer.tile
    block = token_block(target, rows, rows_of_x)
    slots = layer.value_slots(level)
    conversions, position = _conversions(slots, target)
    chains = [
        [
            (int(position) // cols, int(position) % cols, slot, *slots[slot])
            for slot, position in enumerate(table_row)
        ]
        for table_row in encoding.pattern_table[encoding.chain_pattern]
    ]
    template = TEMPLATE
    extra: dict[str, object] = {"loads": []}
    gathered = len(chains) * layer.grid[1] * -(-len(slots) // 4) * 4  # x_p's floats
    if (
        rows_of_x == 1
        and layer.scale is None
        and target.vector_floats
        and len(slots) >= GEMV_MIN_VALUES
        and gathered <= GEMV_MAX_GATHERED * layer.shape[1]
    ):
        # One token on a SIMD target: vectorise over each tile's values instead (sparse_gemv.py.j2).
        template = GEMV_TEMPLATE
        extra = _gemv_variables(slots, chains, target.vector_floats)
        extra["grid_cols"] = layer.grid[1]
    if template is TEMPLATE and layer.scale is None and target.vector_floats:
        if block > 1:
            # A tile's values as vector loads (w), one per run of adjacent slots, when each feeds vector
            # FMAs (aarch64, 768x768, 16 tokens, s = 0.77: 1,036,391 -> 920,999 instructions; with a block
            # of one token they cost more: 1x8 at s = 0.77 588,857 -> 635,625).
            loads = _slot_groups(slots, target.vector_floats)
            extra = {
                "loads": [
                    (first, count, base, stride, offset) for first, base, stride, offset, count in loads
                ]
            }
        if rows == 1 and (block > 1 or target.one_token_row_pairs):
            # One-row tiles (1xN row segments) keep few values each, so a tile's loop step and value loads
            # are a large share of its cost: tiles go two at a time through a chain's run, both tiles' values
            # in one vector load per section (aarch64, 768x768, 1x8, s = 0.77: 16 tokens 1,228,132 ->
            # 1,133,664 instructions, 1 token 588,857 -> 515,699; four or eight tiles at a time executed
            # more, their leftover tiles costing more than the loop steps saved).
            extra.update(_pair_variables(slots))
    return (
        _environment()
        .get_template(template.name)
        .render(
            **{"pairs": False, "pair_loads": [], **extra},
            name=name,
            m=rows_of_x,
            n=layer.shape[0],
            k=layer.shape[1],
            rows=rows,
            cols=cols,
            grid_rows=layer.grid[0],
            n_tiles=layer.n_tiles,
            values_size=max(layer.values[encoding.buffer].size, 1)
            + (OVERREAD if layer.scale is not None else 0),
            run_ptr_dtype=str(layer.tile_run_ptr.dtype),
            col_dtype=str(layer.tile_col.dtype),
            chains=chains,
            block=block,
            token_blocks=-(-rows_of_x // block),
            k_padded=layer.grid[1] * cols,
            pad_tokens=bool(rows_of_x % block),
            pad_cols=bool(layer.shape[1] % cols),
            pad_rows=bool(layer.shape[0] % rows),
            lanes="T.vectorized" if target.vector_floats else "T.unroll",
            int8=layer.scale is not None,
            conversions=conversions,
            position=position,
        )
    )


OVERREAD = 15
"""int8 bytes the vector conversions may read past a tile's last value (the kernel argument is padded with
as many zeros, so the last tile's load stays inside it)."""


def _conversions(
    slots: list[tuple[int, int, int]], target: Target
) -> tuple[list[tuple[int, int, int, int, int]], list[int]]:
    """How a tile's int8 values become floats in `w` before its multiply-adds: the conversions, each
    (first element of w, lanes, base, stride, offset) converting `lanes` adjacent bytes from
    `values[base + tile * stride + offset]`, and the element of w that holds each slot.

    One section's slots of a tile are adjacent in the buffer. On SIMD targets each section's run is cut in
    loads of up to 16 lanes, each rounded up to a power of two: the lanes past the run read the next
    tile's bytes (or the argument's padding) and are never used. One vector load and two or three
    widening instructions per tile replace a load and a conversion per value (aarch64, 768x768, 16
    tokens: 1.21x float32's instructions at s = 0.9 with a conversion per value, docs/KERNELS.md). The C
    target converts value by value, unrolled."""
    runs: list[list[int]] = []
    for slot, (base, stride, _) in enumerate(slots):
        if runs and (base, stride) == tuple(slots[runs[-1][0]][:2]):
            runs[-1].append(slot)
        else:
            runs.append([slot])
    conversions, position = [], []
    for run in runs:
        for start in range(0, len(run), 16 if target.vector_floats else len(run)):
            count = min(len(run) - start, 16) if target.vector_floats else len(run)
            lanes = 1 << (count - 1).bit_length() if target.vector_floats else count
            base, stride, offset = slots[run[start]]
            first = sum(conversion[1] for conversion in conversions)
            conversions.append((first, lanes, base, stride, offset))
            position.extend(range(first, first + count))
    return conversions, position


def _slot_groups(slots: list[tuple[int, int, int]], lanes: int) -> list[tuple[int, int, int, int, int]]:
    """Runs of at most `lanes` value slots that are contiguous in the value buffer (within a section):
    (first slot, base, stride, first offset, length)."""
    groups: list[tuple[int, int, int, int, int]] = []
    for slot, (base, stride, offset) in enumerate(slots):
        if groups:
            first, g_base, g_stride, g_offset, length = groups[-1]
            if (g_base, g_stride, g_offset + length) == (base, stride, offset) and length < lanes:
                groups[-1] = (first, g_base, g_stride, g_offset, length + 1)
                continue
        groups.append((slot, base, stride, offset, 1))
    return groups


def _pair_variables(slots: list[tuple[int, int, int]]) -> dict[str, object]:
    """The token-block template's variables for one-row tiles taken two at a time: per section, one vector
    load of both tiles' values into `w` (first element of w, floats, base, stride: the two tiles' values of
    a section are adjacent), and the element of w that holds each (tile of the pair, slot)."""
    sections: dict[tuple[int, int], int] = {}
    for base, stride, _ in slots:
        sections.setdefault((base, stride), sum(2 * width for _, width in sections))
    pair_loads = [(first, 2 * stride, base, stride) for (base, stride), first in sections.items()]
    pair_position = [
        [sections[base, stride] + tile * stride + offset for base, stride, offset in slots]
        for tile in range(2)
    ]
    return {"pairs": True, "pair_loads": pair_loads, "pair_position": pair_position}


def _gemv_variables(
    slots: list[tuple[int, int, int]], chains: list[list[tuple[int, int, int, int, int]]], lanes: int
) -> dict[str, object]:
    """The GEMV template's slot groups (vectors of values contiguous in the buffer) and accumulators: a
    chain's group adds into the accumulator of its rows (per lane, the tile row it belongs to), shared by
    every chain whose group has the same rows, and reduced into the outputs once per tile row."""
    groups = _slot_groups(slots, lanes)
    accumulators: dict[tuple[int, tuple[int, ...]], int] = {}
    chain_accumulators = []
    for pattern in chains:
        keys = [
            (g, tuple(p[0] for p in pattern[first : first + length]))
            for g, (first, *_, length) in enumerate(groups)
        ]
        chain_accumulators.append([accumulators.setdefault(key, len(accumulators)) for key in keys])
    return {
        "width": -(-len(slots) // 4) * 4,
        "groups": groups,
        "accumulators": [rows for _, rows in accumulators],
        "chain_accumulators": chain_accumulators,
    }


def sparse_linear_kernel(
    name: str, layer: EncodedLayer, level: int, rows_of_x: int, target: Target
) -> tvm.tirx.PrimFunc:
    source = render_sparse_linear(name, layer, level, rows_of_x, target)
    return parse(source, extra_vars={"T": tvm.script.tirx})


def kernel_arguments(layer: EncodedLayer, level: int, bias: np.ndarray | None) -> list[np.ndarray]:
    """The constant arguments in kernel order: run pointer, columns, values, bias, and the scale of int8
    values."""
    encoding = layer.levels[level]
    columns = layer.tile_col if layer.tile_col.size else np.zeros(1, layer.tile_col.dtype)
    values = layer.values[encoding.buffer]
    if not values.size:
        values = np.zeros(1, layer.value_dtype)
    if layer.scale is not None:
        values = np.concatenate([values, np.zeros(OVERREAD, np.int8)])
    bias = bias if bias is not None else np.zeros(layer.shape[0], np.float32)
    scale = [] if layer.scale is None else [layer.scale]
    return [layer.tile_run_ptr, columns, values, bias.astype(np.float32), *scale]
