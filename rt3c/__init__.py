"""rt3c: export sparse Transformers (RT3: block + pattern pruning, DVFS levels) to C for ARM boards."""

__version__ = "0.1.0"
