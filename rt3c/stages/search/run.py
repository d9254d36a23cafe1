"""`rt3c search`: from (model, data, board) to a trained multi-level model that meets every level's deadline.

RT3's two levels joined, each stage cached in `DIR/stages/` (a rerun with the same settings resumes):

1. the dense baseline (cached across commands, shared with `rt3c prune`);
2. the latency model for the board's target (`rt3c.stages.latency`, cached) and the block ratio: the smallest one
   (not below `DEFAULT_BLOCK_RATIO`) at which the sparsest choices meet every level's deadline;
3. **backbone**: BP trained: reweighted group lasso, hard block prune, masked fine-tune (prune's stages),
   then a **warm start**: the joint stage on uniform pattern sets spanning the space's densities, so the
   weights every candidate starts from already work sparse;
4. **search**: REINFORCE with the recurrent controller and random search with the same budget, over pattern
   sets per layer and level fitted on the backbone's weights; each candidate measured after a short recovery
   (joint distillation from the backbone, `recovery` steps) on the validation subset, scored by the objective
   (`rt3c.stages.search.objective`);
5. **joint**: the winner's levels trained jointly with distillation (prune's joint stage);
6. the trained model exported (`DIR/model.onnx`), compiled with the plan for the board's target and every
   kernel measured per level (`latency.json`), test accuracy per level (`eval.json`).

`--one-shot` runs the same chain with no training after the dense baseline (magnitude BP, one-shot masks).
Outputs: `rt3c.stages.search.outputs`; every file is documented in docs/SEARCH.md.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from rt3c.codegen.targets import get_target
from rt3c.core.boards import load_board
from rt3c.core.errors import SettingError
from rt3c.core.files import exclusive_lock
from rt3c.core.plan import Level, Plan
from rt3c.core.progress import console, step
from rt3c.stages.datasets import Split, load_dataset
from rt3c.stages.models import load_model
from rt3c.stages.models.base import LoadedModel
from rt3c.stages.prune.layers import select_layers
from rt3c.stages.prune.stages import (
    DenseRecipe,
    StageFiles,
    block_prune_and_finetune,
    dense_baseline,
    group_lasso,
    joint_finetune,
    layer_masks,
    numpy_weights,
)
from rt3c.stages.prune.training import Teacher, check_hidden_distill, evaluate, resolve_precision
from rt3c.stages.search.config import DEFAULT_MAX_LOSS, SearchConfig, check_config, train_settings
from rt3c.stages.search.controller import CachedEvaluator, Episode, SearchLog, random_search, reinforce
from rt3c.stages.search.evaluate import (
    CandidateEvaluator,
    CandidatePlanner,
    EvaluatorSpec,
    evaluation_pool,
)
from rt3c.stages.search.objective import AccuracyObjective, EnergyObjective, loss_reference
from rt3c.stages.search.outputs import SearchResult, write_outputs
from rt3c.stages.search.setup import prepare
from rt3c.stages.search.space import SearchSpace


def _print_episode(method: str, episode: Episode) -> None:
    evaluation = episode.evaluation
    console.print(
        f"  {method} {episode.episode}: {episode.reward:+.3f}  "
        f"acc {'/'.join(f'{100 * a:.1f}' for a in evaluation.accuracy)}  "
        f"ms {'/'.join(f'{1e3 * t:.1f}' for t in evaluation.latency_s)}"
        f"{'' if evaluation.feasible else '  late'}{'  cached' if episode.cached else ''}",
        soft_wrap=True,
    )


def warm_start_plan(
    model: LoadedModel,
    parameters: dict[str, torch.nn.Parameter],
    kept_tiles: dict[str, np.ndarray],
    tile: tuple[int, int],
    space: SearchSpace,
) -> Plan:
    """The plan every candidate's recovery starts from: uniform pattern sets (the space's largest size) at
    densities spread evenly over the space's, densest to sparsest. Measured on minilm-l6 (400 validation
    examples, dense 82.75 %): candidates recovered from the BP backbone alone stay at chance (57 %) at 0.74
    sparsity even after 48 steps, so the search needs weights already trained to work sparse; and every
    level of the warm start must be sparse: 300 joint steps at densities 1.0 / 0.625 / 0.25 (sparsity 0.30 /
    0.56 / 0.825) left the sparsest at 62.75 %, at 0.5 / 0.375 / 0.25 (0.65 / 0.74 / 0.825) it reached 79.5 %,
    the densest level pulling the shared weights toward the dense optimum."""
    n = space.n_levels
    densities = [space.densities[round(i * (len(space.densities) - 1) / max(n - 1, 1))] for i in range(n)]
    planner = CandidatePlanner(numpy_weights(parameters), tile, kept_tiles, space)
    k = space.pattern_counts.index(max(space.pattern_counts))
    choices = [
        k if d.kind == "patterns" else space.densities.index(densities[d.level]) for d in space.decisions
    ]
    return Plan(
        [Level(f"L{i}") for i in range(n)],
        planner.layers(choices),
        model.name,
        {"planner": "rt3c search warm start", "densities": densities},
    )


def search_model(config: SearchConfig) -> SearchResult:
    """Run (or resume) every stage and write DIR (see the module docstring)."""
    check_config(config)
    # "auto" becomes what runs, so the stages' cache tags and search.json name the arithmetic itself.
    config = replace(config, precision=resolve_precision(config.precision))
    started = time.perf_counter()
    board = load_board(config.board)
    target = get_target(board.target)
    max_loss = config.max_loss
    if config.objective == "energy" and max_loss is None:
        if len(board.levels) != len(DEFAULT_MAX_LOSS):
            raise SettingError(
                "max_loss", f"board {board.name} has {len(board.levels)} levels, give one each"
            )
        max_loss = DEFAULT_MAX_LOSS
    if max_loss is not None and len(max_loss) != len(board.levels):
        raise SettingError(
            "max_loss", f"{len(max_loss)} values for board {board.name}'s {len(board.levels)} levels"
        )
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise SettingError("out", "exists and is not a directory", out)
    model = load_model(config.model)
    check_hidden_distill(model, config.hidden_distill)
    with step(f"loading {config.data} for {model.name}"):
        data = load_dataset(config.data, model, config.max_len)
    parameters = select_layers(model, config.layers, config.tile)
    recipe = DenseRecipe(config.model, config.data, config.max_len, config.dense_steps, seed=config.seed)
    cached = "from the cache" if recipe.cache_path().is_file() else "trained, then cached for every command"
    with step(f"dense baseline ({cached})"):
        dense_baseline(model, data, recipe)
    dense_state = copy.deepcopy(model.module.state_dict())
    # Everything that can refuse the input (latency source, deadlines, block ratio) runs before DIR exists.
    setup = prepare(config, model, parameters, board, target)

    validation = shortest_first(data.validation, config.validation_size)
    test = shortest_first(data.test)
    with step(f"dense accuracy on {len(validation)} validation and {len(test)} test examples"):
        dense_validation = evaluate(model, validation)["accuracy"]
        dense_test = evaluate(model, test)["accuracy"]
    # Accuracy on n examples has a standard error of sqrt(p (1 - p) / n): a sparser level "gaining" less
    # than that is noise, not a reason for the monotonicity penalty.
    tolerance = math.sqrt(dense_validation * (1 - dense_validation) / len(validation))

    # One writer per DIR: a second search into it is refused instead of mixing stages.
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out):
        out.mkdir(parents=True, exist_ok=True)
        stages = StageFiles(out)
        teacher = None
        if (config.distill > 0.0 or config.hidden_distill > 0.0) and not config.one_shot:
            teacher = Teacher(model.module)
        trains = 0 if config.one_shot else 1
        backbone_tag = {
            "dense": asdict(recipe),
            "layers": sorted(parameters),
            "tile": list(config.tile),
            "block_ratio": setup.block_ratio,
            "steps": [config.lasso_steps * trains, config.finetune_steps * trains],
            "lr": [config.learning_rate, config.finetune_learning_rate],
            "lasso_strength": config.lasso_strength,
            "distill": config.distill,
            "batch": config.batch_size,
            "precision": config.precision,
            "seed": config.seed,
        }

        def train_backbone() -> dict:
            group_lasso(
                model,
                data,
                parameters,
                config.tile,
                train_settings(config, config.lasso_steps * trains),
                config.lasso_strength,
                1e-3,
                50,
                teacher,
            )
            ratios = dict.fromkeys(parameters, setup.block_ratio)
            finetune = train_settings(config, config.finetune_steps * trains, config.finetune_learning_rate)
            return block_prune_and_finetune(model, data, parameters, config.tile, ratios, finetune, teacher)

        with step(f"backbone: group lasso, block pruning at ratio {setup.block_ratio:.2f}, masked fine-tune"):
            kept_tiles = stages.run("backbone", backbone_tag, model, train_backbone)
        warm = warm_start_plan(model, parameters, kept_tiles, config.tile, setup.space)
        warm_tag = {
            "backbone": backbone_tag,
            "steps": config.warm_steps * trains,
            "lr": config.learning_rate,
            "plan": warm.to_json(),
        }
        warm_settings = train_settings(config, config.warm_steps * trains)
        # No warm start without steps (`--one-shot`): zero steps would only zero what its densest level drops.
        if warm_settings.steps:
            with step(
                f"warm start: {warm_settings.steps} joint steps at densities {warm.metadata['densities']}"
            ):
                stages.run(
                    "warm", warm_tag, model, lambda: joint_finetune(model, data, warm, warm_settings, teacher)
                )
        backbone_state = copy.deepcopy(model.module.state_dict())

        spec = EvaluatorSpec(
            model=config.model,
            backbone_state=backbone_state,
            kept_tiles=kept_tiles,
            tile=config.tile,
            space=setup.space,
            validation=validation,
            latency=setup.latency_model.to_json(),
            board=board,
            cycles_per_unit=setup.cycles_per_unit,
            train=data.train,
            recovery=train_settings(config, config.recovery_steps * trains),
            teacher_state=dense_state,
        )
        search_tag = {
            "warm": warm_tag,
            "objective": config.objective,
            "max_loss": list(max_loss or []),
            "loss_reference": config.loss_reference if config.objective == "energy" else None,
            "episodes": config.episodes,
            "batch_size": config.controller_batch,
            "validation_size": len(validation),
            "recovery_steps": config.recovery_steps * trains,
            "space": asdict(setup.space),
            "latency": setup.latency_model.to_json(),
        }
        local = CandidateEvaluator(spec, model)

        def run_search() -> dict:
            logs: dict[str, SearchLog] = {}
            reference = None
            with evaluation_pool(spec, config.backend, config.workers, local) as (evaluate_fn, map_fn):
                evaluator = CachedEvaluator(evaluate_fn, map_fn)
                objective: AccuracyObjective | EnergyObjective
                if config.objective == "energy":
                    assert max_loss is not None
                    reference = loss_reference(
                        config.loss_reference, setup.space, evaluator, dense_validation
                    )
                    accuracy = "/".join(f"{100 * a:.1f}" for a in reference["accuracy"])
                    console.print(f"  loss reference ({config.loss_reference}): validation {accuracy}")
                    objective = EnergyObjective(
                        board, setup.dense_cycles, setup.trace, reference["accuracy"], tuple(max_loss)
                    )
                else:
                    objective = AccuracyObjective(dense_validation, tolerance)
                for method, run in (("reinforce", reinforce), ("random", random_search)):
                    with step(f"{method}: {config.episodes} episodes"):
                        logs[method] = run(
                            setup.space,
                            evaluator,
                            objective,
                            config.episodes,
                            batch_size=config.controller_batch,
                            seed=config.seed,
                            on_episode=lambda episode, method=method: _print_episode(method, episode),
                        )
            return {"logs": logs, "distinct": len(evaluator.cache), "loss_reference": reference}

        searched = stages.run("search", search_tag, None, run_search)
        logs: dict[str, SearchLog] = searched["logs"]
        best_method = max(logs, key=lambda method: logs[method].best.reward)
        best = logs[best_method].best
        layers = local.planner.layers(best.choices)
        plan = Plan(
            [Level(f"L{i}", level.frequency_khz) for i, level in enumerate(board.levels)],
            layers,
            model.name,
            {
                "planner": f"rt3c search ({best_method}, episode {best.episode}, objective {config.objective})",
                "board": board.name,
                "block_ratio": setup.block_ratio,
                "choices": setup.space.describe(best.choices),
            },
        )
        joint = train_settings(
            config, config.joint_steps * trains, config.joint_learning_rate, config.hidden_distill
        )
        joint_tag = {
            "search": search_tag,
            "best": best.choices,
            "steps": joint.steps,
            "lr": joint.learning_rate,
            "hidden_distill": joint.hidden_distill,
            "weights": config.level_weights,
        }
        with step(
            f"joint: {joint.steps} steps of the winner's {len(board.levels)} levels, distilled from dense"
        ):
            stages.run(
                "joint",
                joint_tag,
                model,
                lambda: joint_finetune(
                    model,
                    data,
                    plan,
                    joint,
                    teacher,
                    list(config.level_weights) if config.level_weights else None,
                ),
            )
        with step(f"test accuracy of {len(board.levels)} levels"):
            test_accuracy = [
                evaluate(model, test, layer_masks(layers, level))["accuracy"]
                for level in range(len(board.levels))
            ]
        return write_outputs(
            config=config,
            model=model,
            board=board,
            setup=setup,
            plan=plan,
            logs=logs,
            best_method=best_method,
            distinct_candidates=searched["distinct"],
            loss_reference=searched["loss_reference"],
            dense_validation=dense_validation,
            tolerance=tolerance,
            max_loss=max_loss,
            test_accuracy=test_accuracy,
            dense_test_accuracy=dense_test,
            started=started,
        )


def shortest_first(split: Split, size: int | None = None) -> Split:
    """The first `size` examples (the split is already shuffled), ordered by length: `Split.batch` trims
    each batch to its longest row, so sorted batches carry little padding (2-3x faster evaluation)."""
    count = len(split) if size is None else min(size, len(split))
    index = torch.arange(count)
    if len(split.inputs) == 2:  # (input_ids, attention_mask)
        index = index[torch.argsort(split.inputs[1][:count].sum(dim=1), stable=True)]
    return Split(tuple(t[index] for t in split.inputs), split.targets[index])
