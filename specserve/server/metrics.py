"""Prometheus metrics, in a registry owned by one app (so tests can run several servers at once).

Counters and histograms are updated by the request handlers; engine gauges are read from
``AsyncLLMEngine.stats()`` when /metrics is scraped, so they never go stale and cost nothing between
scrapes. Speculation gauges appear once the engine's stats carry ``spec_*`` keys.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5)
_E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)


class _EngineCollector(Collector):
    def __init__(self, stats: Callable[[], dict[str, Any]],
                 server_gauges: Callable[[], dict[str, float]]) -> None:
        self._stats = stats
        self._server_gauges = server_gauges

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"specserve_{name}", doc, value=value)

        yield gauge("num_requests_running", "Sequences the scheduler is running", stats.get("num_running", 0))
        yield gauge("num_requests_waiting", "Sequences waiting to be scheduled", stats.get("num_waiting", 0))
        total = stats.get("kv_blocks_total", 0)
        used = stats.get("kv_blocks_in_use", 0)
        yield gauge("kv_blocks_total", "KV cache blocks in the pool", total)
        yield gauge("kv_blocks_used", "KV cache blocks held by requests", used)
        yield gauge("kv_cache_usage_ratio", "Fraction of KV blocks in use", used / total if total else 0.0)
        queries = stats.get("prefix_cache_queries", 0)
        hits = stats.get("prefix_cache_hit_tokens", 0)
        yield gauge("prefix_cache_hit_rate", "Prompt tokens found in the prefix cache / tokens looked up",
                    hits / queries if queries else 0.0)
        yield CounterMetricFamily("specserve_prefix_cache_queries_tokens", "Prompt tokens looked up",
                                  value=queries)
        yield CounterMetricFamily("specserve_prefix_cache_hits_tokens", "Prompt tokens found", value=hits)
        yield CounterMetricFamily("specserve_engine_steps", "Engine steps run",
                                  value=stats.get("num_steps", 0))
        yield from _spec_gauges(stats)
        for name, value in self._server_gauges().items():
            yield gauge(name, f"server: {name.replace('_', ' ')}", value)


def _spec_gauges(stats: dict[str, Any]) -> Iterator[Metric]:
    """Acceptance gauges, from whatever spec_* counters the engine reports."""
    derived: dict[str, tuple[str, float]] = {}
    proposed = stats.get("spec_proposed_tokens")
    if proposed:
        derived["spec_acceptance_rate"] = ("Accepted / proposed draft tokens",
                                           (stats.get("spec_accepted_tokens") or 0) / proposed)
    steps = stats.get("spec_steps")
    emitted = stats.get("spec_emitted_tokens")
    if steps and emitted is not None:
        derived["spec_mean_accepted_tokens_per_step"] = (
            "Tokens emitted per speculative step (bonus included)", emitted / steps)
    labelled: list[GaugeMetricFamily] = []
    for key, value in stats.items():
        if not key.startswith("spec_"):
            continue
        if _is_number(value):  # the engine's own value wins over ours when it reports the same name
            derived[key] = (f"engine stat {key}", value)
        elif isinstance(value, (list, dict)):  # per-position rates, histograms: one series per entry
            items = value.items() if isinstance(value, dict) else enumerate(value)
            family = GaugeMetricFamily(f"specserve_{key}", f"engine stat {key}", labels=["key"])
            for label, number in items:
                if _is_number(number):
                    family.add_metric([str(label)], number)
            labelled.append(family)
    for key, (doc, value) in derived.items():
        yield GaugeMetricFamily(f"specserve_{key}", doc, value=value)
    yield from labelled


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class ServerMetrics:
    def __init__(self, stats: Callable[[], dict[str, Any]],
                 server_gauges: Callable[[], dict[str, float]] = dict) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.http_requests = Counter("specserve_http_requests", "HTTP responses by route and status code",
                                     ["path", "status"], registry=reg)
        self.finished = Counter("specserve_request_finished", "Finished sequences by finish reason",
                                ["finish_reason"], registry=reg)
        self.prompt_tokens = Counter("specserve_prompt_tokens", "Prompt tokens processed", registry=reg)
        self.generation_tokens = Counter("specserve_generation_tokens", "Tokens generated", registry=reg)
        self.ttft = Histogram("specserve_time_to_first_token_seconds", "Arrival to first token",
                              buckets=_LATENCY_BUCKETS, registry=reg)
        self.itl = Histogram("specserve_inter_token_latency_seconds", "Time between output tokens",
                             buckets=_TOKEN_BUCKETS, registry=reg)
        self.e2e = Histogram("specserve_e2e_request_latency_seconds", "Arrival to last token",
                             buckets=_E2E_BUCKETS, registry=reg)
        reg.register(_EngineCollector(stats, server_gauges))

    def render(self) -> bytes:
        return generate_latest(self.registry)
