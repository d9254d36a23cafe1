"""`rt3c prune`: dense baseline -> reweighted group lasso -> hard block prune + masked fine-tune ->
pattern sets per level -> joint fine-tuning of all levels on one set of weights -> checkpoint, plan, eval.

Every stage leaves a file in `OUT/stages/`; a rerun with the same settings skips the finished stages
(resume). The dense baseline is also cached across runs (`rt3c.core.cache.cache_dir("dense")`), keyed by
model, data and training settings. A BP block is one plan tile (see docs/PRUNING.md).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rt3c.core.errors import SettingError, UserError
from rt3c.core.files import atomic_output, exclusive_lock
from rt3c.core.plan import LayerPlan, Level, Plan
from rt3c.core.progress import step
from rt3c.core.sparsify import (
    check_sparsities,
    default_block_ratio,
    nnz_for_levels,
    one_shot_plan,
    pattern_sets,
)
from rt3c.stages.datasets import Dataset, load_dataset
from rt3c.stages.models import load_model
from rt3c.stages.models.base import LoadedModel
from rt3c.stages.models.checkpoint import save_checkpoint
from rt3c.stages.prune.layers import DEFAULT_LAYERS, select_layers
from rt3c.stages.prune.stages import (
    DenseRecipe,
    StageFiles,
    block_prune_and_finetune,
    dense_baseline,
    group_lasso,
    joint_finetune,
    layer_masks,
    model_reference,
    numpy_weights,
)
from rt3c.stages.prune.training import (
    PRECISION_CHOICES,
    Teacher,
    TrainSettings,
    check_hidden_distill,
    check_learning_rates,
    check_precision,
    evaluate,
    resolve_precision,
)

STAGES = ("dense", "lasso", "block", "patterns", "joint")


@dataclass
class PruneConfig:
    model: str
    data: str
    out: Path
    sparsities: list[float]
    tile: tuple[int, int] = (4, 4)
    patterns: int = 8
    block_ratio: float | None = None
    layer_ratios: dict[str, float] = field(default_factory=dict)  # regex -> BP ratio, first match wins
    layers: str = DEFAULT_LAYERS
    frequencies_khz: list[int] | None = None
    max_len: int = 64
    batch_size: int = 32
    dense_steps: int = 300
    dense_lr: float = 5e-5
    lasso_steps: int = 150
    lasso_lr: float = 1e-4
    lasso_strength: float = 1e-5
    lasso_epsilon: float = 1e-3
    reweight_every: int = 50
    finetune_steps: int = 100
    finetune_lr: float = 3e-5
    joint_steps: int = 120
    joint_lr: float = 3e-5
    level_weights: list[float] | None = None
    # Lasso, fine-tune and joint stages (the dense baseline keeps plain settings, so its cache holds):
    warmup: float = 0.1  # fraction of a stage's steps with a rising learning rate
    length_buckets: bool = True  # batches of similar lengths: far less padding on short snippets
    distill: float = 0.5  # weight of distillation from the dense model (0: cross entropy alone)
    hidden_distill: float = 0.0
    """Weight of the joint stage's hidden-state loss against the dense model (`hidden_state_loss`); 0: none."""
    temperature: float = 2.0
    # Of the lasso, fine-tune and joint stages: "auto" or one of `PRECISIONS` (`resolve_precision`). float32
    # by default, unlike search's "auto": prune's measured accuracies (docs/PRUNING.md) are float32's.
    precision: str = "float32"
    signed_ranking: bool = False  # RT3 reference's signed-sum pattern ranking, for measurement
    seed: int = 0

    def settings(self) -> dict:
        """What the stage files depend on (everything but the output directory)."""
        values = dataclasses.asdict(self)
        values.pop("out")
        return json.loads(json.dumps(values))


@dataclass
class PruneResult:
    checkpoint: Path
    plan_path: Path
    eval_path: Path
    plan: Plan
    evaluation: dict


def _block_ratios(config: PruneConfig, names: list[str]) -> dict[str, float]:
    base = default_block_ratio(config.sparsities) if config.block_ratio is None else config.block_ratio
    ratios = {}
    for name in names:
        ratios[name] = next(
            (ratio for regex, ratio in config.layer_ratios.items() if re.search(regex, name)), base
        )
        if not 0.0 <= ratios[name] <= config.sparsities[0]:
            raise UserError(
                f"block ratio {ratios[name]} for layer {name}: must be in [0, the densest level's "
                f"sparsity {config.sparsities[0]}]"
            )
    return ratios


def check_config(config: PruneConfig) -> None:
    check_sparsities(config.sparsities)
    if min(config.tile) < 1:
        raise SettingError("tile", "both sides must be positive", f"{config.tile[0]}x{config.tile[1]}")
    for regex, ratio in config.layer_ratios.items():
        if not 0.0 <= ratio < 1.0:
            raise SettingError("layer_ratios", "ratios must be in [0, 1)", f"{regex}={ratio}")
    if config.block_ratio is not None and not 0.0 <= config.block_ratio < 1.0:
        raise SettingError("block_ratio", "must be in [0, 1)", config.block_ratio)
    if not 0.0 <= config.distill <= 1.0:
        raise SettingError("distill", "must be in [0, 1]", config.distill)
    check_learning_rates(config, ("dense_lr", "lasso_lr", "finetune_lr", "joint_lr"))
    check_precision(config.precision, PRECISION_CHOICES)
    if config.level_weights is not None and len(config.level_weights) != len(config.sparsities):
        raise SettingError(
            "level_weights", f"{len(config.level_weights)} values for {len(config.sparsities)} levels"
        )
    if config.frequencies_khz is not None and len(config.frequencies_khz) != len(config.sparsities):
        raise SettingError(
            "frequencies_khz", f"{len(config.frequencies_khz)} values for {len(config.sparsities)} levels"
        )


def dense_recipe(config: PruneConfig) -> DenseRecipe:
    return DenseRecipe(
        config.model,
        config.data,
        config.max_len,
        config.dense_steps,
        config.dense_lr,
        config.batch_size,
        config.seed,
    )


def _evaluate_levels(model: LoadedModel, data: Dataset, plan: Plan, dense: dict) -> list[dict]:
    rows = []
    for level in range(len(plan.levels)):
        metrics = evaluate(model, data.test, layer_masks(plan.layers, level))
        rows.append(
            {
                "level": plan.levels[level].name,
                "sparsity": plan.sparsity(level),
                "layer_sparsity": {name: layer.sparsity(level) for name, layer in plan.layers.items()},
                **metrics,
                "accuracy_change": metrics["accuracy"] - dense["accuracy"],
                **(
                    {"perplexity_change": metrics["perplexity"] - dense["perplexity"]}
                    if "perplexity" in metrics
                    else {}
                ),
            }
        )
    return rows


def evaluate_one_shot(
    model: LoadedModel,
    data: Dataset,
    weights: dict[str, torch.nn.Parameter],
    config: PruneConfig,
    levels: list[Level],
    dense: dict,
    signed_ranking: bool,
) -> list[dict]:
    """The test metrics per level of the one-shot plan (magnitude BP and PP, no retraining)."""
    plan = one_shot_plan(
        numpy_weights(weights),
        levels,
        config.sparsities,
        config.tile,
        config.patterns,
        default_block_ratio(config.sparsities) if config.block_ratio is None else config.block_ratio,
        signed_ranking=signed_ranking,
    )
    return _evaluate_levels(model, data, plan, dense)


def prune_model(config: PruneConfig) -> PruneResult:
    """Run (or resume) every stage; write `OUT/checkpoint/`, `OUT/plan.json` and `OUT/eval.json`."""
    check_config(config)
    config = dataclasses.replace(config, precision=resolve_precision(config.precision))
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise SettingError("out", "exists and is not a directory", out)
    model = load_model(config.model)
    check_hidden_distill(model, config.hidden_distill)
    weights = select_layers(model, config.layers, config.tile)
    ratios = _block_ratios(config, list(weights))
    with step(f"loading {config.data} for {model.name}"):
        data = load_dataset(config.data, model, config.max_len)
    torch.manual_seed(config.seed)
    # One writer per OUT: a second prune into it is refused instead of mixing stages.
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out):
        out.mkdir(parents=True, exist_ok=True)
        stages = StageFiles(out)
        levels = [
            Level(f"L{i}", config.frequencies_khz[i] if config.frequencies_khz else None)
            for i in range(len(config.sparsities))
        ]

        def settings(steps: int, lr: float, hidden_distill: float = 0.0) -> TrainSettings:
            return TrainSettings(
                steps,
                lr,
                config.batch_size,
                config.seed,
                warmup=config.warmup,
                length_buckets=config.length_buckets,
                distill=config.distill,
                temperature=config.temperature,
                hidden_distill=hidden_distill,
                precision=config.precision,
            )

        # Every stage depends on all the settings: a changed setting starts over.
        tag = config.settings()
        recipe = dense_recipe(config)
        stages.run("dense", tag, model, lambda: dense_baseline(model, data, recipe))
        with step("evaluating the dense baseline and one-shot pruning"):
            dense = evaluate(model, data.test)
            one_shot_rows = evaluate_one_shot(
                model, data, weights, config, levels, dense, config.signed_ranking
            )
        # The dense model teaches every later stage (its logits carry more than the labels).
        teacher = Teacher(model.module) if config.distill > 0.0 or config.hidden_distill > 0.0 else None
        lasso = settings(config.lasso_steps, config.lasso_lr)
        stages.run(
            "lasso",
            tag,
            model,
            lambda: group_lasso(
                model,
                data,
                weights,
                config.tile,
                lasso,
                config.lasso_strength,
                config.lasso_epsilon,
                config.reweight_every,
                teacher,
            ),
        )
        finetune = settings(config.finetune_steps, config.finetune_lr)
        kept_tiles = stages.run(
            "block",
            tag,
            model,
            lambda: block_prune_and_finetune(model, data, weights, config.tile, ratios, finetune, teacher),
        )
        plan = Plan.from_json(
            stages.run(
                "patterns",
                tag,
                None,
                lambda: _pattern_plan(config, weights, kept_tiles, levels, ratios, model.name).to_json(),
            ),
            "stages/patterns.pt",
        )
        joint = settings(config.joint_steps, config.joint_lr, config.hidden_distill)
        stages.run(
            "joint",
            tag,
            model,
            lambda: joint_finetune(model, data, plan, joint, teacher, config.level_weights),
        )

        with step("evaluating every level"):
            evaluation = {
                "model": config.model,
                "data": config.data,
                "metric": "perplexity" if model.kind == "language-model" else "accuracy",
                "dense": dense,
                "levels": _evaluate_levels(model, data, plan, dense),
                "one_shot": one_shot_rows,
                "settings": config.settings(),
            }
        base_ref = model_reference(config.model)
        checkpoint = out / "checkpoint"
        save_checkpoint(checkpoint, base_ref, model.module, {"plan": "../plan.json", "data": config.data})
        plan_path, eval_path = out / "plan.json", out / "eval.json"
        plan.save(plan_path)
        with atomic_output(eval_path) as tmp:
            tmp.write_text(json.dumps(evaluation, indent=1) + "\n")
        return PruneResult(checkpoint, plan_path, eval_path, plan, evaluation)


def _pattern_plan(
    config: PruneConfig,
    weights: dict[str, torch.nn.Parameter],
    kept_tiles: dict[str, np.ndarray],
    levels: list[Level],
    ratios: dict[str, float],
    model_name: str,
) -> Plan:
    layers = {}
    for name, weight in numpy_weights(weights).items():
        nnz = nnz_for_levels(config.sparsities, ratios[name], config.tile)
        layers[name] = LayerPlan(
            name,
            (weight.shape[0], weight.shape[1]),
            config.tile,
            pattern_sets(weight, kept_tiles[name], config.tile, config.patterns, nnz, config.signed_ranking),
        )
    plan = Plan(
        levels,
        layers,
        model_name,
        {
            "planner": "rt3c prune (reweighted group lasso BP, magnitude PP, joint fine-tune)",
            "block_ratios": ratios,
        },
    )
    plan.validate()
    return plan
