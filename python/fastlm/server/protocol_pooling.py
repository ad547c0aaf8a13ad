"""Request and response shapes of the pooling routes (msgspec Structs), with vLLM's names and
defaults: /v1/embeddings, /pooling, /classify, /score, /rerank.

Decoded strictly like the generation requests (protocol.py): a mistyped field is a 400 naming
it, never a 500 and never a coercion. `input` stays loosely typed (msgspec unions hold one array
type) and is checked by the endpoint.
"""

from __future__ import annotations

from typing import Any, Literal

from msgspec import UNSET, Struct, UnsetType

from fastlm.server.protocol import ChatMessage

EncodingFormat = Literal["float", "base64"]
EmbedDType = Literal["float32", "float16", "bfloat16"]
Endianness = Literal["native", "big", "little"]


class _PoolingCommon(Struct, kw_only=True):
    model: str | None = None
    user: str | None = None
    truncate_prompt_tokens: int | None = None
    request_id: str | None = None
    priority: int = 0
    # Not supported (no multimodal or disaggregated models): refused when set, never ignored.
    mm_processor_kwargs: dict[str, Any] | None = None
    cache_salt: str | None = None


class _WithChat(_PoolingCommon, kw_only=True):
    """vLLM's chat form of an embedding / pooling request (`messages` instead of `input`)."""

    input: str | list[Any] | None = None
    # vLLM: True for `input`, False for `messages` (the template adds them).
    add_special_tokens: bool | None = None
    messages: list[ChatMessage] | None = None
    add_generation_prompt: bool = False
    continue_final_message: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None


class _Encoded(_WithChat, kw_only=True):
    encoding_format: EncodingFormat = "float"
    embed_dtype: EmbedDType = "float32"
    endianness: Endianness = "native"


class EmbeddingRequest(_Encoded, kw_only=True):
    dimensions: int | None = None
    normalize: bool | None = None


class PoolingRequest(_Encoded, kw_only=True):
    task: str | None = None
    dimensions: int | None = None
    normalize: bool | None = None
    activation: bool | None = None
    use_activation: bool | None = None
    softmax: bool | None = None  # vLLM's older name of activation


class ClassificationRequest(_WithChat, kw_only=True):
    activation: bool | None = None
    use_activation: bool | None = None
    softmax: bool | None = None


class ScoreRequest(_PoolingCommon, kw_only=True):
    text_1: str | list[Any] | None = None
    text_2: str | list[Any] | None = None
    queries: str | list[Any] | None = None  # vLLM's newer names of text_1 / text_2
    documents: str | list[Any] | None = None
    activation: bool | None = None
    use_activation: bool | None = None
    softmax: bool | None = None
    normalize: bool | None = None


class RerankRequest(_PoolingCommon, kw_only=True):
    query: str
    documents: list[Any]
    top_n: int | None = None
    return_documents: bool = True
    activation: bool | None = None
    use_activation: bool | None = None
    softmax: bool | None = None
    normalize: bool | None = None


# ---- responses --------------------------------------------------------------------------------


class PoolingUsage(Struct, kw_only=True):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int | UnsetType = UNSET


class _ListResponse(Struct, kw_only=True):
    """What the list-shaped pooling responses share; each adds its `data` list."""

    id: str
    object: str = "list"
    created: int
    model: str
    usage: PoolingUsage


class EmbeddingData(Struct, kw_only=True):
    index: int
    object: str = "embedding"
    embedding: list[float] | str


class EmbeddingResponse(_ListResponse, kw_only=True):
    data: list[EmbeddingData]


class PoolingData(Struct, kw_only=True):
    index: int
    object: str = "pooling"
    data: list[Any] | str


class PoolingResponse(_ListResponse, kw_only=True):
    data: list[PoolingData]


class ClassificationData(Struct, kw_only=True):
    index: int
    label: str
    probs: list[float]
    num_classes: int


class ClassificationResponse(_ListResponse, kw_only=True):
    data: list[ClassificationData]


class ScoreData(Struct, kw_only=True):
    index: int
    object: str = "score"
    score: float


class ScoreResponse(_ListResponse, kw_only=True):
    data: list[ScoreData]


class RerankDocument(Struct, kw_only=True):
    text: str


class RerankResult(Struct, kw_only=True):
    index: int
    relevance_score: float
    document: RerankDocument | UnsetType = UNSET


class RerankBilledUnits(Struct, kw_only=True):
    search_units: int = 1


class RerankMeta(Struct, kw_only=True):
    billed_units: RerankBilledUnits


class RerankResponse(Struct, kw_only=True):
    id: str
    model: str
    usage: PoolingUsage
    results: list[RerankResult]
    meta: RerankMeta
