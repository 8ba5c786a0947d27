"""Prometheus metrics, in a registry of the app's own (two apps in one process never share counters). What one model
does (its queue, batches, model time, decode errors) carries its v2 name as the label ``model``."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("inceptionv3_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "code"], registry=r)
        self.latency = Histogram("inceptionv3_request_seconds", "request latency, from arrival to answer",
                                 ["endpoint"], buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("inceptionv3_queue_wait_seconds", "time an image waited for the model thread",
                                    ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.inference = Histogram("inceptionv3_inference_seconds", "model time per batch (or explanation)",
                                   ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("inceptionv3_batch_size", "images per model batch (batch fill: / max_batch)",
                                    ["model"], buckets=_BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("inceptionv3_queue_depth", "images waiting for the model thread", ["model"],
                                 registry=r)
        self.decode_errors = Counter("inceptionv3_decode_errors", "undecodable uploads by reason", ["model", "reason"],
                                     registry=r)
        self.model_info = Gauge("inceptionv3_model_info", "the served model (value 1)",
                                ["model", "weights", "preset", "backend", "precision", "device"], registry=r)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


__all__ = ["ServerMetrics"]
