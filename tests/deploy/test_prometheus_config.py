"""Alert rules and the Prometheus config, checked by Prometheus's own promtool."""

from __future__ import annotations

import subprocess

import yaml

from tests.deploy.conftest import PROMETHEUS_DIR

ALERTS = PROMETHEUS_DIR / "alerts.yml"


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=cwd)


def test_promtool_check_rules(promtool):
    result = run(promtool, "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


def test_alerts_fire_on_the_series_that_should_trigger_them(promtool):
    """promtool's unit tests: each alert fires for the bad model/instance and not for the healthy one."""
    result = run(promtool, "test", "rules", "alerts_test.yml", cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_issue_alerts_are_all_there():
    rules = {r["alert"]: r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    assert "3 * oodgate_drift_alpha" in rules["OodgateOODRateHigh"]["expr"]
    assert rules["OodgateOODRateHigh"]["for"] == "10m"
    assert "oodgate_drift_typicality_p_value < 0.01" in rules["OodgateDriftDetected"]["expr"]
    assert 'code=~"5.."' in rules["OodgateHigh5xxRate"]["expr"]
    assert "oodgate_queue_capacity_images" in rules["OodgateQueueNearFull"]["expr"]
    assert rules["OodgateDriftAlarm"]["expr"].strip() == "oodgate_drift_alarm == 1"
    for rule in rules.values():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


def test_promtool_check_config(promtool, tmp_path):
    """The compose config, with its rule file path pointed at the repo copy (it is mounted in the container)."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    config["rule_files"] = [str(ALERTS)]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = run(promtool, "check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
