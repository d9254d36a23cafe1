"""Option texts and parsers that several commands share."""

from __future__ import annotations

from rt3c.core.errors import UserError

LEVELS_HELP = "Number of DVFS levels (default: the number of --sparsity values; --board must have as many)."
SPARSITY_HELP = "Per level, densest first: the fraction of the planned layers' weights removed."
PATTERNS_HELP = "k, the number of patterns per pattern set."
SHAPE_HELP = (
    "NAME=DIMS, e.g. input_ids=1x16: the fixed shape of a model input with dynamic dimensions (repeatable)."
)
WEIGHTS_HELP = "Type of the stored weights: float32 (default) or int8 (a float scale per channel)."
VOCAB_HELP = (
    "DATA (rotten-tomatoes, hamlet or synthetic): the embedding tables keep only the token ids of DATA's "
    "training split and the special tokens; a const id map takes the tokenizer's ids to the kept rows."
)
BATCH_SIZE_HELP = "Examples per training step (export's --batch is the graph's batch dimension)."
HIDDEN_DISTILL_HELP = (
    "Weight of the joint stage's hidden-state loss: every encoder layer's output against the dense "
    "model's (0: the logits alone are distilled)."
)
PRECISION_HELP = (
    "Of the training stages after the dense baseline: bfloat16 (CPU autocast; about 2.5x faster on a CPU "
    "with bfloat16 instructions, several times slower without), float32, or auto (bfloat16 where the CPU "
    "has bfloat16 instructions, else float32). Evaluation is always float32."
)

OPTION_NAMES = {
    "sparsities": "--sparsity",
    "layer_ratios": "--layer-ratio",
    "pattern_counts": "--pattern-choices",
    "inputs": "--input",
    "out_dir": "--out",
    "shapes": "--shape",
    "frequencies_khz": "--board",
    "dense_steps": "--steps",
    "lasso_steps": "--steps",
    "finetune_steps": "--steps",
    "warm_steps": "--steps",
    "recovery_steps": "--steps",
    "joint_steps": "--steps",
}
"""Settings whose option is not their Python name with dashes (`block_ratio` -> `--block-ratio`)."""


def option_name(setting: str) -> str:
    """The CLI option that sets the Python setting `setting` (`SettingError.setting`)."""
    return OPTION_NAMES.get(setting, "--" + setting.replace("_", "-"))


def floats(text: str, option: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"{option} {text!r}: expected comma-separated numbers") from None


def integers(text: str, option: str) -> list[int]:
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isascii() and part.isdigit() for part in parts):
        raise UserError(f"{option} {text!r}: expected comma-separated integers")
    return [int(part) for part in parts]


def parse_shapes(texts: list[str]) -> dict[str, tuple[int, ...]]:
    """`--shape NAME=DIMS` (DIMS as `1x16`), repeatable, as {input name: dims}."""
    shapes: dict[str, tuple[int, ...]] = {}
    for text in texts:
        name, _, dims = text.rpartition("=")
        parts = dims.lower().split("x")
        if not name or not all(part.isascii() and part.isdigit() for part in parts):
            raise UserError(f"--shape {text!r}: expected NAME=DIMS with DIMS such as 1x16")
        if name in shapes:
            raise UserError(f"--shape {text!r}: input {name} is given twice")
        shapes[name] = tuple(int(part) for part in parts)
    return shapes


def parse_tile(text: str) -> tuple[int, int]:
    """`--tile ROWSxCOLS` as (rows, cols)."""
    rows, _, cols = text.lower().partition("x")
    if not (rows.isdigit() and cols.isdigit()) or int(rows) < 1 or int(cols) < 1:
        raise UserError(f"--tile {text!r}: expected ROWSxCOLS with positive integers, e.g. 4x4")
    return int(rows), int(cols)


def levels_and_frequencies(
    sparsity: str, levels: int | None, board: str | None
) -> tuple[list[float], list[int] | None]:
    """Per level the sparsity, and the frequencies of `--board` (None without one). The number of levels is
    that of `--sparsity`; `--levels` and the board's levels, when given, must agree with it."""
    sparsities = floats(sparsity, "--sparsity")
    if levels is not None and levels != len(sparsities):
        raise UserError(f"--levels {levels} but --sparsity {sparsity} gives {len(sparsities)} values")
    if board is None:
        return sparsities, None
    from rt3c.core.boards import load_board

    frequencies = [level.frequency_khz for level in load_board(board).levels]
    if len(frequencies) != len(sparsities):
        raise UserError(
            f"--board {board} has {len(frequencies)} frequency levels but --sparsity {sparsity} "
            f"gives {len(sparsities)} values"
        )
    return sparsities, frequencies


def stage_steps(text: str, stages: tuple[str, ...]) -> list[int]:
    """`--steps`: one count per training stage, each at most the search's MAX_STEPS (prune's too)."""
    from rt3c.stages.search.config import MAX_STEPS

    counts = integers(text, "--steps")
    if len(counts) != len(stages):
        raise UserError(f"--steps {text!r}: expected {len(stages)} counts ({','.join(stages)})")
    if max(counts) > MAX_STEPS:
        raise UserError(f"--steps {text!r}: each count must be between 0 and {MAX_STEPS}")
    return counts
