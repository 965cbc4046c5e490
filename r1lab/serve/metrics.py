"""Prometheus metrics, named like vLLM's with the prefix ``r1lab:`` (SPEC §10), label ``model_name``.

Each app gets its own ``CollectorRegistry`` (not the process-global one), so a test can
build several apps in one process. Gauges are set by the engine loop after every step;
counters and histograms are updated where the event happens (the loop thread for tokens
and latencies, the error handlers for failures); prometheus-client is thread-safe.
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# no `*_created` timestamp series beside every counter and histogram (as vLLM): dashboards never
# read them and they double the scrape
prometheus_client.disable_created_metrics()

PREFIX = "r1lab:"
# vLLM's buckets (seconds)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
               80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
               960.0, 1920.0, 7680.0)


class ServeMetrics:
    def __init__(self, model_name: str):
        self.registry = CollectorRegistry()
        r, m = self.registry, ["model_name"]
        self.model_name = model_name

        def gauge(name, doc):
            return Gauge(PREFIX + name, doc, m, registry=r).labels(model_name)

        def counter(name, doc, extra=()):
            c = Counter(PREFIX + name, doc, m + list(extra), registry=r)
            return c if extra else c.labels(model_name)

        def histogram(name, doc, buckets):
            return Histogram(PREFIX + name, doc, m, buckets=buckets, registry=r).labels(model_name)

        self.running = gauge("num_requests_running", "Requests generating now (admitted by the engine).")
        self.waiting = gauge("num_requests_waiting", "Requests waiting for a slot.")
        self.kv_usage = gauge("kv_cache_usage_perc", "Fraction of KV-cache blocks in use (1 = full).")
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens of admitted requests.")
        self.generation_tokens = counter("generation_tokens", "Tokens generated.")
        self.reasoning_tokens = counter("reasoning_tokens", "Tokens generated inside <think>…</think>.")
        self._success = counter("request_success", "Finished requests by finish reason (abort = the client left).",
                                ["finished_reason"])
        self._failure = counter("request_failure", "Requests answered with an HTTP error, by status.", ["status"])
        self.ttft = histogram("time_to_first_token_seconds", "Time from arrival to the first token.", TTFT_BUCKETS)
        self.itl = histogram("inter_token_latency_seconds", "Time between consecutive tokens of a completion.",
                             ITL_BUCKETS)
        self.e2e = histogram("e2e_request_latency_seconds", "Time from arrival to the last token.", E2E_BUCKETS)

    def success(self, finished_reason: str) -> None:
        self._success.labels(self.model_name, finished_reason).inc()

    def failure(self, status: int) -> None:
        self._failure.labels(self.model_name, str(status)).inc()
