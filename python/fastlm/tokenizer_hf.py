"""The Tokenizer (a `tokenizers.Tokenizer` plus what transformers reads beside it) and its
loading from a HF folder: the backend comes from `tokenizer.json`; `tokenizer_config.json` and
`special_tokens_map.json` add named special tokens, added tokens, BOS/EOS insertion and the chat
template, applied the way transformers' fast tokenizer (v5) applies them.
"""

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, processors
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers.models import BPE

# transformers' VERY_LARGE_INTEGER: the model_max_length of a tokenizer that states none.
_UNLIMITED_LENGTH = int(1e30)

# Named special tokens in transformers' SPECIAL_TOKENS_ATTRIBUTES order (all_special_ids follows).
SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)

# The cleanup transformers applies on decode; it skips it for BPE models (it would eat real spaces).
_CLEANUP_REPLACEMENTS = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def _token_content(value: Any) -> str | None:
    """A special token as configs store it: a string or a serialized AddedToken dict."""
    if value is None:
        return None
    if isinstance(value, dict):
        content = value.get("content")
        return str(content) if content is not None else None
    return str(value)


def _added_token_from_config(value: Any, special: bool) -> AddedToken:
    if isinstance(value, dict):
        return AddedToken(
            value["content"],
            single_word=bool(value.get("single_word", False)),
            lstrip=bool(value.get("lstrip", False)),
            rstrip=bool(value.get("rstrip", False)),
            normalized=bool(value.get("normalized", not special)),
            special=bool(value.get("special", special)),
        )
    return AddedToken(str(value), special=special, normalized=not special)


def normalize_chat_template(value: Any) -> str | dict[str, str] | None:
    """A chat template as configs store it: a string, or a list of {name, template} entries."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, list):
        return {str(item["name"]): str(item["template"]) for item in value}
    raise ValueError(f"chat_template must be a string or a list of named templates, got {value!r}")


class Tokenizer:
    """A fast tokenizer with transformers' encode/decode results."""

    def __init__(
        self,
        backend: BackendTokenizer,
        *,
        special_tokens: dict[str, str | None] | None = None,
        extra_special_tokens: Sequence[str] = (),
        chat_template: str | dict[str, str] | None = None,
        add_bos_token: bool | None = None,
        add_eos_token: bool | None = None,
        model_max_length: int | None = None,
        clean_up_tokenization_spaces: bool = False,
        split_special_tokens: bool = False,
        name_or_path: str = "",
    ) -> None:
        self.backend = backend
        self.name_or_path = name_or_path
        self.special_tokens: dict[str, str] = {
            k: v
            for k, v in (special_tokens or {}).items()
            if v is not None and k in SPECIAL_TOKEN_NAMES
        }
        self.extra_special_tokens: list[str] = list(extra_special_tokens)
        self.model_max_length = (
            model_max_length if model_max_length is not None else _UNLIMITED_LENGTH
        )
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        template = normalize_chat_template(chat_template)
        self.chat_templates: dict[str, str] = template if isinstance(template, dict) else {}
        self._chat_template: str | None = template if isinstance(template, str) else None

        # Named and extra special tokens that are not yet added tokens become special added tokens:
        # this makes the backend keep them whole in text and skip them on decode.
        added = {tok.content for tok in backend.get_added_tokens_decoder().values()}
        missing = [
            t for t in [*self.special_tokens.values(), *self.extra_special_tokens] if t not in added
        ]
        if missing:
            backend.add_tokens(
                [AddedToken(t, special=True, normalized=False) for t in dict.fromkeys(missing)]
            )
        if split_special_tokens:
            backend.encode_special_tokens = True

        # transformers replaces the post-processor only when the config says whether to add
        # BOS/EOS, or when tokenizer.json has none; otherwise tokenizer.json's one stands.
        if add_bos_token is not None or add_eos_token is not None or backend.post_processor is None:
            self._set_bos_eos_post_processor(bool(add_bos_token), bool(add_eos_token))
        # What encode(add_special_tokens=True) really does, whichever post-processor is in place.
        probe = backend.encode("", add_special_tokens=True).ids
        self.add_bos_token = bool(probe) and probe[0] == self._named_id("bos_token")
        self.add_eos_token = bool(probe) and probe[-1] == self._named_id("eos_token")
        self._is_bpe = isinstance(backend.model, BPE)

    def _set_bos_eos_post_processor(self, add_bos: bool, add_eos: bool) -> None:
        bos, eos = self.special_tokens.get("bos_token"), self.special_tokens.get("eos_token")
        add_bos = add_bos and bos is not None
        add_eos = add_eos and eos is not None
        single = " ".join([f"{bos}:0"] * add_bos + ["$A:0"] + [f"{eos}:0"] * add_eos)
        pair = " ".join([single] + [f"{bos}:1"] * add_bos + ["$B:1"] + [f"{eos}:1"] * add_eos)
        specials: list[tuple[str, int]] = []
        if add_bos and bos is not None:
            specials.append((bos, self._require_id(bos)))
        if add_eos and eos is not None and eos != bos:
            specials.append((eos, self._require_id(eos)))
        self.backend.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=specials
        )

    def _require_id(self, token: str) -> int:
        token_id = self.backend.token_to_id(token)
        if token_id is None:
            raise ValueError(f"Special token {token!r} is not in the vocabulary")
        return token_id

    # ---- encode / decode ------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def encode_batch(
        self, texts: Sequence[str], add_special_tokens: bool = True
    ) -> list[list[int]]:
        encodings = self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return [list(e.ids) for e in encodings]

    def decode(
        self,
        ids: Iterable[int],
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
    ) -> str:
        """Text of `ids`. `spaces_between_special_tokens` only affects transformers' slow
        tokenizers; fast ones (all of ours) ignore it, and so do we."""
        del spaces_between_special_tokens
        text = self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        if self.clean_up_tokenization_spaces and not self._is_bpe:
            for old, new in _CLEANUP_REPLACEMENTS:
                text = text.replace(old, new)
        return text

    def convert_ids_to_tokens(
        self, ids: Iterable[int], skip_special_tokens: bool = False
    ) -> list[str]:
        special = self.all_special_ids_set if skip_special_tokens else frozenset()
        out: list[str] = []
        for i in ids:
            if i in special:
                continue
            token = self.backend.id_to_token(i)
            if token is None:
                raise ValueError(f"Token id {i} is out of range (vocab size {self.vocab_size})")
            out.append(token)
        return out

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def get_vocab(self) -> dict[str, int]:
        return self.backend.get_vocab(with_added_tokens=True)

    # ---- properties -----------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """len(tokenizer) in transformers: the vocabulary including added tokens."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def _named_id(self, name: str) -> int | None:
        token = self.special_tokens.get(name)
        return self.backend.token_to_id(token) if token is not None else None

    @property
    def bos_token(self) -> str | None:
        return self.special_tokens.get("bos_token")

    @property
    def eos_token(self) -> str | None:
        return self.special_tokens.get("eos_token")

    @property
    def pad_token(self) -> str | None:
        return self.special_tokens.get("pad_token")

    @property
    def unk_token(self) -> str | None:
        return self.special_tokens.get("unk_token")

    @property
    def bos_token_id(self) -> int | None:
        return self._named_id("bos_token")

    @property
    def eos_token_id(self) -> int | None:
        return self._named_id("eos_token")

    @property
    def pad_token_id(self) -> int | None:
        return self._named_id("pad_token")

    @property
    def unk_token_id(self) -> int | None:
        return self._named_id("unk_token")

    @property
    def eos_token_ids(self) -> list[int]:
        """The tokenizer's EOS as a list (generation_config.json may add more: see
        generation_config.eos_token_ids)."""
        eos = self.eos_token_id
        return [eos] if eos is not None else []

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """Named special tokens (bos_token, eos_token, ...): what chat templates receive."""
        return {k: self.special_tokens[k] for k in SPECIAL_TOKEN_NAMES if k in self.special_tokens}

    @property
    def all_special_tokens(self) -> list[str]:
        return list(dict.fromkeys([*self.special_tokens_map.values(), *self.extra_special_tokens]))

    @property
    def all_special_ids(self) -> list[int]:
        ids = (self.backend.token_to_id(t) for t in self.all_special_tokens)
        return list(dict.fromkeys(i for i in ids if i is not None))

    @property
    def all_special_ids_set(self) -> frozenset[int]:
        return frozenset(self.all_special_ids)

    @property
    def added_special_ids(self) -> frozenset[int]:
        """Every added token marked special: the ids decode(skip_special_tokens=True) drops."""
        return frozenset(i for i, t in self.backend.get_added_tokens_decoder().items() if t.special)

    @property
    def chat_template(self) -> str | None:
        """The default chat template ("default" when the model names several)."""
        if self._chat_template is not None:
            return self._chat_template
        return self.chat_templates.get("default")

    def get_chat_template(self, name: str | None = None, has_tools: bool = False) -> str:
        """Pick a template as transformers does: by name, "tool_use" when tools are given, else
        the default."""
        if self.chat_templates:
            if name is not None and name in self.chat_templates:
                return self.chat_templates[name]
            if name is None:
                if has_tools and "tool_use" in self.chat_templates:
                    return self.chat_templates["tool_use"]
                if "default" in self.chat_templates:
                    return self.chat_templates["default"]
                raise ValueError(
                    "This model has several chat templates and none is named 'default'; pick one "
                    f"of {sorted(self.chat_templates)}"
                )
        if name is not None:
            return name  # a template given inline
        if self._chat_template is None:
            raise ValueError(
                f"The tokenizer of {self.name_or_path or 'this model'} has no chat template; "
                "pass one."
            )
        return self._chat_template


# ---- HF folders -------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return data if isinstance(data, dict) else {}


def _folder_chat_template(folder: Path, config: dict[str, Any]) -> str | dict[str, str] | None:
    """chat_template.jinja (and additional_chat_templates/*.jinja) win over chat_template.json,
    which wins over tokenizer_config.json, as in transformers."""
    templates: dict[str, str] = {}
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        templates["default"] = jinja.read_text(encoding="utf-8")
    elif (folder / "chat_template.json").is_file():
        value = normalize_chat_template(
            _read_json(folder / "chat_template.json").get("chat_template")
        )
        if isinstance(value, dict):
            templates.update(value)
        elif value is not None:
            templates["default"] = value
    else:
        value = normalize_chat_template(config.get("chat_template"))
        if isinstance(value, dict):
            templates.update(value)
        elif value is not None:
            templates["default"] = value
    extra = folder / "additional_chat_templates"
    if extra.is_dir():
        for f in sorted(extra.glob("*.jinja")):
            templates[f.stem] = f.read_text(encoding="utf-8")
    if not templates:
        return None
    if list(templates) == ["default"]:
        return templates["default"]
    return templates


def load_hf_tokenizer(folder: str | os.PathLike[str]) -> Tokenizer:
    root = Path(folder)
    tokenizer_file = root / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise FileNotFoundError(
            f"{root} has no tokenizer.json; fastlm needs a fast (tokenizers) tokenizer"
        )
    backend = BackendTokenizer.from_file(str(tokenizer_file))
    config = _read_json(root / "tokenizer_config.json")
    special_map = _read_json(root / "special_tokens_map.json")

    # Tokens declared in tokenizer_config.json but absent from tokenizer.json, in id order.
    present = {t.content for t in backend.get_added_tokens_decoder().values()}
    declared = config.get("added_tokens_decoder") or {}
    to_add = []
    for _, spec in sorted(declared.items(), key=lambda kv: int(kv[0])):
        if isinstance(spec, dict) and spec.get("content") not in present:
            to_add.append(_added_token_from_config(spec, bool(spec.get("special", False))))
    if to_add:
        backend.add_tokens(to_add)

    # tokenizer_config.json wins; special_tokens_map.json fills what it leaves out.
    special: dict[str, str | None] = {}
    for name in SPECIAL_TOKEN_NAMES:
        value = config.get(name)
        if value is None:
            value = special_map.get(name)
        special[name] = _token_content(value)
    extra_values = (
        config.get("extra_special_tokens")
        or config.get("additional_special_tokens")
        or special_map.get("additional_special_tokens")
        or []
    )
    if isinstance(extra_values, dict):  # v5 may store named extras
        extra_values = list(extra_values.values())
    extra = [t for t in (_token_content(v) for v in extra_values) if t is not None]

    max_len = config.get("model_max_length")
    return Tokenizer(
        backend,
        special_tokens=special,
        extra_special_tokens=extra,
        chat_template=_folder_chat_template(root, config),
        # transformers (v5) ignores add_bos_token/add_eos_token when tokenizer.json exists: its
        # post-processor alone decides, so we pass neither.
        add_bos_token=None,
        add_eos_token=None,
        model_max_length=int(max_len) if isinstance(max_len, (int, float)) else None,
        clean_up_tokenization_spaces=bool(config.get("clean_up_tokenization_spaces", False)),
        split_special_tokens=bool(config.get("split_special_tokens", False)),
        name_or_path=str(root),
    )
