"""The monitoring component: a PrometheusRule the operator accepts, whose expressions
promtool parses and fires on the series a breakage leaves (and not on a healthy run),
a Grafana dashboard, and no metric named in either that the code does not export.

Tools: `kubectl kustomize`, jsonschema against prometheus-operator's own CRD schema
(tests/deploy/schemas/prometheus-operator), and `promtool` (Debian's `prometheus`).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Final

import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]
from prometheus_client import CollectorRegistry

from tests.deploy.conftest import Manifest, by_kind, one
from tests.deploy.test_kustomize import strict
from tests.deploy.tools import INSTALL_HINT, REPO, explain, require_tool, run
from webhook.metrics import WebhookMetrics
from worker.metrics import Metrics

SCHEMA: Final = (
    Path(__file__).resolve().parent
    / "schemas"
    / "prometheus-operator"
    / "monitoring.coreos.com_prometheusrules.yaml"
)
UNIT_TESTS: Final = Path(__file__).resolve().parent / "alerts_test.yaml"
# The overlays whose cluster runs prometheus-operator and Grafana's sidecar.
MONITORED: Final = ("prod",)
METRIC: Final = re.compile(r"\bpaystep_[a-z0-9_]+")
# What the exposition adds to a family's name (https://prometheus.io/docs/concepts/metric_types/).
SUFFIXES: Final = re.compile(r"_(total|bucket|count|sum|created)$")
# The reconcile job pushes its figures from a registry of its own, built where it runs.
PUSHED_FROM: Final = REPO / "webhook" / "reconcile.py"
RECONCILE: Final = "paystep_reconcile_"


def prometheus_rule(docs: list[Manifest]) -> Manifest:
    return one(docs, "PrometheusRule")


def dashboard(docs: list[Manifest]) -> dict[str, Any]:
    [config_map] = [
        doc
        for doc in by_kind(docs, "ConfigMap")
        if doc["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
    ]
    [text] = config_map["data"].values()
    found: dict[str, Any] = json.loads(text)
    return found


def rule_expressions(rule: Manifest) -> dict[str, str]:
    return {
        entry["alert"]: entry["expr"]
        for group in rule["spec"]["groups"]
        for entry in group["rules"]
    }


def panel_expressions(board: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in board["panels"] for target in panel["targets"]]


def served_metrics() -> set[str]:
    """Every family the webhook and the worker register (and serve on /metrics)."""
    names: set[str] = set()
    for registry in (WebhookMetrics.create().registry, Metrics().registry):
        assert isinstance(registry, CollectorRegistry)
        names.update(family.name for family in registry.collect())
    return names


def pushed_metrics() -> set[str]:
    """The names reconcile pushes, from a registry it builds where it runs."""
    return set(re.findall(r'"(paystep_[a-z0-9_]+)"', PUSHED_FROM.read_text("utf-8")))


def metrics_read(docs: list[Manifest]) -> set[str]:
    """Every family an alert or a panel names, without the exposition's suffixes."""
    expressions = [
        *rule_expressions(prometheus_rule(docs)).values(),
        *panel_expressions(dashboard(docs)),
    ]
    return {SUFFIXES.sub("", name) for expr in expressions for name in METRIC.findall(expr)}


@pytest.mark.parametrize("overlay", MONITORED)
def test_the_rule_matches_the_crd_schema(
    manifests: dict[str, list[Manifest]], overlay: str
) -> None:
    try:
        import jsonschema  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        pytest.fail(f"jsonschema is not installed: {INSTALL_HINT}", pytrace=False)
    crd = yaml.safe_load(SCHEMA.read_text("utf-8"))
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    rule = prometheus_rule(manifests[overlay])
    assert rule["apiVersion"] == f"{crd['spec']['group']}/v1"
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(rule), key=lambda e: e.path)
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_schema_validation_catches_a_misspelt_field(manifests: dict[str, list[Manifest]]) -> None:
    import jsonschema  # type: ignore[import-untyped,unused-ignore]

    crd = yaml.safe_load(SCHEMA.read_text("utf-8"))
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    rule = copy.deepcopy(prometheus_rule(manifests[MONITORED[0]]))
    rule["spec"]["groups"][0]["rules"][0]["expression"] = "up"
    assert list(jsonschema.Draft7Validator(schema).iter_errors(rule))


def test_only_the_overlays_with_monitoring_carry_it(manifests: dict[str, list[Manifest]]) -> None:
    for overlay, docs in manifests.items():
        has_rule = bool(by_kind(docs, "PrometheusRule"))
        assert has_rule is (overlay in MONITORED), overlay


@pytest.fixture(scope="module")
def rule_files(
    manifests: dict[str, list[Manifest]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The rule's groups as a Prometheus rule file, and the unit tests pointed at it.

    The descriptions are fixed prose for people: left out, so the unit tests pin the
    labels and the templated summary only.
    """
    folder = tmp_path_factory.mktemp("rules")
    spec = copy.deepcopy(prometheus_rule(manifests[MONITORED[0]])["spec"])
    for group in spec["groups"]:
        for entry in group["rules"]:
            entry.get("annotations", {}).pop("description", None)
    (folder / "rules.yaml").write_text(yaml.safe_dump(spec), "utf-8")
    tests = yaml.safe_load(UNIT_TESTS.read_text("utf-8"))
    tests["rule_files"] = [str(folder / "rules.yaml")]
    (folder / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False), "utf-8")
    return folder


def test_promtool_checks_the_rules(rule_files: Path) -> None:
    result = run([require_tool("promtool"), "check", "rules", str(rule_files / "rules.yaml")])
    assert result.returncode == 0, explain(result)


def test_each_alert_fires_on_its_breakage_and_not_on_a_healthy_run(rule_files: Path) -> None:
    result = run([require_tool("promtool"), "test", "rules", str(rule_files / "tests.yaml")])
    assert result.returncode == 0, explain(result)


def test_every_alert_has_a_firing_and_a_quiet_case(manifests: dict[str, list[Manifest]]) -> None:
    cases = [
        case
        for test in yaml.safe_load(UNIT_TESTS.read_text("utf-8"))["tests"]
        for case in test["alert_rule_test"]
    ]
    fires = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    alerts = set(rule_expressions(prometheus_rule(manifests[MONITORED[0]])))
    assert (fires, quiet) == (alerts, alerts)


def test_every_metric_an_alert_or_a_panel_reads_from_a_service_is_served(
    manifests: dict[str, list[Manifest]],
) -> None:
    read = {
        name for name in metrics_read(manifests[MONITORED[0]]) if not name.startswith(RECONCILE)
    }
    assert read - served_metrics() == set()


def test_every_metric_an_alert_or_a_panel_reads_from_reconcile_is_pushed(
    manifests: dict[str, list[Manifest]],
) -> None:
    read = {name for name in metrics_read(manifests[MONITORED[0]]) if name.startswith(RECONCILE)}
    assert read
    assert read - pushed_metrics() == set()


def test_the_dashboard_shows_every_metric_an_alert_reads(
    manifests: dict[str, list[Manifest]],
) -> None:
    docs = manifests[MONITORED[0]]
    alerted = {
        name
        for expr in rule_expressions(prometheus_rule(docs)).values()
        for name in METRIC.findall(expr)
    }
    shown = {name for expr in panel_expressions(dashboard(docs)) for name in METRIC.findall(expr)}
    assert alerted - shown == set()
