"""The static arena planner: no two tensors alive at once share bytes; the plan is near the lower bound."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from rt3c.runtime_c.arena import ALIGNMENT, Lifetime, plan_arena


@st.composite
def lifetimes(draw: st.DrawFn) -> list[Lifetime]:
    count = draw(st.integers(1, 30))
    tensors = []
    for index in range(count):
        first = draw(st.integers(0, 40))
        tensors.append(
            Lifetime(f"t{index}", draw(st.integers(1, 5000)), first, first + draw(st.integers(0, 10)))
        )
    return tensors


@settings(max_examples=200, deadline=None)
@given(lifetimes())
def test_live_tensors_never_share_bytes(tensors: list[Lifetime]) -> None:
    plan = plan_arena(tensors)
    for a in tensors:
        start_a = plan.offsets[a.name]
        assert start_a % ALIGNMENT == 0
        assert start_a + a.size <= plan.size
        for b in tensors:
            if a is not b and a.overlaps(b):
                start_b = plan.offsets[b.name]
                assert start_a + a.size <= start_b or start_b + b.size <= start_a, (a, b, plan)
    assert plan.size >= plan.lower_bound


def test_chain_reuses_memory() -> None:
    # A straight chain x0 -> x1 -> x2 -> x3: only two neighbours are ever alive together.
    chain = [Lifetime(f"x{i}", 1024, i, i + 1) for i in range(4)]
    plan = plan_arena(chain)
    assert plan.size == plan.lower_bound == 2048
    assert plan.overhead == 0.0


def test_empty() -> None:
    plan = plan_arena([])
    assert plan.size == plan.lower_bound == 0
