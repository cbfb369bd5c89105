"""The charts of consumer services made by `make new-consumer`: the template's chart rendered for
the example name, and the chart of every generated service in services/ (any chart besides the
platform's four of k8s_check.CHARTS, which test_charts.py covers in depth). helm lint --strict and
every rendered object valid, with the default and the production values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service_kit.settings import ConsumerGroupSettings
from tests.deploy.k8s_check import (
    CHARTS,
    KUBERNETES_VERSION,
    REPO,
    VALUES_SETS,
    helm,
    load_documents,
    validate_object,
)
from tests.deploy.test_charts import PENDING_SETTINGS
from tests.new_consumer.support import EXAMPLE, render_example

pytestmark = [pytest.mark.k8s, pytest.mark.usefixtures("helm_binary")]

GENERATED = sorted(
    path.parent.name
    for path in (REPO / "services").glob("*/chart/Chart.yaml")
    if path.parent.parent.name not in CHARTS
)
# Settings every generated service has beyond the shared consumer-group ones.
OWN_SETTINGS = {"database_url", "host", "port", "migrate_on_start"}


@pytest.fixture(scope="module")
def chart_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    example = render_example(tmp_path_factory.mktemp("template") / EXAMPLE)
    charts = {f"template:{EXAMPLE}": example / "chart"}
    charts.update({name: REPO / "services" / name / "chart" for name in GENERATED})
    return charts


def helm_args(chart: Path, name: str, values: str) -> list[str]:
    files = [arg for file in VALUES_SETS[values] for arg in ("-f", str(chart / file))]
    return ["--namespace", f"blog-{name}", "--kube-version", KUBERNETES_VERSION, *files]


@pytest.mark.parametrize("values", sorted(VALUES_SETS))
@pytest.mark.parametrize("label", [f"template:{EXAMPLE}", *GENERATED])
def test_a_generated_chart_lints_and_renders_valid_objects(
    chart_dirs: dict[str, Path], crds: Path, label: str, values: str
) -> None:
    chart = chart_dirs[label]
    name = label.removeprefix("template:")
    args = helm_args(chart, name, values)
    assert "0 chart(s) failed" in helm("lint", "--strict", str(chart), *args)
    objects: list[dict[str, Any]] = load_documents(helm("template", name, str(chart), *args))
    checked = [validate_object(obj, f"{label} ({values})", crds) for obj in objects]
    assert [(c.kind, c.name, c.errors) for c in checked if not c.ok] == []
    kinds = {obj["kind"] for obj in objects}
    assert {"Deployment", "Service", "Job", "NetworkPolicy", "PodDisruptionBudget"} <= kinds

    prefix = f"{name.upper()}_"
    settings = set(ConsumerGroupSettings.model_fields) | OWN_SETTINGS | PENDING_SETTINGS
    for obj in objects:
        if obj["kind"] in ("Deployment", "Job"):
            for container in obj["spec"]["template"]["spec"]["containers"]:
                for item in container["env"]:
                    assert item["name"].startswith(prefix), item["name"]
                    assert item["name"].removeprefix(prefix).lower() in settings, item["name"]
