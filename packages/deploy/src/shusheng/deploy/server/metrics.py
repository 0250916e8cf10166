"""Prometheus metrics of one server (its own registry, so several apps can live in one process, e.g. tests).

Under `serve --api-servers N` (PROMETHEUS_MULTIPROC_DIR set, see workers.py) every API process writes its values
to files there, and `render` adds up all of them: whichever process a scrape reaches answers for the whole server.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self, stats):
        """`stats()` returns the engine's live figures (waiting, running, kv_cache_usage)."""
        self.stats = stats
        self.registry = r = CollectorRegistry()
        self.requests = Counter("shusheng_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.prompt_tokens = Counter("shusheng_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = Counter("shusheng_generation_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram("shusheng_time_to_first_token_seconds", "Time to first token", registry=r,
                              buckets=_LATENCY_BUCKETS)
        self.itl = Histogram("shusheng_inter_token_latency_seconds", "Time between streamed outputs", registry=r,
                             buckets=_LATENCY_BUCKETS)
        self.e2e = Histogram("shusheng_e2e_request_latency_seconds", "Request latency", registry=r,
                             buckets=_LATENCY_BUCKETS)
        # the engine's figures, set when scraped; over several processes the latest one set is the answer
        self.gauges = {key: Gauge(name, doc, registry=r, multiprocess_mode="mostrecent") for key, name, doc in (
            ("waiting", "shusheng_num_requests_waiting", "Requests waiting to be scheduled"),
            ("running", "shusheng_num_requests_running", "Sequences running"),
            ("kv_cache_usage", "shusheng_kv_cache_usage_ratio", "Fraction of KV-cache blocks in use"))}

    def render(self) -> bytes:
        """The exposition text: this server's metrics (all its API processes' under multiprocess mode)."""
        stats = self.stats()
        for key, gauge in self.gauges.items():
            gauge.set(stats[key])
        if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
