"""Stage 1: torch module -> `model.onnx` + sidecar JSON, verified against torch with onnxruntime.

Entry point: `export_model`. The dynamo exporter pre-transposes Linear weights into initializers with
generated names (`val_37`), so the initializer -> torch parameter mapping is recovered by exact value
match and stored twice: in the model's metadata (`rt3c.weights`, so passes need only the ONNX) and in the
sidecar (for people).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn

import rt3c
from rt3c.core.errors import SettingError, UserError, VerificationError
from rt3c.core.onnx_io import SOURCE_METADATA_KEY, WEIGHTS_METADATA_KEY
from rt3c.core.progress import quiet, step
from rt3c.stages.models.base import LoadedModel
from rt3c.stages.reference import run_onnx

DEFAULT_TOLERANCE = 1e-4

# The exporter logs a warning per torchvision op it cannot register; rt3c never uses torchvision.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


@dataclass(frozen=True)
class ExportResult:
    onnx_path: Path
    sidecar_path: Path
    max_abs_diff: float
    weights: dict[str, dict[str, object]]


class _TensorOutput(nn.Module):
    """Hugging Face models return ModelOutput objects; the exported graph returns the logits tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        output = self.model(*inputs)
        return output if isinstance(output, torch.Tensor) else output.logits


def sidecar_path_for(onnx_path: Path) -> Path:
    """`model.onnx` -> `model.json`."""
    return onnx_path.with_suffix(".json")


def _check_output_path(out: Path) -> None:
    if out.suffix != ".onnx":
        raise SettingError(
            "out", "expected a path ending in .onnx (the sidecar goes next to it as .json)", out
        )
    if out.is_dir():
        raise SettingError("out", f"is a directory, expected a file path such as {out / 'model.onnx'}", out)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise SettingError("out", f"directory {parent} does not exist", out)
    if not os.access(parent, os.W_OK):
        raise SettingError("out", f"directory {parent} is not writable", out)


def _value_key(array: np.ndarray) -> tuple[tuple[int, ...], str, str]:
    contiguous = np.ascontiguousarray(array)
    return contiguous.shape, str(contiguous.dtype), hashlib.sha1(contiguous.tobytes()).hexdigest()


def map_initializers_to_params(
    initializers: dict[str, np.ndarray], module: nn.Module
) -> dict[str, dict[str, object]]:
    """For each initializer equal to a parameter (as stored, or transposed for 2-D ones), its name.

    Equal parameters (tied or identical values) are all listed under `aliases`; the first is `param`.
    """
    by_value: dict[tuple, list[tuple[str, bool]]] = {}
    for name, param in module.named_parameters():
        array = param.detach().cpu().numpy()
        by_value.setdefault(_value_key(array), []).append((name, False))
        if array.ndim == 2:
            by_value.setdefault(_value_key(array.T), []).append((name, True))
    mapping: dict[str, dict[str, object]] = {}
    for init_name, value in initializers.items():
        matches = by_value.get(_value_key(value))
        if matches:
            entry: dict[str, object] = {"param": matches[0][0], "transposed": matches[0][1]}
            if len(matches) > 1:
                entry["aliases"] = [name for name, _ in matches[1:]]
            mapping[init_name] = entry
    return mapping


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_FAILED_NODE = re.compile(r"target=torch\.ops\.([\w.]+)")
_SUMMARY_CAUSE = re.compile(r"## Exception summary\s*<class '[\w.]+'>: ([^\n]+)")


def _export_failure(model_name: str, exc: Exception) -> UserError:
    """One line naming the torch op the exporter could not convert, and why."""
    text = _ANSI.sub("", str(exc))
    node = _FAILED_NODE.search(text)
    cause = _SUMMARY_CAUSE.search(text)
    first_line = next((line for line in text.splitlines() if line.strip()), type(exc).__name__)
    where = f" at op {node.group(1)}" if node else ""
    return SettingError(
        "model",
        f"torch.onnx.export failed{where}: {(cause.group(1) if cause else first_line).strip()}",
        model_name,
    )


def _torch_export(model: LoadedModel, inputs: tuple[torch.Tensor, ...]) -> torch.onnx.ONNXProgram:
    wrapper = _TensorOutput(model.module).eval()
    with quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.onnx.export(
                wrapper,
                inputs,
                dynamo=True,
                input_names=list(model.input_names),
                output_names=[model.output_name],
                optimize=True,
                verbose=False,
            )
        except Exception as exc:  # the exporter raises many types; all mean "cannot export this model"
            raise _export_failure(model.name, exc) from None


def _versions() -> dict[str, str]:
    import transformers

    return {
        "rt3c": rt3c.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "transformers": transformers.__version__,
    }


MAX_BATCH = 256
"""Largest batch dimension baked into an exported graph: the runtime holds every activation of the batch in
its static arena (a board runs batch 1), and torch's export traces the whole batch."""


def export_model(
    model: LoadedModel,
    out: Path,
    *,
    seq_len: int = 16,
    batch: int = 1,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ExportResult:
    """Export `model` to `out` (ONNX) and `out.with_suffix('.json')` (sidecar); nothing is left on failure."""
    _check_output_path(out)
    if not 1 <= seq_len <= model.max_seq_len:
        raise SettingError("seq_len", f"must be between 1 and {model.max_seq_len} for {model.name}", seq_len)
    if not 1 <= batch <= MAX_BATCH:
        raise SettingError("batch", f"must be between 1 and {MAX_BATCH}", batch)

    inputs = model.example_inputs(batch, seq_len)
    with step(f"export {model.name} to ONNX (batch {batch}, seq {seq_len})"):
        program = _torch_export(model, inputs)
        initializers = {
            name: value.const_value.numpy()
            for name, value in program.model.graph.initializers.items()
            if value.const_value is not None
        }
        weights = map_initializers_to_params(initializers, model.module)
        program.model.metadata_props[WEIGHTS_METADATA_KEY] = json.dumps(weights, sort_keys=True)
        program.model.metadata_props[SOURCE_METADATA_KEY] = model.name

    sidecar_path = sidecar_path_for(out)
    with tempfile.TemporaryDirectory(
        dir=out.parent if str(out.parent) else ".", prefix=".rt3c-export-"
    ) as tmp:
        tmp_onnx = Path(tmp) / out.name
        program.save(str(tmp_onnx))
        with step("verify with onnxruntime against torch"):
            feeds = {name: tensor.numpy() for name, tensor in zip(model.input_names, inputs, strict=True)}
            (got,) = run_onnx(tmp_onnx, feeds)
            with torch.no_grad():
                expected = _TensorOutput(model.module)(*inputs).numpy()
            if got.shape != expected.shape:
                raise VerificationError(
                    f"{out}: onnxruntime output shape {got.shape} != torch {expected.shape}"
                )
            max_abs_diff = float(np.max(np.abs(got - expected)))
            if not max_abs_diff <= tolerance:
                raise VerificationError(
                    f"{out}: onnxruntime differs from torch by {max_abs_diff:.3g} (tolerance {tolerance:g})"
                )
        sidecar = {
            "format": "rt3c-export",
            "version": 1,
            "model": {
                "source": model.name,
                "kind": model.kind,
                "class": type(model.module).__qualname__,
                "parameters": model.num_parameters(),
                "vocab_size": model.vocab_size,
                "labels": model.labels,
                "problem_type": model.problem_type,
            },
            "inputs": [
                {"name": name, "shape": list(t.shape), "dtype": str(t.numpy().dtype)}
                for name, t in zip(model.input_names, inputs, strict=True)
            ],
            "outputs": [
                {"name": model.output_name, "shape": list(expected.shape), "dtype": str(expected.dtype)}
            ],
            "versions": _versions(),
            "verification": {"max_abs_diff": max_abs_diff, "tolerance": tolerance, "input_seed": 0},
            "weights": weights,
        }
        tmp_sidecar = Path(tmp) / sidecar_path.name
        tmp_sidecar.write_text(json.dumps(sidecar, indent=2, sort_keys=False) + "\n")
        os.replace(tmp_onnx, out)
        os.replace(tmp_sidecar, sidecar_path)
    return ExportResult(out, sidecar_path, max_abs_diff, weights)
