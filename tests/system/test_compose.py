"""docker-compose.yml: parsed (no Docker engine here) and checked against the real CLI."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from dispatcher.cli import main

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _our_services() -> dict[str, dict[str, Any]]:
    return {
        name: spec
        for name, spec in _compose()["services"].items()
        if spec.get("image") == "sms-dispatcher" or "build" in spec
    }


def test_the_production_layout_has_its_services() -> None:
    services = _compose()["services"]
    assert {"postgres", "redis", "migrate", "worker", "gateway-sim"} <= set(services)
    assert services["gateway-sim"].get("profiles") == ["dev"]
    assert "profiles" not in services["worker"], "workers run in the default profile"
    assert services["migrate"]["restart"] == "no", "migrate is a one-shot job"
    worker_deps = services["worker"]["depends_on"]
    assert worker_deps["migrate"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("name", sorted(_our_services()))
def test_each_command_is_a_real_dispatcher_command(name: str) -> None:
    command = _our_services()[name]["command"]
    assert isinstance(command, list), f"{name}: command must be an exec list"
    assert command, f"{name}: command is empty"
    # The image's entrypoint is `dispatcher`; asking the real CLI for help on exactly
    # this command line proves every subcommand and option in it exists.
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, f"{name}: `dispatcher {' '.join(command)}` -> {result.output}"


def test_services_share_the_production_settings() -> None:
    env = _compose()["x-dispatcher-env"]
    assert env["DISPATCHER_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["DISPATCHER_BROKER_URL"].startswith("redis://")
    for name in ("migrate", "worker"):
        assert _our_services()[name]["environment"] == env
    # Credentials come from the operator's environment, never from the file.
    assert "${DISPATCHER_GATEWAY_PASSWORD:?" in COMPOSE.read_text()


def test_monitoring_runs_under_the_ops_profile() -> None:
    services = _compose()["services"]
    root = COMPOSE.parent
    for name in ("prometheus", "grafana"):
        spec = services[name]
        assert spec.get("profiles") == ["ops"], f"{name} runs only under the ops profile"
        for volume in spec["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (root / source).exists(), f"{name} mounts missing {source}"
    mounts = " ".join(services["prometheus"]["volumes"])
    assert "ops/prometheus/alerts.yml" in mounts
    assert "ops/grafana/dashboards" in " ".join(services["grafana"]["volumes"])
    # The Grafana admin password comes from the operator's environment, and Grafana
    # refuses to start without one (not compose, which would stop every profile).
    grafana = services["grafana"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-}"
    assert '[ -n "$$GF_SECURITY_ADMIN_PASSWORD" ]' in grafana["entrypoint"][-1]


def _published(spec: dict[str, Any]) -> list[str]:
    return [str(port) for port in spec.get("ports", [])]


def test_no_port_is_published_on_a_public_interface() -> None:
    # /metrics, Prometheus (no login) and the simulator must not face the network; the
    # API and dashboard go behind a TLS proxy on the host.
    for name, spec in _compose()["services"].items():
        for port in _published(spec):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_prometheus_scrapes_metrics_with_the_token() -> None:
    services = _compose()["services"]
    assert "DISPATCHER_METRICS_TOKEN" in _compose()["x-dispatcher-env"]
    assert services["api"]["environment"]["DISPATCHER_METRICS_TOKEN"].startswith(
        "${DISPATCHER_METRICS_TOKEN"
    )
    prometheus = services["prometheus"]
    assert "DISPATCHER_METRICS_TOKEN" in prometheus["environment"]
    config = yaml.safe_load((COMPOSE.parent / "ops/prometheus/prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["api:8080"]
    authorization = job["authorization"]
    assert authorization["type"] == "Bearer"
    # The entrypoint writes the token to the very file the scrape job reads.
    script = " ".join(prometheus["entrypoint"])
    assert f'"$$DISPATCHER_METRICS_TOKEN" > {authorization["credentials_file"]}' in script
    assert 'exec /bin/prometheus "$$@"' in script
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_the_backup_is_not_forced_beside_an_overridden_primary() -> None:
    # Passing the vendor's backup explicitly would make it the backup of a simulator
    # or staging primary too; unset, the settings pick it only beside the vendor's own.
    for name, spec in _our_services().items():
        assert "DISPATCHER_GATEWAY_BACKUP_URL" not in spec.get("environment", {}), name


def test_the_default_profile_needs_only_the_gateway_credentials() -> None:
    # Compose reads every ${...:?} of the file whatever the profile: only what the
    # default services need may be required.
    required = set(re.findall(r"\$\{([A-Z_]+):\?", COMPOSE.read_text()))
    assert required == {"DISPATCHER_GATEWAY_USERNAME", "DISPATCHER_GATEWAY_PASSWORD"}
    grafana = _compose()["services"]["grafana"]
    assert "GRAFANA_ADMIN_PASSWORD" in " ".join(grafana["entrypoint"])  # refused there


def test_every_dispatcher_service_reads_an_optional_settings_file() -> None:
    for name, spec in _our_services().items():
        if name == "gateway-sim":
            continue
        assert spec["env_file"] == [{"path": "./dispatcher.env", "required": False}], name


def test_the_api_and_the_workers_have_health_checks_that_are_real() -> None:
    services = _compose()["services"]
    worker_check = services["worker"]["healthcheck"]["test"]
    assert worker_check[:2] == ["CMD", "dispatcher"]
    runner = CliRunner()
    assert runner.invoke(main, [*worker_check[2:], "--help"]).exit_code == 0
    api_check = services["api"]["healthcheck"]["test"]
    assert "/healthz" in api_check[-1]
    compile(api_check[-1], "healthcheck", "exec")  # the python -c line parses


def test_alertmanager_receives_the_alerts_and_runbooks_come_from_one_base() -> None:
    services = _compose()["services"]
    assert services["alertmanager"]["profiles"] == ["ops"]
    assert "alertmanager" in services["prometheus"]["depends_on"]
    prometheus = yaml.safe_load((COMPOSE.parent / "ops/prometheus/prometheus.yml").read_text())
    [target] = prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert target == "alertmanager:9093"
    assert prometheus["global"]["external_labels"]["runbook_base"] == "${RUNBOOK_BASE}"
    assert "--enable-feature=expand-external-labels" in services["prometheus"]["command"]
    assert services["prometheus"]["environment"]["RUNBOOK_BASE"].startswith("${RUNBOOK_BASE:-")
    alertmanager = yaml.safe_load(
        (COMPOSE.parent / "ops/alertmanager/alertmanager.yml").read_text()
    )
    assert alertmanager["route"]["receiver"] in {r["name"] for r in alertmanager["receivers"]}
