"""The Grafana dashboard: generated from deploy/grafana/dashboard.py, and every metric its
queries name exists in the ``/metrics`` of a real oodgate (sidecar mode, after real traffic)."""

from __future__ import annotations

import importlib.util
import json
import re

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.settings import Settings
from tests.deploy.conftest import ROOT
from tests.sidecar.servers import LiveServer, free_port, images

GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "oodgate.json"
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "le", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords or label names."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # grouping labels
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        word = match.group(0)
        following = text[match.end() :].lstrip()
        if following.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        if match.start() > 0 and (text[match.start() - 1].isdigit() or text[match.start() - 1] == "."):
            continue  # 1e-3 and the like
        names.add(word)
    return names


def test_metric_name_extraction():
    expr = 'histogram_quantile(0.95, sum by (le, model) (rate(a_bucket{job=~"$job", x="y z"}[5m]))) / on(x) b > 3'
    assert metric_names(expr) == {"a_bucket", "b"}
    # label_values(metric, label): the label comes out too; callers drop the dashboard's label names
    assert metric_names("label_values(oodgate_model_info, job)") == {"oodgate_model_info", "job"}


def load_generator():
    spec = importlib.util.spec_from_file_location("oodgate_dashboard", GRAFANA / "dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panel_queries(dashboard: dict) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dashboard["panels"] if p["type"] != "row" for t in p["targets"]]


def test_committed_json_is_what_the_generator_writes():
    assert DASHBOARD.read_text() == load_generator().render(), "run: python deploy/grafana/dashboard.py"


def test_panels_cover_the_issue_and_use_the_provisioned_datasource(dashboard):
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert all(p["datasource"]["uid"] == uid for p in panels)
    assert all(t["datasource"]["uid"] == uid for p in panels for t in p["targets"])
    titles = " | ".join(p["title"] for p in panels).lower()
    for topic in ("request rate", "latency", "images scored", "batch size", "queue depth", "queue wait",
                  "rejections", "ood rate", "p-value distribution", "drift", "errors by status code"):  # fmt: skip
        assert topic in titles, topic
    latency = next(p for p in panels if p["title"].startswith("Latency by endpoint"))
    assert [t["expr"].split(",")[0] for t in latency["targets"]] == [
        "histogram_quantile(0.5",
        "histogram_quantile(0.95",
        "histogram_quantile(0.99",
    ]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


@pytest.fixture(scope="module")
def exposed_names(tiny_models_root) -> set[str]:
    """Sample names a real oodgate exposes, in sidecar mode, after scoring real images."""
    settings = Settings(
        models_root=tiny_models_root,
        runtime="onnx",
        log_level="warning",
        max_batch_size=4,
        upstream=f"http://127.0.0.1:{free_port()}",  # never reached in this test
    )
    server = LiveServer(create_app(settings)).start()
    try:
        files = [("files", (n, b, "image/png")) for n, b in images("fashion_")[:3]]
        assert httpx.post(f"{server.url}/score", files=files, timeout=60).status_code == 200
        text = httpx.get(f"{server.url}/metrics").text
    finally:
        server.stop()
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "summary": ["_sum", "_count"]}
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(s.name for s in family.samples)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, [""]))
    return names


def test_every_metric_in_every_query_exists(dashboard, exposed_names):
    queries = panel_queries(dashboard)
    queries += [(v["name"], v["definition"]) for v in dashboard["templating"]["list"]]
    checked = set()
    for title, expr in queries:
        for name in metric_names(expr) - {"job", "model"}:
            assert name in exposed_names, f"panel {title!r}: {name} is not in /metrics"
            checked.add(name)
    assert len(checked) >= 15


def test_every_metric_in_the_alert_rules_exists(exposed_names):
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            missing = metric_names(rule["expr"]) - exposed_names
            assert not missing, f"{rule['alert']}: {missing}"
