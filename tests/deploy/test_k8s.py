"""k8s/, validated offline: core kinds against the Kubernetes OpenAPI schemas (kubernetes-validate,
strict), the Prometheus Operator CRDs by a structural check, and the cross-references between them."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.cli import shutdown_budget_s
from service.metrics import Metrics
from service.settings import Settings
from tests.deploy.conftest import K8S, PROMETHEUS_DIR, ROOT, load_yaml_docs

kubernetes_validate = pytest.importorskip("kubernetes_validate")

CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}


@pytest.fixture(scope="module")
def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


@pytest.fixture(scope="module")
def objects(kustomization) -> list[dict]:
    return [doc for name in kustomization["resources"] for doc in load_yaml_docs(K8S / name)]


def find(objects, kind, name):
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def settings(objects) -> dict:
    return find(objects, "ConfigMap", "oodgate-settings")["data"]


def test_kustomization_lists_every_manifest(kustomization):
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    assert kustomization["kind"] == "Kustomization"


def test_core_objects_validate_strictly(objects):
    version = kubernetes_validate.latest_version()
    checked = 0
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            continue
        kubernetes_validate.validate(obj, version, strict=True)  # raises ValidationError
        checked += 1
    assert checked == 8  # Namespace, ConfigMap, Secret, 2 Deployments, 2 Services, HPA


def test_service_monitor_structure(objects):
    monitor = find(objects, "ServiceMonitor", "oodgate")
    selector = monitor["spec"]["selector"]["matchLabels"]
    selected = [o for o in objects if o["kind"] == "Service" and selector.items() <= o["metadata"]["labels"].items()]
    assert {s["metadata"]["name"] for s in selected} == {"oodgate", "fashion-classifier"}
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
        assert endpoint["path"] == "/metrics"
        for service in selected:
            assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_prometheus_rule_is_the_alerts_file(objects, promtool, tmp_path):
    rule = find(objects, "PrometheusRule", "oodgate")
    assert set(rule["spec"]) == {"groups"}
    assert rule["spec"] == yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def oodgate_container(deployment):
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "oodgate")


def test_deployment_gpu_probes_and_shutdown_budget(objects):
    deployment = find(objects, "Deployment", "oodgate")
    pod = deployment["spec"]["template"]["spec"]
    container = oodgate_container(deployment)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["envFrom"][0]["configMapRef"]["name"] == "oodgate-settings"
    env = settings(objects)
    port = int(env["OODGATE_PORT"])
    assert container["ports"][0]["containerPort"] == port
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    # the longest SIGTERM-to-exit the server allows itself (drain + uvicorn's grace), as service/cli.py computes it
    budget = shutdown_budget_s(Settings(**{k[len("OODGATE_") :].lower(): v for k, v in env.items()}))
    assert pod["terminationGracePeriodSeconds"] >= pause + budget + 5
    assert pod["securityContext"]["runAsNonRoot"] is True
    # one ONNX Runtime thread per core the Pod asks for, not per core of the node it lands on
    assert int(env["OODGATE_INTRA_OP_THREADS"]) == int(container["resources"]["requests"]["cpu"])


def test_service_and_hpa_point_at_the_deployment(objects):
    deployment = find(objects, "Deployment", "oodgate")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = find(objects, "Service", "oodgate")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == oodgate_container(deployment)["ports"][0]["name"]
    hpa = find(objects, "HorizontalPodAutoscaler", "oodgate")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "oodgate"}
    assert hpa["spec"]["minReplicas"] >= 2


def test_sidecar_example_is_one_pod_with_loopback_upstream(objects):
    deployment = find(objects, "Deployment", "fashion-classifier")
    containers = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}
    assert set(containers) == {"classifier", "oodgate"}
    command = containers["classifier"]["command"]
    assert command[command.index("--host") + 1] == "127.0.0.1"
    env = {e["name"]: e["value"] for e in containers["oodgate"]["env"]}
    assert env["OODGATE_UPSTREAM"] == f"http://127.0.0.1:{command[command.index('--port') + 1]}"
    assert env["OODGATE_SIDECAR_POLICY"] in {"block", "annotate", "shadow"}
    assert (ROOT / "models" / env["OODGATE_SIDECAR_MODEL"]).is_dir()  # several models in the image: name one
    assert containers["oodgate"]["ports"][0]["containerPort"] == int(env["OODGATE_PORT"])
    service = find(objects, "Service", "fashion-classifier")
    assert service["spec"]["ports"][0]["targetPort"] == containers["oodgate"]["ports"][0]["name"]
    assert containers["oodgate"]["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


@pytest.mark.parametrize("name", ["oodgate", "fashion-classifier"])
def test_api_tokens_come_from_the_secret_as_a_file(objects, name, tmp_path):
    """Every oodgate container reads its bearer tokens from the mounted Secret, which ships with none (401s)."""
    from service.api.auth import read_tokens_file

    secret = find(objects, "Secret", "oodgate-api-tokens")
    pod = find(objects, "Deployment", name)["spec"]["template"]["spec"]
    container = oodgate_container(find(objects, "Deployment", name))
    path = next(e["value"] for e in container["env"] if e["name"] == "OODGATE_API_TOKENS_FILE")
    mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    key = path[len(mount["mountPath"]) + 1 :]
    (tmp_path / "tokens").write_text(secret["stringData"][key])
    assert read_tokens_file(tmp_path / "tokens") == []  # no default token anyone could know
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"].startswith("/v2/health/")  # open without a token


ADAPTER = K8S / "prometheus-adapter"


@pytest.fixture(scope="module")
def adapter_rules() -> list[dict]:
    kustomization = yaml.safe_load((ADAPTER / "kustomization.yaml").read_text())
    (config_map,) = [doc for name in kustomization["resources"] for doc in load_yaml_docs(ADAPTER / name)]
    kubernetes_validate.validate(config_map, kubernetes_validate.latest_version(), strict=True)
    return yaml.safe_load(config_map["data"]["config.yaml"])["rules"]


def test_hpa_scales_on_queue_depth_that_the_adapter_serves(objects, adapter_rules):
    """The HPA's Pods metric is a name the adapter's rule produces, from a series the service exports,
    per Pod, with a target that leaves every Pod far from the bound where it starts refusing."""
    hpa = find(objects, "HorizontalPodAutoscaler", "oodgate")
    (pods,) = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    (rule,) = [r for r in adapter_rules if r["name"]["as"] == pods["metric"]["name"]]
    series = rule["seriesQuery"].split("{", 1)[0]
    assert re.fullmatch(rule["name"]["matches"], series)
    metrics = Metrics(process=False)
    metrics.queue_images.labels("m", "1").set(0)
    exported = {f.name for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())}
    assert series in exported
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    target = float(pods["target"]["averageValue"])
    assert (
        pods["target"]["type"] == "AverageValue"
        and 0 < target <= int(settings(objects)["OODGATE_MAX_QUEUE_IMAGES"]) / 4
    )


def test_adapter_query_is_valid_promql(adapter_rules, promtool, tmp_path):
    """The rule's metricsQuery, with the adapter's templates filled in as it fills them, passes promtool."""
    rules = []
    for i, rule in enumerate(adapter_rules):
        query = (
            rule["metricsQuery"]
            .replace("<<.Series>>", rule["seriesQuery"].split("{", 1)[0])
            .replace("<<.LabelMatchers>>", 'namespace="oodgate",pod=~"oodgate-a|oodgate-b"')
            .replace("<<.GroupBy>>", "pod")
        )
        rules.append({"record": f"adapter:rule{i}", "expr": query})
    path = tmp_path / "adapter.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "adapter", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
