"""rt3c: export sparse Transformers (RT3: block + pattern pruning, DVFS levels) to C for ARM boards.

The stages as Python calls (implemented in `rt3c.api`, docs: README, Python API):

    import rt3c

    exported = rt3c.export("bert-tiny", "out/model.onnx")
    rt3c.plan(exported.onnx_path, "out/plan.json", sparsities=[0.5, 0.75], frequencies_khz=[1400000, 800000])
    project = rt3c.compile(exported.onnx_path, "out/project", plan="out/plan.json")

`import rt3c` loads no stage: the first use of one of these names imports `rt3c.api`, whose functions import
their stage (torch, TVM) when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Project", "__version__", "compile", "encode", "export", "generate", "plan", "prune", "search"]

if TYPE_CHECKING:
    from rt3c.api import Project, compile, encode, export, generate, plan, prune, search


def __getattr__(name: str) -> Any:
    if name in __all__:
        from rt3c import api

        value = getattr(api, name)
        globals()[name] = value  # looked up once: later uses find it in the module
        return value
    raise AttributeError(f"module 'rt3c' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
