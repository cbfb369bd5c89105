"""The Prometheus alert rules (deploy/prometheus/lagmon-alerts.yml) pass `promtool check rules` and
their unit tests (`promtool test rules lagmon-alerts.test.yml`), and every alert has a test in which
it fires and one in which it must not.

promtool comes from Debian's `prometheus` package, unpacked into .tools/ by
scripts/ensure-promtool.sh (`make test` and `make lint` run it). In CI (CI=true) a missing
promtool fails; elsewhere the test installs it with that script, or skips saying why."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from lagmon.rules import Status

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "lagmon-alerts.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "lagmon-alerts.test.yml"
ENSURE_PROMTOOL = REPO / "scripts" / "ensure-promtool.sh"
PROMTOOL = REPO / ".tools" / "bin" / "promtool"


def find_promtool() -> str | None:
    if PROMTOOL.exists():
        return str(PROMTOOL)
    return shutil.which("promtool")


@pytest.fixture(scope="module")
def promtool() -> str:
    found = find_promtool()
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail(f"promtool missing in CI: `make test` runs {ENSURE_PROMTOOL.name} first")
    result = subprocess.run(
        [str(ENSURE_PROMTOOL)], capture_output=True, text=True, timeout=600, check=False
    )
    found = find_promtool()
    if result.returncode != 0 or found is None:
        pytest.skip(f"promtool unavailable ({ENSURE_PROMTOOL.name}: {result.stderr.strip()})")
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False, cwd=REPO)


def test_promtool_checks_the_rules(promtool: str) -> None:
    result = run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    result = run(promtool, "test", "rules", str(RULE_TESTS))
    print(result.stdout)  # the output is part of the report (pytest -s)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def test_every_alert_has_a_firing_test_and_a_not_firing_test() -> None:
    alerts = {rule["alert"] for group in load(RULES)["groups"] for rule in group["rules"]}
    fires: defaultdict[str, int] = defaultdict(int)
    silent: defaultdict[str, int] = defaultdict(int)
    for case in load(RULE_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            if check.get("exp_alerts"):
                fires[check["alertname"]] += 1
            else:
                silent[check["alertname"]] += 1
    assert alerts >= {
        "ConsumerGroupStopped", "ConsumerGroupStalled", "ConsumerGroupNotFound",
        "ConsumerGroupRewound", "LagMonitorNotSampling", "OutboxBacklogOld", "NoRelayLeader",
    }  # fmt: skip
    assert not alerts - fires.keys(), f"alerts never shown firing: {alerts - fires.keys()}"
    assert not alerts - silent.keys(), f"alerts never shown silent: {alerts - silent.keys()}"
    assert not (fires.keys() | silent.keys()) - alerts, "tests of alerts that do not exist"


STATUS_ALERTS = {
    "ConsumerGroupRewound": Status.REWIND,
    "ConsumerGroupStalled": Status.STALL,
    "ConsumerGroupStopped": Status.STOP,
    "ConsumerGroupNotFound": Status.NOTFOUND,
    "ConsumerGroupLagError": Status.ERR,
}


def test_status_codes_in_the_rules_are_lagmons() -> None:
    # The rules compare lagmon_group_status with numbers: they must be lagmon's severities.
    legend = ", ".join(f"{status.severity} {status.value}" for status in Status)
    for path in (RULES, RULE_TESTS):
        assert f"#   {legend}\n" in path.read_text(), path
    exprs = {rule["alert"]: rule["expr"] for g in load(RULES)["groups"] for rule in g["rules"]}
    for alert, status in STATUS_ALERTS.items():
        assert f"(lagmon_group_status) == {status.severity}" in exprs[alert], alert
