"""Compiled kernel files, cached by what they are made from, so a rebuild does not recompile.

The key hashes the TVM version, the TVM target (triple, cpu, features), rt3c's own build code (the
schedules and build settings, which change the output without changing the input functions) and every
kernel's symbol and TVMScript text (op, shapes, dtypes and, for SparseLinear, the baked-in pattern
table). Entries live in `rt3c.core.cache.cache_dir("kernels")` (`$RT3C_CACHE_DIR/kernels`, default
`~/.cache/rt3c/kernels`); they are written atomically, so concurrent builds at worst compile twice, and
checked against the size and digest recorded with them, so a damaged one is rebuilt (`rt3c.core.cache`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import tvm

from rt3c.codegen import schedules, targets, tvm_build
from rt3c.codegen.targets import Target
from rt3c.codegen.tvm_build import build_kernels
from rt3c.core import cache


def kernel_key(functions: dict[str, tvm.tirx.PrimFunc], target: Target) -> str:
    digest = hashlib.sha256()
    for part in (tvm.__version__, str(target.tvm_target), target.kernel_output, str(target.vector_floats)):
        digest.update(part.encode() + b"\0")
    for module in (schedules, targets, tvm_build):
        digest.update(Path(module.__file__).read_bytes())
    for name in sorted(functions):
        digest.update(name.encode() + b"\0" + functions[name].script().encode() + b"\0")
    return digest.hexdigest()


def write_kernels(
    functions: dict[str, tvm.tirx.PrimFunc], target: Target, path: Path, cache_dir: Path | None = None
) -> bool:
    """Write the kernels of `functions` for `target` to `path` (an object file or C source, per target).

    Returns True when the file came from the cache (nothing was compiled).
    """
    cache_dir = cache.cache_dir("kernels") if cache_dir is None else cache_dir
    suffix = ".o" if target.kernel_output == "object" else ".c"
    entry = cache_dir / f"{kernel_key(functions, target)}{suffix}"
    cached = cache.read_entry(entry)
    if cached is not None:
        path.write_bytes(cached)
        return True
    module = build_kernels(functions, target)
    if target.kernel_output == "object":
        module.write_to_file(str(path))
    else:
        path.write_text(module.inspect_source())
    cache.write_entry(entry, path.read_bytes())
    return False
