"""The Kubernetes manifests: every overlay builds, validates, and keeps its promises.

Tools: `kubectl kustomize`, `kubernetes-validate --strict` (built-in kinds; it skips
CRDs), and jsonschema against KEDA's own CRD schemas for ScaledObject and
TriggerAuthentication.
"""

from __future__ import annotations

import copy
import json
import os
import re
import urllib.parse
from pathlib import Path
from typing import Any, Final

import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]

from statemachine.seal import new_key
from tests.deploy.conftest import OVERLAYS, Manifest, by_kind, one
from tests.deploy.tools import INSTALL_HINT, explain, require_tool, run
from webhook.reconcile import ReconcileSettings
from worker.settings import WorkerSettings

KUBERNETES_VERSION: Final = "1.30"
KEDA_KINDS: Final = {"ScaledObject", "TriggerAuthentication"}
SECRET_NAME: Final = "paystep-secrets"
ROLE_ARN: Final = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$")
WEBHOOK_PATH: Final = "/webhooks/stripe"
WORKLOADS: Final = ("worker", "webhook", "reconcile")
# Stripe retries a failed delivery for up to three days: reconciliation looks that far back.
STRIPE_RETRY_WINDOW_S: Final = 72 * 3600
IMDS: Final = "169.254.169.254/32"
# The stack's resources as the services are given them: (region, account) in each.
SQS_QUEUE_URL: Final = re.compile(
    r"^https://sqs\.(?P<region>[a-z0-9-]+)\.amazonaws\.com/(?P<account>\d{12})/[\w-]{1,80}$"
)
SNS_TOPIC_ARN: Final = re.compile(
    r"^arn:aws[a-z-]*:sns:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):[\w-]{1,256}$"
)
STATE_MACHINE_ARN: Final = re.compile(
    r"^arn:aws[a-z-]*:states:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):stateMachine:[\w-]+$"
)
# KEDA's own CRDs, copied into the repository (README.md there says from where).
KEDA_SCHEMAS: Final = Path(__file__).resolve().parent / "schemas" / "keda"


def config_map(docs: list[Manifest]) -> Manifest:
    """The settings every process reads (the generated `paystep-config-<hash>`)."""
    [config] = [
        doc
        for doc in by_kind(docs, "ConfigMap")
        if doc["metadata"]["name"].startswith("paystep-config-")
    ]
    return config


def config_of(docs: list[Manifest]) -> dict[str, str]:
    data: dict[str, str] = config_map(docs)["data"]
    return data


def pod_spec(workload: Manifest) -> dict[str, Any]:
    """The pod template's spec of a Deployment or a CronJob."""
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    found: dict[str, Any] = spec["template"]["spec"]
    return found


def containers(workload: Manifest) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = pod_spec(workload)["containers"]
    return found


def workloads(docs: list[Manifest]) -> list[Manifest]:
    return [*by_kind(docs, "Deployment"), *by_kind(docs, "CronJob")]


def workload(docs: list[Manifest], component: str) -> Manifest:
    kind = "CronJob" if component == "reconcile" else "Deployment"
    return one(docs, kind, component)


def environment(docs: list[Manifest], component: str) -> dict[str, str]:
    """The variables a workload's container starts with: its ConfigMaps, then its `env`."""
    [container] = containers(workload(docs, component))
    maps = {doc["metadata"]["name"]: doc["data"] for doc in by_kind(docs, "ConfigMap")}
    env: dict[str, str] = {}
    for source in container["envFrom"]:
        env.update(maps[source["configMapRef"]["name"]])
    env.update({item["name"]: item.get("value", "from-a-secret") for item in container["env"]})
    return env


def every_minutes(schedule: str) -> int:
    """The period of a `*/N * * * *` schedule, in minutes (the only form used here)."""
    match = re.fullmatch(r"\*/(\d+) \* \* \* \*", schedule)
    assert match, f"expected a `*/N * * * *` schedule, got {schedule!r}"
    minutes = int(match.group(1))
    assert 60 % minutes == 0, "N must divide the hour, or the gap at the hour is shorter"
    return minutes


def egress_ports(policy: Manifest) -> dict[str, set[int | str]]:
    """Allowed destination ports by peer: a namespace name, `kube-dns`, or an ipBlock CIDR."""
    found: dict[str, set[int | str]] = {}
    for rule in policy["spec"].get("egress", []):
        ports = {port["port"] for port in rule.get("ports", [])}
        for peer in rule["to"]:
            if "ipBlock" in peer:
                block = peer["ipBlock"]
                assert IMDS in block.get("except", []), "the node's metadata service stays shut"
                key = block["cidr"]
            elif "podSelector" in peer:
                key = peer["podSelector"]["matchLabels"]["k8s-app"]
            else:
                key = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            found.setdefault(key, set()).update(ports)
    return found


# -- the tools ---------------------------------------------------------------------------


def test_overlays_exist() -> None:
    assert {"dev", "prod"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_built_in_kinds_pass_strict_validation(overlay: str, rendered: dict[str, str]) -> None:
    tool = require_tool("kubernetes-validate")
    result = run([tool, "--strict", "-k", KUBERNETES_VERSION, "-"], input_text=rendered[overlay])
    assert result.returncode == 0, explain(result)
    assert "ERROR" not in result.stdout + result.stderr, explain(result)


def strict(schema: Any) -> Any:
    """Refuse unknown fields, as the API server does for a structural CRD schema.

    KEDA's schemas leave `additionalProperties` open; without this a misspelt field
    (`minReplicas` for `minReplicaCount`) would validate and then be silently pruned.
    """
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


def keda_schemas() -> dict[tuple[str, str], Any]:
    """(apiVersion, kind) -> the strict openAPIV3Schema of that CRD version."""
    schemas: dict[tuple[str, str], Any] = {}
    for path in sorted(KEDA_SCHEMAS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text("utf-8"))
        if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = version["schema"]["openAPIV3Schema"]
            schemas[(f"{group}/{version['name']}", kind)] = strict(copy.deepcopy(schema))
    return schemas


def keda_errors(doc: Manifest) -> list[str]:
    """Schema violations of one KEDA object, as readable lines."""
    try:
        import jsonschema  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        pytest.fail(f"jsonschema is not installed: {INSTALL_HINT}", pytrace=False)
    schema = keda_schemas().get((doc["apiVersion"], doc["kind"]))
    assert schema is not None, f"no CRD schema for {doc['apiVersion']} {doc['kind']}"
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    return [
        f"{doc['kind']}/{doc['metadata']['name']} at {'.'.join(map(str, e.path))}: {e.message}"
        for e in errors
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_objects_match_the_crd_schemas(
    overlay: str, manifests: dict[str, list[Manifest]]
) -> None:
    keda = [doc for doc in manifests[overlay] if doc["kind"] in KEDA_KINDS]
    assert {doc["kind"] for doc in keda} == KEDA_KINDS
    for doc in keda:
        errors = keda_errors(doc)
        assert not errors, "\n".join(errors)


def test_keda_validation_catches_unknown_fields_and_unquoted_numbers(
    manifests: dict[str, list[Manifest]],
) -> None:
    scaled = copy.deepcopy(one(manifests[OVERLAYS[0]], "ScaledObject"))
    scaled["spec"]["minReplicas"] = 1
    scaled["spec"]["triggers"][0]["metadata"]["queueLength"] = 64
    errors = "\n".join(keda_errors(scaled))
    assert "minReplicas" in errors
    assert "queueLength" in errors


# -- what the overlays promise -----------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_placeholder_is_filled(overlay: str, rendered: dict[str, str]) -> None:
    assert "set-by-overlay" not in rendered[overlay]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scales_the_worker_by_its_concurrency(
    overlay: str, manifests: dict[str, list[Manifest]]
) -> None:
    docs = manifests[overlay]
    config = config_of(docs)
    scaled = one(docs, "ScaledObject")
    auth = one(docs, "TriggerAuthentication")
    worker = one(docs, "Deployment", "worker")
    # namePrefix must reach KEDA's references too (kustomizeconfig/keda.yaml).
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "aws-sqs-queue"
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert auth["spec"]["podIdentity"]["provider"] == "aws"
    assert ROLE_ARN.match(auth["spec"]["podIdentity"]["roleArn"])
    metadata = trigger["metadata"]
    assert metadata["queueLength"] == config["PAYSTEP_WORKER_CONCURRENCY"]
    assert isinstance(metadata["queueLength"], str) and int(metadata["queueLength"]) > 0
    assert metadata["queueURL"] == config["PAYSTEP_QUEUE_URL"]
    assert metadata["awsRegion"] == config["AWS_DEFAULT_REGION"]
    assert "replicas" not in worker["spec"], "KEDA owns the worker's replica count"
    assert 0 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_worker_drains_before_kubernetes_kills_it(
    overlay: str, manifests: dict[str, list[Manifest]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """terminationGracePeriodSeconds outlasts the drain of the settings the pod runs with.

    https://kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle/#pod-termination:
    SIGKILL follows SIGTERM after the grace period, which a preStop hook would share.
    """
    docs = manifests[overlay]
    deployment = one(docs, "Deployment", "worker")
    pod = pod_spec(deployment)
    [container] = containers(deployment)
    assert "lifecycle" not in container, "a preStop hook runs inside the same grace period"
    env = {
        **config_of(docs),
        **{item["name"]: item.get("value", "from-a-secret") for item in container["env"]},
        "PAYSTEP_TOKEN_KEYS": new_key(),  # from the Secret too, but parsed at start
    }
    for name in [name for name in os.environ if name.startswith("PAYSTEP_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # The worker's own defaults fill in whatever the manifests leave unset.
    settings = WorkerSettings()
    assert pod["terminationGracePeriodSeconds"] > settings.shutdown_budget_s


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_locked_down(overlay: str, manifests: dict[str, list[Manifest]]) -> None:
    docs = manifests[overlay]
    config_name = config_map(docs)["metadata"]["name"]
    assert {
        found["metadata"]["labels"]["app.kubernetes.io/component"] for found in workloads(docs)
    } == set(WORKLOADS)
    for item in workloads(docs):
        pod = pod_spec(item)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        for container in containers(item):
            name = f"{item['metadata']['name']}/{container['name']}"
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert context["runAsUser"] >= 10000, name
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
            assert "memory" in container["resources"]["limits"], name
            if item["kind"] == "Deployment":
                # A Job's pod runs to completion instead; activeDeadlineSeconds bounds a hang.
                assert "livenessProbe" in container, name
            assert "@sha256:" in container["image"] or ":" in container["image"].rsplit("/")[-1]
            assert container["envFrom"] == [{"configMapRef": {"name": config_name}}], name
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == SECRET_NAME, name
            mounts = {mount["mountPath"] for mount in container.get("volumeMounts", [])}
            assert mounts == {"/tmp"}, f"{name}: /tmp is the only writable path"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_is_committed(overlay: str, manifests: dict[str, list[Manifest]]) -> None:
    assert not by_kind(manifests[overlay], "Secret")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_accounts_carry_their_iam_roles(
    overlay: str, manifests: dict[str, list[Manifest]]
) -> None:
    docs = manifests[overlay]
    roles = set()
    for component in WORKLOADS:
        account = one(docs, "ServiceAccount", component)
        role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        assert ROLE_ARN.match(role), role
        roles.add(role)
        pod = pod_spec(workload(docs, component))
        assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert len(roles) == len(WORKLOADS), "each workload has its own, narrowest, IAM role"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_webhook_is_highly_available(overlay: str, manifests: dict[str, list[Manifest]]) -> None:
    docs = manifests[overlay]
    webhook = one(docs, "Deployment", "webhook")
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert webhook["spec"]["replicas"] >= 2
    assert hpa["spec"]["scaleTargetRef"]["name"] == webhook["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2
    [container] = containers(webhook)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    pdbs = {
        doc["metadata"]["labels"]["app.kubernetes.io/component"]
        for doc in by_kind(docs, "PodDisruptionBudget")
    }
    assert pdbs == {"worker", "webhook"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ingress_exposes_only_the_stripe_path_over_tls(
    overlay: str, manifests: dict[str, list[Manifest]]
) -> None:
    docs = manifests[overlay]
    ingress = one(docs, "Ingress")
    service = one(docs, "Service", "webhook")
    paths = [
        (rule["host"], path["path"], path["pathType"], path["backend"]["service"]["name"])
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    ]
    hosts = {host for host, *_ in paths}
    assert paths == [(host, WEBHOOK_PATH, "Exact", service["metadata"]["name"]) for host in hosts]
    tls_hosts = {host for entry in ingress["spec"]["tls"] for host in entry["hosts"]}
    assert hosts <= tls_hosts
    # The metrics port is reachable from the monitoring namespace only, never via a Service.
    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["http"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_cover_every_workload(
    overlay: str, manifests: dict[str, list[Manifest]]
) -> None:
    docs = manifests[overlay]
    covered = {}
    for policy in by_kind(docs, "NetworkPolicy"):
        labels = policy["spec"]["podSelector"]["matchLabels"]
        covered[labels["app.kubernetes.io/component"]] = policy
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert set(covered) == set(WORKLOADS)
    webhook_sources = [
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for rule in covered["webhook"]["spec"]["ingress"]
        for peer in rule["from"]
    ]
    assert sorted(webhook_sources) == ["ingress-nginx", "monitoring"]
    worker_sources = [
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for rule in covered["worker"]["spec"]["ingress"]
        for peer in rule["from"]
    ]
    assert worker_sources == ["monitoring"]
    # The reconcile job serves nothing, and reaches what the worker reaches plus the
    # Pushgateway.
    assert not covered["reconcile"]["spec"].get("ingress")
    worker_egress = egress_ports(covered["worker"])
    reconcile_egress = egress_ports(covered["reconcile"])
    assert worker_egress == {"kube-dns": {53}, "0.0.0.0/0": {443}}
    # The webhook calls Step Functions and sends to SQS: the worker's AWS endpoints.
    assert egress_ports(covered["webhook"]) == worker_egress
    assert {peer: reconcile_egress[peer] for peer in worker_egress} == worker_egress
    assert set(reconcile_egress) - set(worker_egress) <= {"monitoring"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_workload_gets_the_stack_resources_it_uses(
    overlay: str, manifests: dict[str, list[Manifest]]
) -> None:
    """The worker consumes the task queue and reports refunds to the alarm topic; the
    webhook and reconcile send check_payment tasks to the same queue. All of one stack."""
    docs = manifests[overlay]
    worker = environment(docs, "worker")
    found = {
        "alarm topic": SNS_TOPIC_ARN.match(worker["PAYSTEP_ALARM_TOPIC_ARN"]),
        "state machine": STATE_MACHINE_ARN.match(worker["PAYSTEP_STATE_MACHINE_ARN"]),
    }
    for component in WORKLOADS:
        env = environment(docs, component)
        assert env["PAYSTEP_QUEUE_URL"] == worker["PAYSTEP_QUEUE_URL"], component
        found[f"{component}'s queue"] = SQS_QUEUE_URL.match(env["PAYSTEP_QUEUE_URL"])
    assert all(found.values()), found
    where = {name: (match["region"], match["account"]) for name, match in found.items() if match}
    assert {region for region, _ in where.values()} == {worker["AWS_DEFAULT_REGION"]}, where
    assert len({account for _, account in where.values()}) == 1, f"several stacks: {where}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_worker_and_reconcile_hold_and_release_stock_in_the_stacks_tables(
    overlay: str, manifests: dict[str, list[Manifest]]
) -> None:
    """Both name the stack's own tables: the queue's stack name, `-orders` and `-inventory`."""
    docs = manifests[overlay]
    worker = environment(docs, "worker")
    stack = worker["PAYSTEP_QUEUE_URL"].rsplit("/", 1)[1].removesuffix("-tasks")
    for component in ("worker", "reconcile"):
        env = environment(docs, component)
        tables = (env.get("PAYSTEP_ORDERS_TABLE"), env.get("PAYSTEP_INVENTORY_TABLE"))
        assert tables == (f"{stack}-orders", f"{stack}-inventory"), component


# -- reconciliation ----------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_reconcile_runs_alone_and_ends_before_the_next_run(
    overlay: str, manifests: dict[str, list[Manifest]], repo_root: Path
) -> None:
    cron = one(manifests[overlay], "CronJob", "reconcile")
    spec = cron["spec"]
    period_s = every_minutes(spec["schedule"]) * 60
    assert period_s == 300
    assert spec["concurrencyPolicy"] == "Forbid", "two runs would send every callback twice"
    assert not spec.get("suspend", False)
    assert 0 < spec["startingDeadlineSeconds"] < period_s
    assert spec["successfulJobsHistoryLimit"] >= 1
    assert spec["failedJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    # The deadline covers retries too: a run is over, one way or the other, before the
    # next is due, so Forbid never has to skip one; and it holds a catch-up run over a
    # 72-hour window of 20,000 payments (as measured by the benchmark) several times over.
    assert 0 < job["activeDeadlineSeconds"] < period_s
    measured = json.loads((repo_root / "bench" / "results.json").read_text())
    assert job["activeDeadlineSeconds"] >= 4 * measured["reconcile_s_per_20k"]
    assert 0 <= job["backoffLimit"] <= 3
    pod = pod_spec(cron)
    assert pod["restartPolicy"] == "Never"
    # Exit 2 (bad arguments or settings) fails the job at once instead of retrying.
    [fail_job] = [rule for rule in job["podFailurePolicy"]["rules"] if rule["action"] == "FailJob"]
    assert fail_job["onExitCodes"]["operator"] == "In"
    assert fail_job["onExitCodes"]["values"] == [2]
    assert fail_job["onExitCodes"]["containerName"] == containers(cron)[0]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_reconcile_starts_from_its_checkpoint_and_heartbeats(
    overlay: str, manifests: dict[str, list[Manifest]]
) -> None:
    docs = manifests[overlay]
    cron = one(docs, "CronJob", "reconcile")
    [container] = containers(cron)
    args = container["args"]
    assert args[0] == "reconcile"
    assert "--dry-run" not in args
    assert "--heartbeat" in args
    # The window is the checkpoint's, less an overlap that spans several runs (events
    # Stripe dates before a run but lists after it); without a checkpoint, every event
    # Stripe may still be retrying.
    assert "--since" not in args
    defaults = ReconcileSettings.model_fields
    assert defaults["reconcile_first_window_s"].default >= STRIPE_RETRY_WINDOW_S
    assert (
        defaults["reconcile_overlap_s"].default >= 3 * every_minutes(cron["spec"]["schedule"]) * 60
    )
    # The same image, key and settings as the worker: only the arguments differ.
    [worker] = containers(workload(docs, "worker"))
    assert container["image"] == worker["image"]
    assert container["envFrom"] == worker["envFrom"]
    key = [env for env in container["env"] if env["name"] == "PAYSTEP_STRIPE_API_KEY"]
    assert key == [env for env in worker["env"] if env["name"] == "PAYSTEP_STRIPE_API_KEY"]
    assert key and key[0]["valueFrom"]["secretKeyRef"]["name"] == SECRET_NAME
    assert "ports" not in container, "nothing connects to a reconcile run"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_reconcile_may_reach_its_pushgateway(
    overlay: str, manifests: dict[str, list[Manifest]]
) -> None:
    docs = manifests[overlay]
    url = config_of(docs).get("PAYSTEP_PUSHGATEWAY_URL", "")
    policy = next(
        doc
        for doc in by_kind(docs, "NetworkPolicy")
        if doc["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "reconcile"
    )
    egress = egress_ports(policy)
    if not url:
        assert "monitoring" not in egress, "no Pushgateway configured: nothing to let out"
        return
    parsed = urllib.parse.urlsplit(url)
    assert parsed.scheme in ("http", "https") and parsed.hostname, url
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    # An in-cluster Service name (<service>.<namespace>.svc...): that namespace, that port.
    labels = parsed.hostname.split(".")
    if len(labels) >= 3 and labels[2] == "svc":
        assert port in egress.get(labels[1], set()), f"{url} is not let out by {egress}"
    else:
        assert port == 443, f"{url}: only HTTPS leaves the cluster"
