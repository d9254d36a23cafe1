"""A pruned model on disk: a directory with a manifest naming the base model and the trained weights.

`rt3c.stages.models.load_model` resolves such a directory (so `rt3c export --model DIR` works after prune):
it builds the base model (a zoo name or an absolute model path) and then loads the weights into it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from rt3c.core.errors import UserError
from rt3c.core.files import atomic_directory
from rt3c.stages.models.base import LoadedModel

MANIFEST = "rt3c-checkpoint.json"
CHECKPOINT_FORMAT = "rt3c-checkpoint"
WEIGHTS = "weights.pt"


def save_checkpoint(directory: Path, base_model: str, module: nn.Module, metadata: dict) -> None:
    """Write the checkpoint directory whole or not at all (built next to it, then renamed into place)."""
    with atomic_directory(directory) as staging:
        torch.save(module.state_dict(), staging / WEIGHTS)
        manifest = {"format": CHECKPOINT_FORMAT, "base_model": base_model, "weights": WEIGHTS, **metadata}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def is_checkpoint(directory: Path) -> bool:
    return (Path(directory) / MANIFEST).is_file()


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A checkpoint directory's manifest: the base model to build, then the weights to load into it.

    Building the base model is the zoo's job (`rt3c.stages.models.load_model` does both steps), so this module
    needs nothing from the zoo.
    """

    directory: Path
    base_model: str
    weights_file: Path

    def load_into(self, model: LoadedModel) -> LoadedModel:
        """`model` (built from `base_model`) with the trained weights, named after the directory."""
        try:
            state = torch.load(self.weights_file, map_location="cpu", weights_only=True)
            model.module.load_state_dict(state)
        except (OSError, RuntimeError, ValueError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"{self.weights_file}: does not fit base model {self.base_model}: {first_line}"
            ) from None
        return dataclasses.replace(model, name=str(self.directory), module=model.module.eval())


def read_checkpoint(directory: Path) -> Checkpoint:
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        base_model = manifest["base_model"]
        weights_file = directory / manifest["weights"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{directory / MANIFEST}: not a valid rt3c checkpoint manifest ({exc})") from None
    if manifest.get("format") != CHECKPOINT_FORMAT:
        raise UserError(
            f"{directory / MANIFEST}: format is {manifest.get('format')!r}, not {CHECKPOINT_FORMAT}"
        )
    return Checkpoint(directory, base_model, weights_file)
