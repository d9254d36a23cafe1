"""Stage: encoded ONNX -> kernels -> a C project, built and verified level by level (`rt3c compile`).

Entry point: `compile_model`, which loads the model once and runs the stages on it in order: encode (when
given an exported model and its plan, `rt3c.stages.encode`), lower (`rt3c.stages.lower`), generate the C
project (`rt3c.stages.generate`; with `build=False` it stops there), build and verify (`rt3c.stages.build`),
measure and report (`rt3c.stages.compile_report`); its inputs are checked against each other first
(`rt3c.stages.compile_inputs`).
The host build runs every level on a seeded input and must match onnxruntime on the encoded model of that
level.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from rt3c.codegen.targets import Target, cortex_m_part, get_target
from rt3c.core.boards import Board, load_board
from rt3c.core.errors import SettingError, UserError
from rt3c.core.files import exclusive_lock
from rt3c.core.onnx_io import bind_input_shapes
from rt3c.core.plan import Plan
from rt3c.core.progress import step
from rt3c.core.quantize import WeightType
from rt3c.runtime_c.project import WEIGHTS_FORMATS, check_prefix, default_prefix
from rt3c.runtime_c.tokenizer import bind_tokenizer
from rt3c.runtime_c.vocab import read_vocab
from rt3c.stages.build import build_project, make_project, verify_project
from rt3c.stages.compile_inputs import check_plan_matches, level_frequencies
from rt3c.stages.compile_report import (
    dense_reference,
    measure_levels,
    project_report,
    time_dense,
    timing_feeds,
)
from rt3c.stages.encode import encode, vocabulary_of
from rt3c.stages.encoded_model import EncodedModel, encoded_layers, load_encoded
from rt3c.stages.generate import generate, write_manifest
from rt3c.stages.lower import CompiledProgram, lower
from rt3c.stages.packaged_data import tokenizer_path


@dataclass(frozen=True)
class CompileResult:
    out_dir: Path
    max_abs_diff: list[float]
    arena_bytes: int
    arena_lower_bound: int
    weight_bytes: int
    memory_bytes: int
    """The RAM the caller passes in: arena and the kernels' scratch."""
    report: dict[str, object]
    """report.json of the project (rt3c.runtime_c.report); empty when it was not built."""


def compile_model(
    encoded_path: Path,
    out_dir: Path,
    *,
    target_name: str = "host",
    plan_path: Path | None = None,
    board: str | None = None,
    frequencies_khz: list[int] | None = None,
    prefix: str | None = None,
    verify: bool = True,
    mcpu: str | None = None,
    weights_format: str = "incbin",
    shapes: Mapping[str, Sequence[int]] | None = None,
    weights: WeightType | None = None,
    tokenizer: Path | str | None = None,
    build: bool = True,
    vocab: str | None = None,
) -> CompileResult:
    """Lower, generate C, build for `target_name` (and the host), and verify every level of both builds.

    `encoded_path` is an encoded model (`rt3c encode`), or an exported model with `plan_path` (encoded
    here), or a dense model (compiled as one level). A model of several levels needs their frequencies
    (`level_frequencies`): from `frequencies_khz`, from `board`, or from the plan. Every external name of
    the generated library starts with `prefix` (default: the model's name made an identifier). Without
    `verify`, the project is generated and its library built for the target only: no emulator is needed,
    and the qemu board's memory does not bound the weights. `mcpu` builds a Cortex-M target for another
    Cortex-M part (`cortex_m_part`). `weights_format` is one of `WEIGHTS_FORMATS`. `shapes` fixes the
    model's dynamic input dimensions, by input name (`bind_input_shapes`). `weights` is the type of the
    weights an exported model is encoded with (default float32); an encoded model has its own, which
    `weights`, when given, must be. `tokenizer` (a vocab.txt, a tokenizer.json or a directory of them)
    adds a C WordPiece tokenizer over that vocabulary (`read_vocab`). Without `build` (and without
    `verify`, which needs a build), the project is generated only (`rt3c.stages.generate`): no C compiler
    either, no report.json, and `make` in the folder builds it later. `vocab` names a data set: an
    exported model's embedding tables are encoded with only the token ids of its training split
    (`encode_model`).
    """
    if verify and not build:
        raise SettingError("verify", "needs a build: a project that is not built cannot run", verify)
    if prefix is not None:
        check_prefix(prefix)
    if weights_format not in WEIGHTS_FORMATS:
        raise SettingError(
            "weights_format", f"choose one of {', '.join(WEIGHTS_FORMATS)}", f"{weights_format!r:.40}"
        )
    target = get_target(target_name)
    if mcpu is not None:
        target = cortex_m_part(target, mcpu, verify)
    if verify:
        target.check_tools()
        get_target("host").check_tools()  # the host build is verified too
    elif build and shutil.which(target.cc) is None:
        raise SettingError(
            "target",
            f"{target.cc} not found; install it with `apt-get install {target.tools[target.cc]}`",
            target.name,
        )
    plan = Plan.load(plan_path) if plan_path else None
    wordpiece = None if tokenizer is None else read_vocab(tokenizer_path(tokenizer))
    # Held until the project is in place or the compile failed: a second compile into the same --out
    # is refused, not mixed in.
    with exclusive_lock(out_dir):
        if out_dir.exists() and any(out_dir.iterdir()):
            raise SettingError("out_dir", "exists and is not empty", out_dir)
        # Loaded and checked once; lowering, verification, measurement and the report share it.
        source = load_encoded(encoded_path)
        if source.layers and weights not in (None, source.weights):
            raise UserError(
                f"{encoded_path}: its weights are {source.weights}, not {weights} (the weights' type is "
                "chosen when a model is encoded)"
            )
        if not source.layers and plan is None and weights == "int8":
            raise UserError(
                f"{encoded_path}: a model gets int8 weights when it is encoded with its plan, and this one "
                "is neither encoded nor given a plan"
            )
        bind_input_shapes(source.model, shapes or {}, str(encoded_path))
        exported_with_plan = plan is not None and not source.layers
        if vocab is not None and not exported_with_plan:
            raise SettingError(
                "vocab",
                f"the vocabulary is trimmed when a model is encoded with its plan; {encoded_path} is "
                f"{'encoded already' if source.layers else 'given no plan'}",
                vocab,
            )
        if plan is not None and plan_path is not None and source.layers:
            check_plan_matches(plan, plan_path, source)
        if plan is not None and exported_with_plan:
            level_names = [level.name for level in plan.levels]  # the encoding below keeps every level
        else:
            level_names = source.level_names
        frequencies = level_frequencies(
            level_names, plan, plan_path, board, frequencies_khz, source=str(encoded_path)
        )
        encoded = source
        if exported_with_plan and plan is not None:
            # An exported model and its plan: run the encoding passes first (they verify every level).
            kept = None if vocab is None else vocabulary_of(source.model, str(encoded_path), vocab)[0]
            model = encode(
                source.model, plan, str(encoded_path), weights=weights or "float32", vocab=kept
            ).model
            encoded = EncodedModel(encoded_path, model, encoded_layers(model, str(encoded_path)))
        with step("lower the model to TVM kernels"):
            compiled = lower(encoded, target, frequencies)
        compiled.program.prefix = prefix or default_prefix(compiled.program.name)
        compiled.program.weights_format = weights_format
        if wordpiece is not None:
            compiled.program.tokenizer = bind_tokenizer(wordpiece, compiled.program)
        board_profile = None if board is None else load_board(board)
        dense = dense_reference(source, exported_with_plan)
        return _generate_and_verify(compiled, encoded, out_dir, target, (build, verify), board_profile, dense)


def _generate_and_verify(
    compiled: CompiledProgram,
    encoded: EncodedModel,
    out_dir: Path,
    target: Target,
    build_and_verify: tuple[bool, bool],
    board: Board | None,
    dense: Path | str,
) -> CompileResult:
    """`dense`: the dense model to time onnxruntime on for the report, or why there is none."""
    build, verify = build_and_verify
    staging = Path(
        tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent if str(out_dir.parent) else ".")
    )
    try:
        with step(f"generate the C project and its {len(compiled.functions)} kernels"):
            generated = generate(compiled, target, staging, check_board_memory=verify)
        check_dir = staging if target.name == "host" else staging / "host-check"
        if build:
            with step(f"build the {target.name} project"):
                make_project(compiled.program, staging, example=verify)
                if verify and target.name != "host":
                    build_project(compiled, get_target("host"), check_dir, sources_dir=staging)
        diffs: list[float] = []
        costs: list[float | int | None] = [None] * len(compiled.program.levels)
        host_costs: list[float | int | None] = costs
        dense_us: float | str = "not verified (--no-verify)"
        if verify:
            feeds = timing_feeds(encoded)
            diffs, host_costs = _verify_builds(compiled, encoded.model, feeds, staging, check_dir, target)
            with step(f"measure every level of the {target.name} build"):
                costs = measure_levels(compiled.program, feeds, staging, target)
            if target.name == "host":
                host_costs = costs
            dense_us = dense if isinstance(dense, str) else time_dense(dense, feeds)
        report: dict[str, object] = {}
        if build:
            host_us = [None if cost is None else float(cost) for cost in host_costs]
            report = project_report(
                compiled.program,
                encoded,
                staging,
                target,
                generated.memory_bytes,
                diffs,
                costs,
                board,
                (host_us, dense_us),
            )
        write_manifest(compiled.program, target, generated, verify, diffs)
        staging.rename(out_dir) if not out_dir.exists() else _move_into(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return CompileResult(
        out_dir,
        diffs,
        generated.arena_bytes,
        generated.arena_lower_bound,
        generated.weight_bytes,
        generated.memory_bytes,
        report,
    )


def _verify_builds(
    compiled: CompiledProgram,
    encoded: ir.Model,
    feeds: dict[str, np.ndarray],
    staging: Path,
    check_dir: Path,
    target: Target,
) -> tuple[list[float], list[float | int | None]]:
    """Every level of the host build, then of the target's (under its emulator), against onnxruntime:
    per level the larger difference; and, for a cross target, per level the host build's µs per
    inference (for the speedup against onnxruntime in the report; a host target's are measured after)."""
    levels = len(compiled.program.levels)
    with step(f"verify {levels} levels of the host build against onnxruntime"):
        diffs = verify_project(encoded, check_dir, get_target("host"), compiled.program)
    if check_dir == staging:
        return diffs, [None] * levels
    with step("measure every level of the host build"):
        host_costs = measure_levels(compiled.program, feeds, check_dir, get_target("host"))
    shutil.rmtree(check_dir)
    runner = target.board or " ".join(target.run_prefix)
    with step(f"verify {levels} levels of the {target.name} build under {runner}"):
        target_diffs = verify_project(encoded, staging, target, compiled.program)
    return [max(a, b) for a, b in zip(diffs, target_diffs, strict=True)], host_costs


def _move_into(staging: Path, out_dir: Path) -> None:
    for item in staging.iterdir():
        item.rename(out_dir / item.name)
    staging.rmdir()
