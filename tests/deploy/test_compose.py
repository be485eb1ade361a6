"""docker-compose.yml, checked without Docker: it parses, what it mounts exists, and the
Prometheus scrape targets name services and ports that compose really runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import PROMETHEUS_DIR, ROOT

COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def environment(service: dict) -> dict:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def listening_ports(compose: dict) -> dict[str, set[int]]:
    """Host name -> ports some container listens on in that network namespace."""
    ports: dict[str, set[int]] = {name: set() for name in compose["services"]}
    for name, service in compose["services"].items():
        owner = name
        mode = service.get("network_mode", "")
        if mode.startswith("service:"):
            owner = mode.split(":", 1)[1]
        env = environment(service)
        if "OODGATE_PORT" in env:
            ports[owner].add(int(env["OODGATE_PORT"]))
        command = service.get("command") or []
        if "--port" in command:
            ports[owner].add(int(command[command.index("--port") + 1]))
    ports["prometheus"].add(9090)
    ports["grafana"].add(3000)
    return ports


def test_services(compose):
    services = compose["services"]
    assert {"oodgate", "classifier", "classifier-sidecar", "prometheus", "grafana"} <= set(services)
    sidecar = environment(services["classifier-sidecar"])
    assert sidecar["OODGATE_SIDECAR_POLICY"] == "block"
    # the image holds every bundle of models/: the sidecar names its classifier's, or it would not start
    assert (ROOT / "models" / sidecar["OODGATE_SIDECAR_MODEL"]).is_dir()
    # The sidecar shares the classifier's namespace, so its upstream is loopback on the classifier's port.
    assert services["classifier-sidecar"]["network_mode"] == "service:classifier"
    command = services["classifier"]["command"]
    assert sidecar["OODGATE_UPSTREAM"] == f"http://127.0.0.1:{command[command.index('--port') + 1]}"
    assert command[command.index("--host") + 1] == "127.0.0.1", "the classifier must be reachable only via oodgate"
    assert (ROOT / command[1]).is_file()
    for name in ("oodgate", "classifier", "classifier-sidecar"):
        assert services[name]["build"]["context"] == "."
        assert services[name]["image"] == "oodgate:cpu"


def test_every_mounted_file_exists(compose):
    mounts = 0
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repo"
                mounts += 1
    assert mounts >= 4


def test_published_ports_are_listened_on(compose):
    ports = listening_ports(compose)
    for name, service in compose["services"].items():
        for mapping in service.get("ports", []):
            container_port = int(str(mapping).rsplit(":", 1)[1])
            assert container_port in ports[name], f"{name} publishes {container_port} but nothing listens there"


def test_prometheus_scrapes_what_compose_runs(compose):
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    ports = listening_ports(compose)
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["oodgate:8000", "classifier:8080"]
    for target in targets:
        host, port = target.rsplit(":", 1)
        assert host in compose["services"], f"{target}: no compose service {host}"
        assert int(port) in ports[host], f"{target}: nothing listens on {port} in {host}"
    # Both are oodgate processes (the classifier's namespace holds its sidecar on 8080).
    sidecar_port = int(environment(compose["services"]["classifier-sidecar"])["OODGATE_PORT"])
    assert f"classifier:{sidecar_port}" in targets
    prometheus = compose["services"]["prometheus"]
    mounted = {v.split(":")[1] for v in prometheus["volumes"]}
    assert set(config["rule_files"]) <= mounted


def test_grafana_provisioning(compose):
    grafana = compose["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    provisioning = ROOT / next(src for src, dst in mounts.items() if dst == "/etc/grafana/provisioning")
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    assert datasource["uid"] == "prometheus"
    provider = yaml.safe_load((provisioning / "dashboards" / "oodgate.yml").read_text())["providers"][0]
    dashboards_dir = next(src for src, dst in mounts.items() if dst == provider["options"]["path"])
    assert sorted(p.name for p in (ROOT / dashboards_dir).glob("*.json")) == ["oodgate.json"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).parent.as_posix() == provider["options"]["path"]


def test_every_oodgate_service_gets_its_shutdown_budget_before_sigkill(compose):
    from service.cli import shutdown_budget_s
    from service.settings import Settings

    servers = {name: s for name, s in compose["services"].items() if "OODGATE_PORT" in environment(s)}
    assert servers
    for name, service in servers.items():
        settings = Settings(**{k[len("OODGATE_") :].lower(): v for k, v in environment(service).items()})
        grace = service["stop_grace_period"]
        assert grace.endswith("s") and float(grace[:-1]) >= shutdown_budget_s(settings), name


def test_api_tokens_reach_every_oodgate_as_a_secret_file(compose):
    """Both oodgate processes read bearer tokens from a compose secret (from the environment, not the repo)."""
    secret = compose["secrets"]["oodgate_api_tokens"]
    assert set(secret) == {"environment"}  # no file with a token in the repository
    for name in ("oodgate", "classifier-sidecar"):
        service = compose["services"][name]
        assert service["secrets"] == ["oodgate_api_tokens"]
        assert environment(service)["OODGATE_API_TOKENS_FILE"] == "/run/secrets/oodgate_api_tokens"
