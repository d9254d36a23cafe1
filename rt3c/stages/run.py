"""`rt3c run`: a compiled project's example program (natively or under qemu) on .npy inputs.

The project's rt3c-build.json says the target, the levels and the inputs; it is checked before anything
of it reaches a command line.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rt3c.codegen.targets import TARGETS, get_target
from rt3c.core.checks import UNREADABLE_JSON
from rt3c.core.errors import SettingError, UserError
from rt3c.runtime_c.program import C_TYPES, Tensor
from rt3c.runtime_c.project import PREFIX_PATTERN
from rt3c.stages.build import InputOutOfRange, run_example, run_level


def run_project(project: Path, level: int, inputs: Sequence[Path | np.ndarray]) -> dict[str, np.ndarray]:
    """Run a compiled project's example program (natively or under qemu) on its inputs, each a .npy file
    (`rt3c run --input`) or an array (the Python API), in the program's input order."""
    manifest = _read_manifest(project)
    target, prefix = get_target(manifest["target"]), manifest["prefix"]
    if not (project / "rt3_main").is_file():
        raise UserError(
            f"{project}: has no example program rt3_main (compiled without verification); "
            f"build it with `make -C {project} rt3_main`"
        )
    target.check_tools()
    if not 0 <= level < len(manifest["levels"]):
        raise SettingError("level", f"the model has levels 0..{len(manifest['levels']) - 1}", level)
    if len(inputs) != len(manifest["inputs"]):
        names = ", ".join(t["name"] for t in manifest["inputs"])
        raise SettingError(
            "inputs", f"the model takes {len(manifest['inputs'])} inputs ({names}), got {len(inputs)}"
        )
    labels = [
        str(source) if isinstance(source, Path) else f"inputs[{index}]" for index, source in enumerate(inputs)
    ]
    arrays = [
        read_input(source, spec) if isinstance(source, Path) else input_array(np.asarray(source), spec, label)
        for source, label, spec in zip(inputs, labels, manifest["inputs"], strict=True)
    ]
    outputs = [Tensor(t["name"], tuple(t["shape"]), t["dtype"], "output") for t in manifest["outputs"]]
    try:
        results = run_level(project, target, level, arrays, outputs)
    except InputOutOfRange as refusal:
        # Name the input: rt3_main only knows that some index input was out of range.
        refused = [
            f"{label}: {spec['name']} takes values in [0, {spec['index_limit']})"
            for label, spec, array in zip(labels, manifest["inputs"], arrays, strict=True)
            if spec.get("index_limit") is not None
            and not np.all((array >= 0) & (array < spec["index_limit"]))
        ]
        raise UserError(
            f"{'; '.join(refused) or refusal}; {prefix}_invoke refused it "
            f"({prefix.upper()}_ERROR_INPUT_OUT_OF_RANGE)"
        ) from None
    return {tensor.name: result for tensor, result in zip(outputs, results, strict=True)}


def run_text(project: Path, level: int, text: str) -> dict[str, np.ndarray]:
    """Run a compiled project on `text`: tokenized by the project's own C tokenizer (its example
    `rt3_tokenize`, on the target like `rt3_main`), then the model at `level` on those ids and mask."""
    manifest = _read_manifest(project)
    tokenizer = manifest.get("tokenizer")
    if not isinstance(tokenizer, dict) or not (project / "rt3_tokenize").is_file():
        raise SettingError("text", f"project {project} has no tokenizer (compiled without a vocabulary)")
    encoded = text.encode("utf-8")
    if len(encoded) > MAX_TEXT_BYTES:
        raise SettingError("text", f"{len(encoded)} bytes; rt3_tokenize takes at most {MAX_TEXT_BYTES}")
    specs = {spec["name"]: spec for spec in manifest["inputs"]}
    ids_spec, mask_spec = specs.get(tokenizer.get("input")), specs.get(tokenizer.get("mask_input"))
    others = [name for name in specs if name not in (tokenizer.get("input"), tokenizer.get("mask_input"))]
    if ids_spec is None or others:
        raise SettingError("text", f"the model's inputs {', '.join(others)} are not the tokenizer's")
    target = get_target(manifest["target"])
    target.check_tools()
    with tempfile.TemporaryDirectory(prefix="text-", dir=project) as tmp:
        directory = Path(tmp).relative_to(project)
        paths = [directory / name for name in ("text.txt", "ids.bin", "mask.bin")]
        (project / paths[0]).write_bytes(encoded)
        run_example(target, Path("rt3_tokenize"), [str(path) for path in paths], project)
        arrays = {ids_spec["name"]: _raw(project / paths[1], ids_spec)}
        if mask_spec is not None:
            arrays[mask_spec["name"]] = _raw(project / paths[2], mask_spec)
    return run_project(project, level, [arrays[name] for name in specs])


MAX_TEXT_BYTES = 65536
"""What rt3_tokenize reads of a text."""


def _raw(path: Path, spec: dict) -> np.ndarray:
    """One sequence of rt3_tokenize's output as the input `spec` (its last dimension; a batch repeats it)."""
    return np.broadcast_to(np.frombuffer(path.read_bytes(), dtype=spec["dtype"]), spec["shape"]).copy()


def read_input(path: Path, spec: dict) -> np.ndarray:
    """The .npy file at `path` as the model input `spec` of the manifest (name, shape, dtype), or a
    UserError naming the file."""
    try:
        # Mapped, not read: a header may claim more elements than the file (or memory) holds.
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError, OverflowError) as exc:  # mmap: a length past the address space
        raise UserError(f"{path}: cannot read a .npy array ({exc})") from None
    return input_array(array, spec, str(path))


def input_array(array: np.ndarray, spec: dict, label: str) -> np.ndarray:
    """`array` as the model input `spec` (name, shape, dtype), or a UserError starting with `label`."""
    if list(array.shape) != spec["shape"]:
        raise UserError(f"{label}: shape {list(array.shape)}, {spec['name']} needs {spec['shape']}")
    return _as_input_dtype(array, np.dtype(spec["dtype"]), f"{label}: {spec['name']}")


def _read_manifest(project: Path) -> dict:
    """rt3c-build.json of a compiled project, checked as far as `run_project` relies on it."""
    path = project / "rt3c-build.json"
    if not path.is_file():
        raise UserError(f"{project}: not an rt3c project (no rt3c-build.json); make one with `rt3c compile`")
    try:
        manifest = json.loads(path.read_text())
        target, levels = manifest["target"], manifest["levels"]
        specs = [
            (f"{kind}[{index}]", spec)
            for kind in ("inputs", "outputs")
            for index, spec in enumerate(manifest[kind])
        ]
    except (*UNREADABLE_JSON, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not an rt3c project manifest ({type(exc).__name__}: {exc})") from None
    if not isinstance(target, str) or target not in TARGETS:
        raise UserError(f"{path}: target {target!r:.40} is none of {', '.join(TARGETS)}")
    if not isinstance(manifest.get("prefix"), str) or not PREFIX_PATTERN.match(manifest["prefix"]):
        raise UserError(
            f"{path}: prefix {manifest.get('prefix')!r:.40} is not a prefix `rt3c compile` writes"
        )
    if not isinstance(levels, list) or not levels:
        raise UserError(f"{path}: levels: expected a non-empty list, got {levels!r:.40}")
    for where, spec in specs:
        if not _is_tensor_spec(spec):
            raise UserError(f"{path}: {where}: expected name, shape and dtype as `rt3c compile` writes them")
    return manifest


def _is_tensor_spec(spec: object) -> bool:
    def positive(value: object) -> bool:
        return type(value) is int and value >= 1

    return (
        isinstance(spec, dict)
        and isinstance(spec.get("name"), str)
        and isinstance(spec.get("dtype"), str)
        and spec["dtype"] in C_TYPES
        and isinstance(spec.get("shape"), list)
        and all(positive(dim) for dim in spec["shape"])
        and (spec.get("index_limit") is None or positive(spec["index_limit"]))
    )


def _as_input_dtype(array: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
    """`array` as `dtype`. Token ids and masks are integers: a float id would be truncated (3.7 -> 3) and
    a value past the type would wrap, so an integer input takes only integers that its type holds."""
    if np.issubdtype(dtype, np.integer):
        if array.dtype.kind not in "biu":
            raise UserError(f"{what} takes {dtype} integers, got {array.dtype} values")
        info = np.iinfo(dtype)
        if array.size and not info.min <= int(array.min()) <= int(array.max()) <= info.max:
            raise UserError(f"{what} takes {dtype} integers, got values outside [{info.min}, {info.max}]")
    return array.astype(dtype)
