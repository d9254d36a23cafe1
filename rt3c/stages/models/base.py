"""What every model source (zoo, Hugging Face directory, user factory) hands to the rest of rt3c."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

ModelKind = Literal["sequence-classification", "language-model"]


@dataclass
class LoadedModel:
    """A torch module in eval mode whose forward takes int64 token tensors and returns one tensor.

    `input_names` are the forward's positional arguments in order: `input_ids` (`[batch, seq]` token
    ids) and, for classifiers, `attention_mask` (`[batch, seq]`, 1 for real tokens). Parameter names of
    `module` are the names plans use for layers.
    """

    name: str
    module: nn.Module
    kind: ModelKind
    vocab_size: int
    max_seq_len: int
    input_names: list[str] = field(default_factory=lambda: ["input_ids"])
    output_name: str = "logits"
    tokenizer: object | None = None
    labels: list[str] | None = None
    """A classifier's label names, one per logit (a Hugging Face config's `id2label`)."""
    problem_type: str | None = None
    """A Hugging Face classifier's `problem_type` (`single_label_classification`, `regression`, ...), if set."""

    def example_inputs(self, batch: int, seq_len: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Deterministic inputs: seeded token ids, and a mask that pads the tail of the last row."""
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, self.vocab_size, (batch, seq_len), generator=generator, dtype=torch.int64)
        inputs = [ids]
        if "attention_mask" in self.input_names:
            mask = torch.ones(batch, seq_len, dtype=torch.int64)
            mask[-1, seq_len - seq_len // 4 :] = 0
            inputs.append(mask)
        return tuple(inputs)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())
