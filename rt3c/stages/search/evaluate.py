"""Evaluating a candidate of `rt3c search`: its plan, the accuracy of every level on the shared weights,
and every level's latency from the latency model.

Every candidate stands on one BP backbone (the tiles block pruning kept, and the weights trained with them)
and fits each layer's pattern set (`sparsify.pattern_sets`, nested over the levels) on the backbone's
weights with the candidate's pattern count and nonzeros per tile. Accuracy of each level on the validation
subset: after a short recovery (`recovery.steps` of joint distillation of all levels from the backbone's
weights, as `rt3c prune`'s joint stage; the same warm start for every candidate), or with the backbone's
weights masked as they are (`--one-shot`).

Candidates run in worker processes (`evaluation_pool`): each worker builds its `CandidateEvaluator` once
from a picklable `EvaluatorSpec`. Ray, when installed (`pip install rt3c[ray]`), runs the same workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from rt3c.core.boards import Board
from rt3c.core.errors import SettingError
from rt3c.core.plan import LayerPlan
from rt3c.core.sparsify import pattern_sets
from rt3c.stages.datasets import Split
from rt3c.stages.latency.cost_model import LatencyModel
from rt3c.stages.models import load_model
from rt3c.stages.models.base import LoadedModel
from rt3c.stages.prune.stages import layer_masks
from rt3c.stages.prune.training import Teacher, TrainSettings, evaluate, train
from rt3c.stages.search.objective import Evaluation
from rt3c.stages.search.space import SearchSpace

BACKENDS = ("process", "ray", "serial")


@dataclass(frozen=True)
class EvaluatorSpec:
    """Everything a worker needs to evaluate candidates (picklable)."""

    model: str
    backbone_state: dict[str, torch.Tensor]
    """The weights every candidate starts from (BP-trained, or the dense ones with BP's masks)."""
    kept_tiles: dict[str, np.ndarray]
    """Per planned layer, the tiles the backbone's block pruning kept."""
    tile: tuple[int, int]
    space: SearchSpace
    validation: Split
    latency: dict
    """`LatencyModel.to_json()`."""
    board: Board
    cycles_per_unit: float
    train: Split | None = None
    recovery: TrainSettings | None = None
    """Joint distillation of each candidate's levels before it is measured (None or 0 steps: none)."""
    teacher_state: dict[str, torch.Tensor] | None = None
    """The dense model's weights: the teacher of the recovery."""


class CandidatePlanner:
    """Candidate decisions -> plan layers, over the backbone's weights and its block pruning."""

    def __init__(
        self,
        weights: dict[str, np.ndarray],
        tile: tuple[int, int],
        kept_tiles: dict[str, np.ndarray],
        space: SearchSpace,
    ):
        self.weights = weights
        self.tile = tile
        self.space = space
        self.kept = kept_tiles

    def nonzeros(self, density: float) -> int:
        size = self.tile[0] * self.tile[1]
        return min(size, max(1, round(density * size)))

    def layers(self, choices: list[int] | tuple[int, ...]) -> dict[str, LayerPlan]:
        described = self.space.describe(list(choices))
        layers = {}
        for name, weight in self.weights.items():
            entry = described[name]
            nonzeros = [self.nonzeros(d) for d in entry["density"]]
            levels = pattern_sets(weight, self.kept[name], self.tile, int(entry["patterns"]), nonzeros)
            layers[name] = LayerPlan(name, (weight.shape[0], weight.shape[1]), self.tile, levels)
        return layers


def level_sparsity(layers: dict[str, LayerPlan], level: int) -> float:
    """Fraction of the planned layers' weights removed at `level`."""
    total = sum(layer.shape[0] * layer.shape[1] for layer in layers.values())
    return 1.0 - sum(int(layer.mask(level).sum()) for layer in layers.values()) / total


def level_latencies(
    model: LatencyModel, layers: dict[str, LayerPlan], board: Board, cycles_per_unit: float
) -> tuple[float, ...]:
    """Seconds per inference at each level: predicted cost x cycles per unit / the level's frequency."""
    return tuple(
        model.predict_units(layers, level) * cycles_per_unit / board.levels[level].frequency_hz
        for level in range(len(board.levels))
    )


class CandidateEvaluator:
    """Evaluates candidates on one loaded model (in a worker process, or in the main one)."""

    def __init__(self, spec: EvaluatorSpec, model: LoadedModel | None = None) -> None:
        self.spec = spec
        self.model = model or load_model(spec.model)
        self.teacher = None
        if spec.teacher_state is not None and spec.recovery is not None and spec.recovery.distill > 0:
            self.teacher = Teacher(self.model.module)
            self.teacher.module.load_state_dict(spec.teacher_state)
        self.model.module.load_state_dict(spec.backbone_state)
        parameters = dict(self.model.module.named_parameters())
        weights = {name: parameters[name].detach().numpy().astype(np.float64) for name in spec.kept_tiles}
        self.planner = CandidatePlanner(weights, spec.tile, spec.kept_tiles, spec.space)
        self.latency = LatencyModel.from_json(spec.latency)

    def accuracies(self, layers: dict[str, LayerPlan], split: Split) -> tuple[float, ...]:
        """Each level's accuracy on `split`, after the recovery from the backbone (which stays as it is)."""
        n_levels = len(self.spec.board.levels)
        level_masks = [layer_masks(layers, level) for level in range(n_levels)]
        recovery = self.spec.recovery
        if recovery is not None and recovery.steps > 0:
            assert self.spec.train is not None
            # Dropout draws from torch's global generator: seeded per candidate, a candidate's accuracy does
            # not depend on which worker evaluates it or what that worker evaluated before.
            torch.manual_seed(recovery.seed)
            train(
                self.model,
                self.spec.train,
                recovery,
                "candidate recovery",
                level_masks=level_masks,
                keep=level_masks[0],
                teacher=self.teacher,
            )
        accuracy = tuple(evaluate(self.model, split, masks)["accuracy"] for masks in level_masks)
        self.model.module.load_state_dict(self.spec.backbone_state)
        return accuracy

    def __call__(self, choices: tuple[int, ...]) -> Evaluation:
        layers = self.planner.layers(choices)
        n_levels = len(self.spec.board.levels)
        return Evaluation(
            accuracy=self.accuracies(layers, self.spec.validation),
            latency_s=level_latencies(self.latency, layers, self.spec.board, self.spec.cycles_per_unit),
            deadline_s=tuple(level.deadline_s for level in self.spec.board.levels),
            sparsity=tuple(level_sparsity(layers, level) for level in range(n_levels)),
        )


_WORKER: CandidateEvaluator | None = None


def _start_worker(spec: EvaluatorSpec) -> None:
    global _WORKER
    # One thread per worker: the workers are the parallelism.
    torch.set_num_threads(1)
    _WORKER = CandidateEvaluator(spec)


def evaluate_in_worker(choices: tuple[int, ...]) -> Evaluation:
    assert _WORKER is not None, "evaluate_in_worker runs in a worker started by evaluation_pool"
    return _WORKER(choices)


@contextmanager
def evaluation_pool(
    spec: EvaluatorSpec, backend: str, workers: int | None, local: CandidateEvaluator
) -> Iterator[tuple[Callable[[tuple[int, ...]], Evaluation], Callable[[Callable, Iterable], Iterable]]]:
    """(evaluate, map) for `CachedEvaluator`: worker processes on this machine, Ray, or in-process."""
    if backend not in BACKENDS:
        raise SettingError("backend", f"choose one of {', '.join(BACKENDS)}", backend)
    count = workers or os.cpu_count() or 1
    if backend == "serial" or (backend == "process" and count == 1):
        yield local, map
        return
    if backend == "ray":
        try:
            from ray.util.multiprocessing import Pool
        except ImportError:
            raise SettingError("backend", "Ray is not installed (pip install 'rt3c[ray]')", "ray") from None
        pool = Pool(processes=count, initializer=_start_worker, initargs=(spec,))
    else:
        import multiprocessing

        # spawn: a forked torch process can deadlock on the parent's thread pools.
        pool = multiprocessing.get_context("spawn").Pool(count, initializer=_start_worker, initargs=(spec,))
    try:
        yield evaluate_in_worker, pool.map
    finally:
        pool.terminate()
        pool.join()
