"""Pooling models (embeddings, classification, scores) on the Python side.

The engine pools (CLS / MEAN / LAST / ALL), applies the classification head, the activation and
L2 normalization; this module decides the parameters: from the request's task, the model's
sentence-transformers files (modules.json, 1_Pooling/config.json, the Normalize module,
sentence_bert_config.json max_seq_length) and config.json (num_labels, id2label, problem_type),
as vLLM does. Tokenizing (pairs for cross-encoders) and Matryoshka truncation stay here too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fastlm import _core

if TYPE_CHECKING:
    from fastlm.model_files import ModelFiles
    from fastlm.runtime import Runtime

# vLLM's pooling tasks. "score" runs "classify" on pairs (cross-encoders) or "embed" on each text.
POOLING_TASKS = ("embed", "classify", "score", "encode", "token_embed")

_ENCODER_TYPES = ("bert", "roberta", "xlm-roberta")
_ST_POOLING_MODES = {
    "pooling_mode_cls_token": "CLS",
    "pooling_mode_mean_tokens": "MEAN",
    "pooling_mode_lasttoken": "LAST",
}


@dataclass
class PoolingParams:
    """Per-request pooling options (vLLM's PoolingParams)."""

    truncate_prompt_tokens: int | None = None  # -1: the model's maximum length
    dimensions: int | None = None  # Matryoshka: keep the first N dims, then renormalize
    normalize: bool | None = None  # embeddings; None = the model's default
    activation: bool | None = None  # classification softmax / sigmoid; None = on


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


@dataclass
class PoolingModelConfig:
    architecture: str
    is_encoder: bool
    num_labels: int
    id2label: dict[int, str] = field(default_factory=dict)
    embed_pooling: str = "CLS"  # CLS | MEAN | LAST
    embed_normalize: bool = True
    classify_pooling: str = "CLS"
    classify_activation: str = "softmax"  # softmax | sigmoid | none
    max_seq_length: int | None = None
    type_vocab_size: int = 0
    matryoshka_dimensions: list[int] | None = None
    is_matryoshka: bool = False
    default_task: str = "embed"

    @property
    def is_cross_encoder(self) -> bool:
        return self.num_labels == 1

    @property
    def supported_tasks(self) -> list[str]:
        tasks = ["encode", "token_embed"]
        if self.num_labels > 0:
            tasks += ["classify"] + (["score"] if self.is_cross_encoder else [])
        if self.default_task == "embed":
            tasks += ["embed", "score"]
        return tasks


def read_sentence_transformers(model_dir: str | None) -> dict[str, Any]:
    """Pooling mode, Normalize and max_seq_length from a sentence-transformers folder."""
    out: dict[str, Any] = {}
    if model_dir is None:
        return out
    root = Path(model_dir)
    modules = _read_json(root / "modules.json")
    if isinstance(modules, list):
        out["normalize"] = any(
            str(m.get("type", "")).endswith("Normalize") for m in modules if isinstance(m, dict)
        )
        for m in modules:
            if isinstance(m, dict) and str(m.get("type", "")).endswith("models.Pooling"):
                pooling = _read_json(root / str(m.get("path", "")) / "config.json") or {}
                for key, mode in _ST_POOLING_MODES.items():
                    if pooling.get(key):
                        out["pooling"] = mode
                        break
    st = _read_json(root / "sentence_bert_config.json")
    if isinstance(st, dict) and isinstance(st.get("max_seq_length"), int):
        out["max_seq_length"] = st["max_seq_length"]
    return out


def _config_json(files: ModelFiles) -> dict[str, Any]:
    data = _read_json(Path(files.config_path)) if files.config_path else None
    return data if isinstance(data, dict) else {}


def resolve_runner(files: ModelFiles, runner: str, convert: str) -> str:
    """vLLM's --runner / --convert: 'embed' or 'classify' conversion implies the pooling runner."""
    if runner not in ("auto", "generate", "pooling"):
        raise ValueError(f"runner must be auto, generate or pooling, got {runner!r}")
    if convert not in ("auto", "none", "embed", "classify"):
        raise ValueError(f"convert must be auto, none, embed or classify, got {convert!r}")
    if runner == "auto" and convert in ("embed", "classify"):
        return "pooling"
    if runner == "generate" and convert in ("embed", "classify"):
        raise ValueError(f"convert={convert} needs runner=pooling (or auto)")
    return runner


def apply_pooling_defaults(cfg: Any, files: ModelFiles, runner: str, convert: str) -> None:
    """Sets the engine config's runner, and caps max_model_len at sentence-transformers'
    max_seq_length unless the user gave one."""
    cfg.runner = resolve_runner(files, runner, convert)
    st = read_sentence_transformers(files.model_dir if not files.is_gguf else None)
    if cfg.max_model_len == 0 and "max_seq_length" in st:
        cfg.max_model_len = int(st["max_seq_length"])


def pooling_model_config(runtime: Runtime, convert: str = "auto") -> PoolingModelConfig:
    engine = runtime.engine
    files = runtime.files
    cj = _config_json(files)
    arch = str(engine.architecture)
    is_encoder = cj.get("model_type") in _ENCODER_TYPES or arch.startswith(
        ("Bert", "Roberta", "XLMRoberta")
    )
    num_labels = int(engine.num_labels)
    id2label_raw = cj.get("id2label") or {}
    id2label = {int(k): str(v) for k, v in id2label_raw.items()} if num_labels else {}
    if num_labels and not id2label:
        id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
    st = read_sentence_transformers(files.model_dir if not files.is_gguf else None)
    default = "LAST" if not is_encoder else "CLS"
    problem = cj.get("problem_type")
    activation = (
        "none"
        if problem == "regression"
        else "sigmoid"
        if problem == "multi_label_classification" or num_labels == 1
        else "softmax"
    )
    default_task = "classify" if num_labels > 0 and convert != "embed" else "embed"
    if convert == "classify" and num_labels == 0:
        raise ValueError(f"{arch} has no classification head; it cannot be converted to classify")
    matryoshka = cj.get("matryoshka_dimensions")
    return PoolingModelConfig(
        architecture=arch,
        is_encoder=is_encoder,
        num_labels=num_labels,
        id2label=id2label,
        embed_pooling=str(st.get("pooling", default)),
        embed_normalize=bool(st.get("normalize", True)),
        classify_pooling=default,
        classify_activation=activation,
        max_seq_length=st.get("max_seq_length"),
        type_vocab_size=int(cj.get("type_vocab_size", 0) or 0) if is_encoder else 0,
        matryoshka_dimensions=list(matryoshka) if isinstance(matryoshka, list) else None,
        is_matryoshka=bool(cj.get("is_matryoshka")) or isinstance(matryoshka, list),
        default_task=default_task,
    )


class Pooler:
    """The Python side of a pooling model: tokenizing (pairs), request parameters, output
    post-processing. One per Runtime whose engine is a pooling model."""

    def __init__(self, runtime: Runtime, convert: str = "auto") -> None:
        self.runtime = runtime
        self.engine = runtime.engine
        self.config = pooling_model_config(runtime, convert)
        self.hidden_size = int(runtime.engine.hidden_size)
        # tokenizer.json may pad / truncate to a fixed length (all-MiniLM: 128); results must not
        # depend on it, so encode without either and truncate explicitly.
        backend = runtime.tokenizer.backend
        backend.no_padding()
        backend.no_truncation()

    @property
    def max_model_len(self) -> int:
        return self.runtime.max_model_len

    # -- inputs ------------------------------------------------------------------------------
    def _limit(self, truncate: int | None) -> int | None:
        if truncate is None:
            return None
        if truncate == -1:
            return self.max_model_len
        if truncate < 1:
            raise ValueError(f"truncate_prompt_tokens must be -1 or positive, got {truncate}")
        if truncate > self.max_model_len:
            raise ValueError(
                f"truncate_prompt_tokens value ({truncate}) is greater than max_model_len "
                f"({self.max_model_len}). Please select a smaller truncation size."
            )
        return truncate

    def tokenize(
        self,
        text: str,
        pair: str | None = None,
        truncate: int | None = None,
        add_special_tokens: bool = True,
    ) -> tuple[list[int], int]:
        """Token ids and the token-type boundary (first token of the second text, -1 when
        there is none or the model has no token types)."""
        backend = self.runtime.tokenizer.backend
        limit = self._limit(truncate)
        if limit is not None:
            # Right truncation that keeps [CLS] / [SEP], as sentence-transformers truncates.
            backend.enable_truncation(max_length=limit)
        try:
            enc = backend.encode(text, pair, add_special_tokens=add_special_tokens)
        finally:
            if limit is not None:
                backend.no_truncation()
        ids = list(enc.ids)
        boundary = -1
        if pair is not None and self.config.type_vocab_size > 1:
            types = list(enc.type_ids)
            boundary = types.index(1) if 1 in types else -1
        return ids, boundary

    def truncate_ids(self, ids: list[int], truncate: int | None) -> list[int]:
        limit = self._limit(truncate)
        return ids[-limit:] if limit is not None else ids

    # -- engine parameters -------------------------------------------------------------------
    def resolve_task(self, task: str | None) -> str:
        task = task or self.config.default_task
        if task not in POOLING_TASKS:
            raise ValueError(f"unknown pooling task {task!r}; one of {', '.join(POOLING_TASKS)}")
        if task not in self.config.supported_tasks:
            raise ValueError(
                f"model {self.config.architecture} does not support the {task!r} task "
                f"(supported: {', '.join(self.config.supported_tasks)})"
            )
        return task

    def core_params(
        self, task: str, params: PoolingParams | None, boundary: int = -1
    ) -> _core.PoolingParams:
        p = params or PoolingParams()
        cp = _core.PoolingParams()
        cp.token_type_boundary = boundary
        c = self.config
        if task in ("classify", "score") and c.num_labels > 0:
            cp.type = getattr(_core.PoolingType, c.classify_pooling)
            cp.use_head = True
            act = c.classify_activation if p.activation is not False else "none"
            cp.activation = {
                "softmax": _core.PoolingActivation.SOFTMAX,
                "sigmoid": _core.PoolingActivation.SIGMOID,
                "none": _core.PoolingActivation.NONE,
            }[act]
        elif task == "token_embed":
            cp.type = _core.PoolingType.ALL
            cp.normalize = bool(p.normalize) if p.normalize is not None else c.embed_normalize
        elif task == "encode":
            cp.type = getattr(_core.PoolingType, c.embed_pooling)
            cp.normalize = bool(p.normalize)  # raw unless asked
        else:  # embed, score with an embedding model
            cp.type = getattr(_core.PoolingType, c.embed_pooling)
            cp.normalize = p.normalize if p.normalize is not None else c.embed_normalize
        if p.dimensions is not None:
            self.check_dimensions(p.dimensions)
        return cp

    def check_dimensions(self, dimensions: int) -> None:
        c = self.config
        if not c.is_matryoshka:
            raise ValueError(
                f"model {c.architecture} does not support matryoshka representation; "
                "changing output dimensions will lead to poor results"
            )
        if c.matryoshka_dimensions and dimensions not in c.matryoshka_dimensions:
            raise ValueError(
                f"model {c.architecture} only supports dimensions {c.matryoshka_dimensions}"
            )
        if dimensions < 1 or dimensions > self.hidden_size:
            raise ValueError(f"dimensions must be in [1, {self.hidden_size}], got {dimensions}")

    def add_request(
        self,
        request_id: str,
        tokens: list[int],
        task: str,
        params: PoolingParams | None = None,
        boundary: int = -1,
        priority: int = 0,
    ) -> None:
        self.engine.add_pooling_request(
            request_id, tokens, self.core_params(task, params, boundary), priority
        )

    # -- outputs -----------------------------------------------------------------------------
    def finish(self, delta: Any, params: PoolingParams | None) -> np.ndarray:
        if delta.error:
            raise RuntimeError(f"engine error: {delta.error}")
        data = delta.pooled
        if data is None:
            raise RuntimeError(f"request {delta.request_id} finished without a pooled output")
        if params is not None and params.dimensions is not None:
            data = data[..., : params.dimensions]
            norm = np.linalg.norm(data, axis=-1, keepdims=True)
            data = data / np.maximum(norm, 1e-12)
        return np.asarray(data, dtype=np.float32)
