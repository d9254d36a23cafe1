"""The settings of `rt3c search` and their checks: every option is in range before any work starts."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from rt3c.errors import UserError
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
    densities: tuple[float, ...] = (1.0, 0.75, 0.625, 0.5, 0.375, 0.25)
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
    learning_rate: float = 3e-5
    """Masked fine-tune and joint stages (as `rt3c prune`'s)."""
    fast_learning_rate: float = 1e-4
    """Group lasso (as `rt3c prune`'s) and the few recovery steps of each candidate."""
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
    if config.validation_size < 1:
        raise UserError(f"--validation-size {config.validation_size}: must be at least 1")
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
    if config.workers is not None and config.workers < 1:
        raise UserError(f"--workers {config.workers}: must be at least 1")


def train_settings(config: SearchConfig, steps: int, fast: bool = False) -> TrainSettings:
    return TrainSettings(
        steps,
        config.fast_learning_rate if fast else config.learning_rate,
        config.batch,
        config.seed,
        warmup=0.1,
        length_buckets=True,
        distill=config.distill,
    )
