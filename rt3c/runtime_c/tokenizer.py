"""The C tokenizer a project can carry (`rt3c compile --tokenizer`): a WordPiece vocabulary bound to the
model's token-id input, as the tables `NAME_tokenizer.c` holds (docs/RUNTIME.md, "Tokenizer").

The vocabulary is stored sorted, for a binary search: the token bytes end to end (`bytes`), where each
token starts (`offsets`, one more than the tokens, uint16 while the bytes fit, else uint32) and each
token's id (`ids`, uint16 while the ids fit, else uint32). The C side only reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rt3c.core.errors import SettingError
from rt3c.runtime_c.program import Program
from rt3c.runtime_c.vocab import WordPieceVocab

IDS_INPUT = "input_ids"
MASK_INPUT = "attention_mask"
TOKEN_TYPES_INPUT = "token_type_ids"


@dataclass(frozen=True)
class TokenizerTables:
    vocab: WordPieceVocab
    ids_input: str
    """The model input the ids are for."""
    seq_len: int
    """Ids per call: the last dimension of that input ([CLS], pieces, [SEP], then [PAD])."""
    mask_input: str | None
    """The model input the mask is for (`attention_mask`, when the model has one of the ids' shape)."""
    id_type: str
    mask_type: str
    """C types of the ids and the mask (the model's inputs' types)."""
    bytes: np.ndarray
    offsets: np.ndarray
    ids: np.ndarray
    max_first_piece: int
    """The longest token that starts a word, in bytes: longer candidates are not looked up."""
    max_continued_piece: int
    """The longest continuation token without its prefix ("##"), in bytes."""

    @property
    def table_bytes(self) -> int:
        """Flash of the vocabulary tables (before alignment)."""
        return int(self.bytes.nbytes + self.offsets.nbytes + self.ids.nbytes)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab.tokens)

    def manifest(self) -> dict[str, object]:
        """What `rt3c-build.json` records of the tokenizer."""
        return {
            "source": self.vocab.source,
            "input": self.ids_input,
            "mask_input": self.mask_input,
            "seq_len": self.seq_len,
            "vocab_size": self.vocab_size,
            "lowercase": self.vocab.lowercase,
            "special_ids": dict(self.vocab.special_ids),
            "table_bytes": self.table_bytes,
        }

    def context(self, prefix: str) -> dict[str, object]:
        """What the templates `tokenizer.h.j2` and `tokenizer.c.j2` render from."""
        vocab = self.vocab
        return {
            "prefix": prefix,
            "macro": prefix.upper(),
            "source": vocab.source,
            "seq_len": self.seq_len,
            "id_type": self.id_type,
            "mask_type": self.mask_type,
            "vocab_size": self.vocab_size,
            "entries": len(self.ids),
            "special_ids": vocab.special_ids,
            "lowercase": int(vocab.lowercase),
            "max_word": vocab.max_word_chars,
            "continuation": np.frombuffer(vocab.continuation, np.uint8),
            "continuation_text": vocab.continuation.decode("ascii"),
            "bytes": self.bytes,
            "offsets": self.offsets,
            "ids": self.ids,
            "offset_type": "uint16_t" if self.offsets.dtype == np.uint16 else "uint32_t",
            "entry_id_type": "uint16_t" if self.ids.dtype == np.uint16 else "uint32_t",
            "max_first_piece": self.max_first_piece,
            "max_continued_piece": self.max_continued_piece,
            "table_bytes": self.table_bytes,
        }


def bind_tokenizer(vocab: WordPieceVocab, program: Program) -> TokenizerTables:
    """The tables of `vocab` for `program`'s token ids: refused (one line naming the vocabulary) when the
    model has no token-id input, or when the vocabulary has ids its embedding table does not."""
    candidates = [name for name in program.inputs if name in program.index_limits]
    ids_input = IDS_INPUT if IDS_INPUT in candidates else candidates[0] if len(candidates) == 1 else None
    if ids_input is None:
        found = ", ".join(candidates) or "none"
        raise SettingError(
            "tokenizer",
            f"the model has no single token-id input for the tokenizer (an input named {IDS_INPUT}, or "
            f"the only one that indexes an embedding table; found: {found})",
            vocab.source,
        )
    tensor = program.tensors[ids_input]
    limit = program.index_limits[ids_input]
    if len(vocab.tokens) > limit:
        raise SettingError(
            "tokenizer",
            f"{len(vocab.tokens)} tokens, but the model's {ids_input} takes ids in [0, {limit}): the "
            "vocabulary is not this model's",
            vocab.source,
        )
    if tensor.dtype not in ("int64", "int32") or not tensor.shape or tensor.shape[-1] < 2:
        raise SettingError(
            "tokenizer",
            f"the model's {ids_input} is {tensor.dtype}{list(tensor.shape)}; the tokenizer writes int64 "
            "or int32 ids, at least 2 a sequence ([CLS] and [SEP])",
            vocab.source,
        )
    mask = program.tensors.get(MASK_INPUT) if MASK_INPUT in program.inputs else None
    if mask is not None and (mask.shape != tensor.shape or mask.dtype not in ("int64", "int32")):
        mask = None  # not a mask the tokenizer can fill: the caller writes it
    entries = sorted((token, index) for index, token in enumerate(vocab.tokens) if token)
    blob = b"".join(token for token, _ in entries)
    offsets = np.cumsum([0] + [len(token) for token, _ in entries], dtype=np.int64)
    continuation = vocab.continuation
    continued = [len(token) - len(continuation) for token, _ in entries if token.startswith(continuation)]
    return TokenizerTables(
        vocab=vocab,
        ids_input=ids_input,
        mask_input=None if mask is None else MASK_INPUT,
        seq_len=int(tensor.shape[-1]),
        id_type=tensor.c_type,
        mask_type=(mask or tensor).c_type,
        bytes=np.frombuffer(blob, np.uint8),
        offsets=offsets.astype(np.uint16 if len(blob) < 1 << 16 else np.uint32),
        ids=np.array(
            [index for _, index in entries], np.uint16 if len(vocab.tokens) <= 1 << 16 else np.uint32
        ),
        max_first_piece=max(len(token) for token, _ in entries),
        max_continued_piece=max(continued, default=0),
    )
