"""Incremental detokenizer and stop strings on real tokenizers."""

from __future__ import annotations

import random

import pytest
from fastlm.detokenizer import IncrementalDetokenizer, StopChecker
from fastlm.tokenizer import Tokenizer

SAMPLES = [
    "Hello, world! 🤗🚀 héllo wörld",
    "中文字符和日本語のテキスト 👩‍👩‍👧‍👦",
    "def f(x):\n    return x ** 2  # ✓\n",
    "Ω≈ç√∫ ∀∂∈ℝ ↑↗ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "<|im_end|> special <|im_start|> tokens <|eot_id|>",
]


def _stream(
    tok: Tokenizer, prompt: list[int], output: list[int], rng: random.Random, skip: bool = True
) -> tuple[str, list[str]]:
    detok = IncrementalDetokenizer(tok, prompt, skip_special_tokens=skip)
    deltas: list[str] = []
    i = 0
    while i < len(output):
        n = rng.choice([1, 1, 1, 2, 3])  # engines may deliver several tokens per step
        delta = detok.add_tokens(output[i : i + n])
        assert "\ufffd" not in delta[-1:], "a partial character leaked"
        deltas.append(delta)
        i += n
    deltas.append(detok.flush())
    assert detok.output_text == "".join(deltas)
    return "".join(deltas), deltas


def _byte_tokens(tok: Tokenizer) -> list[int]:
    """Ids of tokens that are single bytes of multi-byte UTF-8 characters."""
    ids = []
    for i in range(min(tok.vocab_size, 2000)):
        text = tok.decode([i], skip_special_tokens=False)
        if text == "\ufffd":
            ids.append(i)
    return ids


@pytest.mark.parametrize("model", ["llama3", "qwen3", "smollm"])
def test_stream_equals_full_decode(request: pytest.FixtureRequest, model: str) -> None:
    tok: Tokenizer = request.getfixturevalue(f"fl_{model}")
    rng = random.Random(7)
    prompt = tok.encode("The answer is:")
    for text in SAMPLES:
        output = tok.encode(text, add_special_tokens=False)
        for skip in (True, False):
            streamed, _ = _stream(tok, prompt, output, rng, skip)
            assert streamed == tok.decode(output, skip_special_tokens=skip)
    # Random id sequences, weighted towards byte tokens so characters split over tokens.
    byte_ids = _byte_tokens(tok)
    assert byte_ids, "expected byte-level tokens"
    for _ in range(150):
        length = rng.randrange(1, 30)
        output = [
            rng.choice(byte_ids) if rng.random() < 0.4 else rng.randrange(tok.vocab_size)
            for _ in range(length)
        ]
        streamed, _ = _stream(tok, prompt, output, rng)
        assert streamed == tok.decode(output)
        streamed, _ = _stream(tok, [], output, rng)
        assert streamed == tok.decode(output)


def test_multibyte_character_held_back(fl_qwen3: Tokenizer) -> None:
    tok = fl_qwen3
    output = tok.encode("a𝔘b", add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, [])
    assert "".join(detok.add_tokens([i]) for i in output) + detok.flush() == "a𝔘b"
    # "𝔘" is 4 UTF-8 bytes; fed as one byte token at a time, nothing shows until it is complete.
    ids = _ids_for_bytes(tok, "𝔘".encode())
    detok = IncrementalDetokenizer(tok, tok.encode("x"))
    assert [detok.add_tokens([i]) for i in ids] == ["", "", "", "𝔘"]
    # An incomplete character at the end is released by flush (as U+FFFD, like decode()).
    detok = IncrementalDetokenizer(tok, [])
    assert detok.add_tokens(ids[:2]) == ""
    assert detok.flush() == tok.decode(ids[:2]) == "\ufffd"


def _ids_for_bytes(tok: Tokenizer, data: bytes) -> list[int]:
    """One byte-level token per byte (GPT-2 byte alphabet spelling)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    ids = [tok.backend.token_to_id(mapping[b]) for b in data]
    assert all(i is not None for i in ids)
    return [int(i) for i in ids if i is not None]


def test_spm_stream_with_prompt_context(fl_spm: Tokenizer) -> None:
    tok = fl_spm
    rng = random.Random(3)
    for text in ["Hello world 😀 ok", "中文 字符 😀😀", " leading space"]:
        output = tok.encode(text, add_special_tokens=False)
        streamed, _ = _stream(tok, [], output, rng)
        assert streamed == tok.decode(output)
        # With a prompt before it, the first word keeps its space (SentencePiece strips it only at
        # the start of a text), as vLLM streams it.
        with_prompt, _ = _stream(tok, tok.encode("The"), output, rng)
        assert (
            with_prompt
            == tok.decode(tok.encode("The") + output)[len(tok.decode(tok.encode("The"))) :]
        )


# ---- stop strings ------------------------------------------------------------------------------


def _run_stop(pieces: list[str], stop: list[str], include: bool) -> tuple[str, bool, str | None]:
    checker = StopChecker(stop, include)
    text = ""
    emitted = ""
    for piece in pieces:
        text += piece
        delta, stopped, matched = checker.update(text)
        emitted += delta
        if stopped:
            assert checker.text == emitted
            return emitted, True, matched
        # Nothing emitted may contain or end inside a stop string.
        for s in stop:
            assert s not in emitted
    emitted += checker.flush(text)
    return emitted, False, None


def test_stop_strings_never_leak() -> None:
    rng = random.Random(11)
    alphabet = "ab<>|\n ENDxyz"
    stops = ["<|end|>", "END", "\n\n", "bab"]
    for _ in range(400):
        full = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        cuts = sorted(rng.sample(range(len(full) + 1), k=min(len(full) + 1, rng.randrange(1, 8))))
        pieces = [full[a:b] for a, b in zip([0, *cuts], [*cuts, len(full)], strict=True)]
        for include in (False, True):
            emitted, stopped, matched = _run_stop(pieces, stops, include)
            first = min(((full.find(s), s) for s in stops if s in full), default=None)
            if first is None:
                assert not stopped and emitted == full
            else:
                pos, _ = first
                # The earliest stop string wins; ties go to the longer one.
                candidates = [s for s in stops if full.find(s) == pos]
                expected_stop = max(candidates, key=len)
                assert stopped and matched == expected_stop
                end = pos + len(expected_stop) if include else pos
                assert emitted == full[:end]


def test_stop_string_spanning_tokens(fl_llama3: Tokenizer) -> None:
    tok = fl_llama3
    text = "The result is ready.\nObservation: done and more text"
    ids = tok.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, [])
    checker = StopChecker(["Observation:"], include_stop_str_in_output=False)
    streamed = ""
    for i in ids:
        detok.add_tokens([i])
        delta, stopped, matched = checker.update(detok.output_text)
        streamed += delta
        assert "Obs" not in streamed
        if stopped:
            assert matched == "Observation:"
            break
    assert streamed == "The result is ready.\n"
    # Held-back prefixes are released when the text turns out not to be a stop string.
    checker = StopChecker(["Observation:"])
    assert checker.update("Obs") == ("", False, None)
    assert checker.update("Obscure") == ("Obscure", False, None)
    assert checker.flush("Obscure") == ""
    checker = StopChecker(["STOP"])
    assert checker.update("xST") == ("x", False, None)
    assert checker.flush("xST") == "ST"
    assert StopChecker([]).update("abc") == ("abc", False, None)
