"""The settings of `rt3c search` and their checks: every option is in range before any work starts."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from rt3c.core.errors import UserError
from rt3c.prune.pipeline import DEFAULT_LAYERS
from rt3c.prune.training import TrainSettings
from rt3c.search.evaluate import BACKENDS
from rt3c.search.objective import OBJECTIVES

DEFAULT_MAX_LOSS = (1.0, 1.5, 2.0)


@dataclass
class SearchConfig:
    model: str
    data: str
    board: str
    out: Path
    objective: str = "accuracy"
    max_loss: tuple[float, ...] | None = None
    """`energy`: accuracy points each level may lose against dense (default 1.0 / 1.5 / 2.0 for 3 levels)."""
    one_shot: bool = False
    episodes: int = 24
    """Per method: the controller and random search get the same budget."""
    batch_size: int = 4
    seq_len: int = 16
    """Tokens of the compiled model, whose latency is modelled."""
    max_len: int = 64
    """Tokens of the data the accuracy is measured on."""
    validation_size: int = 400
    tile: tuple[int, int] = (4, 4)
    block_ratio: float | None = None
    """None: chosen from the latency model (see `rt3c.search.setup.choose_block_ratio`)."""
    pattern_counts: tuple[int, ...] = (2, 4, 8)
    densities: tuple[float, ...] = (0.5, 0.4375, 0.375, 0.3125, 0.25)
    """Kept fraction of a BP-kept tile, densest first (8 to 4 of a 4x4 tile's 16 weights). The warm start
    trains the densest, middle and sparsest of them; a denser choice would only add weights the warm start
    zeroed (measured on minilm-l6: a warm start whose densest level keeps whole tiles leaves its 0.825
    level near chance, 62.75 %, where one at densities 0.5 / 0.375 / 0.25 reaches 79.5 %)."""
    layers: str = DEFAULT_LAYERS
    latency: str | None = None
    """"qemu" or "host"; default: qemu for ARM targets, host for the host."""
    backend: str = "process"
    workers: int | None = None
    dense_steps: int = 300
    lasso_steps: int = 150
    finetune_steps: int = 100
    warm_steps: int = 300
    recovery_steps: int = 16
    joint_steps: int = 600
    learning_rate: float = 1e-4
    """Group lasso, warm start, each candidate's recovery and the joint stage (`rt3c prune`'s lasso and joint
    rate). Measured on minilm-l6: 300 warm-start steps at 3e-5 left a level at 0.825 sparsity at chance
    (57 %), at 1e-4 it reached 62.75 % and the 0.56 level 80.0 % instead of 78.5 % (docs/SEARCH.md)."""
    finetune_learning_rate: float = 3e-5
    """The masked fine-tune after block pruning."""
    lasso_strength: float = 1e-5
    distill: float = 0.7
    level_weights: tuple[float, ...] | None = None
    batch: int = 32
    """Training batch size."""
    seed: int = 0

    def settings(self) -> dict:
        values = asdict(self)
        values["out"] = str(self.out)
        return json.loads(json.dumps(values))


MAX_STEPS = 100_000
MAX_EPISODES = 10_000
MAX_EXAMPLES = 1_000_000
MAX_TOKENS = 4096
"""The model's own limit (its positions) is checked when it is exported."""
MAX_WORKERS = 1024


def check_config(config: SearchConfig) -> None:
    """Every option in range before any work starts (a board-dependent check follows in `prepare`)."""
    if config.objective not in OBJECTIVES:
        raise UserError(f"--objective {config.objective!r}: choose one of {', '.join(OBJECTIVES)}")
    if config.backend not in BACKENDS:
        raise UserError(f"--backend {config.backend}: choose one of {', '.join(BACKENDS)}")
    if not 1 <= config.episodes <= MAX_EPISODES or not 1 <= config.batch_size <= MAX_EPISODES:
        raise UserError(f"--episodes and --controller-batch: must be between 1 and {MAX_EPISODES}")
    if not 1 <= config.batch <= MAX_EPISODES:
        raise UserError(f"--batch-size {config.batch}: must be between 1 and {MAX_EPISODES}")
    if config.block_ratio is not None and not 0.0 <= config.block_ratio < 1.0:
        raise UserError(f"--block-ratio {config.block_ratio}: must be in [0, 1)")
    if not config.densities or any(not 0.0 < d <= 1.0 for d in config.densities):
        raise UserError(f"--densities {list(config.densities)}: each must be in (0, 1]")
    if list(config.densities) != sorted(config.densities, reverse=True):
        raise UserError(f"--densities {list(config.densities)}: list them densest first")
    if not config.pattern_counts or any(not 1 <= k <= 36 for k in config.pattern_counts):
        raise UserError(f"--pattern-choices {list(config.pattern_counts)}: each must be between 1 and 36")
    if not 1 <= config.validation_size <= MAX_EXAMPLES:
        raise UserError(f"--validation-size {config.validation_size}: must be between 1 and {MAX_EXAMPLES}")
    if not 1 <= config.seq_len <= MAX_TOKENS or not 1 <= config.max_len <= MAX_TOKENS:
        raise UserError(f"--seq-len {config.seq_len}: must be between 1 and {MAX_TOKENS}")
    steps = (
        config.dense_steps,
        config.lasso_steps,
        config.finetune_steps,
        config.warm_steps,
        config.recovery_steps,
        config.joint_steps,
    )
    if any(not 0 <= s <= MAX_STEPS for s in steps):
        raise UserError(f"--steps {','.join(map(str, steps))}: each count must be between 0 and {MAX_STEPS}")
    if not 0.0 <= config.distill <= 1.0:
        raise UserError(f"--distill {config.distill}: must be in [0, 1]")
    if config.workers is not None and not 1 <= config.workers <= MAX_WORKERS:
        raise UserError(f"--workers {config.workers}: must be between 1 and {MAX_WORKERS}")


def train_settings(config: SearchConfig, steps: int, learning_rate: float | None = None) -> TrainSettings:
    """A training stage of `steps` at `learning_rate` (default: the config's `learning_rate`)."""
    return TrainSettings(
        steps,
        config.learning_rate if learning_rate is None else learning_rate,
        config.batch,
        config.seed,
        warmup=0.1,
        length_buckets=True,
        distill=config.distill,
    )
