"""The CloudFormation template: cfn-lint clean, the one ASL, the same resources as
`paystep deploy`, and IAM that grants each principal only what it calls."""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import sys
from types import ModuleType
from typing import Any, Final

import pytest

from statemachine import deploy as imperative
from statemachine import errors, seal
from statemachine.asl import load_definition, placeholders
from statemachine.orders import OPEN_CLAIMS_INDEX
from tests.deploy.tools import REPO, explain, load_template, require_tool, run

TEMPLATE: Final = REPO / "deploy" / "aws" / "paystep.yaml"
ASL_FILE: Final = REPO / "statemachine" / "payment.asl.json"
OVERLAYS: Final = REPO / "deploy" / "k8s" / "overlays"
SEND_TASK: Final = {"states:SendTaskSuccess", "states:SendTaskFailure", "states:SendTaskHeartbeat"}
TOKEN_KEYS_RESOURCES: Final = (
    {"Ref": "TokenKeysSecret"},
    {"Fn::GetAtt": ["TokenKeysKey", "Arn"]},
)
SERVICE_ROLES: Final = ("WorkerRole", "WebhookRole", "ReconcileRole")
READ_TOKEN_KEYS: Final = {"secretsmanager:GetSecretValue", "kms:Decrypt"}
BUILD: Final = REPO / "deploy" / "aws" / "build.py"
TASK_QUEUE: Final = {"Fn::GetAtt": ["TaskQueue", "Arn"]}
# DescribeExecution is authorised on execution ARNs: this machine's only.
MACHINE_EXECUTIONS: Final = {
    "Fn::Sub": "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}"
    ":execution:${PaymentStateMachine.Name}:*"
}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(TEMPLATE)


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {
        name: resource
        for name, resource in template["Resources"].items()
        if resource["Type"] == kind
    }


def statements(role: dict[str, Any], policy: str | None = None) -> list[dict[str, Any]]:
    return [
        statement
        for document in role["Properties"]["Policies"]
        if policy is None or document["PolicyName"] == policy
        for statement in document["PolicyDocument"]["Statement"]
    ]


def actions(role: dict[str, Any], policy: str | None = None) -> set[str]:
    found: set[str] = set()
    for statement in statements(role, policy):
        value = statement["Action"]
        found.update([value] if isinstance(value, str) else value)
    return found


def test_cfn_lint_is_clean() -> None:
    tool = require_tool("cfn-lint")
    result = run([tool, *map(str, sorted(TEMPLATE.parent.glob("*.yaml")))])
    assert result.returncode == 0, explain(result)


def test_state_machine_carries_the_asl_file(template: dict[str, Any]) -> None:
    [machine] = resources(template, "AWS::StepFunctions::StateMachine").values()
    properties = machine["Properties"]
    from_file = json.loads(ASL_FILE.read_text("utf-8"))
    assert properties["Definition"] == from_file, (
        "the template's Definition differs from statemachine/payment.asl.json: "
        "run python deploy/aws/build.py"
    )
    assert properties["Definition"] == load_definition()
    assert set(properties["DefinitionSubstitutions"]) == placeholders(from_file)
    assert properties["StateMachineType"] == "STANDARD"


def test_generator_reports_no_drift() -> None:
    result = run([sys.executable, str(REPO / "deploy" / "aws" / "build.py"), "--check"])
    assert result.returncode == 0, explain(result)


@pytest.fixture
def build(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """deploy/aws/build.py as a module (deploy/ is not a package)."""
    spec = importlib.util.spec_from_file_location("paystep_deploy_build", BUILD)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolve the module's annotations through sys.modules.
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_readme_lists_every_contract_error_in_order() -> None:
    readme = (REPO / "README.md").read_text("utf-8")
    table = readme.split("<!-- errors:begin -->\n", 1)[1].split("<!-- errors:end -->", 1)[0]
    rows = [line.split("|")[1:3] for line in table.splitlines()[2:]]
    assert [(name.strip().strip("`"), when.strip()) for name, when in rows] == [
        (error.name, error.when) for error in errors.ERRORS
    ]


def test_each_alert_error_notifies_the_alarm_topic(template: dict[str, Any]) -> None:
    rules = resources(template, "AWS::Events::Rule")
    by_error = {
        error: name
        for name, rule in rules.items()
        for error in rule["Properties"]["EventPattern"]["detail"]["error"]
        if isinstance(error, str)
    }
    assert set(by_error) == {error.name for error in errors.ERRORS if error.alert}
    assert errors.REFUND_FAILED in by_error
    for rule in rules.values():
        properties = rule["Properties"]
        assert properties["EventPattern"]["detail"]["status"] == ["FAILED"]
        assert properties["EventPattern"]["detail"]["stateMachineArn"] == [
            {"Ref": "PaymentStateMachine"}
        ]
        [target] = properties["Targets"]
        assert target["Arn"] == {"Ref": "AlarmTopic"}
    [policy] = resources(template, "AWS::SNS::TopicPolicy").values()
    assert policy["Properties"]["Topics"] == [{"Ref": "AlarmTopic"}]
    by_service = {
        statement["Principal"]["Service"]: statement
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    }
    allowed = by_service["events.amazonaws.com"]["Condition"]["ArnEquals"]["aws:SourceArn"]
    assert allowed == [{"Fn::GetAtt": [name, "Arn"]} for name in rules]
    # The policy replaces the topic's default one: the CloudWatch alarms keep their way in.
    assert "cloudwatch.amazonaws.com" in by_service


def test_a_failure_outside_the_contract_notifies_the_alarm_topic(
    template: dict[str, Any],
) -> None:
    """EventBridge `anything-but` with a list matches a value that is none of them
    (https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-create-pattern-operators.html):
    every error the contract does not name, and none it does."""
    rule = resources(template, "AWS::Events::Rule")["AlertUnexpectedFailure"]["Properties"]
    detail = rule["EventPattern"]["detail"]
    assert detail["status"] == ["FAILED"]
    [matcher] = detail["error"]
    assert set(matcher["anything-but"]) == errors.CONTRACT_ERRORS
    [target] = rule["Targets"]
    assert target["InputTransformer"]["InputPathsMap"]["error"] == "$.detail.error"


@pytest.mark.parametrize("metric", ["ExecutionsTimedOut", "ExecutionsAborted"])
def test_executions_that_time_out_or_are_stopped_raise_an_alarm(
    template: dict[str, Any], metric: str
) -> None:
    """AWS/States execution metrics, per state machine (dimension StateMachineArn):
    https://docs.aws.amazon.com/step-functions/latest/dg/procedure-cw-metrics.html"""
    [alarm] = [
        alarm["Properties"]
        for alarm in resources(template, "AWS::CloudWatch::Alarm").values()
        if alarm["Properties"].get("MetricName") == metric
    ]
    assert alarm["Namespace"] == "AWS/States"
    assert alarm["Dimensions"] == [
        {"Name": "StateMachineArn", "Value": {"Ref": "PaymentStateMachine"}}
    ]
    assert (alarm["Statistic"], alarm["Threshold"], alarm["ComparisonOperator"]) == (
        "Sum",
        0,
        "GreaterThanThreshold",
    )
    assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]
    # The topic policy admits the stack's own alarms by name.
    assert alarm["AlarmName"]["Fn::Sub"].startswith("${Name}-")


def test_a_spike_in_the_share_of_failed_executions_raises_an_alarm(
    template: dict[str, Any],
) -> None:
    """Failed over ended (failed + succeeded) executions, per state machine, as metric math
    (https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/using-metric-math.html):
    a share, so ordinary declines do not page, with a floor of ended executions."""
    alarm = resources(template, "AWS::CloudWatch::Alarm")["ExecutionsFailedShareAlarm"]
    properties = alarm["Properties"]
    queries = {query["Id"]: query for query in properties["Metrics"]}
    stats = {
        key: query["MetricStat"]["Metric"]["MetricName"]
        for key, query in queries.items()
        if "MetricStat" in query
    }
    assert stats == {"failed": "ExecutionsFailed", "succeeded": "ExecutionsSucceeded"}
    for key in stats:
        metric = queries[key]["MetricStat"]["Metric"]
        assert metric["Namespace"] == "AWS/States"
        assert metric["Dimensions"] == [
            {"Name": "StateMachineArn", "Value": {"Ref": "PaymentStateMachine"}}
        ]
    [returned] = [query for query in queries.values() if query["ReturnData"]]
    expression = returned["Expression"]["Fn::Sub"]
    assert "FILL(failed, 0) / (FILL(failed, 0) + FILL(succeeded, 0))" in expression
    assert "${FailedExecutionsMinimum}" in expression
    assert properties["Threshold"] == {"Ref": "FailedExecutionsShare"}
    assert template["Parameters"]["FailedExecutionsShare"]["MaxValue"] == 1
    assert properties["AlarmActions"] == [{"Ref": "AlarmTopic"}]


@pytest.mark.parametrize("alert", [False, True])
def test_generator_reports_a_new_error_as_drift(
    build: ModuleType, monkeypatch: pytest.MonkeyPatch, alert: bool
) -> None:
    added = errors.ContractError("Payment.Disputed", "the customer disputed it", alert=alert)
    monkeypatch.setattr(build, "ERRORS", (*errors.ERRORS, added))
    assert build.main(["--check"]) == 1
    readme, alerts = build.BLOCKS[2], build.BLOCKS[1]
    assert "| `Payment.Disputed` | the customer disputed it |" in readme.render(0)
    assert ("AlertPaymentDisputed:" in alerts.render(2)) is alert
    # Whichever it is, a failure with it is no longer unexpected.
    assert "- Payment.Disputed" in alerts.render(2)


def test_queues_match_paystep_deploy(template: dict[str, Any]) -> None:
    queues = resources(template, "AWS::SQS::Queue")
    task = queues["TaskQueue"]["Properties"]
    dlq = queues["DeadLetterQueue"]["Properties"]
    assert task["QueueName"] == {"Fn::Sub": "${Name}-tasks"}
    assert dlq["QueueName"] == {"Fn::Sub": "${Name}-tasks-dlq"}
    assert task["VisibilityTimeout"] == imperative.TASK_VISIBILITY_TIMEOUT_S
    assert task["ReceiveMessageWaitTimeSeconds"] == imperative.SQS_MAX_LONG_POLL_S
    for queue in (task, dlq):
        assert queue["MessageRetentionPeriod"] == imperative.SQS_MAX_RETENTION_S
        assert queue["SqsManagedSseEnabled"] is True
    assert task["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]},
        "maxReceiveCount": imperative.MAX_RECEIVE_COUNT,
    }


def test_dead_letters_raise_an_alarm(template: dict[str, Any]) -> None:
    alarms = resources(template, "AWS::CloudWatch::Alarm").values()
    on_dlq = [
        alarm["Properties"]
        for alarm in alarms
        if alarm["Properties"].get("Dimensions", [{}])[0].get("Value")
        == {"Fn::GetAtt": ["DeadLetterQueue", "QueueName"]}
    ]
    assert len(on_dlq) == 1
    [alarm] = on_dlq
    assert alarm["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert alarm["Threshold"] == 0
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert alarm["AlarmActions"]


def test_tables_and_topics_match_paystep_deploy(template: dict[str, Any]) -> None:
    tables = {
        resource["Properties"]["TableName"]["Fn::Sub"]: resource["Properties"]
        for resource in resources(template, "AWS::DynamoDB::Table").values()
    }
    assert {name: table["KeySchema"] for name, table in tables.items()} == {
        "${Name}-orders": [{"AttributeName": "order_id", "KeyType": "HASH"}],
        "${Name}-inventory": [{"AttributeName": "sku", "KeyType": "HASH"}],
        "${Name}-card-attempts": [{"AttributeName": "card", "KeyType": "HASH"}],
    }
    for table in tables.values():
        assert table["BillingMode"] == "PAY_PER_REQUEST"
        assert table["SSESpecification"]["SSEEnabled"] is True
    # DynamoDB deletes a card's attempts once past every window (the worker's budget).
    assert tables["${Name}-card-attempts"]["TimeToLiveSpecification"] == {
        "AttributeName": "expires_at",
        "Enabled": True,
    }
    topics = {
        resource["Properties"]["TopicName"]["Fn::Sub"]
        for resource in resources(template, "AWS::SNS::Topic").values()
    }
    assert {"${Name}-receipts", "${Name}-notifications"} <= topics


ORDERS_TABLE: Final = {"Fn::GetAtt": ["OrdersTable", "Arn"]}
# TransactWriteItems is authorised per action it carries, on each item's table:
# https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/transaction-apis-iam.html
HOLD_STOCK: Final = {
    action: [ORDERS_TABLE, {"Fn::GetAtt": ["InventoryTable", "Arn"]}]
    for action in ("dynamodb:UpdateItem", "dynamodb:ConditionCheckItem")
}
# The worker and reconcile read the order's row, its stock and a declined card's attempts.
READ_TABLES: Final = {
    "dynamodb:GetItem": [
        ORDERS_TABLE,
        {"Fn::GetAtt": ["InventoryTable", "Arn"]},
        {"Fn::GetAtt": ["CardAttemptsTable", "Arn"]},
    ]
}


def test_orders_table_has_the_open_claims_index_paystep_deploy_makes(
    template: dict[str, Any],
) -> None:
    orders = template["Resources"]["OrdersTable"]["Properties"]
    (index,) = orders["GlobalSecondaryIndexes"]
    assert index["IndexName"] == OPEN_CLAIMS_INDEX
    assert [(k["AttributeName"], k["KeyType"]) for k in index["KeySchema"]] == list(
        imperative.OPEN_CLAIMS_KEY
    )
    assert index["Projection"] == {
        "ProjectionType": "INCLUDE",
        "NonKeyAttributes": list(imperative.OPEN_CLAIMS_PROJECTED),
    }
    assert {d["AttributeName"]: d["AttributeType"] for d in orders["AttributeDefinitions"]} == {
        "order_id": "S", "claim_state": "S", "claimed_at": "S"}  # fmt: skip


def test_state_machine_role_is_least_privilege(template: dict[str, Any]) -> None:
    role = template["Resources"]["StateMachineRole"]
    grants = {
        statement["Action"]: statement["Resource"] for statement in statements(role, "paystep")
    }
    assert grants == {
        "sqs:SendMessage": {"Fn::GetAtt": ["TaskQueue", "Arn"]},
        # The machine records the end in the orders table; the stock is the worker's.
        "dynamodb:UpdateItem": ORDERS_TABLE,
        "sns:Publish": [{"Ref": "ReceiptsTopic"}, {"Ref": "NotificationsTopic"}],
    }
    trust = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert [statement["Principal"] for statement in trust] == [{"Service": "states.amazonaws.com"}]


def grants(role: dict[str, Any]) -> dict[str, Any]:
    """Action -> the resource(s) it is allowed on, for roles with one statement per action."""
    found: dict[str, Any] = {}
    for statement in statements(role):
        assert statement["Effect"] == "Allow"
        value = statement["Action"]
        for action in [value] if isinstance(value, str) else value:
            assert action not in found, f"{action} granted twice"
            found[action] = statement["Resource"]
    return found


# The card's retry budget: a consistent read, a conditional put (worker, webhook, reconcile).
CARD_ATTEMPTS = {
    "dynamodb:GetItem": {"Fn::GetAtt": ["CardAttemptsTable", "Arn"]},
    "dynamodb:PutItem": {"Fn::GetAtt": ["CardAttemptsTable", "Arn"]},
}


def test_worker_role_consumes_its_queue_answers_tasks_and_alerts_refunds(
    template: dict[str, Any],
) -> None:
    granted = grants(template["Resources"]["WorkerRole"])
    assert {action: granted.pop(action) for action in READ_TOKEN_KEYS} == {
        "secretsmanager:GetSecretValue": {"Ref": "TokenKeysSecret"},
        "kms:Decrypt": {"Fn::GetAtt": ["TokenKeysKey", "Arn"]},
    }
    assert granted == {
        "sqs:ReceiveMessage": TASK_QUEUE,
        "sqs:DeleteMessage": TASK_QUEUE,
        "sqs:ChangeMessageVisibility": TASK_QUEUE,
        "sqs:GetQueueAttributes": TASK_QUEUE,
        "sqs:SendMessage": TASK_QUEUE,
        **{action: {"Ref": "PaymentStateMachine"} for action in SEND_TASK},
        "states:DescribeExecution": MACHINE_EXECUTIONS,
        **READ_TABLES,
        **HOLD_STOCK,
        "sns:Publish": {"Ref": "AlarmTopic"},
        "dynamodb:PutItem": CARD_ATTEMPTS["dynamodb:PutItem"],
    }


def test_webhook_role_answers_tasks_and_asks_for_checks(template: dict[str, Any]) -> None:
    granted = grants(template["Resources"]["WebhookRole"])
    for action in READ_TOKEN_KEYS:
        assert granted.pop(action) in TOKEN_KEYS_RESOURCES
    assert granted == {
        **{action: {"Ref": "PaymentStateMachine"} for action in SEND_TASK},
        # readiness probe; the action takes no resource ARN
        "states:ListStateMachines": "*",
        "sqs:SendMessage": TASK_QUEUE,
        # a decline the customer must fix: payment_action_required
        "sns:Publish": {"Ref": "NotificationsTopic"},
        **CARD_ATTEMPTS,
    }


def test_reconcile_role_answers_tasks_asks_for_checks_and_releases_holds(
    template: dict[str, Any],
) -> None:
    granted = grants(template["Resources"]["ReconcileRole"])
    for action in READ_TOKEN_KEYS:
        assert granted.pop(action) in TOKEN_KEYS_RESOURCES
    assert granted == {
        **{action: {"Ref": "PaymentStateMachine"} for action in SEND_TASK},
        "sqs:SendMessage": TASK_QUEUE,
        "states:DescribeExecution": MACHINE_EXECUTIONS,
        "states:ListExecutions": {"Ref": "PaymentStateMachine"},
        **READ_TABLES,
        **HOLD_STOCK,
        "dynamodb:Query": {"Fn::Sub": "${OrdersTable.Arn}/index/" + OPEN_CLAIMS_INDEX},
        "sns:Publish": {"Ref": "NotificationsTopic"},
        "dynamodb:PutItem": CARD_ATTEMPTS["dynamodb:PutItem"],
    }
    assert template["Outputs"]["ReconcileRoleArn"]["Value"] == {
        "Fn::GetAtt": ["ReconcileRole", "Arn"]
    }


def test_status_policy_only_reads_one_order_and_this_machine_s_executions(
    template: dict[str, Any],
) -> None:
    policy = template["Resources"]["StatusReadPolicy"]
    assert policy["Type"] == "AWS::IAM::ManagedPolicy"
    granted: dict[str, Any] = {}
    for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
        assert statement["Effect"] == "Allow"
        value = statement["Action"]
        for action in [value] if isinstance(value, str) else value:
            granted[action] = statement["Resource"]
    assert granted == {
        "dynamodb:GetItem": [ORDERS_TABLE, {"Fn::GetAtt": ["InventoryTable", "Arn"]}],
        "states:DescribeExecution": MACHINE_EXECUTIONS,
        "states:GetExecutionHistory": MACHINE_EXECUTIONS,
    }
    assert template["Outputs"]["StatusReadPolicyArn"]["Value"] == {"Ref": "StatusReadPolicy"}


def test_token_keys_secret_comes_from_a_no_echo_parameter(template: dict[str, Any]) -> None:
    [(name, secret)] = resources(template, "AWS::SecretsManager::Secret").items()
    properties = secret["Properties"]
    assert properties["SecretString"] == {"Ref": "TokenKeys"}
    assert template["Parameters"]["TokenKeys"]["NoEcho"] is True
    assert "Default" not in template["Parameters"]["TokenKeys"]
    assert properties["KmsKeyId"] == {"Ref": "TokenKeysKey"}
    assert template["Outputs"]["TokenKeysSecretArn"]["Value"] == {"Ref": name}


def test_only_the_service_roles_read_the_token_keys(template: dict[str, Any]) -> None:
    readers = {
        name: granted
        for name, role in resources(template, "AWS::IAM::Role").items()
        if (granted := {a for a in actions(role) if a.startswith(("secretsmanager:", "kms:"))})
    }
    assert readers == {name: READ_TOKEN_KEYS for name in SERVICE_ROLES}
    for name in SERVICE_ROLES:
        grants = {
            statement["Action"]: statement
            for statement in statements(template["Resources"][name])
            if isinstance(statement["Action"], str) and statement["Action"] in READ_TOKEN_KEYS
        }
        assert grants["secretsmanager:GetSecretValue"]["Resource"] == {"Ref": "TokenKeysSecret"}
        decrypt = grants["kms:Decrypt"]
        assert decrypt["Resource"] == {"Fn::GetAtt": ["TokenKeysKey", "Arn"]}
        # Through Secrets Manager only, never a direct decrypt with the key.
        assert decrypt["Condition"]["StringEquals"] == {
            "kms:ViaService": {"Fn::Sub": "secretsmanager.${AWS::Region}.amazonaws.com"}
        }


def test_token_keys_pattern_takes_keygen_output_and_refuses_junk(
    template: dict[str, Any],
) -> None:
    # CloudFormation's AllowedPattern is a Java regex; this one reads the same in Python.
    pattern = re.compile(template["Parameters"]["TokenKeys"]["AllowedPattern"])
    longest_kid = "k" * seal.KID_MAX_CHARS
    accepted = [
        seal.new_key(),
        seal.new_key(longest_kid),
        f"{seal.new_key('k2026b')},{seal.new_key('k2026a')}",
    ]
    for value in accepted:
        assert pattern.fullmatch(value), value
        seal.TokenKeys.parse(value)  # what the pattern lets through, the services take
    kid, key = seal.new_key("k1").split(":")
    refused = [
        "",
        "junk",
        key,  # no kid
        f":{key}",
        f"{longest_kid}x:{key}",  # kid too long
        f"k.1:{key}",  # kid outside A-Z a-z 0-9 _ -
        f"{kid}:{key[:-4]}",  # 63 bytes, not 64
        f"{kid}:{base64.b64encode(bytes(seal.KEY_BYTES + 1)).decode()}",
        f"{kid}:{key.replace('=', '')}",  # padding missing
        f"{kid}:{key},",  # trailing separator
        f"{kid}:{key}, {kid}2:{key}",  # space after the comma
    ]
    for value in refused:
        assert not pattern.fullmatch(value), value


@pytest.mark.parametrize("role_name", SERVICE_ROLES)
def test_service_roles_trust_one_service_account(template: dict[str, Any], role_name: str) -> None:
    trust = template["Resources"][role_name]["Properties"]["AssumeRolePolicyDocument"]
    text, variables = trust["Fn::Sub"]
    component = role_name.removesuffix("Role")
    document = json.loads(
        text.replace("${OidcProviderArn}", "arn:aws:iam::111122223333:oidc-provider/oidc.x/id/1")
        .replace("${Issuer}", "oidc.x/id/1")
        .replace("${Namespace}", "ns")
        .replace(f"${{{component}ServiceAccount}}", "sa")
    )
    [statement] = document["Statement"]
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert statement["Condition"]["StringEquals"] == {
        "oidc.x/id/1:sub": "system:serviceaccount:ns:sa",
        "oidc.x/id/1:aud": "sts.amazonaws.com",
    }
    assert "Issuer" in variables


def test_no_wildcard_beyond_apis_without_resource_arns(template: dict[str, Any]) -> None:
    resourceless = {"logs:", "xray:", "states:ListStateMachines"}
    for name, role in resources(template, "AWS::IAM::Role").items():
        for statement in statements(role):
            granted = statement["Action"]
            granted = [granted] if isinstance(granted, str) else granted
            assert not any("*" in action for action in granted), name
            if statement["Resource"] == "*":
                assert all(action.startswith(tuple(resourceless)) for action in granted), name


def test_outputs_feed_the_overlays(template: dict[str, Any]) -> None:
    outputs = set(template["Outputs"])
    for env_file in sorted(OVERLAYS.glob("*/stack-outputs.env")):
        keys = {
            line.split("=", 1)[0]
            for line in env_file.read_text("utf-8").splitlines()
            if line.strip() and not line.startswith("#")
        }
        assert keys <= outputs, f"{env_file.relative_to(REPO)}: {sorted(keys - outputs)}"


def test_default_service_accounts_match_the_manifests(
    template: dict[str, Any], manifests: dict[str, list[dict[str, Any]]]
) -> None:
    parameters = template["Parameters"]
    prod = manifests["prod"]
    accounts = {doc["metadata"]["name"] for doc in prod if doc["kind"] == "ServiceAccount"}
    assert {
        parameters["WorkerServiceAccount"]["Default"],
        parameters["WebhookServiceAccount"]["Default"],
        parameters["ReconcileServiceAccount"]["Default"],
    } == accounts
    namespaces = {doc["metadata"]["namespace"] for doc in prod if doc["kind"] == "ServiceAccount"}
    assert namespaces == {parameters["Namespace"]["Default"]}
