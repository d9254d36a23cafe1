"""What `rt3c search` settles before it trains anything: the latency model, the search space, the block
ratio of the BP backbone and the DVFS trace, and the refusal of a board whose deadlines no candidate meets.

The block ratio (the fraction of tiles BP removes from every planned layer, shared by every level and
candidate) is the smallest of `DEFAULT_BLOCK_RATIO`, +0.05, ... up to `MAX_BLOCK_RATIO` at which the sparsest
candidate of the space (every layer at the sparsest density, the cheapest pattern-set size) meets every
level's deadline under the latency model, so the search always has feasible candidates. `DEFAULT_BLOCK_RATIO`
(0.3) is `rt3c prune`'s rule (BP takes half of the densest level's sparsity) for a densest level at 0.6.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from rt3c.codegen.targets import Target
from rt3c.core.battery import RT3_DEFAULT_TRACE
from rt3c.core.boards import Board
from rt3c.core.errors import UserError
from rt3c.core.sparsify import block_prune
from rt3c.stages.export import export_model
from rt3c.stages.latency.calibrate import build_latency_model
from rt3c.stages.latency.cost_model import LatencyModel
from rt3c.stages.latency.units import check_source, cycles_per_unit, default_source, host_clock_hz
from rt3c.stages.models.base import LoadedModel
from rt3c.stages.search.evaluate import CandidatePlanner, level_latencies
from rt3c.stages.search.space import SearchSpace

if TYPE_CHECKING:
    from rt3c.stages.search.config import SearchConfig

DEFAULT_BLOCK_RATIO = 0.3
MAX_BLOCK_RATIO = 0.7
BLOCK_RATIO_STEP = 0.05


@dataclass(frozen=True)
class SearchSetup:
    source: str
    latency_model: LatencyModel
    cycles_per_unit: float
    host_hz: float | None
    space: SearchSpace
    block_ratio: float
    trace: tuple[float, ...]
    """Fraction of time at each board level: RT3's 50 / 30 / 20 % for three levels, else equal shares."""

    @property
    def dense_cycles(self) -> float:
        return self.latency_model.dense_units() * self.cycles_per_unit


def sparsest_latencies(
    planner: CandidatePlanner, model: LatencyModel, board: Board, per_unit: float
) -> tuple[tuple[float, ...], int]:
    """Seconds per level of the space's sparsest candidate, and its pattern-set size."""
    space = planner.space
    sparsest = len(space.densities) - 1
    best: tuple[tuple[float, ...], int] | None = None
    for k_index, k in enumerate(space.pattern_counts):
        choices = [k_index if d.kind == "patterns" else sparsest for d in space.decisions]
        latencies = level_latencies(model, planner.layers(choices), board, per_unit)
        if best is None or max(latencies) < max(best[0]):
            best = (latencies, k)
    assert best is not None
    return best


def choose_block_ratio(
    weights: dict[str, np.ndarray],
    tile: tuple[int, int],
    space: SearchSpace,
    model: LatencyModel,
    board: Board,
    per_unit: float,
    requested: float | None,
) -> float:
    """The requested ratio, or the smallest on the grid, at which the sparsest candidate meets every deadline."""
    count = round((MAX_BLOCK_RATIO - DEFAULT_BLOCK_RATIO) / BLOCK_RATIO_STEP) + 1
    grid = (
        [requested]
        if requested is not None
        else [DEFAULT_BLOCK_RATIO + BLOCK_RATIO_STEP * i for i in range(count)]
    )
    for ratio in grid:
        kept = {name: block_prune(weight, tile, ratio) for name, weight in weights.items()}
        latencies, patterns = sparsest_latencies(
            CandidatePlanner(weights, tile, kept, space), model, board, per_unit
        )
        late = [i for i, (t, lv) in enumerate(zip(latencies, board.levels, strict=True)) if t > lv.deadline_s]
        if not late:
            return round(ratio, 4)
    level = late[0]
    raise UserError(
        f"board {board.name}: level L{level} ({board.levels[level].frequency_hz / 1e6:g} MHz) cannot meet its "
        f"{board.levels[level].deadline_s * 1e3:g} ms deadline even at the sparsest setting (block ratio "
        f"{grid[-1]:.2f}, {space.densities[-1]:g} of each kept tile, {patterns} patterns): "
        f"{latencies[level] * 1e3:.2f} ms predicted"
    )


def prepare(
    config: SearchConfig,
    model: LoadedModel,
    parameters: dict[str, torch.nn.Parameter],
    board: Board,
    target: Target,
) -> SearchSetup:
    source = config.latency or default_source(target)
    check_source(source, target)
    weights = {name: p.detach().numpy().astype(np.float32) for name, p in parameters.items()}
    with tempfile.TemporaryDirectory(prefix="rt3c-search-") as tmp:
        # Kernels cost what the model's structure makes them cost: any weights of it will do.
        onnx_path = Path(tmp) / "model.onnx"
        export_model(model, onnx_path, seq_len=config.seq_len)
        latency_model, _ = build_latency_model(
            onnx_path, weights, config.tile, config.seq_len, target, source
        )
    host_hz = host_clock_hz() if source == "host" else None
    per_unit = cycles_per_unit(source, board.cycles_per_instruction, host_hz)
    space = SearchSpace(tuple(weights), len(board.levels), config.pattern_counts, config.densities)
    ratio = choose_block_ratio(
        {name: w.astype(np.float64) for name, w in weights.items()},
        config.tile,
        space,
        latency_model,
        board,
        per_unit,
        config.block_ratio,
    )
    n = len(board.levels)
    trace = RT3_DEFAULT_TRACE if n == len(RT3_DEFAULT_TRACE) else tuple([1.0 / n] * n)
    return SearchSetup(source, latency_model, per_unit, host_hz, space, ratio, trace)
