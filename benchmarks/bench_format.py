"""Bytes of the encoded format on MiniLM-L6's real encoder weights: index vs values, levels vs one level.

    .venv/bin/python benchmarks/bench_format.py [--model minilm-l6] [--patterns 8]

For each tile shape, the one-shot planner prunes every encoder linear layer to 3 nested levels (sparsity
0.5 / 0.7 / 0.8); the table gives, summed over the layers: index bytes over value bytes at the densest and
the sparsest level, the bytes stored for all three levels over the bytes of level 0 alone, and CSR (fp32
values, int32 indices) over the encoding at the sparsest level. Goals: index <= 5% of values at 4x4 and
larger tiles; three nested levels <= 1.05x one level.
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from rt3c.core.plan import Level
from rt3c.core.sparse_format import encode_layer
from rt3c.core.sparsify import one_shot_plan
from rt3c.stages.models import load_model

SPARSITIES = [0.5, 0.7, 0.8]
TILES = [(4, 4), (4, 8), (8, 8), (16, 16)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--patterns", type=int, default=8)
    args = parser.parse_args()
    module = load_model(args.model).module
    weights = {
        name: p.detach().numpy()
        for name, p in module.named_parameters()
        if p.ndim == 2 and "encoder" in name and "embeddings" not in name
    }
    levels = [Level(f"L{i}") for i in range(len(SPARSITIES))]
    table = Table(
        "tile",
        "index/values L0",
        "index/values L2",
        "3 levels / L0 alone",
        "CSR / encoded L2",
        "sparsity L0..L2",
        title=f"{args.model}: {len(weights)} encoder layers, {args.patterns} patterns per set",
    )
    for tile in TILES:
        plan = one_shot_plan(weights, levels, SPARSITIES, tile, args.patterns)
        value = [0, 0, 0]
        index = [0, 0, 0]
        csr = [0, 0, 0]
        stored = 0
        for name, layer_plan in plan.layers.items():
            encoded = encode_layer(weights[name], layer_plan)
            stored += encoded.value_bytes() + encoded.index_bytes()
            for level, encoding in enumerate(encoded.levels):
                kept = encoded.n_tiles * encoding.nnz
                value[level] += kept * 4
                index[level] += encoded.index_bytes()  # block index and pattern runs, shared by all levels
                csr[level] += kept * 8 + (encoded.shape[0] + 1) * 4
        table.add_row(
            f"{tile[0]}x{tile[1]}",
            f"{index[0] / value[0]:.4f}",
            f"{index[2] / value[2]:.4f}",
            f"{stored / (value[0] + index[0]):.4f}",
            f"{csr[2] / (value[2] + index[2]):.3f}",
            " / ".join(f"{plan.sparsity(level):.3f}" for level in range(3)),
        )
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
