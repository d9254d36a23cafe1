"""The SparseLinear kernel: TVMScript rendered from a jinja2 template with one level's patterns baked in.

For each kept tile the kernel decodes the tile's pattern id and runs that pattern's multiply-adds,
unrolled, over every row of the activation. It reads `tile_row_ptr`, `tile_col`, the packed
`tile_pattern` and the first `nnz` values of each tile's row of `values` (the level's prefix), so the
kernels of all levels of a layer share one value buffer. Positions outside the layer (the padding of
edge tiles) are guarded only when the shape is not a multiple of the tile.
"""

from __future__ import annotations

from pathlib import Path

import jinja2
import numpy as np
import tvm
from tvm.script.parser import parse

from rt3c.sparse_format import EncodedLayer, pack_pattern_ids, pattern_bits

TEMPLATE = Path(__file__).resolve().parent / "templates" / "sparse_linear.py.j2"


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE.parent),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_sparse_linear(name: str, layer: EncodedLayer, level: int, rows_of_x: int) -> str:
    """TVMScript source of the kernel of `layer` at `level` for an activation of `rows_of_x` rows."""
    encoding = layer.levels[level]
    rows, cols = layer.tile
    table_size = len(encoding.pattern_table)
    patterns = [
        [(int(position) // cols, int(position) % cols, slot) for slot, position in enumerate(table_row)]
        for table_row in encoding.pattern_table
    ]
    return (
        _environment()
        .get_template(TEMPLATE.name)
        .render(
            name=name,
            m=rows_of_x,
            n=layer.shape[0],
            k=layer.shape[1],
            rows=rows,
            cols=cols,
            grid_rows=layer.grid[0],
            n_tiles=layer.n_tiles,
            width=layer.values[encoding.buffer].shape[1],
            id_bytes=len(pack_pattern_ids(encoding.tile_pattern, table_size)),
            bits=pattern_bits(table_size),
            row_ptr_dtype=str(layer.tile_row_ptr.dtype),
            col_dtype=str(layer.tile_col.dtype),
            patterns=patterns,
            guard=bool(layer.shape[0] % rows or layer.shape[1] % cols),
        )
    )


def sparse_linear_kernel(name: str, layer: EncodedLayer, level: int, rows_of_x: int) -> tvm.tirx.PrimFunc:
    source = render_sparse_linear(name, layer, level, rows_of_x)
    return parse(source, extra_vars={"T": tvm.script.tirx})


def kernel_arguments(layer: EncodedLayer, level: int, bias: np.ndarray | None) -> list[np.ndarray]:
    """The constant arguments in kernel order: row_ptr, col, packed ids, values, bias."""
    encoding = layer.levels[level]
    ids = pack_pattern_ids(encoding.tile_pattern, len(encoding.pattern_table))
    empty_safe = [array if array.size else np.zeros(1, array.dtype) for array in (layer.tile_col, ids)]
    values = layer.values[encoding.buffer]
    if not values.size:
        values = np.zeros((1, max(values.shape[1], 1)), np.float32)
    bias = bias if bias is not None else np.zeros(layer.shape[0], np.float32)
    return [layer.tile_row_ptr, empty_safe[0], empty_safe[1], values, bias.astype(np.float32)]
