"""The training stages that `rt3c prune` and `rt3c search` share, and the stage files that make them resumable.

A stage is a function that trains the model in place and returns a small payload (kept tiles, a plan, logs).
`StageFiles.run` stores the payload with the model's weights in `OUT/stages/<stage>.pt`, tagged with the
settings the stage depends on; a rerun with the same settings loads them instead of training again (resume
after an interrupt), and a stage whose settings changed is run again.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import pkgutil
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rt3c.core.cache import cache_dir
from rt3c.core.files import atomic_output
from rt3c.core.plan import LayerPlan, Plan
from rt3c.core.sparsify import block_prune
from rt3c.stages import __path__ as stages_path
from rt3c.stages.datasets import Dataset
from rt3c.stages.models.base import LoadedModel
from rt3c.stages.prune.lasso import ReweightedGroupLasso
from rt3c.stages.prune.training import Masks, Teacher, TrainSettings, train

# The modules that moved from rt3c.X to rt3c.stages.X (issue 17). A stage file pickles its payload's classes
# by module path (the search stage's SearchLog), so files written before the move name the old paths.
_MOVED_TO_STAGES = {module.name for module in pkgutil.iter_modules(stages_path)}


class _MovedModulesUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        package, _, rest = module.partition(".")
        if package == "rt3c" and rest.split(".")[0] in _MOVED_TO_STAGES:
            module = f"rt3c.stages.{rest}"
        return super().find_class(module, name)


# What torch.load takes as its pickle module: it subclasses `Unpickler` (and reads old formats with `load`).
_STAGE_PICKLE = types.SimpleNamespace(
    __name__="pickle", Unpickler=_MovedModulesUnpickler, load=pickle.load, Pickler=pickle.Pickler
)


class StageFiles:
    def __init__(self, out: Path) -> None:
        self.directory = Path(out) / "stages"
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, stage: str) -> Path:
        return self.directory / f"{stage}.pt"

    def run(
        self, stage: str, settings: dict, model: LoadedModel | None, compute: Callable[[], object]
    ) -> object:
        """`compute()`'s payload, from the stage file when it was made with these `settings` (the model's
        weights restored too), else computed now and saved with the weights of `model` (if given)."""
        tag = json.loads(json.dumps(settings))
        path = self.path(stage)
        if path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_STAGE_PICKLE)
            if saved.get("settings") == tag:
                if model is not None:
                    model.module.load_state_dict(saved["state"])
                return saved["payload"]
        payload = compute()
        record = {"settings": tag, "payload": payload}
        if model is not None:
            record["state"] = model.module.state_dict()
        with atomic_output(path) as tmp:
            torch.save(record, tmp)
        return payload


@dataclass(frozen=True)
class DenseRecipe:
    """How the dense baseline is trained: everything its cache entry depends on."""

    model: str
    data: str
    max_len: int = 64
    steps: int = 300
    learning_rate: float = 5e-5
    batch_size: int = 32
    seed: int = 0

    def cache_path(self) -> Path:
        key = json.dumps(
            [
                model_reference(self.model),
                self.data,
                self.max_len,
                self.batch_size,
                self.steps,
                self.learning_rate,
                self.seed,
            ]
        )
        return cache_dir("dense") / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def dense_baseline(model: LoadedModel, data: Dataset, recipe: DenseRecipe) -> None:
    """Fine-tune (or train) the dense model, or load it from the cache that every command shares."""
    cached = recipe.cache_path()
    if cached.is_file():
        model.module.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True))
        return
    settings = TrainSettings(recipe.steps, recipe.learning_rate, recipe.batch_size, recipe.seed)
    train(model, data.train, settings, "dense baseline")
    cached.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(cached) as tmp:
        torch.save(model.module.state_dict(), tmp)


def numpy_weights(weights: dict[str, torch.nn.Parameter]) -> dict[str, np.ndarray]:
    return {name: weight.detach().numpy().astype(np.float64) for name, weight in weights.items()}


def expand_tiles(kept_tiles: np.ndarray, tile: tuple[int, int], shape: tuple[int, ...]) -> np.ndarray:
    """bool `shape`: the tile mask blown up to weights, padding cropped."""
    full = np.repeat(np.repeat(kept_tiles, tile[0], axis=0), tile[1], axis=1)
    return np.ascontiguousarray(full[: shape[0], : shape[1]])


def model_reference(model: str) -> str:
    """How a checkpoint or cache key names the base model: a zoo name as it is, a path made absolute."""
    return model if not Path(model).exists() else str(Path(model).resolve())


def layer_masks(layers: dict[str, LayerPlan], level: int) -> Masks:
    """{weight name: bool mask} of `level` for the planned layers."""
    return {name: torch.from_numpy(layer.mask(level).copy()) for name, layer in layers.items()}


def group_lasso(
    model: LoadedModel,
    data: Dataset,
    weights: dict[str, torch.nn.Parameter],
    tile: tuple[int, int],
    settings: TrainSettings,
    strength: float,
    epsilon: float,
    reweight_every: int,
    teacher: Teacher | None,
) -> None:
    """Train with the reweighted group lasso over the tiles of `weights` (BP's first half)."""
    lasso = ReweightedGroupLasso(weights, tile, strength, epsilon)
    train(
        model,
        data.train,
        settings,
        "group lasso",
        teacher=teacher,
        penalty=lasso,
        every_step=lambda i: lasso.refresh() if (i + 1) % reweight_every == 0 else None,
    )


def block_prune_and_finetune(
    model: LoadedModel,
    data: Dataset,
    weights: dict[str, torch.nn.Parameter],
    tile: tuple[int, int],
    ratios: dict[str, float],
    settings: TrainSettings,
    teacher: Teacher | None,
) -> dict[str, np.ndarray]:
    """Drop each layer's lowest-norm tiles (its ratio), then fine-tune with the pruned weights held at zero.
    Returns the kept tiles per layer."""
    kept_tiles = {
        name: block_prune(weight, tile, ratios[name]) for name, weight in numpy_weights(weights).items()
    }
    block_masks = {
        name: torch.from_numpy(expand_tiles(kept, tile, tuple(weights[name].shape)))
        for name, kept in kept_tiles.items()
    }
    train(model, data.train, settings, "masked fine-tune", teacher=teacher, keep=block_masks)
    return kept_tiles


def joint_finetune(
    model: LoadedModel,
    data: Dataset,
    plan: Plan,
    settings: TrainSettings,
    teacher: Teacher | None,
    level_weights: list[float] | None = None,
    description: str = "joint fine-tune",
) -> None:
    """Fine-tune every level of `plan` together on the shared weights (the densest level's mask, the union
    of the nested levels, held)."""
    level_masks = [layer_masks(plan.layers, level) for level in range(len(plan.levels))]
    train(
        model,
        data.train,
        settings,
        description,
        teacher=teacher,
        level_masks=level_masks,
        level_weights=level_weights,
        keep=level_masks[0],
    )
