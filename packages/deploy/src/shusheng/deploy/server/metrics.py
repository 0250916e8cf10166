"""Prometheus metrics of one server (its own registry, so several apps can live in one process, e.g. tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self, stats):
        """`stats()` returns the engine's live figures (waiting, running, kv_cache_usage)."""
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
        waiting = Gauge("shusheng_num_requests_waiting", "Requests waiting to be scheduled", registry=r)
        running = Gauge("shusheng_num_requests_running", "Sequences running", registry=r)
        usage = Gauge("shusheng_kv_cache_usage_ratio", "Fraction of KV-cache blocks in use", registry=r)
        waiting.set_function(lambda: stats()["waiting"])
        running.set_function(lambda: stats()["running"])
        usage.set_function(lambda: stats()["kv_cache_usage"])
