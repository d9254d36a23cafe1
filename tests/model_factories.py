"""Models for `--model package.module:factory` tests (imported by rt3c, not collected by pytest)."""

from __future__ import annotations

import torch
from torch import nn


class TinyLM(nn.Module):
    vocab_size = 50

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(self.vocab_size, 8)
        self.proj = nn.Linear(8, self.vocab_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.tanh(self.embed(input_ids)))


class HistogramModel(nn.Module):
    """Uses `aten.histc`, which the ONNX exporter cannot convert."""

    vocab_size = 10

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.histc(input_ids.float())


def tiny_lm() -> nn.Module:
    return TinyLM()


def histogram_model() -> nn.Module:
    return HistogramModel()


def not_a_model() -> str:
    return "nope"
