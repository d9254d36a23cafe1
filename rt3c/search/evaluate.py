"""Evaluating a candidate of `rt3c search`: its plan, the accuracy of every level on the shared weights,
and every level's latency from the latency model.

A candidate's plan reuses one block pruning for all candidates (the BP backbone: magnitude, the search's
`block_ratio`) and fits each layer's pattern set (`sparsify.pattern_sets`, nested over the levels) with
the candidate's pattern count and nonzeros per tile. Accuracy: the model with the dense weights masked by
each level's plan, on a validation subset (one-shot); or, with `finetune_steps`, after a short joint
fine-tune of all levels from the dense weights (as `rt3c prune`'s joint stage).

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

from rt3c.boards import Board
from rt3c.datasets import Split
from rt3c.errors import UserError
from rt3c.latency import LatencyModel
from rt3c.models import load_model
from rt3c.models.base import LoadedModel
from rt3c.plan import LayerPlan
from rt3c.prune.training import TrainSettings, evaluate, train
from rt3c.search.controller import Evaluation
from rt3c.search.space import SearchSpace
from rt3c.sparsify import block_prune, pattern_sets

BACKENDS = ("process", "ray", "serial")


@dataclass(frozen=True)
class EvaluatorSpec:
    """Everything a worker needs to evaluate candidates (picklable)."""

    model: str
    dense_state: dict[str, torch.Tensor]
    layers: tuple[str, ...]
    tile: tuple[int, int]
    block_ratio: float
    space: SearchSpace
    validation: Split
    latency: dict
    """`LatencyModel.to_json()`."""
    board: Board
    cycles_per_unit: float
    train: Split | None = None
    finetune_steps: int = 0
    finetune_lr: float = 3e-5
    seed: int = 0


class CandidatePlanner:
    """Candidate decisions -> plan layers, over the dense weights and one shared block pruning."""

    def __init__(
        self, weights: dict[str, np.ndarray], tile: tuple[int, int], block_ratio: float, space: SearchSpace
    ):
        self.weights = weights
        self.tile = tile
        self.space = space
        self.kept = {name: block_prune(weight, tile, block_ratio) for name, weight in weights.items()}

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
        self.model.module.load_state_dict(spec.dense_state)
        parameters = dict(self.model.module.named_parameters())
        weights = {name: parameters[name].detach().numpy().astype(np.float64) for name in spec.layers}
        self.planner = CandidatePlanner(weights, spec.tile, spec.block_ratio, spec.space)
        self.latency = LatencyModel.from_json(spec.latency)

    def masks(self, layers: dict[str, LayerPlan], level: int) -> dict[str, torch.Tensor]:
        return {name: torch.from_numpy(layer.mask(level).copy()) for name, layer in layers.items()}

    def accuracies(self, layers: dict[str, LayerPlan], split: Split) -> tuple[float, ...]:
        n_levels = len(self.spec.board.levels)
        level_masks = [self.masks(layers, level) for level in range(n_levels)]
        if self.spec.finetune_steps:
            assert self.spec.train is not None
            self.model.module.load_state_dict(self.spec.dense_state)
            settings = TrainSettings(self.spec.finetune_steps, self.spec.finetune_lr, seed=self.spec.seed)
            train(
                self.model,
                self.spec.train,
                settings,
                "candidate fine-tune",
                level_masks=level_masks,
                keep=level_masks[0],
            )
        accuracy = tuple(evaluate(self.model, split, masks)["accuracy"] for masks in level_masks)
        if self.spec.finetune_steps:
            self.model.module.load_state_dict(self.spec.dense_state)
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
        raise UserError(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")
    count = workers or os.cpu_count() or 1
    if backend == "serial" or (backend == "process" and count == 1):
        yield local, map
        return
    if backend == "ray":
        try:
            from ray.util.multiprocessing import Pool
        except ImportError:
            raise UserError("--backend ray: Ray is not installed (pip install 'rt3c[ray]')") from None
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
