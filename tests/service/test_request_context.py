"""service.request_context: one context per request, one place its metrics are recorded."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from service.metrics import Metrics
from service.request_context import NO_MODEL, RequestTracker, context_of, scoring_family


def sample(metrics: Metrics, name: str, **labels) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_a_tracked_request_is_in_flight_then_counted_with_its_model_and_status():
    metrics = Metrics(process=False)
    tracker = RequestTracker(metrics)
    scope: dict = {}
    with tracker.track(scope, "/score") as context:
        assert context_of(scope) is context and context.model == NO_MODEL and context.status == 500
        assert tracker.inflight == 1
        assert sample(metrics, "oodgate_inflight_requests", endpoint="/score") == 1
        context.serving(SimpleNamespace(name="tiny", version="1"))
        context.status = 200
    assert tracker.inflight == 0
    assert sample(metrics, "oodgate_inflight_requests", endpoint="/score") == 0
    labels = {"endpoint": "/score", "model": "tiny", "version": "1"}
    assert sample(metrics, "oodgate_requests_total", **labels, code="200") == 1
    assert sample(metrics, "oodgate_request_duration_seconds_count", **labels) == 1


def test_a_request_that_raises_is_a_500_of_no_model_and_leaves_flight():
    metrics = Metrics(process=False)
    tracker = RequestTracker(metrics)
    with pytest.raises(RuntimeError), tracker.track({}, "sidecar"):
        raise RuntimeError("boom")
    assert tracker.inflight == 0
    assert sample(metrics, "oodgate_requests_total", endpoint="sidecar", model="", version="", code="500") == 1


def test_the_endpoint_label_can_be_settled_once_routed():
    metrics = Metrics(process=False)
    tracker = RequestTracker(metrics)
    for _ in range(2):  # the second one reuses the cached label children
        with tracker.track({}, "/v2/models/{name}/infer") as context:
            context.endpoint = "/v2/models/{name}/versions/{version}/infer"
            context.status = 200
    done = {"endpoint": "/v2/models/{name}/versions/{version}/infer", "model": "", "version": "", "code": "200"}
    assert sample(metrics, "oodgate_requests_total", **done) == 2
    assert sample(metrics, "oodgate_inflight_requests", endpoint="/v2/models/{name}/infer") == 0


def test_an_untracked_request_has_a_context_nobody_records():
    context = context_of({})
    assert context.model == NO_MODEL and context is not context_of({})


def test_only_scoring_paths_are_tracked_by_the_middleware():
    assert scoring_family("/score") == "/score"
    assert scoring_family("/v2/models/tiny/versions/2/infer") == "/v2/models/{name}/infer"
    assert scoring_family("/v2/models/tiny") is None and scoring_family("/models") is None
