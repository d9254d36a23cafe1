"""Read a model's WordPiece vocabulary for the C tokenizer (`rt3c compile --tokenizer`).

`--tokenizer` names a `vocab.txt` (one token a line, the line number is the id, as BERT ships it), a
Hugging Face `tokenizer.json` whose model is WordPiece, or a directory holding either (with its
`tokenizer_config.json`, if any). Other vocabularies are refused by name: byte-level BPE (GPT-2, RoBERTa:
`vocab.json` + `merges.txt`, or a BPE `tokenizer.json`) and SentencePiece (ALBERT: `spiece.model`).
A bad file is a SettingError of the setting `tokenizer` naming the file (the CLI: one line, exit 2;
docs/RUNTIME.md, "Tokenizer").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rt3c.core.errors import SettingError

MAX_VOCAB_FILE_BYTES = 64 << 20
MAX_TOKENS = 1 << 22
MAX_WORD_CHARS = 1000
SPECIALS = ("unk", "cls", "sep", "pad")
DEFAULT_SPECIALS = {"unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]"}
NOT_WORDPIECE = {
    "vocab.json": "byte-level BPE (GPT-2/RoBERTa style: vocab.json + merges.txt)",
    "merges.txt": "byte-level BPE (GPT-2/RoBERTa style: vocab.json + merges.txt)",
    "spiece.model": "SentencePiece (spiece.model)",
    "sentencepiece.bpe.model": "SentencePiece BPE (sentencepiece.bpe.model)",
}
REFUSAL = "; rt3c's C tokenizer takes WordPiece vocabularies only (BERT style: vocab.txt)"


@dataclass(frozen=True)
class WordPieceVocab:
    """A BERT WordPiece vocabulary: `tokens[id]` as UTF-8 bytes, and how text is split before lookup."""

    source: str
    """The file the vocabulary was read from."""
    tokens: list[bytes]
    lowercase: bool
    """ASCII letters are lower-cased first (an uncased vocabulary)."""
    special_ids: dict[str, int]
    """The ids of `unk`, `cls`, `sep` and `pad`."""
    continuation: bytes = b"##"
    """What starts a piece that continues a word."""
    max_word_chars: int = 100
    """A longer word becomes [UNK] whole (Hugging Face's `max_input_chars_per_word`)."""


def _refuse(path: Path, problem: str) -> SettingError:
    return SettingError("tokenizer", problem, path)


def read_vocab(path: Path) -> WordPieceVocab:
    """The WordPiece vocabulary at `path` (a vocab.txt, a tokenizer.json or a directory of them)."""
    path = Path(path)
    if path.is_dir():
        for name, kind in NOT_WORDPIECE.items():
            if (path / name).is_file() and not (path / "vocab.txt").is_file():
                raise _refuse(path, f"a {kind} vocabulary{REFUSAL}")
        config = _config(path / "tokenizer_config.json")
        if (path / "tokenizer.json").is_file():
            return _from_tokenizer_json(path / "tokenizer.json", config)
        if (path / "vocab.txt").is_file():
            return _from_vocab_txt(path / "vocab.txt", config)
        raise _refuse(path, "no vocab.txt or tokenizer.json in the directory")
    if path.name in NOT_WORDPIECE:
        raise _refuse(path, f"a {NOT_WORDPIECE[path.name]} vocabulary{REFUSAL}")
    if path.suffix == ".json":
        return _from_tokenizer_json(path, {})
    return _from_vocab_txt(path, {})


def _read_text(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_VOCAB_FILE_BYTES:
            raise _refuse(path, f"larger than {MAX_VOCAB_FILE_BYTES >> 20} MiB")
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise _refuse(path, f"cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise _refuse(path, f"not UTF-8 text (byte {exc.start})") from None


def _json(path: Path) -> dict[str, object]:
    try:
        value = json.loads(_read_text(path))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise _refuse(path, f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise _refuse(path, "expected a JSON object")
    return value


def _config(path: Path) -> dict[str, object]:
    return _json(path) if path.is_file() else {}


def _special_names(config: dict[str, object], where: Path) -> dict[str, str]:
    names = {}
    for key in SPECIALS:
        value = config.get(f"{key}_token", DEFAULT_SPECIALS[key])
        if isinstance(value, dict):  # an AddedToken serialised with its content
            value = value.get("content")
        if not isinstance(value, str) or not value:
            raise _refuse(where, f"{key}_token: expected a token string, got {value!r:.40}")
        names[key] = value
    return names


def _finish(
    where: Path,
    ids: dict[str, int],
    config: dict[str, object],
    lowercase: object,
    continuation: object = "##",
    max_word: object = 100,
) -> WordPieceVocab:
    if not ids:
        raise _refuse(where, "the vocabulary is empty")
    if len(ids) > MAX_TOKENS:
        raise _refuse(where, f"{len(ids)} tokens, more than the {MAX_TOKENS} the C tokenizer takes")
    names = _special_names(config, where)
    missing = [names[key] for key in SPECIALS if names[key] not in ids]
    if missing:
        raise _refuse(
            where,
            f"no {' or '.join(missing)} token; the C tokenizer needs "
            f"{', '.join(names[key] for key in SPECIALS)} in the vocabulary",
        )
    if not isinstance(continuation, str) or not continuation.isascii() or not 1 <= len(continuation) <= 8:
        raise _refuse(where, "continuing_subword_prefix: expected 1 to 8 ASCII characters")
    if isinstance(max_word, bool) or not isinstance(max_word, int) or not 1 <= max_word <= MAX_WORD_CHARS:
        raise _refuse(where, f"max_input_chars_per_word: expected an integer in [1, {MAX_WORD_CHARS}]")
    if lowercase is None:
        # No setting says: an uncased vocabulary has no upper-case letter outside its [SPECIAL] tokens.
        lowercase = not any(
            any("A" <= char <= "Z" for char in token)
            for token in ids
            if not (token.startswith("[") and token.endswith("]"))
        )
    if not isinstance(lowercase, bool):
        raise _refuse(where, f"do_lower_case: expected true or false, got {lowercase!r:.40}")
    tokens = [b""] * (max(ids.values()) + 1)
    for token, index in ids.items():
        tokens[index] = token.encode("utf-8")
    return WordPieceVocab(
        source=str(where),
        tokens=tokens,
        lowercase=lowercase,
        special_ids={key: ids[names[key]] for key in SPECIALS},
        continuation=continuation.encode("ascii"),
        max_word_chars=max_word,
    )


def _from_vocab_txt(path: Path, config: dict[str, object]) -> WordPieceVocab:
    ids: dict[str, int] = {}
    lines = _read_text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for index, line in enumerate(lines):
        token = line.rstrip("\r")
        if token:
            ids[token] = index  # as Hugging Face's load_vocab: a repeated token keeps its last line
    return _finish(path, ids, config, config.get("do_lower_case"))


def _from_tokenizer_json(path: Path, config: dict[str, object]) -> WordPieceVocab:
    spec = _json(path)
    model = spec.get("model")
    kind = model.get("type") if isinstance(model, dict) else None
    if kind == "BPE":
        raise _refuse(path, f"a BPE vocabulary (byte-level, GPT-2/RoBERTa style){REFUSAL}")
    if kind != "WordPiece" or not isinstance(model, dict):
        raise _refuse(path, f"model type {kind!r:.40}, not WordPiece{REFUSAL}")
    for part, expected in (("normalizer", "BertNormalizer"), ("pre_tokenizer", "BertPreTokenizer")):
        given = spec.get(part)
        given_type = given.get("type") if isinstance(given, dict) else None
        if given_type != expected:
            raise _refuse(path, f"{part} type {given_type!r:.40}, not {expected}{REFUSAL}")
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not all(
        isinstance(token, str) and type(index) is int and 0 <= index < MAX_TOKENS
        for token, index in vocab.items()
    ):
        raise _refuse(path, f"model.vocab: expected an object of token: id (ids in [0, {MAX_TOKENS}))")
    normalizer = spec["normalizer"]
    assert isinstance(normalizer, dict)
    settings = {**config, "unk_token": model.get("unk_token", config.get("unk_token", "[UNK]"))}
    return _finish(
        path,
        {token: index for token, index in vocab.items() if token},
        settings,
        normalizer.get("lowercase", True),
        model.get("continuing_subword_prefix", "##"),
        model.get("max_input_chars_per_word", 100),
    )
