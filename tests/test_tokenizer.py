"""The C tokenizer a project carries (`rt3c compile --tokenizer`): its ids equal Hugging Face's tokenizers'
on the same vocabulary (the Rust-backed BertTokenizer and the Python BertTokenizerLegacy) for hundreds of
texts, built for the host and for aarch64 (run under qemu-aarch64); a compiled model fed from text matches
onnxruntime fed Hugging Face's ids; the vocabularies it cannot take are refused with one line, exit 2, and
nothing written."""

from __future__ import annotations

import json
import random
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from test_cli import run_cli
from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

from rt3c import api
from rt3c.codegen.targets import get_target
from rt3c.runtime_c.program import Program, Tensor
from rt3c.runtime_c.project import render_project
from rt3c.runtime_c.tokenizer import bind_tokenizer
from rt3c.runtime_c.vocab import read_vocab
from rt3c.stages.packaged_data import minilm_dir
from rt3c.stages.reference import run_onnx

HARNESS = Path(__file__).resolve().parent / "c" / "tokenize_text.c"
SEQ_LEN = 24
SPECIAL_TEXTS = ("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]")

SENTENCES = [
    "",
    "   ",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "A thoroughly unaffable, overwrought and self-indulgent mess; 2/10.",
    "don't stop-believing... (really?!) #1 @home $5.99 100% [sic] {x} <tag> a|b ~c ^d _e `f` \\g",
    "UPPER lower MiXeD CaSe",
    "tab\tseparated\nnew line\r\ncarriage",
    "control\x01chars\x07are\x1bremoved\x7f here\x0bvt\x0cff",
    "numbers 3.14159 and 2,718,281 and 1e-9",
    "zzzxqjv qwxyzzyplugh snorkelwacket",  # pieces and unknown words
    "a" * 99 + " " + "b" * 100 + " " + "c" * 101 + " " + "d" * 250,  # the 100-character word limit
    "unbelievably " * 40,  # truncated: more pieces than fit
    "[SEP] is text here, not a separator; [cls] neither",
    "!!!???...,,,;;;:::",
    "emails like someone@example.com and urls like https://example.org/a?b=c&d=e",
]


def _random_texts(vocab_words: list[str], count: int, seed: int = 0) -> list[str]:
    """Texts of vocabulary words (a few repeated past the word limit), words glued together, random
    letters, punctuation, spaces and every ASCII character, control characters included."""
    rng = random.Random(seed)
    punctuation = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
    texts = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(0, 30)):
            roll = rng.random()
            if roll < 0.03:  # longer than the 100 characters of a word: [UNK]
                parts.append(rng.choice(vocab_words) * 60)
            elif roll < 0.45:
                word = rng.choice(vocab_words)
                parts.append(word.upper() if rng.random() < 0.2 else word)
            elif roll < 0.6:
                parts.append("".join(rng.choice(vocab_words) for _ in range(rng.randint(2, 4))))
            elif roll < 0.75:
                parts.append("".join(chr(rng.randint(97, 122)) for _ in range(rng.randint(1, 14))))
            elif roll < 0.9:
                parts.append(rng.choice(punctuation))
            else:
                parts.append(chr(rng.randint(0, 127)))
            parts.append(rng.choice([" ", " ", " ", "", "\t", "\n", "  "]))
        texts.append("".join(parts))
    return texts


def _records(texts: list[str] | list[bytes]) -> bytes:
    data = b""
    for text in texts:
        encoded = text.encode("utf-8") if isinstance(text, str) else text
        data += struct.pack("<I", len(encoded)) + encoded
    return data


def _build_harness(
    project: Path, target_name: str, out: Path, with_model: bool = False, sanitize: bool = False
) -> list[str]:
    """The harness built for `target_name` against the project's tokenizer (and library); its command."""
    target = get_target(target_name)
    if shutil.which(target.cc) is None:
        pytest.skip(f"{target.cc} is not installed")
    types = ["-DTOK_IDS_T=int64_t", "-DTOK_MASK_T=int64_t"]
    sources = [str(HARNESS)] + (
        [str(project / "libtok.a")] if with_model else [str(project / "tok_tokenizer.c")]
    )
    flags = ["-pedantic", "-Wall", "-Wextra", "-Werror", *types, f"-I{project}"]
    flags += ["-DTOK_WITH_MODEL"] if with_model else []
    flags += ["-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"] if sanitize else []
    command = [target.cc, *target.cflags, *flags, *sources, "-o", str(out), *target.ldflags]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return target.command(str(out), [])


def _run(
    command: list[str], texts: list[str] | list[bytes], tmp_path: Path, with_model: bool = False
) -> list[list[int]]:
    records = tmp_path / "texts.bin"
    records.write_bytes(_records(texts))
    result = subprocess.run([*command, str(records), *(["model"] if with_model else [])], capture_output=True)
    assert result.returncode == 0, result.stderr
    return [[int(float(v)) for v in line.split()] for line in result.stdout.decode().splitlines()]


def _reference(tokenizer: transformers.PreTrainedTokenizerBase, text: str, seq_len: int) -> list[int]:
    """needed, ids, mask as the harness prints them, from Hugging Face (texts never hold special tokens)."""
    whole = tokenizer(text, split_special_tokens=True)["input_ids"]
    fitted = tokenizer(
        text, max_length=seq_len, truncation=True, padding="max_length", split_special_tokens=True
    )
    return [len(whole), *fitted["input_ids"], *fitted["attention_mask"]]


def _legacy(tokenizer: BertTokenizerLegacy, text: str, seq_len: int) -> list[int] | None:
    """The same from the Python reference, for texts without special-token text (which it matches)."""
    if any(special in text for special in SPECIAL_TEXTS):
        return None
    pieces = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))
    kept = pieces[: seq_len - 2]
    ids = [tokenizer.cls_token_id, *kept, tokenizer.sep_token_id]
    padding = seq_len - len(ids)
    return [len(pieces) + 2, *ids, *[tokenizer.pad_token_id] * padding, *[1] * len(ids), *[0] * padding]


def _tokenizer_project(vocab_path: Path, vocab_size: int, out: Path, seq_len: int = SEQ_LEN) -> Path:
    """The tokenizer files of a project whose model takes `seq_len` ids below `vocab_size` (rendered by
    the runtime generator without a compile: the tokenizer does not depend on the kernels)."""
    shape = (1, seq_len)
    program = Program(
        "tok",
        ["L0"],
        [0],
        {
            "input_ids": Tensor("input_ids", shape, "int64", "input"),
            "attention_mask": Tensor("attention_mask", shape, "int64", "input"),
            "logits": Tensor("logits", (1, 2), "float32", "output"),
        },
        ["input_ids", "attention_mask"],
        ["logits"],
        [],
        index_limits={"input_ids": vocab_size},
        prefix="tok",
    )
    program.tokenizer = bind_tokenizer(read_vocab(vocab_path), program)
    render_project(program, out)
    return out


@pytest.fixture(scope="module")
def minilm_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tokenizer_project(minilm_dir(), 30522, tmp_path_factory.mktemp("minilm-tokenizer"))


@pytest.fixture(scope="module")
def minilm_texts() -> list[str]:
    words = [
        line
        for line in (minilm_dir() / "vocab.txt").read_text().splitlines()
        if line.isascii() and line.isalpha()
    ]
    return SENTENCES + _random_texts(words, 400)


@pytest.mark.parametrize("target", ["host", "aarch64"])
def test_minilm_vocabulary_matches_hugging_face(
    target: str, minilm_tokenizer: Path, minilm_texts: list[str], tmp_path: Path
) -> None:
    command = _build_harness(minilm_tokenizer, target, tmp_path / "tokenize_text")
    got = _run(command, minilm_texts, tmp_path)
    fast = transformers.BertTokenizer.from_pretrained(str(minilm_dir()))
    legacy = BertTokenizerLegacy(str(minilm_dir() / "vocab.txt"))
    compared = truncated = unknown = 0
    for text, line in zip(minilm_texts, got, strict=True):
        assert line == _reference(fast, text, SEQ_LEN), repr(text)
        expected = _legacy(legacy, text, SEQ_LEN)
        if expected is not None:
            assert line == expected, repr(text)
            compared += 1
        truncated += line[0] > SEQ_LEN
        unknown += 100 in line[1 : SEQ_LEN + 1]
    assert compared > 350 and 50 < truncated < len(got) - 50 and unknown > 50  # the corpus covers all


def test_any_bytes_under_sanitizers(minilm_tokenizer: Path, tmp_path: Path) -> None:
    """Random bytes (invalid UTF-8, NULs, 0x80-0xFF, words past the limit): valid ids, and nothing
    AddressSanitizer or UndefinedBehaviorSanitizer objects to."""
    rng = random.Random(1)
    texts = [bytes(rng.randrange(256) for _ in range(rng.randrange(400))) for _ in range(300)]
    texts += [b"\xc3\xa9t\xc3\xa9 caf\xc3\xa9 \xe7\x9f\xb3", b"\xff" * 300, b"x" * 5000]
    binary = tmp_path / "tokenize_text"
    command = _build_harness(minilm_tokenizer, "host", binary, sanitize=True)
    for line in _run(command, texts, tmp_path):
        ids, mask = line[1 : SEQ_LEN + 1], line[SEQ_LEN + 1 :]
        real = sum(mask)
        assert all(0 <= i < 30522 for i in ids) and ids[0] == 101 and ids[real - 1] == 102
        assert mask == [1] * real + [0] * (SEQ_LEN - real) and real == min(line[0], SEQ_LEN)


def test_the_three_forms_of_a_vocabulary_agree() -> None:
    """minilm-l6's vocab.txt alone (uncased: no upper-case token), its tokenizer.json and its directory."""
    forms = [read_vocab(path) for path in (minilm_dir() / "vocab.txt", minilm_dir() / "tokenizer.json")]
    forms.append(read_vocab(minilm_dir()))
    assert all(form.lowercase and form.max_word_chars == 100 for form in forms)
    assert forms[0].tokens == forms[1].tokens == forms[2].tokens and len(forms[0].tokens) == 30522
    assert forms[0].special_ids == forms[1].special_ids == {"unk": 100, "cls": 101, "sep": 102, "pad": 0}


def test_cased_vocabulary_keeps_case(tmp_path: Path) -> None:
    """A vocabulary with upper-case tokens and no setting is cased: nothing is lower-cased."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Hello", "hello", "H", "##ello", "world", "##s"]
    tokens += ["!", ",", ".", "?", "W", "##orld", "##S"]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(tokens) + "\n")
    project = _tokenizer_project(vocab, len(tokens), tmp_path / "project", seq_len=12)
    assert "#define TOK_TOKENIZER_LOWERCASE 0" in (project / "tok_tokenizer.h").read_text()
    texts = ["Hello, hello world!", "HELLO Worlds worldS", "Hworld? Hellos."]
    got = _run(_build_harness(project, "host", tmp_path / "t"), texts, tmp_path)
    legacy = BertTokenizerLegacy(str(vocab), do_lower_case=False)
    assert got == [_legacy(legacy, text, 12) for text in texts]


def test_builds_for_cortex_m_without_warnings(minilm_tokenizer: Path, tmp_path: Path) -> None:
    """The same C for bare metal (arm-none-eabi-gcc, the project's flags): tables in their own section."""
    target = get_target("cortex-m4")
    if shutil.which(target.cc) is None:
        pytest.skip(f"{target.cc} is not installed")
    flags = ["-pedantic", "-Wall", "-Wextra", "-Werror", f"-I{minilm_tokenizer}"]
    source, obj = minilm_tokenizer / "tok_tokenizer.c", tmp_path / "tok_tokenizer.o"
    subprocess.run([target.cc, *target.cflags, *flags, "-c", str(source), "-o", str(obj)], check=True)
    sections = subprocess.run(
        ["arm-none-eabi-size", "-A", str(obj)], capture_output=True, text=True, check=True
    )
    sizes = {
        line.split()[0]: int(line.split()[1]) for line in sections.stdout.splitlines()[2:] if line.strip()
    }
    assert sizes[".rodata.tok_tokenizer"] == 384_122  # 200,986 B of text, uint32 offsets, uint16 ids
    assert sum(size for name, size in sizes.items() if name.startswith(".text")) < 2048


def test_vocabulary_text_never_becomes_code(tmp_path: Path) -> None:
    """Tokens and a directory name that would end a comment or start a directive reach the C only as
    numbers and escaped comment text; the tokenizer still finds its tokens."""
    directory = tmp_path / '#include "x" ??= evil *'  # its vocab.txt: '... evil */vocab.txt'
    directory.mkdir()
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "*/", '"', "\\", "??/", "#include", "ok", "##ay"]
    (directory / "vocab.txt").write_text("\n".join(tokens) + "\n")
    project = _tokenizer_project(directory, len(tokens), tmp_path / "project", seq_len=8)
    source = (project / "tok_tokenizer.c").read_text()
    assert '\n#include "x"' not in source and "?<3f>= evil * /vocab.txt" in source  # comment text only
    got = _run(_build_harness(project, "host", tmp_path / "t"), ["okay ok", 'x "'], tmp_path)
    assert got == [
        [5, 2, 9, 10, 9, 3, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0],  # ok ##ay ok
        [4, 2, 1, 5, 3, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0],  # [UNK] "
    ]


@pytest.fixture(scope="module")
def text_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small random BERT classifier with minilm-l6's vocabulary (its tokenizer files copied in),
    exported at 24 tokens and compiled dense for the host with the tokenizer: (directory, project)."""
    root = tmp_path_factory.mktemp("text-model")
    directory = root / "bert"
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(directory)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(minilm_dir() / name, directory / name)
    # Through the Python API (the CLI's --tokenizer is the same parameter; the refusals below use the CLI).
    exported = api.export(str(directory), root / "model.onnx", seq_len=SEQ_LEN).onnx_path
    project = api.compile(exported, root / "project", tokenizer=directory, prefix="tok").directory
    return directory, project


def test_text_in_logits_out(text_model: tuple[Path, Path], tmp_path: Path) -> None:
    """The compiled library fed by its own tokenizer gives onnxruntime's logits for Hugging Face's ids."""
    directory, project = text_model
    texts = SENTENCES[2:8]
    command = _build_harness(project, "host", tmp_path / "text_model", with_model=True)
    records = tmp_path / "texts.bin"
    records.write_bytes(_records(texts))
    result = subprocess.run([*command, str(records), "model"], capture_output=True, text=True, check=True)
    lines = result.stdout.splitlines()
    fast = transformers.BertTokenizer.from_pretrained(str(directory))
    for index, text in enumerate(texts):
        ids = [int(v) for v in lines[2 * index].split()]
        assert ids == _reference(fast, text, SEQ_LEN)
        feeds = fast(text, max_length=SEQ_LEN, truncation=True, padding="max_length", return_tensors="np")
        inputs = {name: feeds[name].astype(np.int64) for name in ("input_ids", "attention_mask")}
        expected = run_onnx(project.parent / "model.onnx", inputs)[0]
        logits = np.array([float(v) for v in lines[2 * index + 1].split()], np.float32)
        assert np.max(np.abs(logits - expected.reshape(-1))) <= 1e-4


def test_run_text(text_model: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`rt3c run --text` (and Project.run_text): the project's own rt3_tokenize, then rt3_main."""
    directory, project = text_model
    text = "An overwrought, self-indulgent mess."
    fast = transformers.BertTokenizer.from_pretrained(str(directory))
    feeds = fast(text, max_length=SEQ_LEN, truncation=True, padding="max_length", return_tensors="np")
    inputs = {name: feeds[name].astype(np.int64) for name in ("input_ids", "attention_mask")}
    expected = run_onnx(project.parent / "model.onnx", inputs)[0]
    out = tmp_path / "logits.npy"
    assert run_cli("run", str(project), "--text", text, "--output", str(out)) == 0
    assert np.max(np.abs(np.load(out) - expected)) <= 1e-4
    logits = api.Project(project, {}, []).run_text(0, text)["logits"]
    assert np.max(np.abs(logits - expected)) <= 1e-4
    capsys.readouterr()
    assert run_cli("run", str(project), "--text", text, "--input", str(out)) == 2
    assert "--text and --input" in capsys.readouterr().err
    # A project without a tokenizer (its manifest says so) refuses text.
    plain = tmp_path / "plain"
    shutil.copytree(project, plain)
    manifest = json.loads((plain / "rt3c-build.json").read_text())
    (plain / "rt3c-build.json").write_text(json.dumps({**manifest, "tokenizer": None}))
    assert run_cli("run", str(plain), "--text", text) == 2
    assert f"--text: project {plain} has no tokenizer" in capsys.readouterr().err


@pytest.mark.slow
def test_run_text_on_cortex_m4(text_model: tuple[Path, Path], tmp_path: Path) -> None:
    """Bare metal: rt3_tokenize and rt3_main under qemu-system-arm (semihosting), from text to logits."""
    directory, project = text_model
    text = "An overwrought, self-indulgent mess."
    m4 = api.compile(project.parent / "model.onnx", tmp_path / "m4", target="cortex-m4", tokenizer=directory)
    fast = transformers.BertTokenizer.from_pretrained(str(directory))
    feeds = fast(text, max_length=SEQ_LEN, truncation=True, padding="max_length", return_tensors="np")
    inputs = {name: feeds[name].astype(np.int64) for name in ("input_ids", "attention_mask")}
    expected = run_onnx(project.parent / "model.onnx", inputs)[0]
    assert np.max(np.abs(m4.run_text(0, text)["logits"] - expected)) <= 1e-4
    assert m4.memory["flash_bytes"]["tokenizer"] > 384_122


def test_tokenizer_in_report_manifest_and_exports(text_model: tuple[Path, Path]) -> None:
    _, project = text_model
    report = json.loads((project / "report.json").read_text())
    manifest = json.loads((project / "rt3c-build.json").read_text())["tokenizer"]
    assert manifest["vocab_size"] == 30522 and manifest["seq_len"] == SEQ_LEN and manifest["lowercase"]
    assert manifest["special_ids"] == {"unk": 100, "cls": 101, "sep": 102, "pad": 0}
    flash = report["flash_bytes"]
    # The tables (sorted bytes, uint32 offsets, uint16 ids) and about a kilobyte of code.
    assert manifest["table_bytes"] < flash["tokenizer"] < manifest["table_bytes"] + 4096
    assert flash["total"] == sum(flash[key] for key in ("code", "weights", "indices", "padding", "tokenizer"))
    assert "| tokenizer (its code and vocabulary tables) |" in (project / "REPORT.md").read_text()
    assert "tok_tokenize" in (project / "tok.exports").read_text().split()
    symbols = subprocess.run(["nm", "-g", "--defined-only", str(project / "libtok.a")], capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
    assert "T tok_tokenize" in symbols


def test_cmake_builds_the_tokenizer_into_the_library(text_model: tuple[Path, Path], tmp_path: Path) -> None:
    _, project = text_model
    for command in (["cmake", "-S", str(project), "-B", str(tmp_path)], ["cmake", "--build", str(tmp_path)]):
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    symbols = subprocess.run(["nm", "-g", "--defined-only", str(tmp_path / "libtok.a")], capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
    assert "T tok_tokenize" in symbols


def _bpe_directory(directory: Path) -> Path:
    directory.mkdir()
    (directory / "vocab.json").write_text(json.dumps({"a": 0, "b": 1, "ab": 2}))
    (directory / "merges.txt").write_text("#version: 0.2\na b\n")
    return directory


BAD_VOCABULARIES = {
    "no [UNK]": (lambda d: _write(d / "vocab.txt", "[PAD]\n[CLS]\n[SEP]\nhello\n"), "no [UNK] token"),
    "no [CLS] or [SEP]": (lambda d: _write(d / "vocab.txt", "[PAD]\n[UNK]\na\n"), "no [CLS] or [SEP] token"),
    "not UTF-8": (lambda d: _write_bytes(d / "vocab.txt", b"[PAD]\n\xff\xfe\n"), "not UTF-8 text"),
    "missing": (lambda d: d / "nowhere" / "vocab.txt", "cannot read it"),
    "empty directory": (lambda d: d, "no vocab.txt or tokenizer.json"),
    "BPE files": (lambda d: _bpe_directory(d / "roberta"), "byte-level BPE"),
    "BPE tokenizer.json": (
        lambda d: _write(d / "tokenizer.json", json.dumps({"model": {"type": "BPE", "vocab": {}}})),
        "a BPE vocabulary",
    ),
    "SentencePiece": (lambda d: _write_bytes(d / "spiece.model", b"\0").parent, "SentencePiece"),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", list(BAD_VOCABULARIES))
def test_bad_vocabularies_are_refused(
    case: str, bert_tiny_export: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, message = BAD_VOCABULARIES[case]
    (tmp_path / "vocab").mkdir()
    vocab = make(tmp_path / "vocab")
    out = tmp_path / "project"
    model = bert_tiny_export.onnx_path  # type: ignore[attr-defined]
    assert run_cli("compile", str(model), "--tokenizer", str(vocab), "--out", str(out)) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error, error
    assert not out.exists()


def test_vocabulary_larger_than_the_models_embedding(
    bert_tiny_export: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """minilm-l6's 30,522 tokens for bert-tiny's 1,024-row embedding: not this model's vocabulary."""
    out = tmp_path / "project"
    model = bert_tiny_export.onnx_path  # type: ignore[attr-defined]
    assert run_cli("compile", str(model), "--tokenizer", "minilm-l6", "--out", str(out)) == 2
    error = capsys.readouterr().err.strip()
    assert "30522 tokens, but the model's input_ids takes ids in [0, 1024)" in error, error
    assert not out.exists()
