"""Data: the Rotten Tomatoes split (no plot rows, fixed, disjoint), hamlet windows, the synthetic task."""

from __future__ import annotations

import pytest
import torch

from rt3c.core.errors import UserError
from rt3c.stages.datasets import TRAIN_FRACTION, load_dataset, rotten_tomatoes_rows
from rt3c.stages.models import load_model


def test_rotten_tomatoes_rows_are_labelled_reviews_in_a_fixed_order() -> None:
    rows = rotten_tomatoes_rows()
    assert rows == rotten_tomatoes_rows()
    labels = [label for _, label in rows]
    assert set(labels) == {0, 1}
    assert 0.3 < sum(labels) / len(rows) < 0.7
    assert len({text for text, _ in rows}) > 0.95 * len(rows)
    # Plot summaries are long paragraphs; review snippets are a sentence or two.
    assert max(len(text) for text, _ in rows) < 1000


def test_rotten_tomatoes_splits_for_minilm() -> None:
    model = load_model("minilm-l6")
    data = load_dataset("rotten-tomatoes", model, max_len=32)
    total = len(data.train) + len(data.validation) + len(data.test)
    assert total == len(rotten_tomatoes_rows())
    assert len(data.train) == round(total * TRAIN_FRACTION)
    ids, mask = data.test.inputs
    assert ids.shape == mask.shape == (len(data.test), 32)
    assert torch.all(ids[:, 0] == model.tokenizer.cls_token_id)
    (batch_ids, batch_mask), labels = data.test.batch(torch.arange(4))
    assert batch_ids.shape[1] == int(batch_mask.sum(dim=1).max())  # unused padding trimmed
    assert labels.tolist() == data.test.targets[:4].tolist()


def test_hamlet_windows_predict_the_next_token() -> None:
    model = load_model("rt3-lm")
    data = load_dataset("hamlet", model)
    (inputs,), targets = data.train.batch(torch.arange(len(data.train)))
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    assert torch.equal(inputs[1:, 0], targets[:-1, -1])  # contiguous windows
    assert len(data.train) > 8 * len(data.test) > 0


@pytest.mark.parametrize("name", ["bert-tiny", "rt3-lm"])
def test_synthetic_task_fits_either_kind_of_model(name: str) -> None:
    data = load_dataset("synthetic", load_model(name))
    assert len(data.train) > len(data.validation) > 0
    assert data.train.inputs[0].dtype == torch.int64


def test_bad_dataset_names_and_kinds() -> None:
    with pytest.raises(UserError, match="unknown dataset"):
        load_dataset("imdb", load_model("bert-tiny"))
    with pytest.raises(UserError, match="sequence classifier"):
        load_dataset("rotten-tomatoes", load_model("rt3-lm"))
    with pytest.raises(UserError, match="no text tokenizer"):
        load_dataset("rotten-tomatoes", load_model("bert-tiny"))


def test_length_bucketed_batches_cover_every_row_once_with_little_padding() -> None:
    model = load_model("minilm-l6")
    split = load_dataset("rotten-tomatoes", model, max_len=64).train
    batches = split.length_bucketed_batches(32, torch.Generator().manual_seed(0))
    rows = torch.cat(batches)
    assert sorted(rows.tolist()) == list(range(len(split)))
    lengths = split.lengths()

    def padded_tokens(batch_rows: list[torch.Tensor]) -> int:
        return sum(int(lengths[b].max()) * len(b) for b in batch_rows)

    shuffled = list(torch.randperm(len(split), generator=torch.Generator().manual_seed(0)).split(32))
    assert padded_tokens(batches) < 0.8 * padded_tokens(shuffled)
    again = split.length_bucketed_batches(32, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))
