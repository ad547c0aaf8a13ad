"""Whisper's decoding conventions: special tokens, decoder prompts, suppressed tokens.

The decoder prompt is `[<|startofprev|> prompt...] <|startoftranscript|> [<|lang|> <|task|>]
[<|notimestamps|>]` (language and task tokens only on multilingual models, as OpenAI's and
transformers' decoders do; without <|notimestamps|> the model writes timestamp tokens, under
Whisper's timestamp rules in the sampler, and `split_segments` reads segments off them).
Suppressed tokens come from `generation_config.json` (`suppress_tokens`,
`begin_suppress_tokens`) or a CTranslate2 `config.json` (`suppress_ids`, `suppress_ids_begin`).

The language of a multilingual model's request: the one the request names, else the one
`generation_config.json`'s `forced_decoder_ids` force (a fine-tuned checkpoint's), else detected
as Whisper and vLLM detect it: one greedy decoder step after <|startoftranscript|> over the
first window, restricted to the language tokens (`WhisperTokens.language_token_ids`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastlm.model_files import ModelFiles
from fastlm.tokenizer import Tokenizer

# Multilingual checkpoints have at least this many tokens (OpenAI's rule: 51865 and 51866).
MULTILINGUAL_VOCAB = 51865
# Whisper decodes at most 448 positions; a prompt keeps at most half of them (OpenAI's rule).
MAX_PROMPT_TOKENS = 223

# A timestamp token's step in seconds: <|timestamp_begin + i|> is i * 0.02 s into the window.
TIME_PRECISION = 0.02

# ISO 639-1 codes Whisper knows, in token order (names for error messages come from here too).
LANGUAGES = {
    "en": "english", "zh": "chinese", "de": "german", "es": "spanish", "ru": "russian",
    "ko": "korean", "fr": "french", "ja": "japanese", "pt": "portuguese", "tr": "turkish",
    "pl": "polish", "ca": "catalan", "nl": "dutch", "ar": "arabic", "sv": "swedish",
    "it": "italian", "id": "indonesian", "hi": "hindi", "fi": "finnish", "vi": "vietnamese",
    "he": "hebrew", "uk": "ukrainian", "el": "greek", "ms": "malay", "cs": "czech",
    "ro": "romanian", "da": "danish", "hu": "hungarian", "ta": "tamil", "no": "norwegian",
    "th": "thai", "ur": "urdu", "hr": "croatian", "bg": "bulgarian", "lt": "lithuanian",
    "la": "latin", "mi": "maori", "ml": "malayalam", "cy": "welsh", "sk": "slovak",
    "te": "telugu", "fa": "persian", "lv": "latvian", "bn": "bengali", "sr": "serbian",
    "az": "azerbaijani", "sl": "slovenian", "kn": "kannada", "et": "estonian", "mk": "macedonian",
    "br": "breton", "eu": "basque", "is": "icelandic", "hy": "armenian", "ne": "nepali",
    "mn": "mongolian", "bs": "bosnian", "kk": "kazakh", "sq": "albanian", "sw": "swahili",
    "gl": "galician", "mr": "marathi", "pa": "punjabi", "si": "sinhala", "km": "khmer",
    "sn": "shona", "yo": "yoruba", "so": "somali", "af": "afrikaans", "oc": "occitan",
    "ka": "georgian", "be": "belarusian", "tg": "tajik", "sd": "sindhi", "gu": "gujarati",
    "am": "amharic", "yi": "yiddish", "lo": "lao", "uz": "uzbek", "fo": "faroese",
    "ht": "haitian creole", "ps": "pashto", "tk": "turkmen", "nn": "nynorsk", "mt": "maltese",
    "sa": "sanskrit", "lb": "luxembourgish", "my": "myanmar", "bo": "tibetan", "tl": "tagalog",
    "mg": "malagasy", "as": "assamese", "tt": "tatar", "haw": "hawaiian", "ln": "lingala",
    "ha": "hausa", "ba": "bashkir", "jw": "javanese", "su": "sundanese", "yue": "cantonese",
}  # fmt: skip


# Whisper also takes a language by its English name (openai-whisper's TO_LANGUAGE_CODE).
_LANGUAGE_CODES = {name: code for code, name in LANGUAGES.items()}
# Older tokenizer files name Hebrew's token <|iw|> (its ISO 639-1 code before 1989).
_TOKEN_ALIASES = {"he": "iw"}


class WhisperRequestError(ValueError):
    """A request the model cannot serve; `param` names the offending field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class WhisperTokens:
    sot: int
    eot: int
    transcribe: int
    translate: int
    no_timestamps: int
    start_of_prev: int | None
    languages: dict[str, int]
    multilingual: bool
    # <|0.00|> (the token after <|notimestamps|>), None when the model has no timestamp tokens.
    timestamp_begin: int | None = None
    suppress_tokens: list[int] = field(default_factory=list)
    begin_suppress_tokens: list[int] = field(default_factory=list)
    # The language `generation_config.json`'s forced_decoder_ids force, if any (a code).
    forced_language: str | None = None

    @property
    def language_token_ids(self) -> list[int]:
        """The language tokens detection chooses among (the model's, in token order)."""
        return sorted(self.languages.values())

    def language_of(self, token_id: int) -> str:
        """The code of a language token."""
        return next(code for code, tid in self.languages.items() if tid == token_id)

    def resolve_language(self, language: str | None) -> str | None:
        """The request's language as a code this model knows (a code in any case, or an English
        name: "fr", "FR", "french"), the checkpoint's forced one when it names none, English on
        an English-only model; None when the model must detect it. Raises WhisperRequestError
        naming `language` for a language the model cannot do."""
        if language is None:
            return self.forced_language if self.multilingual else "en"
        code = language.strip().lower()
        code = _LANGUAGE_CODES.get(code, code)
        if not self.multilingual:
            if code != "en":
                raise WhisperRequestError(
                    f"this model is English-only: language must be 'en', got {language!r}",
                    "language",
                )
            return code
        if code not in self.languages:
            raise WhisperRequestError(
                f"language {language!r} is not one this model knows; use an ISO 639-1 code: "
                f"{', '.join(sorted(self.languages))}",
                "language",
            )
        return code

    def decoder_prompt(
        self,
        language: str | None,
        task: str,
        prompt_ids: list[int] | None = None,
        timestamps: bool = False,
    ) -> list[int]:
        """The decoder's first tokens (ending in <|notimestamps|> unless `timestamps`). Raises
        WhisperRequestError naming `language` for a language the model cannot do, or the task
        for translation on English-only models."""
        if task not in ("transcribe", "translate"):
            raise ValueError(f"task must be transcribe or translate, got {task!r}")
        out: list[int] = []
        if prompt_ids:
            if self.start_of_prev is None:
                raise WhisperRequestError("this model's tokenizer has no <|startofprev|>", "prompt")
            out = [self.start_of_prev, *prompt_ids[-MAX_PROMPT_TOKENS:]]
        out.append(self.sot)
        code = self.resolve_language(language)
        if self.multilingual:
            if code is None:
                raise ValueError("a multilingual model's decoder prompt needs a language")
            out += [
                self.languages[code],
                self.translate if task == "translate" else self.transcribe,
            ]
        elif task == "translate":
            raise WhisperRequestError(
                "this model is English-only (a .en checkpoint): it cannot translate; use "
                "/v1/audio/transcriptions",
                "model",
            )
        if not timestamps:
            out.append(self.no_timestamps)
        elif self.timestamp_begin is None:
            raise WhisperRequestError("this model has no timestamp tokens", "response_format")
        return out


@dataclass(frozen=True)
class Segment:
    start: float  # seconds from the window's start
    end: float
    tokens: list[int]  # the segment's tokens, its timestamp tokens included
    text_tokens: list[int]


def split_segments(
    ids: list[int], timestamp_begin: int, eot: int, window_seconds: float
) -> list[Segment]:
    """Segments of one window's output under the timestamp rules: `<|a|> text <|b|>` is a
    segment from a to b; a text run without a closing timestamp (EOT or the token limit came
    first) ends at the window's end; times are clamped to the window."""
    out: list[Segment] = []
    start: float | None = None
    first = 0  # index in ids where the open segment began
    text: list[int] = []

    def clamp(t: float) -> float:
        return min(max(t, 0.0), window_seconds)

    for i, t in enumerate(ids):
        if t == eot:
            ids = ids[:i]
            break
        if t < timestamp_begin:
            if start is None:
                start, first = (out[-1].end if out else 0.0), i
            text.append(t)
            continue
        time = clamp((t - timestamp_begin) * TIME_PRECISION)
        if start is not None and text:
            out.append(Segment(start, max(start, time), ids[first : i + 1], text))
            start, text = None, []
        else:  # a segment's opening timestamp (or a repeat of it: an empty segment)
            start, first = time, i
    if text and start is not None:
        out.append(Segment(start, window_seconds, ids[first:], text))
    return out


def _token(tokenizer: Tokenizer, text: str) -> int:
    tid = tokenizer.token_to_id(text)
    if tid is None:
        raise ValueError(f"the tokenizer has no {text} token; is this a Whisper model?")
    return tid


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return data if isinstance(data, dict) else {}


def whisper_tokens(files: ModelFiles, tokenizer: Tokenizer, vocab_size: int) -> WhisperTokens:
    """Special tokens and suppression lists of a Whisper model folder (HF or CTranslate2)."""
    languages = {}
    for code in LANGUAGES:
        tid = tokenizer.token_to_id(f"<|{code}|>")
        if tid is None and code in _TOKEN_ALIASES:
            tid = tokenizer.token_to_id(f"<|{_TOKEN_ALIASES[code]}|>")
        if tid is not None and tid < vocab_size:
            languages[code] = tid
    gen = dict(files.generation_config)
    ct2 = _read(Path(files.model_dir) / "config.json") if files.model_dir else {}
    if "suppress_ids" in ct2 or "suppress_ids_begin" in ct2:  # CTranslate2 layout
        suppress = list(ct2.get("suppress_ids") or [])
        begin = list(ct2.get("suppress_ids_begin") or [])
    else:
        suppress = list(gen.get("suppress_tokens") or [])
        begin = list(gen.get("begin_suppress_tokens") or [])
    no_timestamps = _token(tokenizer, "<|notimestamps|>")
    # 1501 timestamps (0.00 .. 30.00 s) follow <|notimestamps|> in every Whisper vocabulary; the
    # tokenizer files do not always list them (CTranslate2's), the model's vocab_size does.
    has_timestamps = vocab_size >= no_timestamps + 2
    # forced_decoder_ids: [[1, <|lang|> or null], [2, <|task|>], ...] (position, token).
    forced = dict((int(p), t) for p, t in gen.get("forced_decoder_ids") or [] if t is not None)
    by_id = {tid: code for code, tid in languages.items()}
    return WhisperTokens(
        sot=_token(tokenizer, "<|startoftranscript|>"),
        eot=_token(tokenizer, "<|endoftext|>"),
        transcribe=_token(tokenizer, "<|transcribe|>"),
        translate=_token(tokenizer, "<|translate|>"),
        no_timestamps=no_timestamps,
        start_of_prev=tokenizer.token_to_id("<|startofprev|>"),
        languages=languages,
        multilingual=vocab_size >= MULTILINGUAL_VOCAB,
        timestamp_begin=no_timestamps + 1 if has_timestamps else None,
        suppress_tokens=[int(t) for t in suppress if 0 <= int(t) < vocab_size],
        begin_suppress_tokens=[int(t) for t in begin if 0 <= int(t) < vocab_size],
        forced_language=by_id.get(int(forced.get(1, -1))),
    )
