"""The shipped Prometheus rules (deploy/prometheus/rules.yml): valid, each alert
unit-tested by `promtool test rules` (tests/deploy/rules_test.yml), and every metric and
label they read served by a real `/metrics` scrape of the app."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML (dev dependency), no stubs installed
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import session_scope
from app.health.service import record_heartbeat, record_sweep
from app.main import create_app
from app.models import Role
from tests.acks.conftest import Api, ack_settings_from, delivery_of, sign

ROOT = Path(__file__).parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
RULES_TEST = Path(__file__).parent / "rules_test.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (`make deploy-tools` installs Debian's)"
)
# A metric name in PromQL, optionally followed by its label matchers.
SELECTOR = re.compile(r"\b([a-zA-Z_][a-zA-Z0-9_]*)\s*(\{[^}]*\})?")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
# Prometheus's own series (not served by the app).
PROMETHEUS_OWN = {"up"}


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False
    )


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def selectors(expression: str) -> list[tuple[str, dict[str, tuple[str, str]]]]:
    """(metric, {label: (operator, value)}) for every rrmm_* or Prometheus series read."""
    found = []
    for name, matchers in SELECTOR.findall(expression):
        if name.startswith("rrmm_") or name in PROMETHEUS_OWN:
            labels = {k: (op, v) for k, op, v in MATCHER.findall(matchers or "")}
            found.append((name, labels))
    return found


@needs_promtool
def test_the_rules_are_valid_and_every_alert_is_unit_tested(tmp_path: Path) -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(RULES_TEST))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout

    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert alerts >= {
        "RRMMDeliveriesStuck",
        "RRMMNoWorkerHeartbeat",
        "RRMMSweeperNotRunning",
        "RRMMFanoutFailureRatioHigh",
        "RRMMAnswersNotArriving",
        "RRMMApi5xx",
    }
    cases = yaml.safe_load(RULES_TEST.read_text())["tests"]
    tested_alerts = {
        check["alertname"] for case in cases for check in case.get("alert_rule_test", [])
    }
    firing = {
        check["alertname"]
        for case in cases
        for check in case.get("alert_rule_test", [])
        if check.get("exp_alerts")
    }
    silent = {
        check["alertname"]
        for case in cases
        for check in case.get("alert_rule_test", [])
        if not check.get("exp_alerts")
    }
    assert tested_alerts == alerts
    assert firing == alerts, f"never shown firing: {alerts - firing}"
    assert silent == alerts, f"never shown silent: {alerts - silent}"

    # The example scrape configuration loads these rules (its token file made up here).
    (tmp_path / "rules.yml").write_text(RULES.read_text())
    (tmp_path / "token").write_text("a-token\n")
    config = PROMETHEUS_CONFIG.read_text()
    assert config.count("/etc/prometheus/rrmm_metrics_token") == 1
    (tmp_path / "prometheus.yml").write_text(
        config.replace("/etc/prometheus/rrmm_metrics_token", str(tmp_path / "token"))
    )
    configured = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert configured.returncode == 0, configured.stdout + configured.stderr


@pytest.mark.usefixtures("engine")
def test_every_metric_the_rules_read_is_served(
    settings: Settings,
    auth: Callable[[Role], dict[str, str]],
    session_factory: sessionmaker[Session],
) -> None:
    """A real scrape, after what a running site has: a request, an incident and its
    deliveries, an answer, a heartbeat and a sweep (recorded by the same service functions
    that beat's tasks call)."""
    with TestClient(create_app(ack_settings_from(settings))) as client:
        api = Api(client, auth(Role.OPERATOR))
        person = api.member()
        incident = api.declare([person])
        token = sign(settings, delivery_of(session_factory, incident, person).id)
        assert client.post("/v1/acks", json={"token": token, "response": "acknowledged"}).is_success
        with session_scope(session_factory) as session:
            record_heartbeat(session, "celery@test")
            record_sweep(session)
        scrape = client.get("/metrics")
        assert scrape.status_code == 200
    served: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(scrape.text):
        for sample in family.samples:
            served.setdefault(sample.name, set()).update(sample.labels)

    used = [
        (name, labels)
        for rule in rules()
        for name, labels in selectors(rule["expr"])
        if name not in PROMETHEUS_OWN
    ]
    assert {name for name, _ in used} >= {
        "rrmm_delivery_oldest_due_age_seconds",
        "rrmm_workers_up",
        "rrmm_sweeper_last_run_age_seconds",
        "rrmm_deliveries",
        "rrmm_current_answers",
        "rrmm_incidents",
        "rrmm_http_request_duration_seconds_count",
        "rrmm_metrics_database_up",
    }
    for name, labels in used:
        assert name in served, f"rules.yml reads {name}, which /metrics does not serve"
        missing = set(labels) - served[name]
        assert not missing, f"rules.yml reads {name} by {missing}, labels it does not have"
