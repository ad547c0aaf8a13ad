"""Prometheus metrics with vLLM's names under the `fastlm:` prefix.

Engine-wide numbers (running/waiting requests, KV cache usage, token and prefix-cache counters)
are read from `Engine.stats()` at scrape time; per-request latencies (TTFT, inter-token latency,
end-to-end) are observed by the server as outputs stream out.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fastlm.outputs import RequestOutput

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
_ITL_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
_E2E_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)
_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)


class _EngineCollector(Collector):
    def __init__(self, stats: Callable[[], Any], model_name: str) -> None:
        self._stats = stats
        self._model = model_name

    def collect(self) -> Iterable[Metric]:
        s = self._stats()
        if s is None:
            return
        labels = ["model_name"]
        values = [self._model]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(f"fastlm:{name}", doc, labels=labels)
            g.add_metric(values, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(f"fastlm:{name}", doc, labels=labels)
            c.add_metric(values, value)
            return c

        yield gauge(
            "num_requests_running", "Number of requests in model execution batches.", s.num_running
        )
        yield gauge(
            "num_requests_waiting", "Number of requests waiting to be processed.", s.num_waiting
        )
        yield gauge("kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", s.kv_usage)
        yield counter(
            "num_preemptions",
            "Cumulative number of preemptions from the engine.",
            s.num_preemptions,
        )
        yield counter("prompt_tokens", "Number of prefill tokens processed.", s.prompt_tokens)
        yield counter(
            "generation_tokens", "Number of generation tokens processed.", s.generation_tokens
        )
        yield counter(
            "prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            s.prefix_cache_queries,
        )
        yield counter(
            "prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            s.prefix_cache_hits,
        )


class ServerMetrics:
    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.registry = CollectorRegistry()
        self._stats: Callable[[], Any] = lambda: None
        self.registry.register(_EngineCollector(lambda: self._stats(), model_name))
        labels = ["model_name"]
        self.request_success = Counter(
            "fastlm:request_success",
            "Count of successfully processed requests.",
            labels + ["finished_reason"],
            registry=self.registry,
        )
        self.audio_requests = Counter(
            "fastlm:audio_requests",
            "Count of speech-to-text requests (transcriptions and translations) admitted.",
            labels,
            registry=self.registry,
        )
        self.audio_seconds = Counter(
            "fastlm:audio_seconds",
            "Seconds of audio in admitted speech-to-text requests.",
            labels,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "fastlm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            labels,
            buckets=_TTFT_BUCKETS,
            registry=self.registry,
        )
        self.itl = Histogram(
            "fastlm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            labels,
            buckets=_ITL_BUCKETS,
            registry=self.registry,
        )
        self.e2e = Histogram(
            "fastlm:e2e_request_latency_seconds",
            "Histogram of end to end request latency in seconds.",
            labels,
            buckets=_E2E_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Histogram(
            "fastlm:request_prompt_tokens",
            "Number of prefill tokens processed.",
            labels,
            buckets=_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.generation_tokens = Histogram(
            "fastlm:request_generation_tokens",
            "Number of generation tokens processed.",
            labels,
            buckets=_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self._ttft = self.ttft.labels(model_name)
        self._itl = self.itl.labels(model_name)
        self._e2e = self.e2e.labels(model_name)
        self._prompt = self.prompt_tokens.labels(model_name)
        self._gen = self.generation_tokens.labels(model_name)

    def bind_engine(self, stats: Callable[[], Any]) -> None:
        self._stats = stats

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe_audio(self, seconds: float) -> None:
        """An admitted speech-to-text request and the seconds of audio it carries."""
        self.audio_requests.labels(self.model_name).inc()
        self.audio_seconds.labels(self.model_name).inc(seconds)

    def observe_audio_done(self, arrival: float, reasons: list[str | None]) -> None:
        """A finished speech-to-text request (one success, whatever its window count)."""
        self._e2e.observe(time.monotonic() - arrival)
        reason = "length" if "length" in reasons else "stop"
        self.request_success.labels(self.model_name, reason).inc()

    def observe_pooling(self, prompt_tokens: int, arrival: float) -> None:
        """A finished pooling request (embedding, classification, score): vLLM counts them as
        successful requests finished by "stop", with their prompt tokens and latency."""
        self._e2e.observe(time.monotonic() - arrival)
        self._prompt.observe(prompt_tokens)
        self._gen.observe(0)
        self.request_success.labels(self.model_name, "stop").inc()

    async def track(
        self, stream: AsyncIterator[RequestOutput], arrival: float, delta: bool = False
    ) -> AsyncIterator[RequestOutput]:
        """Passes a request's outputs (cumulative, or deltas when `delta`) through, observing
        its latencies and token counts."""
        last: float | None = None
        num_tokens = 0
        try:
            async for out in stream:
                tokens = sum(len(o.token_ids) for o in out.outputs)
                if delta:
                    tokens += num_tokens
                if tokens > num_tokens:
                    t = time.monotonic()
                    if last is None:
                        self._ttft.observe(t - arrival)
                    else:
                        # Several tokens may arrive at once when the client lags: spread the gap.
                        gap = (t - last) / (tokens - num_tokens)
                        for _ in range(tokens - num_tokens):
                            self._itl.observe(gap)
                    last, num_tokens = t, tokens
                if out.finished:
                    self._e2e.observe(time.monotonic() - arrival)
                    self._prompt.observe(len(out.prompt_token_ids))
                    self._gen.observe(num_tokens)
                    for o in out.outputs:
                        reason = o.finish_reason or "abort"
                        self.request_success.labels(self.model_name, reason).inc()
                yield out
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
