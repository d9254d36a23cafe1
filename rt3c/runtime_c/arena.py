"""Static arena planning: one byte offset per activation tensor, decided at compile time.

The C runtime keeps every activation in one static array. Two tensors may share bytes only when their
lifetimes (the steps from the one that writes a tensor to the last one that reads it) do not overlap.
The planner is the greedy-by-size heuristic of TensorFlow Lite Micro's `GreedyMemoryPlanner`: place the
largest tensors first, each at the lowest aligned offset that does not collide with an already placed
tensor whose lifetime overlaps. Its result is compared with the lower bound no plan can beat: the largest
total size of the tensors alive at one step.
"""

from __future__ import annotations

from dataclasses import dataclass

# TVM kernels assume 64-byte aligned buffers (its kAllocAlignment) and emit aligned vector loads.
ALIGNMENT = 64


@dataclass(frozen=True)
class Lifetime:
    """A tensor of `size` bytes written at step `first` and last read at step `last` (inclusive)."""

    name: str
    size: int
    first: int
    last: int

    def overlaps(self, other: Lifetime) -> bool:
        return self.first <= other.last and other.first <= self.last


@dataclass(frozen=True)
class ArenaPlan:
    offsets: dict[str, int]
    size: int
    """Bytes the arena needs (the end of the highest placed tensor, aligned)."""
    lower_bound: int
    """The largest sum of aligned sizes of tensors alive at one step: no plan needs fewer bytes."""

    @property
    def overhead(self) -> float:
        """How far the plan is above the lower bound (0.0 = optimal)."""
        return self.size / self.lower_bound - 1.0 if self.lower_bound else 0.0


def _aligned(size: int) -> int:
    return -(-size // ALIGNMENT) * ALIGNMENT


def plan_arena(lifetimes: list[Lifetime]) -> ArenaPlan:
    """Offsets for `lifetimes` such that tensors alive at the same step never share a byte."""
    placed: list[tuple[Lifetime, int]] = []
    # Largest first; ties by earlier first use, then name, so the plan is deterministic.
    for tensor in sorted(lifetimes, key=lambda t: (-t.size, t.first, t.name)):
        size = _aligned(tensor.size)
        busy = sorted(
            (offset, offset + _aligned(other.size)) for other, offset in placed if other.overlaps(tensor)
        )
        offset = 0
        for start, end in busy:
            if offset + size <= start:
                break
            offset = max(offset, end)
        placed.append((tensor, offset))
    size = max((offset + _aligned(t.size) for t, offset in placed), default=0)
    steps = {step for t in lifetimes for step in (t.first, t.last)}
    lower_bound = max(
        (sum(_aligned(t.size) for t in lifetimes if t.first <= step <= t.last) for step in steps), default=0
    )
    return ArenaPlan({t.name: offset for t, offset in placed}, size, lower_bound)
