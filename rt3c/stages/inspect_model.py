"""`rt3c inspect`: what an encoded model stores, per layer and level, against dense and CSR storage.

Per (layer, level): the level's sparsity, the value bytes it reads (its sections of the shared buffer), the
index bytes it reads (block index plus its pattern ids), and what the same weights cost dense (fp32) and as
CSR with int32 column indices and row pointers. `stored` totals count what the file really holds: shared
value buffers and shared pattern ids once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir
from rich.console import Console
from rich.table import Table

from rt3c.core.onnx_io import LEVELS_METADATA_KEY, load_onnx
from rt3c.core.progress import stdout
from rt3c.core.sparse_format import EncodedLayer
from rt3c.passes.encode import LEVEL_INPUT, sparse_linear_nodes
from rt3c.stages.encoded_model import encoded_layers

INT32_BYTES = 4


@dataclass(frozen=True)
class LayerLevelRow:
    layer: str
    level: int
    """The level's index in this file (a model encoded with `--level L` has one level, index 0)."""
    level_name: str
    """The plan's name of the level (`L2` for `--level 2`)."""
    shape: tuple[int, int]
    tile: tuple[int, int]
    sparsity: float
    value_bytes: int
    index_bytes: int
    dense_bytes: int
    csr_bytes: int


@dataclass(frozen=True)
class OtherTensor:
    """A constant outside the sparse layers' values and indices: embeddings, layers the plan leaves
    dense, biases, LayerNorm parameters, shape constants."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    bytes: int


@dataclass(frozen=True)
class Report:
    rows: list[LayerLevelRow]
    stored_value_bytes: int
    stored_index_bytes: int
    others: list[OtherTensor]
    """Every other constant of the file, largest first."""

    def level_totals(self) -> dict[int, dict[str, float]]:
        totals: dict[int, dict[str, float]] = {}
        for row in self.rows:
            total = totals.setdefault(
                row.level, {"value_bytes": 0, "index_bytes": 0, "dense_bytes": 0, "csr_bytes": 0}
            )
            for key in total:
                total[key] += getattr(row, key)
        for total in totals.values():
            total["index_over_value"] = (
                total["index_bytes"] / total["value_bytes"] if total["value_bytes"] else 0.0
            )
            total["sparsity"] = 1 - total["value_bytes"] / total["dense_bytes"]
        return totals

    def to_json(self) -> dict[str, object]:
        return {
            "layers": [asdict(row) for row in self.rows],
            "levels": self.level_totals(),
            "stored": {
                "value_bytes": self.stored_value_bytes,
                "index_bytes": self.stored_index_bytes,
                "other_bytes": sum(tensor.bytes for tensor in self.others),
            },
            "others": [asdict(tensor) for tensor in self.others],
        }


def _kept_inside(layer: EncodedLayer, level: int) -> int:
    """Weights this level keeps inside the layer's shape (edge tiles also store zero padding)."""
    encoding = layer.levels[level]
    positions = encoding.pattern_table[layer.tile_pattern(level)].astype(np.int64)  # [T, nnz]
    rows = layer.tile_rows()[:, None] * layer.tile[0] + positions // layer.tile[1]
    cols = layer.tile_col.astype(np.int64)[:, None] * layer.tile[1] + positions % layer.tile[1]
    return int(((rows < layer.shape[0]) & (cols < layer.shape[1])).sum())


def _level_row(layer: EncodedLayer, level: int, level_name: str) -> LayerLevelRow:
    encoding = layer.levels[level]
    kept = layer.n_tiles * encoding.nnz
    rows, cols = layer.shape
    # Dense and CSR storage are counted in the values' own type (float32, or int8 with int8 weights).
    value = layer.value_dtype.itemsize
    return LayerLevelRow(
        layer=layer.name,
        level=level,
        level_name=level_name,
        shape=layer.shape,
        tile=layer.tile,
        sparsity=1 - _kept_inside(layer, level) / (rows * cols),
        value_bytes=kept * value,
        index_bytes=layer.index_bytes(),
        dense_bytes=rows * cols * value,
        csr_bytes=kept * (value + INT32_BYTES) + (rows + 1) * INT32_BYTES,
    )


def inspect_model(path: Path) -> Report:
    model = load_onnx(path)
    return inspect_encoded(model, encoded_layers(model, str(path)))


def inspect_encoded(model: ir.Model, layers: dict[str, EncodedLayer]) -> Report:
    names = model.metadata_props.get(LEVELS_METADATA_KEY, "L0").split(",")
    sparse = {value.name for node in sparse_linear_nodes(model.graph) for value in node.inputs[1:4]}
    others = [
        OtherTensor(name, tuple(value.const_value.shape.numpy()), str(value.const_value.numpy().dtype),
                    value.const_value.nbytes)
        for name, value in model.graph.initializers.items()
        if name not in sparse and name != LEVEL_INPUT and value.const_value is not None
    ]  # fmt: skip
    rows = [
        _level_row(layer, level, names[level])
        for layer in layers.values()
        for level in range(len(layer.levels))
    ]
    return Report(
        rows,
        stored_value_bytes=sum(layer.value_bytes() for layer in layers.values()),
        stored_index_bytes=sum(layer.index_bytes() for layer in layers.values()),
        others=sorted(others, key=lambda tensor: -tensor.bytes),
    )


def _byte_cells(sparsity: float, value: float, index: float, dense: float, csr: float) -> list[str]:
    ratio = index / value if value else 0.0
    return [
        f"{sparsity:.3f}",
        *(str(int(v)) for v in (value, index)),
        f"{ratio:.3f}",
        str(int(dense)),
        str(int(csr)),
    ]


def print_report(report: Report) -> None:
    """The table of `rt3c inspect`, then one line of what the file stores."""
    table = Table(
        "layer", "lvl", "shape", "tile", "sparsity", "values B", "index B", "index/values", "dense B", "CSR B"
    )
    for row in report.rows:
        shape, tile = f"{row.shape[0]}x{row.shape[1]}", f"{row.tile[0]}x{row.tile[1]}"
        bytes_ = (row.value_bytes, row.index_bytes, row.dense_bytes, row.csr_bytes)
        table.add_row(row.layer, row.level_name, shape, tile, *_byte_cells(row.sparsity, *bytes_))
    names = {row.level: row.level_name for row in report.rows}
    for level, total in report.level_totals().items():
        bytes_ = (total["value_bytes"], total["index_bytes"], total["dense_bytes"], total["csr_bytes"])
        table.add_row("[b]total[/b]", names[level], "", "", *_byte_cells(total["sparsity"], *bytes_))
    # Piped output has no terminal width to fit: print the table whole rather than cut layer names.
    console = stdout if stdout.is_terminal else Console(highlight=False, width=_natural_width(table))
    console.print(table)
    stored = report.stored_value_bytes + report.stored_index_bytes
    one_level = report.level_totals()[0]
    stdout.print(
        f"stored: {report.stored_value_bytes} value + {report.stored_index_bytes} index bytes = {stored} "
        f"({stored / (one_level['value_bytes'] + one_level['index_bytes']):.3f}x level {names[0]} alone, "
        f"{stored / one_level['dense_bytes']:.3f}x dense)",
        soft_wrap=True,
    )
    if report.others:
        largest = report.others[0]
        stdout.print(
            f"other constants (embeddings, layers left dense, biases, norms): {len(report.others)} tensors, "
            f"{sum(tensor.bytes for tensor in report.others)} bytes; the largest {largest.name} "
            f"{largest.dtype}{list(largest.shape)} {largest.bytes} bytes",
            soft_wrap=True,
        )


def _natural_width(table: Table) -> int:
    return Console(width=100_000).measure(table).maximum
