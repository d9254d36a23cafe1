"""The layers of rt3c (docs/ARCHITECTURE.md): nothing imports upward, nothing imports in a circle, and the
bottom layers load neither torch nor the heavy runtimes.

    interface  rt3c.cli, rt3c.api                          the command line, the Python API
    stages     rt3c.stages (export, encode, lower, build, compile, latency, models, prune, search, ...)
    engines    rt3c.passes, rt3c.codegen, rt3c.runtime_c
    core       rt3c.core                                   the contracts: plan, format, ONNX I/O, boards

The import graph comes from the source (ast), so a lazy import inside a function counts as much as one at
the top of a module; imports under `if TYPE_CHECKING:` count for the layers but not for cycles (they never
run). The `rt3c` package itself is exempt: Python imports it before any of its modules anyway, and it
imports nothing (checked below).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import rt3c

PACKAGE_DIR = Path(rt3c.__file__).resolve().parent
LAYERS = {
    "rt3c.core": 0,
    "rt3c.passes": 1,
    "rt3c.codegen": 1,
    "rt3c.runtime_c": 1,
    "rt3c.stages": 2,
    "rt3c": 3,
    "rt3c.cli": 3,
    "rt3c.api": 3,
}
LAYER_NAMES = ["core", "engines", "stages", "interface"]
FORBIDDEN = {
    "rt3c.core": {"torch", "transformers", "tvm", "tvm_ffi", "jinja2", "onnxruntime"},
    "rt3c.passes": {"torch", "transformers"},
    "rt3c.codegen": {"torch", "transformers"},
}


@dataclass(frozen=True)
class Import:
    target: str
    """A module of rt3c (resolved: `from rt3c.core import plan` is `rt3c.core.plan`), or a top-level
    third-party package."""
    type_checking: bool
    line: int


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _resolve(module: str, name: str) -> str:
    """`from module import name`: the submodule `module.name` when there is one, else `module`."""
    return f"{module}.{name}" if f"{module}.{name}" in MODULES else module


def imports_of(module: str) -> list[Import]:
    tree = ast.parse(MODULES[module].read_text())
    guarded = _type_checking_lines(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [_resolve(node.module, alias.name) for alias in node.names]
        else:
            continue
        for target in targets:
            if not target.startswith("rt3c"):
                target = target.split(".")[0]
            found.append(Import(target, node.lineno in guarded, node.lineno))
    return found


def layer_of(module: str) -> int:
    prefix = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[prefix]


def test_the_scan_sees_every_layer() -> None:
    assert {layer_of(module) for module in MODULES if module != "rt3c"} == set(range(len(LAYER_NAMES)))


def test_nothing_imports_upward() -> None:
    upward = [
        f"{module}:{imp.line} ({LAYER_NAMES[layer_of(module)]}) imports {imp.target} "
        f"({LAYER_NAMES[layer_of(imp.target)]})"
        for module in MODULES
        if module != "rt3c"
        for imp in imports_of(module)
        if imp.target.startswith("rt3c.") and layer_of(imp.target) > layer_of(module)
    ]
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_bottom_layers_do_not_import_heavy_packages(package: str) -> None:
    offending = [
        f"{module}:{imp.line} imports {imp.target}"
        for module in MODULES
        if module == package or module.startswith(package + ".")
        for imp in imports_of(module)
        if imp.target in FORBIDDEN[package]
    ]
    assert not offending, "\n".join(offending)


def test_the_package_itself_imports_nothing_of_rt3c() -> None:
    """Every `import rt3c.x` runs rt3c/__init__.py first: whatever it imported, everything would load. The
    API it exposes (`rt3c.compile`, ...) comes from its module `__getattr__`, on first use."""
    tree = ast.parse(MODULES["rt3c"].read_text())
    top_level = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    assert all(
        isinstance(node, ast.ImportFrom) and node.module in {"__future__", "typing"} for node in top_level
    )


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), or of one importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph.get(node, ()):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_no_import_cycles() -> None:
    graph = {
        module: {
            imp.target
            for imp in imports_of(module)
            if imp.target in MODULES and imp.target != "rt3c" and not imp.type_checking
        }
        for module in MODULES
    }
    # A package imports its own modules from its __init__; that is not a cycle with them.
    for module in graph:
        graph[module] = {t for t in graph[module] if not module.startswith(t + ".")}
    cycles = _cycles(graph)
    assert not cycles, cycles


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


# -- what actually loads: `python -X importtime` in a fresh interpreter -------------------------------


def _loaded_packages(code: str) -> set[str]:
    """The top-level packages a fresh interpreter imports to run `code` (from -X importtime's report)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    names = [line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if "import time:" in line]
    return {name.split(".")[0] for name in names}


def test_passes_and_core_load_neither_torch_nor_onnxruntime() -> None:
    modules = [m for m in MODULES if m.startswith(("rt3c.passes", "rt3c.core"))]
    loaded = _loaded_packages("import " + ", ".join(modules))
    assert not loaded & {"torch", "onnxruntime", "tvm", "jinja2", "transformers"}


def test_simulate_and_report_load_neither_tvm_nor_torch() -> None:
    """`rt3c simulate --help`, and the modules behind `rt3c simulate` and `rt3c report`, are arithmetic and
    plotting: they must not pay for TVM or torch (seconds of import time)."""
    help_run = (
        "import sys; from rt3c.cli import main\n"
        "try:\n    main(['simulate', '--help'])\nexcept SystemExit as exit:\n    assert exit.code == 0"
    )
    for code in (help_run, "import rt3c.stages.simulate, rt3c.stages.report"):
        loaded = _loaded_packages(code)
        assert not loaded & {"tvm", "torch"}, (code, sorted(loaded & {"tvm", "torch"}))


def test_the_api_imports_its_stages_when_called() -> None:
    for code in ("from rt3c import api", "import rt3c; rt3c.export, rt3c.compile, rt3c.search"):
        loaded = _loaded_packages(code)
        assert not loaded & {"tvm", "torch", "onnxruntime"}, (
            code,
            sorted(loaded & {"tvm", "torch", "onnxruntime"}),
        )


def test_import_rt3c_loads_the_api_only_when_it_is_used() -> None:
    """`import rt3c` (which every `import rt3c.x` runs) loads none of rt3c's modules; `rt3c.compile` is the API's."""
    code = (
        "import sys, rt3c\n"
        "print(sorted(m for m in sys.modules if m.startswith('rt3c.')))\n"
        "import rt3c.api\n"
        "print(rt3c.compile is rt3c.api.compile and rt3c.Project is rt3c.api.Project, set(rt3c.__all__) <= set(dir(rt3c)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines() == ["[]", "True True"]
    with pytest.raises(AttributeError, match="no attribute 'stage'"):
        rt3c.stage  # noqa: B018 (the attribute access is what is tested)


def test_search_workers_and_the_target_table_do_not_load_tvm() -> None:
    """Each search worker (a spawned process) imports `rt3c.stages.search.evaluate` to train and score candidates
    with the latency model's arithmetic: TVM is for building kernels, which workers never do."""
    assert "tvm" not in _loaded_packages("import rt3c.stages.search.evaluate, rt3c.codegen.targets")
