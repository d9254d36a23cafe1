"""The vocabulary a data set uses (`--vocab DATA`): the token ids of its training split, tokenized by the
model's own tokenizer, plus the tokenizer's special tokens; and how much of the test split they cover.

Torch side (it tokenizes through `rt3c.stages.datasets`); the graph pass that trims the tables is
`rt3c.passes.trim_vocabulary`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from rt3c.core.errors import SettingError
from rt3c.passes.trim_vocabulary import KeptVocabulary

if TYPE_CHECKING:
    from rt3c.stages.datasets import Split


@dataclass(frozen=True)
class DataVocabulary:
    vocabulary: KeptVocabulary
    test_coverage: float
    """The share of the test split's tokens (padding excluded) whose id is kept."""


def special_token_ids(tokenizer: object) -> tuple[list[int], int] | None:
    """The special tokens' ids and the unknown token's id of a Hugging Face tokenizer or rt3-lm's
    `WordVocab`; None when the tokenizer has no unknown token (or there is no tokenizer)."""
    from rt3c.stages.models.rt3_lm import EOS, UNK, WordVocab

    if isinstance(tokenizer, WordVocab):
        return [tokenizer.words.index(UNK), tokenizer.words.index(EOS)], tokenizer.words.index(UNK)
    unknown = getattr(tokenizer, "unk_token_id", None)
    specials = getattr(tokenizer, "all_special_ids", None)
    if not isinstance(unknown, int) or not isinstance(specials, list):
        return None
    return [int(i) for i in specials], unknown


def data_vocabulary(model_ref: str, data: str) -> DataVocabulary:
    """The ids of `data`'s training split as `load_dataset` tokenizes it for the model `model_ref` (a zoo
    name, a Hugging Face directory, ...), with the special tokens. Refused (the setting `vocab`) when the
    model's tokenizer has no unknown token, which the ids that are not kept need."""
    from rt3c.stages.datasets import load_dataset
    from rt3c.stages.models.zoo import load_model

    model = load_model(model_ref)
    specials = special_token_ids(model.tokenizer)
    if specials is None:
        raise SettingError(
            "vocab",
            f"{model.name}'s vocabulary has no special tokens (no tokenizer with an unknown token), so the "
            "ids a trimmed table drops have no row to go to",
            data,
        )
    special_ids, unknown_id = specials
    dataset = load_dataset(data, model)
    used = np.unique(_token_ids(dataset.train))
    kept = np.union1d(used, np.asarray(special_ids, dtype=np.int64)).astype(np.int64)
    test = _token_ids(dataset.test)
    coverage = float(np.isin(test, kept).mean()) if test.size else 1.0
    vocabulary = KeptVocabulary(kept, model.vocab_size, unknown_id, f"{data} train split")
    return DataVocabulary(vocabulary, coverage)


def _token_ids(split: Split) -> np.ndarray:
    """The ids of a split's real tokens (padding excluded)."""
    inputs = split.inputs
    ids = inputs[0].numpy()
    return ids[inputs[1].numpy() != 0] if len(inputs) == 2 else ids.reshape(-1)
