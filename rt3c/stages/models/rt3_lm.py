"""RT3's own 2-layer Transformer language model (the PyTorch word_language_model that RT3 prunes).

Same architecture as `TransformerModel` in RT3's reference code (embedding 800, FFN 200, 4 heads,
2 post-LN encoder layers with ReLU, dropout 0.2, sinusoidal positions, causal mask, linear decoder), but
with q/k/v/out as separate `nn.Linear`s instead of `nn.MultiheadAttention`'s packed `in_proj_weight`:
every projection is then one prunable `[out, in]` weight and one ONNX `MatMul`.
"""

from __future__ import annotations

import collections
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

_TOKEN = re.compile(r"[a-z']+|[.,;:!?]")
UNK, EOS = "<unk>", "<eos>"


@dataclass(frozen=True)
class WordVocab:
    """Word-level vocabulary built from a corpus: the most frequent words, then `<unk>` for the rest."""

    words: tuple[str, ...]

    @classmethod
    def from_text(cls, text: str, max_size: int) -> WordVocab:
        counts = collections.Counter(_TOKEN.findall(text.lower()))
        # Sort by count, then alphabetically, so the vocabulary does not depend on dict order.
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        return cls((UNK, EOS, *(word for word, _ in ranked[: max_size - 2])))

    def encode(self, text: str) -> list[int]:
        index = {word: i for i, word in enumerate(self.words)}
        ids: list[int] = []
        for line in text.lower().splitlines():
            tokens = _TOKEN.findall(line)
            if tokens:
                ids.extend(index.get(token, 0) for token in tokens)
                ids.append(1)
        return ids

    def __len__(self) -> int:
        return len(self.words)


class PositionalEncoding(nn.Module):
    def __init__(self, d_model: int, dropout: float, max_len: int) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        position = torch.arange(max_len).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        table = torch.zeros(max_len, d_model)
        table[:, 0::2] = torch.sin(position * div_term)
        table[:, 1::2] = torch.cos(position * div_term)
        self.register_buffer("table", table, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(x + self.table[: x.shape[1]])


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, causal_bias: torch.Tensor) -> torch.Tensor:
        batch, seq, d_model = x.shape
        head_dim = d_model // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, seq, self.heads, head_dim).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim) + causal_bias
        attended = self.dropout(scores.softmax(dim=-1)) @ v
        return self.out(attended.transpose(1, 2).reshape(batch, seq, d_model))


class EncoderLayer(nn.Module):
    """Post-LN like `nn.TransformerEncoderLayer` (norm_first=False, ReLU)."""

    def __init__(self, d_model: int, heads: int, d_ffn: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = SelfAttention(d_model, heads, dropout)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, causal_bias: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.dropout(self.self_attn(x, causal_bias)))
        ffn = self.linear2(self.dropout(torch.relu(self.linear1(x))))
        return self.norm2(x + self.dropout(ffn))


class RT3LanguageModel(nn.Module):
    """Token ids `[batch, seq]` to next-token logits `[batch, seq, vocab]`."""

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 800,
        heads: int = 4,
        d_ffn: int = 200,
        layers: int = 2,
        dropout: float = 0.2,
        max_len: int = 512,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.encoder = nn.Embedding(vocab_size, d_model)
        self.pos_encoder = PositionalEncoding(d_model, dropout, max_len)
        self.layers = nn.ModuleList(EncoderLayer(d_model, heads, d_ffn, dropout) for _ in range(layers))
        self.decoder = nn.Linear(d_model, vocab_size)
        # RT3's init_weights: uniform(-0.1, 0.1) embedding and decoder, zero decoder bias.
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        seq = input_ids.shape[1]
        causal_bias = torch.full((seq, seq), float("-inf")).triu(1)
        x = self.pos_encoder(self.encoder(input_ids) * math.sqrt(self.d_model))
        for layer in self.layers:
            x = layer(x, causal_bias)
        return self.decoder(x)


def build_rt3_lm(corpus: Path, max_vocab: int = 2000, seed: int = 0) -> tuple[RT3LanguageModel, WordVocab]:
    """A randomly initialised RT3 LM whose vocabulary is the corpus' `max_vocab` most frequent words."""
    vocab = WordVocab.from_text(corpus.read_text(encoding="utf-8", errors="replace"), max_vocab)
    torch.manual_seed(seed)
    return RT3LanguageModel(len(vocab)), vocab
