"""Every Prometheus metric of the service, defined once, here.

Names are a public interface (Grafana dashboards and alert rules read them):
keep them stable. All durations are in seconds, sizes in images, counters end in
``_total``, distributions are histograms (aggregatable across replicas, unlike
summaries). Labels are low-cardinality only: ``model`` and ``version`` come from
the loaded repository (never from a client's string: an unknown model is
counted under ``model=""``), ``endpoint`` is a route template, ``code`` an HTTP
status, ``reason``/``score`` from fixed sets.

| name | type | labels | what |
|---|---|---|---|
| ``oodgate_requests_total`` | counter | endpoint, model, version, code | requests answered |
| ``oodgate_request_duration_seconds`` | histogram | endpoint, model, version | request latency, receipt to answer |
| ``oodgate_inflight_requests`` | gauge | endpoint | requests being handled now |
| ``oodgate_images_total`` | counter | model, version | images scored |
| ``oodgate_ood_images_total`` | counter | model, version, score | images flagged out-of-distribution |
| ``oodgate_p_value`` | histogram | model, version, score | conformal p-values given out |
| ``oodgate_rejections_total`` | counter | model, version, reason | requests refused, by reason (below) |
| ``oodgate_image_failures_total`` | counter | model, version | images that failed inference even alone (500) |
| ``oodgate_batch_failures_total`` | counter | model, version | batches that raised (then retried in halves) |
| ``oodgate_queue_wait_seconds`` | histogram | model, version | time an image waited in the queue before its batch ran |
| ``oodgate_inference_duration_seconds`` | histogram | model, version | time one batch took in the runtime |
| ``oodgate_batch_size`` | histogram | model, version | images per batch run |
| ``oodgate_queue_images`` | gauge | model, version | images waiting in the queue |
| ``oodgate_model_ready`` | gauge | model, version | 1 once loaded and warm, 0 before and while draining |
| ``oodgate_model_info`` | gauge | model, version, backend, device | always 1; carries the runtime in labels |
| ``oodgate_queue_capacity_images`` | gauge | model, version | bound of the queue (max_queue_images) |
| ``oodgate_drift_window_images`` | gauge | model, version | images in the drift window (service/drift.py) |
| ``oodgate_drift_ood_rate`` | gauge | model, version | share of the window with p <= the model's default alpha |
| ``oodgate_drift_mean_p_value`` | gauge | model, version | mean p-value of the window |
| ``oodgate_drift_mean_bpd`` | gauge | model, version | mean bits/dim of the window |
| ``oodgate_drift_calibration_mean_bpd`` | gauge | model, version | mean bits/dim of the calibration set |
| ``oodgate_drift_typicality_p_value`` | gauge | model, version | typicality test of the window mean bpd |
| ``oodgate_drift_alpha`` | gauge | model, version | the model's default alpha (the OOD-rate alert's yardstick) |
| ``oodgate_drift_martingale`` | gauge | model, version | log10 wealth of the drift test martingale (guarantees.py) |
| ``oodgate_drift_alarm`` | gauge | model, version | 1 once the wealth reached 1/drift_delta, latched until reset |
| ``oodgate_drift_alarm_resets_total`` | counter | model, version | drift alarm resets (``POST /admin/drift/reset``) |
| ``oodgate_model_loads_total`` | counter | model, version, outcome | live loads: loaded, refused, unloaded |
| ``oodgate_sidecar_requests_total`` | counter | policy, outcome | sidecar requests, by outcome (below) |
| ``oodgate_sidecar_upstream_duration_seconds`` | histogram | - | time the upstream took to answer |

Rejection reasons: ``bad_request`` (400), ``unauthorized`` (401), ``unknown_model`` (404), ``too_large`` (413),
``unsupported_media_type`` (415), ``unprocessable`` (422), ``queue_full``, ``draining``,
``not_ready`` (503), ``deadline`` (504), ``unauthorized`` (401/403 on the admin endpoints).

Sidecar outcomes: ``forwarded``, ``blocked`` (OOD, 422), ``unscored`` (no image to score),
``refused`` (oodgate refused the images, e.g. 400), ``upstream_unreachable`` (502),
``upstream_timeout`` (504), ``upstream_too_large`` (502: the answer passed ``max_upstream_response_bytes``).

Each app gets its own :class:`Metrics` on its own registry, so several apps can
live in one process (the tests do) without clashing; ``GET /metrics`` exposes it.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
P_VALUE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)

REJECTION_REASONS = (
    "bad_request",
    "unknown_model",
    "too_large",
    "unsupported_media_type",
    "unprocessable",
    "queue_full",
    "draining",
    "not_ready",
    "deadline",
    "unauthorized",
)

MODEL = ("model", "version")


class Metrics:
    """The service's metrics on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None, process: bool = True) -> None:
        disable_created_metrics()  # the *_created series only double the exposition; Prometheus ignores them
        self.registry = registry or CollectorRegistry(auto_describe=True)
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter("oodgate_requests", "Requests answered.", ("endpoint", *MODEL, "code"), registry=r)
        self.request_duration = Histogram(
            "oodgate_request_duration_seconds",
            "Request latency from receipt to answer.",
            ("endpoint", *MODEL),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge("oodgate_inflight_requests", "Requests being handled now.", ("endpoint",), registry=r)
        self.images = Counter("oodgate_images", "Images scored.", MODEL, registry=r)
        self.ood_images = Counter(
            "oodgate_ood_images", "Images flagged out-of-distribution.", (*MODEL, "score"), registry=r
        )
        self.p_value = Histogram(
            "oodgate_p_value", "Conformal p-values given out.", (*MODEL, "score"), buckets=P_VALUE_BUCKETS, registry=r
        )
        self.rejections = Counter("oodgate_rejections", "Requests refused, by reason.", (*MODEL, "reason"), registry=r)
        self.image_failures = Counter(
            "oodgate_image_failures", "Images that failed inference even in a batch of one.", MODEL, registry=r
        )
        self.batch_failures = Counter(
            "oodgate_batch_failures", "Batches whose inference raised (retried in halves).", MODEL, registry=r
        )
        self.queue_wait = Histogram(
            "oodgate_queue_wait_seconds",
            "Time an image waited in the queue before its batch started.",
            MODEL,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "oodgate_inference_duration_seconds",
            "Time one batch took in the runtime.",
            MODEL,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "oodgate_batch_size", "Images per batch run.", MODEL, buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_images = Gauge("oodgate_queue_images", "Images waiting in the queue.", MODEL, registry=r)
        self.model_ready = Gauge(
            "oodgate_model_ready", "1 once loaded and warm; 0 before and while draining.", MODEL, registry=r
        )
        self.model_info = Gauge(
            "oodgate_model_info",
            "Loaded models; always 1, the runtime is in the labels.",
            (*MODEL, "backend", "device"),
            registry=r,
        )
        self.queue_capacity = Gauge(
            "oodgate_queue_capacity_images", "Queue bound in images; past it requests get 503.", MODEL, registry=r
        )
        # drift (service/drift.py): the last window of each model's images; NaN until it holds enough
        self.drift_window_images = Gauge("oodgate_drift_window_images", "Images in the window.", MODEL, registry=r)
        self.drift_ood_rate = Gauge(
            "oodgate_drift_ood_rate", "Share of the window's images with p <= the default alpha.", MODEL, registry=r
        )
        self.drift_mean_p_value = Gauge("oodgate_drift_mean_p_value", "Mean p-value of the window.", MODEL, registry=r)
        self.drift_mean_bpd = Gauge("oodgate_drift_mean_bpd", "Mean bits/dim of the window.", MODEL, registry=r)
        self.drift_calibration_mean_bpd = Gauge(
            "oodgate_drift_calibration_mean_bpd", "Mean bits/dim of the calibration set.", MODEL, registry=r
        )
        self.drift_typicality_p_value = Gauge(
            "oodgate_drift_typicality_p_value",
            "Typicality test p-value of the window mean bpd (resampled calibration windows).",
            MODEL,
            registry=r,
        )
        self.drift_alpha = Gauge("oodgate_drift_alpha", "The model's default alpha.", MODEL, registry=r)
        # anytime-valid drift test (service/guarantees.py): calibrated models only
        self.drift_martingale = Gauge(
            "oodgate_drift_martingale",
            "log10 of the wealth of the conformal test martingale over the model's scored images.",
            MODEL,
            registry=r,
        )
        self.drift_alarm = Gauge(
            "oodgate_drift_alarm",
            "1 once the test martingale reached 1/drift_delta (false-alarm probability <= drift_delta); latched.",
            MODEL,
            registry=r,
        )
        self.drift_alarm_resets = Counter(
            "oodgate_drift_alarm_resets", "Resets of the drift alarm and its martingale.", MODEL, registry=r
        )
        # live model management (service/repository.py)
        self.model_loads = Counter(
            "oodgate_model_loads",
            "Versions put in service live (loaded), refused (corrupt or failing), or taken out (unloaded).",
            (*MODEL, "outcome"),
            registry=r,
        )
        # sidecar mode (service/sidecar.py)
        self.sidecar_requests = Counter(
            "oodgate_sidecar_requests", "Sidecar requests, by policy and outcome.", ("policy", "outcome"), registry=r
        )
        self.sidecar_upstream_duration = Histogram(
            "oodgate_sidecar_upstream_duration_seconds",
            "Time the upstream took to answer a forwarded request.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
