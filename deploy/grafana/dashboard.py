"""Writes ``deploy/grafana/dashboards/oodgate.json``, the provisioned oodgate dashboard.

The dashboard is generated rather than hand-edited so that every panel follows
the same conventions (datasource by uid, ``$job``/``$model`` filters, rates over
``$__rate_interval``) and a reviewer reads the queries here, not in 1,000 lines of
JSON. ``tests/deploy`` checks that the committed JSON is what this script writes
and that every metric a query names exists in the service's ``/metrics``.

    python deploy/grafana/dashboard.py          # rewrite the JSON
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards" / "oodgate.json"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
SEL = 'job=~"$job"'
MSEL = 'job=~"$job", model=~"$model"'
RATE = "$__rate_interval"


def quantiles(metric: str, by: str, selector: str) -> list[tuple[str, str]]:
    return [
        (
            f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{{{selector}}}[{RATE}])))",
            f"p{int(q * 100)} {{{{{by}}}}}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


# (title, unit, [(expr, legend)], kind, description)
ROWS: list[tuple[str, list[tuple]]] = [
    (
        "Traffic",
        [
            (
                "Request rate by endpoint",
                "reqps",
                [(f"sum by (endpoint) (rate(oodgate_requests_total{{{SEL}}}[{RATE}]))", "{{endpoint}}")],
                "timeseries",
                "Requests answered per second, every status code.",
            ),
            (
                "Latency by endpoint (p50 / p95 / p99)",
                "s",
                quantiles("oodgate_request_duration_seconds", "endpoint", SEL),
                "timeseries",
                "Receipt to answer, from the request-duration histogram.",
            ),
            (
                "Images scored per second",
                "short",
                [(f"sum by (model, version) (rate(oodgate_images_total{{{MSEL}}}[{RATE}]))", "{{model}}/{{version}}")],
                "timeseries",
                "Images through the flow, whatever the endpoint (score API, /v2 or sidecar).",
            ),
            (
                "Errors by status code",
                "reqps",
                [(f'sum by (code) (rate(oodgate_requests_total{{{SEL}, code=~"[45].."}}[{RATE}]))', "{{code}}")],
                "timeseries",
                "4xx are the client's (bad images, unknown model); 5xx are ours.",
            ),
            (
                "In-flight requests",
                "short",
                [(f"sum by (endpoint) (oodgate_inflight_requests{{{SEL}}})", "{{endpoint}}")],
                "timeseries",
                "Requests being handled right now.",
            ),
        ],
    ),
    (
        "Batching",
        [
            (
                "Batch size (mean and p95)",
                "short",
                [
                    (
                        f"sum by (model) (rate(oodgate_batch_size_sum{{{MSEL}}}[{RATE}]))"
                        f" / sum by (model) (rate(oodgate_batch_size_count{{{MSEL}}}[{RATE}]))",
                        "mean {{model}}",
                    ),
                    (
                        "histogram_quantile(0.95, sum by (le, model) "
                        f"(rate(oodgate_batch_size_bucket{{{MSEL}}}[{RATE}])))",
                        "p95 {{model}}",
                    ),
                ],
                "timeseries",
                "Images per batch run; near 1 under light load, up to max_batch_size under heavy load.",
            ),
            (
                "Queue depth (images) and capacity",
                "short",
                [
                    (f"sum by (model) (oodgate_queue_images{{{MSEL}}})", "queued {{model}}"),
                    (f"max by (model) (oodgate_queue_capacity_images{{{MSEL}}})", "capacity {{model}}"),
                ],
                "timeseries",
                "Past capacity, requests get 503 with Retry-After.",
            ),
            (
                "Queue wait (p50 / p95 / p99)",
                "s",
                quantiles("oodgate_queue_wait_seconds", "model", MSEL),
                "timeseries",
                "Time an image waits for its batch.",
            ),
            (
                "Inference time per batch (p50 / p95 / p99)",
                "s",
                quantiles("oodgate_inference_duration_seconds", "model", MSEL),
                "timeseries",
                "Runtime time of one batch.",
            ),
            (
                "Rejections by reason",
                "reqps",
                [(f"sum by (reason) (rate(oodgate_rejections_total{{{MSEL}}}[{RATE}]))", "{{reason}}")],
                "timeseries",
                "queue_full / draining / deadline are capacity; the rest are bad requests.",
            ),
        ],
    ),
    (
        "Out-of-distribution",
        [
            (
                "OOD rate by model",
                "percentunit",
                [
                    (
                        f"sum by (model) (rate(oodgate_ood_images_total{{{MSEL}}}[{RATE}]))"
                        f" / sum by (model) (rate(oodgate_images_total{{{MSEL}}}[{RATE}]))",
                        "{{model}}",
                    )
                ],
                "timeseries",
                "Share of images flagged, at each request's alpha. In-distribution traffic stays near alpha.",
            ),
            (
                "p-value distribution",
                "short",
                [(f"sum by (le) (increase(oodgate_p_value_bucket{{{MSEL}}}[{RATE}]))", "{{le}}")],
                "heatmap",
                "Conformal p-values: uniform on in-distribution traffic, piled up near 0 when it shifts.",
            ),
            (
                "Drift: typicality p-value of the window mean bpd",
                "short",
                [(f"oodgate_drift_typicality_p_value{{{MSEL}}}", "{{model}}/{{version}} {{instance}}")],
                "timeseries",
                "Nalisnick et al. 2019: window mean bpd vs the calibration set's resampled window means. "
                "Below 0.01 the alert fires.",
            ),
            (
                "Drift: anytime-valid test martingale (log10 wealth) and alarm",
                "short",
                [
                    (f"oodgate_drift_martingale{{{MSEL}}}", "log10 wealth {{model}}/{{version}} {{instance}}"),
                    (f"oodgate_drift_alarm{{{MSEL}}}", "alarm {{model}}/{{version}} {{instance}}"),
                ],
                "timeseries",
                "Conformal test martingale over every scored image (service/guarantees.py). The alarm latches at "
                "log10 wealth >= log10(1/OODGATE_DRIFT_DELTA), 2 by default; on in-distribution traffic that "
                "happens with probability at most delta, ever. POST /admin/drift/reset clears it.",
            ),
            (
                "Drift: window OOD rate vs alpha",
                "percentunit",
                [
                    (f"oodgate_drift_ood_rate{{{MSEL}}}", "OOD rate {{model}} {{instance}}"),
                    (f"oodgate_drift_alpha{{{MSEL}}}", "alpha {{model}}"),
                ],
                "timeseries",
                "Over the last window of images, at the model's default alpha.",
            ),
            (
                "Drift: window mean p-value",
                "short",
                [(f"oodgate_drift_mean_p_value{{{MSEL}}}", "{{model}} {{instance}}")],
                "timeseries",
                "About 0.5 for in-distribution traffic.",
            ),
            (
                "Drift: window mean bpd vs calibration",
                "short",
                [
                    (f"oodgate_drift_mean_bpd{{{MSEL}}}", "window {{model}} {{instance}}"),
                    (f"oodgate_drift_calibration_mean_bpd{{{MSEL}}}", "calibration {{model}}"),
                ],
                "timeseries",
                "Bits per dimension; a shift in either direction is atypical (MNIST sits below FashionMNIST).",
            ),
        ],
    ),
    (
        "Sidecar",
        [
            (
                "Sidecar requests by outcome",
                "reqps",
                [
                    (
                        f"sum by (policy, outcome) (rate(oodgate_sidecar_requests_total{{{SEL}}}[{RATE}]))",
                        "{{policy}} {{outcome}}",
                    )
                ],
                "timeseries",
                "forwarded, blocked (OOD), unscored (no image), upstream_unreachable (502), upstream_timeout (504).",
            ),
            (
                "Upstream latency (p50 / p95 / p99)",
                "s",
                quantiles("oodgate_sidecar_upstream_duration_seconds", "job", SEL),
                "timeseries",
                "Time the classifier took, as the sidecar saw it.",
            ),
        ],
    ),
    (
        "Models",
        [
            (
                "Model ready",
                "short",
                [(f"oodgate_model_ready{{{MSEL}}}", "{{model}}/{{version}} {{instance}}")],
                "stat",
                "1 once loaded and warm; 0 while draining.",
            ),
            (
                "Loaded models",
                "short",
                [(f"oodgate_model_info{{{MSEL}}}", "{{model}}/{{version}} {{backend}} {{device}} {{instance}}")],
                "table",
                "Runtime and device per replica.",
            ),
        ],
    ),
]


def panel(pid: int, title: str, unit: str, targets: list, kind: str, description: str, x: int, y: int) -> dict:
    body = {
        "id": pid,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": expr,
                "legendFormat": legend,
                **({"format": "heatmap"} if kind == "heatmap" else {}),
                **({"instant": True, "format": "table"} if kind == "table" else {}),
            }
            for i, (expr, legend) in enumerate(targets)
        ],
        "options": {},
    }
    if kind == "heatmap":
        body["options"] = {"calculate": False, "yAxis": {"unit": "short"}, "color": {"scheme": "Oranges"}}
    return body


def variable(name: str, query: str, label: str) -> dict:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": name},
        "definition": query,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "refresh": 2,
        "sort": 1,
    }


def build() -> dict:
    panels, pid, y = [], 1, 0
    for row_title, row_panels in ROWS:
        grid = {"h": 1, "w": 24, "x": 0, "y": y}
        panels.append({"id": pid, "type": "row", "title": row_title, "collapsed": False, "gridPos": grid})
        pid, y = pid + 1, y + 1
        for i, spec in enumerate(row_panels):
            panels.append(panel(pid, *spec, x=12 * (i % 2), y=y + 8 * (i // 2)))
            pid += 1
        y += 8 * ((len(row_panels) + 1) // 2)
    return {
        "uid": "oodgate",
        "title": "oodgate",
        "description": "Scoring service, OOD flags, drift and sidecar traffic.",
        "tags": ["oodgate"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                variable("job", "label_values(oodgate_model_info, job)", "job"),
                variable("model", 'label_values(oodgate_model_info{job=~"$job"}, model)', "model"),
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
