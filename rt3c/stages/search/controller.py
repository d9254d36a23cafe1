"""RT3's search: REINFORCE with a recurrent controller, and random search with the same budget.

The controller is an LSTM cell that emits the decisions of a `SearchSpace` one after another; each step
sees the previous action and samples from a softmax restricted to the legal options. The reward is the
search's objective (`rt3c.stages.search.objective`: RT3's accuracy reward, or energy within an accuracy budget).
A moving-average baseline reduces the variance of the policy gradient.

Candidates of one batch are evaluated with `map_fn` (the caller's choice: the built-in `map`, a process
pool's `map`, or a Ray pool's), and every evaluation is cached by its decisions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from rt3c.stages.search.objective import Evaluation
from rt3c.stages.search.space import SearchSpace

Reward = Callable[[Evaluation], float]
"""A candidate's evaluation -> its reward (an objective of `rt3c.stages.search.objective`)."""


@dataclass
class Episode:
    episode: int
    choices: list[int]
    reward: float
    evaluation: Evaluation
    cached: bool


@dataclass
class SearchLog:
    method: str
    episodes: list[Episode] = field(default_factory=list)

    @property
    def best(self) -> Episode:
        return max(self.episodes, key=lambda e: (e.reward, -e.episode))

    def best_so_far(self) -> list[float]:
        return list(np.maximum.accumulate([e.reward for e in self.episodes]))


class CachedEvaluator:
    """Evaluates each distinct candidate once; `map_fn` runs the new ones of a batch (in parallel if asked)."""

    def __init__(
        self,
        evaluate: Callable[[tuple[int, ...]], Evaluation],
        map_fn: Callable[[Callable, Iterable], Iterable] = map,
    ) -> None:
        self.evaluate = evaluate
        self.map_fn = map_fn
        self.cache: dict[tuple[int, ...], Evaluation] = {}

    def __call__(self, batch: list[list[int]]) -> list[tuple[Evaluation, bool]]:
        """Each candidate's evaluation, and whether it came from the cache (or an earlier twin in the batch)."""
        keys = [tuple(choices) for choices in batch]
        was_cached = [key in self.cache for key in keys]
        new = list(dict.fromkeys(key for key, cached in zip(keys, was_cached, strict=True) if not cached))
        for key, evaluation in zip(new, self.map_fn(self.evaluate, new), strict=True):
            self.cache[key] = evaluation
        results, seen = [], set()
        for key, cached in zip(keys, was_cached, strict=True):
            results.append((self.cache[key], cached or key in seen))
            seen.add(key)
        return results


class Controller(nn.Module):
    def __init__(self, space: SearchSpace, hidden: int = 64) -> None:
        super().__init__()
        self.space = space
        self.decisions = space.decisions
        widest = max(len(d.options) for d in self.decisions)
        self.hidden = hidden
        self.embed = nn.Embedding(widest + 1, hidden)  # index `widest` is the start token
        self.cell = nn.LSTMCell(hidden, hidden)
        self.heads = nn.ModuleList(nn.Linear(hidden, len(d.options)) for d in self.decisions)
        self.start = widest

    def sample(self, generator: torch.Generator) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """Choices, their summed log-probability and the policy's summed entropy."""
        state = (torch.zeros(1, self.hidden), torch.zeros(1, self.hidden))
        previous = torch.tensor([self.start])
        choices: list[int] = []
        log_prob = torch.zeros(())
        entropy = torch.zeros(())
        for position, head in enumerate(self.heads):
            state = self.cell(self.embed(previous), state)
            logits = head(state[0])[0]
            allowed = torch.from_numpy(self.space.allowed(position, choices))
            logits = logits.masked_fill(~allowed, float("-inf"))
            probs = torch.softmax(logits, dim=0)
            choice = int(torch.multinomial(probs, 1, generator=generator))
            log_probs = torch.log_softmax(logits, dim=0)
            log_prob = log_prob + log_probs[choice]
            entropy = entropy - (probs[allowed] * log_probs[allowed]).sum()
            choices.append(choice)
            previous = torch.tensor([choice])
        return choices, log_prob, entropy


def reinforce(
    space: SearchSpace,
    evaluator: CachedEvaluator,
    objective: Reward,
    episodes: int,
    *,
    batch_size: int = 4,
    seed: int = 0,
    learning_rate: float = 0.02,
    baseline_decay: float = 0.8,
    entropy_weight: float = 1e-3,
    on_episode: Callable[[Episode], None] | None = None,
) -> SearchLog:
    """Train the controller for `episodes` sampled candidates (in batches) and log every one."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    controller = Controller(space)
    optimizer = torch.optim.Adam(controller.parameters(), lr=learning_rate)
    log = SearchLog("reinforce")
    baseline: float | None = None
    while len(log.episodes) < episodes:
        samples = [controller.sample(generator) for _ in range(min(batch_size, episodes - len(log.episodes)))]
        results = evaluator([choices for choices, _, _ in samples])
        loss = torch.zeros(())
        for (choices, log_prob, entropy), (evaluation, cached) in zip(samples, results, strict=True):
            value = objective(evaluation)
            baseline = value if baseline is None else baseline_decay * baseline + (1 - baseline_decay) * value
            loss = loss - (value - baseline) * log_prob - entropy_weight * entropy
            episode = Episode(len(log.episodes), choices, value, evaluation, cached)
            log.episodes.append(episode)
            if on_episode:
                on_episode(episode)
        optimizer.zero_grad()
        (loss / len(samples)).backward()
        optimizer.step()
    return log


def random_search(
    space: SearchSpace,
    evaluator: CachedEvaluator,
    objective: Reward,
    episodes: int,
    *,
    batch_size: int = 4,
    seed: int = 0,
    on_episode: Callable[[Episode], None] | None = None,
) -> SearchLog:
    """Uniform samples over the legal candidates, with the same budget and evaluator as `reinforce`."""
    rng = np.random.default_rng(seed)
    log = SearchLog("random")
    while len(log.episodes) < episodes:
        batch = []
        for _ in range(min(batch_size, episodes - len(log.episodes))):
            choices: list[int] = []
            for position in range(len(space.decisions)):
                choices.append(int(rng.choice(np.flatnonzero(space.allowed(position, choices)))))
            batch.append(choices)
        for choices, (evaluation, cached) in zip(batch, evaluator(batch), strict=True):
            episode = Episode(len(log.episodes), choices, objective(evaluation), evaluation, cached)
            log.episodes.append(episode)
            if on_episode:
                on_episode(episode)
    return log
