"""Vocabulary trimming: the input embedding tables keep only the rows of the token ids a data set uses.

A model input of token ids indexes its embedding tables directly (`Gather(table, input_ids)`). The pass
replaces each such table by its kept rows and puts a constant id map in front: `Gather(map, input_ids)`,
an int32 table with one entry per id of the tokenizer, giving the id's row in the trimmed table; an id
that was not kept gets the unknown token's row. Firmware still feeds the tokenizer's own ids, the map's
bound is the tokenizer's vocabulary (the runtime checks the ids against it before any kernel runs), and
no id reads past the trimmed table. The model stays plain ONNX: onnxruntime runs it as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult

from rt3c.core.errors import UserError
from rt3c.passes.encode import add_initializer
from rt3c.passes.quantize_weights import embedding_gathers


@dataclass(frozen=True)
class KeptVocabulary:
    """The token ids a trimmed embedding keeps, and where the others go."""

    ids: np.ndarray
    """int64, sorted, unique: the kept ids (the special tokens among them). Row i of a trimmed table is
    row `ids[i]` of the original."""
    size: int
    """The tokenizer's vocabulary size: the rows of the original tables and the entries of the id map."""
    unknown_id: int
    """The unknown token's id: every id not kept reads its row."""
    source: str
    """Where the ids come from, for messages (`rotten-tomatoes train split`)."""

    def id_map(self) -> np.ndarray:
        """int32 [size]: each tokenizer id's row in the trimmed table."""
        rows = np.full(self.size, int(np.searchsorted(self.ids, self.unknown_id)), dtype=np.int32)
        rows[self.ids] = np.arange(len(self.ids), dtype=np.int32)
        return rows


class TrimVocabularyPass(InPlacePass):
    """Every embedding table that a model input indexes directly keeps only `vocabulary.ids`' rows, read
    through the id map; `source` names the model in errors."""

    def __init__(self, vocabulary: KeptVocabulary, source: str) -> None:
        super().__init__()
        self.vocabulary = vocabulary
        self.source = source

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        vocabulary = self.vocabulary
        kept_ids = vocabulary.ids
        if not (len(kept_ids) and kept_ids[0] >= 0 and kept_ids[-1] < vocabulary.size) or (
            vocabulary.unknown_id not in kept_ids
        ):
            raise UserError(
                f"{vocabulary.source}: the kept ids must lie in [0, {vocabulary.size}) and include the unknown "
                f"token's id {vocabulary.unknown_id}"
            )
        inputs = set(graph.inputs)
        gathers = [node for node in embedding_gathers(graph) if node.inputs[1] in inputs]
        if not gathers:
            raise UserError(
                f"{self.source}: no embedding table is indexed by a model input, so there is no vocabulary "
                f"to trim ({vocabulary.source})"
            )
        maps: dict[str, ir.Value] = {}
        tables: dict[str, ir.Value] = {}
        for node in gathers:
            table, ids = node.inputs[0], node.inputs[1]
            rows = table.const_value.shape[0]
            if rows != vocabulary.size:
                raise UserError(
                    f"{self.source}: table {table.name} has {rows} rows, but the tokenizer of "
                    f"{vocabulary.source} has {vocabulary.size} ids"
                )
            if ids.name not in maps:
                maps[ids.name] = self._map_ids(graph, node, ids)
            if table.name not in tables:
                kept = np.ascontiguousarray(table.const_value.numpy()[vocabulary.ids])
                tables[table.name] = add_initializer(graph, f"rt3c.{table.name}.kept", kept)
            node.replace_input_with(0, tables[table.name])
            node.replace_input_with(1, maps[ids.name])
        return PassResult(model, modified=True)

    def _map_ids(self, graph: ir.Graph, consumer: ir.Node, ids: ir.Value) -> ir.Value:
        """`Gather(id map, ids)` inserted before `consumer` (the first node in graph order that reads `ids`
        as embedding indices); returns its output, the rows."""
        id_map = add_initializer(graph, f"rt3c.{ids.name}.vocab_map", self.vocabulary.id_map())
        node = ir.Node("", "Gather", [id_map, ids], name=f"rt3c.{ids.name}.vocab_map.gather")
        node.outputs[0].name = f"rt3c.{ids.name}.rows"
        node.outputs[0].shape, node.outputs[0].type = ids.shape, ir.TensorType(ir.DataType.INT32)
        graph.insert_before(consumer, node)
        return node.outputs[0]
