"""Write what is derived from the contract into the template and the README.

`statemachine/payment.asl.json` is the one source of the flow. The template carries
it as `Definition:` (YAML, so cfn-lint validates it as ASL, which it cannot do inside
a `DefinitionString: !Sub` string), between two marker comments; its `${...}`
placeholders are filled by `DefinitionSubstitutions` at deploy time.

`statemachine/errors.py` is the one list of the errors an execution ends with. From
it come the README's table of them and the alerts of the alarm topic: an EventBridge
rule for each error a person must act on, one for a failure with an error outside
the list (a bug), and CloudWatch alarms on executions that time out or are stopped.

    python deploy/aws/build.py           # rewrite the generated blocks
    python deploy/aws/build.py --check   # exit 1 if one is out of date (CI)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml  # type: ignore[import-untyped,unused-ignore]

from statemachine.asl import load_definition
from statemachine.errors import ERRORS, ContractError

REPO: Final = Path(__file__).resolve().parents[2]
TEMPLATE: Final = REPO / "deploy" / "aws" / "paystep.yaml"
README: Final = REPO / "README.md"
STATE_MACHINE: Final = "PaymentStateMachine"
ALARM_TOPIC: Final = "AlarmTopic"
ALERT_TOPIC_POLICY: Final = "ErrorAlertsTopicPolicy"
UNEXPECTED_FAILURE: Final = "AlertUnexpectedFailure"
STATUS_CHANGE: Final = "Step Functions Execution Status Change"


def as_yaml(document: dict[str, Any], indent: int) -> str:
    text = yaml.safe_dump(
        document,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=10_000,  # never fold a long string: keeps diffs one line per value
    )
    pad = " " * indent
    return "".join(pad + line if line.strip() else line for line in text.splitlines(True))


def definition_block(indent: int) -> str:
    """`Definition:` and the document as YAML, indented to sit under `Properties:`."""
    return as_yaml({"Definition": load_definition()}, indent)


def alert_resource_name(error: ContractError) -> str:
    return "Alert" + re.sub(r"[^A-Za-z0-9]", "", error.name)


def failure_rule(
    description: str, error: str | dict[str, Any], message: str, paths: dict[str, str]
) -> dict[str, Any]:
    """Every execution of the state machine that fails with an error `error` matches, to
    the alarm topic as `message` (its `<name>`s filled from the event's `paths`)."""
    return {
        "Type": "AWS::Events::Rule",
        "Properties": {
            "Description": description,
            "EventPattern": {
                "source": ["aws.states"],
                "detail-type": [STATUS_CHANGE],
                "detail": {
                    "status": ["FAILED"],
                    "stateMachineArn": [{"Ref": STATE_MACHINE}],
                    "error": [error],
                },
            },
            "Targets": [
                {
                    "Id": "alarm-topic",
                    "Arn": {"Ref": ALARM_TOPIC},
                    "InputTransformer": {
                        "InputPathsMap": paths,
                        "InputTemplate": json.dumps(message),
                    },
                }
            ],
        },
    }


def alert_rule(error: ContractError) -> dict[str, Any]:
    """Every execution of the state machine that fails with `error`, to the alarm topic.

    The state machine's ExecutionsFailed metric counts failures of every error alike,
    and most are ordinary outcomes (a declined card); the execution status change
    event names the error, so the rule can pick the ones that need a person.
    https://docs.aws.amazon.com/step-functions/latest/dg/eventbridge-integration.html
    """
    # Only the execution ARN and the error name: the alarm topic is not encrypted with
    # a customer key, so the cause (Stripe's message) stays in the execution history.
    message = (
        f"{error.name}: {error.when}. Execution <execution> "
        "(aws stepfunctions describe-execution --execution-arn <execution>)."
    )
    return failure_rule(
        f"Executions that fail with {error.name}: a person must act.",
        error.name,
        message,
        {"execution": "$.detail.executionArn"},
    )


def unexpected_failure_rule() -> dict[str, Any]:
    """Every failure whose error is not in the contract: a state the definition does not
    catch (`States.Runtime`, `States.TaskFailed`, ...), so a bug or a broken integration.

    `anything-but` with a list matches a value that is none of them.
    https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-create-pattern-operators.html
    """
    message = (
        "Execution <execution> failed with <error>, an error outside the contract "
        "(statemachine/errors.py): a bug or a broken integration. "
        "aws stepfunctions describe-execution --execution-arn <execution>"
    )
    return failure_rule(
        "Executions that fail with an error outside the contract: a bug.",
        {"anything-but": sorted(error.name for error in ERRORS)},
        message,
        {"execution": "$.detail.executionArn", "error": "$.detail.error"},
    )


@dataclass(frozen=True)
class ExecutionAlarm:
    """A CloudWatch alarm on one of the state machine's execution metrics (AWS/States)."""

    resource: str
    metric: str
    name: str
    """The alarm's name after the stack's `Name-` (the topic policy admits those)."""
    description: str


EXECUTION_ALARMS: Final = (
    ExecutionAlarm(
        "ExecutionsTimedOutAlarm",
        "ExecutionsTimedOut",
        "executions-timed-out",
        "An execution ran past its time limit and ended without its cleanup (stock held, "
        "a payment possibly taken): reconcile releases holds and refunds orphans; find out "
        "why it ran that long.",
    ),
    ExecutionAlarm(
        "ExecutionsAbortedAlarm",
        "ExecutionsAborted",
        "executions-aborted",
        "An execution was stopped (StopExecution) and ended without its cleanup: reconcile "
        "releases its hold and refunds a payment it took; check who stops executions.",
    ),
)
"""Every failure is a FAILED execution with an error (the rules above): most are ordinary
outcomes (a declined card), so ExecutionsFailed alone would page for each; their share
has an alarm of its own (`failed_share_alarm`). A timeout or a
stop skips the definition's own ending; none is expected.
https://docs.aws.amazon.com/step-functions/latest/dg/procedure-cw-metrics.html"""


def execution_alarm(alarm: ExecutionAlarm) -> dict[str, Any]:
    return {
        "Type": "AWS::CloudWatch::Alarm",
        "Properties": {
            "AlarmName": {"Fn::Sub": f"${{Name}}-{alarm.name}"},
            "AlarmDescription": alarm.description,
            "Namespace": "AWS/States",
            "MetricName": alarm.metric,
            "Dimensions": [{"Name": "StateMachineArn", "Value": {"Ref": STATE_MACHINE}}],
            "Statistic": "Sum",
            "Period": 300,
            "EvaluationPeriods": 1,
            "Threshold": 0,
            "ComparisonOperator": "GreaterThanThreshold",
            # No execution ended that way in the period: the metric has no data point.
            "TreatMissingData": "notBreaching",
            "AlarmActions": [{"Ref": ALARM_TOPIC}],
            "OKActions": [{"Ref": ALARM_TOPIC}],
        },
    }


FAILED_SHARE: Final = "ExecutionsFailedShareAlarm"


def failed_share_alarm() -> dict[str, Any]:
    """A spike of failed executions: their share of the ended ones over 15 minutes.

    A declined card fails its execution, so one failure is no alarm; a share far above the
    usual decline rate is (a revoked Stripe key rejects every payment, a broken release
    fails them all). Below `FailedExecutionsMinimum` ended executions the share is 0: a
    quiet night's one decline out of two does not page. Metric math (IF, FILL):
    https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/using-metric-math.html
    """

    def ended(metric_id: str, metric: str) -> dict[str, Any]:
        return {
            "Id": metric_id,
            "MetricStat": {
                "Metric": {
                    "Namespace": "AWS/States",
                    "MetricName": metric,
                    "Dimensions": [{"Name": "StateMachineArn", "Value": {"Ref": STATE_MACHINE}}],
                },
                "Period": 900,
                "Stat": "Sum",
            },
            "ReturnData": False,
        }

    share = (
        "IF(FILL(failed, 0) + FILL(succeeded, 0) >= ${FailedExecutionsMinimum}, "
        "FILL(failed, 0) / (FILL(failed, 0) + FILL(succeeded, 0)), 0)"
    )
    return {
        "Type": "AWS::CloudWatch::Alarm",
        "Properties": {
            "AlarmName": {"Fn::Sub": "${Name}-executions-failed-share"},
            "AlarmDescription": (
                "Far more executions failed than a decline rate explains (their share of "
                "those that ended in 15 minutes): look at their errors (a rejected Stripe "
                "key, a broken release, the webhook unreachable)."
            ),
            "Metrics": [
                ended("failed", "ExecutionsFailed"),
                ended("succeeded", "ExecutionsSucceeded"),
                {
                    "Id": "share",
                    "Expression": {"Fn::Sub": share},
                    "Label": "share of ended executions that failed",
                    "ReturnData": True,
                },
            ],
            "EvaluationPeriods": 1,
            "Threshold": {"Ref": "FailedExecutionsShare"},
            "ComparisonOperator": "GreaterThanThreshold",
            "TreatMissingData": "notBreaching",
            "AlarmActions": [{"Ref": ALARM_TOPIC}],
            "OKActions": [{"Ref": ALARM_TOPIC}],
        },
    }


def alerts_topic_policy(rules: Sequence[str]) -> dict[str, Any]:
    """EventBridge may publish to the alarm topic, for these rules only.

    A topic policy replaces the topic's default one, so it names the stack's
    CloudWatch alarms too (their names start with the stack's `Name`).
    """

    def publish(sid: str, service: str, condition: dict[str, Any]) -> dict[str, Any]:
        return {
            "Sid": sid,
            "Effect": "Allow",
            "Principal": {"Service": service},
            "Action": "sns:Publish",
            "Resource": {"Ref": ALARM_TOPIC},
            "Condition": condition,
        }

    alarms = "arn:${AWS::Partition}:cloudwatch:${AWS::Region}:${AWS::AccountId}:alarm:${Name}-*"
    rule_arns = [{"Fn::GetAtt": [rule, "Arn"]} for rule in rules]
    return {
        "Type": "AWS::SNS::TopicPolicy",
        "Properties": {
            "Topics": [{"Ref": ALARM_TOPIC}],
            "PolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    publish(
                        "Alarms",
                        "cloudwatch.amazonaws.com",
                        {"ArnLike": {"aws:SourceArn": {"Fn::Sub": alarms}}},
                    ),
                    publish(
                        "ErrorAlerts",
                        "events.amazonaws.com",
                        {"ArnEquals": {"aws:SourceArn": rule_arns}},
                    ),
                ],
            },
        },
    }


def alerts_block(indent: int) -> str:
    """The alert resources, indented to sit under `Resources:`."""
    rules = {alert_resource_name(error): alert_rule(error) for error in ERRORS if error.alert}
    rules[UNEXPECTED_FAILURE] = unexpected_failure_rule()
    alarms = {alarm.resource: execution_alarm(alarm) for alarm in EXECUTION_ALARMS}
    alarms[FAILED_SHARE] = failed_share_alarm()
    return as_yaml(
        {**rules, **alarms, ALERT_TOPIC_POLICY: alerts_topic_policy(list(rules))}, indent
    )


def errors_table(indent: int) -> str:
    """The README's table of the errors a failed execution ends with."""
    rows = ["| error | when |", "| --- | --- |"]
    rows += [f"| `{error.name}` | {error.when} |" for error in ERRORS]
    return "".join(" " * indent + row + "\n" for row in rows)


@dataclass(frozen=True)
class Block:
    """Generated lines between a begin and an end marker line of one file."""

    path: Path
    begin: str
    end: str
    source: str
    """What the block is made from, for the message when it is stale."""
    render: Callable[[int], str]
    """The block's lines, given the indent of the begin marker."""


BLOCKS: Final = (
    Block(
        TEMPLATE,
        "# BEGIN GENERATED DEFINITION",
        "# END GENERATED DEFINITION",
        "statemachine/payment.asl.json",
        definition_block,
    ),
    Block(
        TEMPLATE,
        "# BEGIN GENERATED ERROR ALERTS",
        "# END GENERATED ERROR ALERTS",
        "statemachine/errors.py",
        alerts_block,
    ),
    Block(
        README,
        "<!-- errors:begin -->",
        "<!-- errors:end -->",
        "statemachine/errors.py",
        errors_table,
    ),
)


def render(text: str, block: Block) -> str:
    """`text` with the lines between the block's markers generated anew."""
    lines = text.splitlines(True)
    begin = next((i for i, line in enumerate(lines) if line.strip().startswith(block.begin)), None)
    end = next((i for i, line in enumerate(lines) if line.strip().startswith(block.end)), None)
    if begin is None or end is None or end < begin:
        raise SystemExit(f"{block.path}: markers {block.begin!r} ... {block.end!r} not in order")
    indent = len(lines[begin]) - len(lines[begin].lstrip())
    return "".join([*lines[: begin + 1], block.render(indent), *lines[end:]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a block is stale")
    args = parser.parse_args(argv)
    stale = 0
    for path in dict.fromkeys(block.path for block in BLOCKS):
        current = path.read_text("utf-8")
        wanted = current
        for block in BLOCKS:
            if block.path != path:
                continue
            updated = render(wanted, block)
            if updated != wanted and args.check:
                stale += 1
                print(
                    f"{path.name}: the block {block.begin!r} is out of date with "
                    f"{block.source}: run python deploy/aws/build.py",
                    file=sys.stderr,
                )
            wanted = updated
        if wanted != current and not args.check:
            path.write_text(wanted, "utf-8")
            print(f"wrote {path.relative_to(REPO)}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
