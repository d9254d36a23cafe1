"""Training and evaluation loops shared by every stage of `rt3c prune`.

Masks are `{parameter name: bool tensor}`. A model is run "at a level" by multiplying its weights with that
level's masks inside `torch.func.functional_call`, so all levels share one set of weights and the gradient
of each level's loss reaches only the weights that level keeps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from rt3c.datasets import Split
from rt3c.models.base import LoadedModel
from rt3c.progress import console

Masks = dict[str, torch.Tensor]


@dataclass
class TrainSettings:
    steps: int
    learning_rate: float
    batch_size: int = 32
    seed: int = 0


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def run(module: nn.Module, inputs: tuple[torch.Tensor, ...], masks: Masks | None = None) -> torch.Tensor:
    """Logits of `module` on `inputs`, with `masks` applied to its weights (None: as it is)."""
    if masks:
        weights = dict(module.named_parameters())
        output = torch.func.functional_call(
            module, {name: weights[name] * mask for name, mask in masks.items()}, inputs
        )
    else:
        output = module(*inputs)
    return output.logits if hasattr(output, "logits") else output


def loss_of(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross entropy for classes `[N, classes]` or next tokens `[N, seq, vocab]`."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def apply_masks(module: nn.Module, masks: Masks) -> None:
    weights = dict(module.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            weights[name].mul_(mask)


def train(
    model: LoadedModel,
    split: Split,
    settings: TrainSettings,
    description: str,
    *,
    level_masks: list[Masks] | None = None,
    level_weights: list[float] | None = None,
    keep: Masks | None = None,
    penalty: Callable[[], torch.Tensor] | None = None,
    every_step: Callable[[int], None] | None = None,
) -> None:
    """AdamW with linear decay. Loss = Σ_l w_l·loss(level l) (+ penalty). `keep` masks gradients and is
    re-applied to the weights after every step, so pruned weights stay exactly zero."""
    module = model.module
    levels = level_masks or [{}]
    weights = level_weights or [1.0 / len(levels)] * len(levels)
    parameters = dict(module.named_parameters())
    optimizer = torch.optim.AdamW(module.parameters(), lr=settings.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / max(settings.steps, 1))
    generator = torch.Generator().manual_seed(settings.seed)
    order = torch.randperm(len(split), generator=generator)
    position = 0
    if keep:
        apply_masks(module, keep)
    module.train()
    with _progress() as progress:
        task = progress.add_task(description, total=settings.steps, loss=math.nan)
        for step in range(settings.steps):
            if position + settings.batch_size > len(order):
                order, position = torch.randperm(len(split), generator=generator), 0
            inputs, targets = split.batch(order[position : position + settings.batch_size])
            position += settings.batch_size
            loss = sum(
                w * loss_of(run(module, inputs, masks), targets)
                for w, masks in zip(weights, levels, strict=True)
            )
            total = loss + penalty() if penalty is not None else loss
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if keep:
                for name, mask in keep.items():
                    parameters[name].grad.mul_(mask)
            optimizer.step()
            schedule.step()
            if keep:
                apply_masks(module, keep)
            if every_step is not None:
                every_step(step)
            progress.update(task, advance=1, loss=float(loss.detach()))
    module.eval()


@torch.no_grad()
def evaluate(model: LoadedModel, split: Split, masks: Masks | None = None, batch_size: int = 128) -> dict:
    """Classifiers: {"accuracy"}. Language models: {"perplexity", "accuracy"} (next-token accuracy)."""
    model.module.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for start in range(0, len(split), batch_size):
        inputs, targets = split.batch(torch.arange(start, min(start + batch_size, len(split))))
        logits = run(model.module, inputs, masks)
        loss_sum += float(loss_of(logits, targets)) * targets.numel()
        correct += int((logits.argmax(dim=-1) == targets).sum())
        count += targets.numel()
    metrics = {"accuracy": correct / count}
    if model.kind == "language-model":
        metrics["perplexity"] = math.exp(loss_sum / count)
    return metrics
