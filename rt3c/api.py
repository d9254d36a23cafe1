"""The Python API: each stage as one call, for notebooks and scripts (the CLI is a shell over the same).
`rt3c/__init__.py` exposes these functions as `rt3c.export`, `rt3c.compile`, ...:

    import rt3c

    exported = rt3c.export("bert-tiny", "out/model.onnx")
    rt3c.plan(exported.onnx_path, "out/plan.json", sparsities=[0.5, 0.75], frequencies_khz=[1400000, 800000])
    project = rt3c.compile(exported.onnx_path, "out/project", plan="out/plan.json")
    logits = project.run(1, {"input_ids": ids, "attention_mask": mask})["logits"]
    project.memory  # flash and RAM bytes

Errors are those of the stages: `rt3c.core.errors.UserError` for bad input (its message names the file,
layer or option at fault), `VerificationError` when a built artifact does not compute what its source does.

Each function imports its stage when called, so `import rt3c` and `from rt3c import api` load neither torch
nor TVM.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from rt3c.core.plan import Plan
    from rt3c.stages.compile import CompileResult
    from rt3c.stages.encode import EncodeResult
    from rt3c.stages.export import ExportResult
    from rt3c.stages.generate import GeneratedProject
    from rt3c.stages.prune.pipeline import PruneResult
    from rt3c.stages.search.outputs import SearchResult


def export(model: str, out: str | Path, *, seq_len: int = 16, batch: int = 1) -> ExportResult:
    """`model` (a zoo name, a Hugging Face directory, a checkpoint of `prune`, or `module:factory`) to
    ONNX at `out`, verified against torch with onnxruntime."""
    from rt3c.stages.export import export_model
    from rt3c.stages.models import load_model

    return export_model(load_model(model), Path(out), seq_len=seq_len, batch=batch)


def plan(
    onnx_path: str | Path,
    out: str | Path,
    *,
    sparsities: list[float],
    tile: tuple[int, int] = (4, 4),
    patterns: int = 8,
    block_ratio: float | None = None,
    frequencies_khz: list[int] | None = None,
    layers: str | None = None,
) -> Plan:
    """The one-shot plan of an exported model's linear layers: one level per sparsity, densest first."""
    from rt3c.stages.encode import plan_model

    return plan_model(
        Path(onnx_path),
        Path(out),
        sparsities=sparsities,
        tile=tile,
        patterns=patterns,
        block_ratio=block_ratio,
        frequencies_khz=frequencies_khz,
        layers=layers,
    )


def encode(
    onnx_path: str | Path,
    plan_path: str | Path,
    out: str | Path,
    *,
    level: int | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    weights: str = "float32",
    vocab: str | None = None,
) -> EncodeResult:
    """The exported model with its planned layers encoded (every level, or only `level`), its weights
    stored as `weights` (float32 or int8), verified level by level against the masked dense model.
    `shapes` fixes dynamic input dimensions, by input name. `vocab` (a data set name) keeps in the
    embedding tables only the token ids of its training split (docs/FORMAT.md, "Trimmed vocabulary")."""
    from rt3c.core.quantize import weight_type
    from rt3c.stages.encode import encode_model

    return encode_model(
        Path(onnx_path), Path(plan_path), Path(out), level, shapes, weight_type(weights), vocab
    )


@dataclass(frozen=True)
class Project:
    """A compiled C project: its folder, what `compile` measured, and its example program to run."""

    directory: Path
    report: dict[str, Any]
    """The project's report.json (docs/RUNTIME.md)."""
    max_abs_diff: list[float]
    """Per level: max |C - onnxruntime| of the verified builds (empty without verification)."""

    @property
    def memory(self) -> dict[str, Any]:
        """Flash and RAM bytes, each split by what they hold, with their totals."""
        return {"flash_bytes": self.report["flash_bytes"], "ram_bytes": self.report["ram_bytes"]}

    @property
    def input_names(self) -> list[str]:
        manifest = json.loads((self.directory / "rt3c-build.json").read_text())
        return [tensor["name"] for tensor in manifest["inputs"]]

    def run(
        self, level: int, inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Outputs by name of one inference of the built program at `level` (natively or under qemu);
        `inputs` by name, or in the order of `input_names`."""
        from rt3c.stages.run import run_project

        if isinstance(inputs, Mapping):
            inputs = [inputs[name] for name in self.input_names]
        return run_project(self.directory, level, list(inputs))

    def run_text(self, level: int, text: str) -> dict[str, np.ndarray]:
        """Outputs by name of one inference at `level` on `text`, tokenized by the project's own C
        tokenizer (a project compiled with `tokenizer`)."""
        from rt3c.stages.run import run_text

        return run_text(self.directory, level, text)


def compile(
    model_path: str | Path,
    out_dir: str | Path,
    *,
    target: str = "host",
    plan: str | Path | None = None,
    board: str | None = None,
    frequencies_khz: list[int] | None = None,
    prefix: str | None = None,
    verify: bool = True,
    shapes: Mapping[str, Sequence[int]] | None = None,
    weights: str | None = None,
    tokenizer: str | Path | None = None,
    vocab: str | None = None,
) -> Project:
    """An exported model with its `plan`, an encoded model, or a dense model, compiled into a C project at
    `out_dir` for `target` (host, aarch64, cortex-m4, cortex-m7); built, and with `verify` run at every
    level against onnxruntime. Several levels need their frequencies: from the plan, `board` or
    `frequencies_khz`. `shapes` fixes dynamic input dimensions, by input name. `weights` (float32 or
    int8) is the type an exported model's weights are encoded with; an encoded model has its own.
    `tokenizer` (a vocab.txt, a tokenizer.json, a Hugging Face directory, or `minilm-l6`) adds the C
    WordPiece tokenizer `NAME_tokenize` over that vocabulary (docs/RUNTIME.md). `vocab` trims an
    exported model's embedding tables to a data set's token ids as it is encoded (`encode`)."""
    result = _compile_model(
        model_path,
        out_dir,
        plan,
        weights,
        target_name=target,
        board=board,
        frequencies_khz=frequencies_khz,
        prefix=prefix,
        verify=verify,
        shapes=shapes,
        tokenizer=tokenizer,
        vocab=vocab,
    )
    return Project(result.out_dir, result.report, result.max_abs_diff)


def generate(
    model_path: str | Path,
    out_dir: str | Path,
    *,
    target: str = "host",
    plan: str | Path | None = None,
    board: str | None = None,
    frequencies_khz: list[int] | None = None,
    prefix: str | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    weights: str | None = None,
    tokenizer: str | Path | None = None,
    vocab: str | None = None,
) -> GeneratedProject:
    """`compile` without building or running anything: the C project for `target` (sources, weights, the
    kernels TVM generates, Makefile and CMakeLists.txt) written to `out_dir`, for `make` there later. No C
    compiler and no emulator is needed. The arguments are those of `compile`."""
    from rt3c.stages.generate import GeneratedProject

    result = _compile_model(
        model_path,
        out_dir,
        plan,
        weights,
        target_name=target,
        board=board,
        frequencies_khz=frequencies_khz,
        prefix=prefix,
        verify=False,
        build=False,
        shapes=shapes,
        tokenizer=tokenizer,
        vocab=vocab,
    )
    return GeneratedProject(
        result.out_dir, result.arena_bytes, result.arena_lower_bound, result.weight_bytes, result.memory_bytes
    )


def _compile_model(
    model_path: str | Path, out_dir: str | Path, plan: str | Path | None, weights: str | None, **options: Any
) -> CompileResult:
    from rt3c.core.quantize import weight_type
    from rt3c.stages.compile import compile_model

    return compile_model(
        Path(model_path),
        Path(out_dir),
        plan_path=None if plan is None else Path(plan),
        weights=None if weights is None else weight_type(weights),
        **options,
    )


def prune(model: str, data: str, out: str | Path, *, sparsities: list[float], **settings: Any) -> PruneResult:
    """`rt3c prune`: dense baseline, group lasso and block pruning, pattern sets per level, joint training.
    `settings` are the fields of `rt3c.stages.prune.pipeline.PruneConfig` (tile, patterns, steps, ...)."""
    from rt3c.stages.prune.pipeline import PruneConfig, prune_model

    return prune_model(PruneConfig(model=model, data=data, out=Path(out), sparsities=sparsities, **settings))


def search(model: str, data: str, board: str, out: str | Path, **settings: Any) -> SearchResult:
    """`rt3c search`: the pattern sets per DVFS level that meet each level's deadline on `board`, trained.
    `settings` are the fields of `rt3c.stages.search.run.SearchConfig` (objective, episodes, steps, ...)."""
    from rt3c.stages.search.run import SearchConfig, search_model

    return search_model(SearchConfig(model=model, data=data, board=board, out=Path(out), **settings))
